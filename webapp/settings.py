"""Every setting comes from the environment (12-factor), with defaults for the embedded mode.

Embedded (no DATABASE_URL / REDIS_URL): SQLite in the instance folder, an in-process job queue on an
in-memory Redis, and a SECRET_KEY / ENCRYPTION_KEY generated once and kept in the instance folder
(mode 0600). Production (SEATSYNC_ENV=production): the secrets must be given, or the app refuses
to start and names the missing variable.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet


class ConfigurationError(RuntimeError):
    """A setting is missing or wrong; the message names the variable."""


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _kept_secret(instance: Path, name: str, make) -> str:
    """A secret generated on first start and kept in the instance folder, readable only by us."""
    path = instance / name
    if path.exists():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _database_url(url: str) -> str:
    # Heroku-style URLs say postgres://; SQLAlchemy wants the driver named.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _role_map(value: str) -> dict[str, str]:
    """OIDC_ROLE_MAP "SeatSync.Admin=admin,SeatSync.Billing=billing": provider app role → SeatSync role."""
    from .models.users import ROLES

    role_map = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        app_role, _, role = (part.strip() for part in pair.partition("="))
        if not app_role or role not in ROLES:
            raise ConfigurationError(f"OIDC_ROLE_MAP: “{pair}” must read AppRole=role, role one of {', '.join(ROLES)}.")
        role_map[app_role] = role
    return role_map


def load_settings(instance_path: str, environ: dict[str, str] | None = None) -> dict:
    env = dict(os.environ if environ is None else environ)
    instance = Path(instance_path)
    production = env.get("SEATSYNC_ENV", "").lower() == "production"

    settings: dict = {"PRODUCTION": production}
    if production:
        missing = [name for name in ("SECRET_KEY", "ENCRYPTION_KEY", "DATABASE_URL") if not env.get(name)]
        if missing:
            raise ConfigurationError(
                "SeatSync refuses to start in production without "
                + ", ".join(missing)
                + ". Set the variable(s) in the environment (see README, Configuration)."
            )
    secret_key = env.get("SECRET_KEY") or _kept_secret(instance, "secret_key", lambda: secrets.token_urlsafe(48))
    encryption_keys = env.get("ENCRYPTION_KEY") or _kept_secret(
        instance, "encryption_key", lambda: Fernet.generate_key().decode()
    )
    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance / 'seatsync.sqlite3'}"

    settings.update(
        SECRET_KEY=secret_key,
        # Comma-separated Fernet keys: the first encrypts, all decrypt (rotation: prepend a new key).
        ENCRYPTION_KEYS=[k.strip() for k in encryption_keys.split(",") if k.strip()],
        SQLALCHEMY_DATABASE_URI=_database_url(database_url),
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
        REDIS_URL=env.get("REDIS_URL") or None,
        EMBEDDED_QUEUE=not env.get("REDIS_URL"),
        # The embedded queue's worker thread; tests that check enqueued jobs turn it off.
        EMBEDDED_WORKER=_bool(env.get("SEATSYNC_EMBEDDED_WORKER"), default=True),
        SESSION_COOKIE_SECURE=_bool(env.get("SESSION_COOKIE_SECURE"), default=production),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=_bool(env.get("SESSION_COOKIE_SECURE"), default=production),
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_DURATION=dt.timedelta(days=int(env.get("REMEMBER_ME_DAYS") or 14)),
        PERMANENT_SESSION_LIFETIME=int(env.get("SESSION_LIFETIME_SECONDS", 8 * 3600)),
        # Bodies beyond this are refused with 413 (forms and the JSON API; CSV uploads have their own).
        MAX_CONTENT_LENGTH=int(env.get("REQUEST_MAX_BYTES") or 2 * 1024 * 1024),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        LOGIN_RATE_LIMIT=env.get("LOGIN_RATE_LIMIT", "5 per minute;20 per hour"),
        LOGIN_ACCOUNT_RATE_LIMIT=env.get("LOGIN_ACCOUNT_RATE_LIMIT", "10 per minute;30 per hour"),
        # Proxies in front of SeatSync whose X-Forwarded-For/-Proto/-Port are believed (1 on Heroku).
        TRUSTED_PROXIES=int(env.get("TRUSTED_PROXIES") or 0),
        RATELIMIT_STORAGE_URI=env.get("REDIS_URL") or "memory://",
        RATELIMIT_HEADERS_ENABLED=True,
        PSA_DEV_HOSTS=env.get("PSA_DEV_HOSTS", ""),
        # Benchmarks only: lift the PSAs' hourly budgets for PSA_DEV_HOSTS (the simulator), never for a real host.
        PSA_DEV_HOSTS_NO_HOURLY_LIMIT=_bool(env.get("PSA_DEV_HOSTS_NO_HOURLY_LIMIT")),
        # A company's push lock lives this long without a heartbeat (how soon a killed worker's
        # companies are taken over); companies per sync batch job (empty: chosen per PSA).
        PSA_READ_TIMEOUT_SECONDS=float(env.get("PSA_READ_TIMEOUT_SECONDS") or 60),
        SYNC_LEASE_SECONDS=int(env.get("SEATSYNC_SYNC_LEASE_SECONDS") or 20),
        # How long a company's transient PSA failures are retried within a run before it is an error.
        SYNC_RETRY_SECONDS=float(env.get("SEATSYNC_SYNC_RETRY_SECONDS") or 900),
        SYNC_BATCH_SIZE=int(env.get("SEATSYNC_SYNC_BATCH") or 0),
        AUTOTASK_ZONE_URL=env.get("AUTOTASK_ZONE_URL") or None,
        CW_CLIENT_ID=env.get("CW_CLIENT_ID", ""),
        ORG_TIMEZONE_DEFAULT=env.get("ORG_TIMEZONE", "UTC"),
        OIDC_ISSUER=env.get("OIDC_ISSUER") or None,
        OIDC_CLIENT_ID=env.get("OIDC_CLIENT_ID") or None,
        OIDC_CLIENT_SECRET=env.get("OIDC_CLIENT_SECRET") or None,
        OIDC_ALLOWED_DOMAINS=[d.strip().lower() for d in env.get("OIDC_ALLOWED_DOMAINS", "").split(",") if d.strip()],
        OIDC_DEFAULT_ROLE=env.get("OIDC_DEFAULT_ROLE", "viewer"),
        OIDC_ROLE_MAP=_role_map(env.get("OIDC_ROLE_MAP", "")),
        QUEUE_NAME=env.get("QUEUE_NAME", "seatsync"),
        # Alerts (webapp/alerts): outgoing mail, delivery retries, pausing a failing channel.
        SMTP_URL=env.get("SMTP_URL") or _smtp_url(env),
        MAIL_FROM=env.get("MAIL_FROM", "seatsync@localhost"),
        ALERT_ATTEMPTS=int(env.get("ALERT_ATTEMPTS") or 5),
        ALERT_RETRY_SECONDS=float(env.get("ALERT_RETRY_SECONDS") or 30),
        ALERT_PAUSE_AFTER=int(env.get("ALERT_PAUSE_AFTER") or 3),
        ALERT_DEBOUNCE_MINUTES=int(env.get("ALERT_DEBOUNCE_MINUTES") or 360),
        ALERT_DIGEST_HOUR=int(env.get("ALERT_DIGEST_HOUR") or 8),
        METRICS_TOKEN=env.get("METRICS_TOKEN") or None,
        READY_TICK_MAX_SECONDS=int(env.get("READY_TICK_MAX_SECONDS") or 300),
        SENTRY_DSN=env.get("SENTRY_DSN") or None,
    )
    return settings


def _smtp_url(env: dict[str, str]) -> str | None:
    """SMTP_HOST/PORT/USER/PASSWORD/TLS as one SMTP_URL (smtp:// with STARTTLS, smtps:// for implicit TLS)."""
    from urllib.parse import quote

    host = env.get("SMTP_HOST")
    if not host:
        return None
    tls = (env.get("SMTP_TLS") or "starttls").lower()
    scheme = {"ssl": "smtps", "tls": "smtps", "smtps": "smtps", "none": "smtp+plain", "off": "smtp+plain"}.get(
        tls, "smtp")
    user = env.get("SMTP_USER", "")
    login = f"{quote(user, safe='')}:{quote(env.get('SMTP_PASSWORD', ''), safe='')}@" if user else ""
    port = f":{env['SMTP_PORT']}" if env.get("SMTP_PORT") else ""
    return f"{scheme}://{login}{host}{port}"
