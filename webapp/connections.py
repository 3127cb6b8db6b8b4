"""From an Integration row to a working PSA client, and back: the one place credentials are handled.

Secrets are decrypted only here, only to build a client, and never leave this module otherwise:
pages get `credential_view()`, which says which secrets are saved without their values.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from .crypto import cipher, decrypt_json, encrypt_json
from .extensions import db
from .models import Integration, Organisation
from .psa_clients import PSA_KINDS, PsaClient, ValidationFailed, client_class, make_client
from .psa_clients.http import parse_dev_hosts
from .queue import get_redis


def get_integration(kind: str) -> Integration:
    """The integration of a PSA kind, created (disabled, without credentials) on first use."""
    if kind not in PSA_KINDS:
        raise LookupError(kind)
    integration = db.session.scalar(db.select(Integration).filter_by(kind=kind))
    if integration is None:
        integration = Integration(kind=kind)
        db.session.add(integration)
        db.session.flush()
    return integration


def client_config() -> dict[str, Any]:
    config = current_app.config
    return {
        "CW_CLIENT_ID": Organisation.get().cw_client_id or config.get("CW_CLIENT_ID", ""),
        "AUTOTASK_ZONE_URL": config.get("AUTOTASK_ZONE_URL"),
        "DEV_HOSTS_NO_HOURLY_LIMIT": bool(config.get("PSA_DEV_HOSTS_NO_HOURLY_LIMIT")),
        "HTTP_TIMEOUT": (5.0, float(config.get("PSA_READ_TIMEOUT_SECONDS") or 60)),
        "TOKEN_CIPHER": cipher(),  # PSA tokens shared through Redis are encrypted like credentials
        **config.get("PSA_CLIENT_OVERRIDES", {}),  # tests: no-op sleeps, short retry policies
    }


def dev_hosts() -> frozenset[str]:
    return parse_dev_hosts(current_app.config.get("PSA_DEV_HOSTS"))


def client_for(integration: Integration, credentials: dict[str, str] | None = None) -> PsaClient:
    """A client for the integration's saved credentials (or for `credentials` about to be saved)."""
    values = credentials if credentials is not None else decrypt_json(integration.credentials_encrypted)
    return make_client(integration.kind, values, redis=get_redis(), dev_hosts=dev_hosts(), config=client_config())


def merge_credentials(integration: Integration, submitted: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The credentials a form submission means: an empty secret field keeps the saved secret — but
    only for the host it was saved for: with a new host, every saved secret must be typed again.

    Returns (normalised values, notices for the admin). Raises the client's ValidationFailed for
    unusable input (e.g. an http:// site, a new host without its secrets).
    """
    cls = client_class(integration.kind)
    saved = decrypt_json(integration.credentials_encrypted)
    typed = {field.name: (submitted.get(field.name) or "").strip() for field in cls.credential_fields}
    values, notices = cls.normalize_credentials(typed)
    kept = [field for field in cls.credential_fields if field.secret and not values.get(field.name)
            and saved.get(field.name)]
    moved = [field for field in cls.credential_fields if field.host and saved.get(field.name)
             and values.get(field.name) != saved[field.name]]
    if kept and moved:
        raise ValidationFailed(
            f"The {moved[0].label} changed from {saved[moved[0].name]} to {values.get(moved[0].name) or '(empty)'}: "
            f"enter the {' and '.join(field.label for field in kept)} again.",
            hint="Saved secrets are only ever sent to the host they were saved for.",
        )
    for field in kept:
        values[field.name] = saved[field.name]
    return values, notices


def save_credentials(integration: Integration, values: dict[str, str]) -> list[str]:
    """Encrypt and store; returns the names of the fields that changed (for the audit log)."""
    saved = decrypt_json(integration.credentials_encrypted)
    changed = sorted(name for name in set(values) | set(saved) if values.get(name, "") != saved.get(name, ""))
    integration.credentials_encrypted = encrypt_json(values)
    return changed


def credential_view(integration: Integration) -> dict[str, Any]:
    """What a page may show: non-secret values as saved, and for secrets only whether one is saved."""
    saved = decrypt_json(integration.credentials_encrypted)
    view = {}
    for field in client_class(integration.kind).credential_fields:
        view[field.name] = bool(saved.get(field.name)) if field.secret else saved.get(field.name, "")
    return view
