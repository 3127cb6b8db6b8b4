"""Settings: organisation, sign-in, API tokens, encryption-key rotation status.

Everyone signed in may read the page; every change needs an admin. A new API token is rendered once
in the answer to the request that created it; only its hash is kept.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import click
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user

from .. import crypto
from ..audit import record
from ..extensions import db
from ..models import ApiToken, Channel, Integration, Organisation, User
from ..models._types import utcnow
from ..security import admin_only
from .oidc import is_configured as sso_configured

# cli_group=None: `flask rotate-encryption-key`, not `flask settings rotate-encryption-key`.
bp = Blueprint("settings", __name__, url_prefix="/settings", cli_group=None)

SCOPES = {"read": "read (counts, companies, products)", "write": "write (upsert and deactivate seats)"}


def encryption_status() -> dict:
    tokens = db.session.scalars(db.select(Integration.credentials_encrypted)
                                .where(Integration.credentials_encrypted.is_not(None))).all()
    tokens += db.session.scalars(db.select(Channel.target_encrypted)).all()
    current = sum(1 for token in tokens if crypto.is_current(token))
    return {"key_count": len(current_app.config["ENCRYPTION_KEYS"]), "total": len(tokens), "current": current}


def rotate_all_credentials() -> tuple[int, int]:
    """Re-encrypt every integration's credentials and every alert channel's address and secret with the first
    key; returns (rotated, total)."""
    integrations = db.session.scalars(db.select(Integration)
                                      .where(Integration.credentials_encrypted.is_not(None))).all()
    channels = db.session.scalars(db.select(Channel)).all()
    rows = [(i, "credentials_encrypted") for i in integrations] + [(c, "target_encrypted") for c in channels]
    rotated = 0
    for row, column in rows:
        if not crypto.is_current(getattr(row, column)):
            setattr(row, column, crypto.rotate(getattr(row, column)))
            rotated += 1
    if rotated:
        record("credentials.rotated", "encryption key",
               f"{rotated} credential set(s) and alert channel(s) re-encrypted with the current key",
               after={"rotated": rotated, "total": len(rows)})
    db.session.commit()
    return rotated, len(rows)


@bp.cli.command("rotate-encryption-key")
def rotate_encryption_key_command():
    """Re-encrypt all PSA credentials with the first key of ENCRYPTION_KEY (prepend a new key first)."""
    try:
        rotated, total = rotate_all_credentials()
    except RuntimeError as exc:  # a token no configured key can read
        raise click.ClickException(str(exc)) from None
    click.echo(f"Re-encrypted {rotated} of {total} stored secret(s) (PSA credentials, alert channels) with the "
               "current key. "
               + ("Older keys can now be removed from ENCRYPTION_KEY." if total else "Nothing is stored yet."))


def _tokens():
    return db.session.scalars(db.select(ApiToken).order_by(ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc(),
                                                           ApiToken.id.desc())).all()


def _page(status: int = 200, new_token: str | None = None, form: dict | None = None):
    org = Organisation.get()
    return render_template(
        "settings/index.html", org=org, form=form or {}, tokens=_tokens(), scopes=SCOPES, new_token=new_token,
        encryption=encryption_status(), sso_configured=sso_configured(), timezones=sorted(available_timezones()),
        break_glass_admins=_break_glass_admins(), can_edit=current_user.has_role("admin"),
    ), status


def _break_glass_admins() -> list[str]:
    return db.session.scalars(db.select(User.email).filter_by(role="admin", active=True, break_glass=True)
                              .order_by(User.email)).all()


@bp.get("")
def index():
    return _page()


@bp.post("/organisation")
@admin_only
def organisation():
    org = Organisation.get()
    form = {k: request.form.get(k, "").strip() for k in ("name", "timezone", "cw_client_id")}
    errors = []
    if not form["name"]:
        errors.append("Organisation name cannot be empty.")
    try:
        if form["timezone"] not in available_timezones():
            raise ZoneInfoNotFoundError(form["timezone"])
        ZoneInfo(form["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(f"“{form['timezone']}” is not a time zone. Use an IANA name such as Europe/London or "
                      "America/New_York.")
    if errors:
        for message in errors:
            flash(message, "error")
        return _page(422, form=form)
    before = {"name": org.name, "timezone": org.timezone, "cw_client_id": org.cw_client_id}
    after = {"name": form["name"][:200], "timezone": form["timezone"], "cw_client_id": form["cw_client_id"][:64]}
    changed = [key for key in after if after[key] != before[key]]
    if changed:
        for key in changed:
            setattr(org, key, after[key])
        record("settings.changed", "organisation", "Changed " + ", ".join(changed),
               before={k: before[k] for k in changed}, after={k: after[k] for k in changed})
    db.session.commit()
    flash("Settings saved." if changed else "Nothing changed.", "success")
    return redirect(url_for("settings.index"))


@bp.post("/sign-in")
@admin_only
def sign_in():
    org = Organisation.get()
    wanted = request.form.get("local_login_disabled") == "1"
    if wanted == org.local_login_disabled:
        return redirect(url_for("settings.index"))
    if wanted and not sso_configured():
        flash("Configure single sign-on (OIDC_ISSUER, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET) before turning off "
              "password sign-in.", "error")
        return redirect(url_for("settings.index"))
    if wanted and not _break_glass_admins():
        flash("Mark at least one admin as break-glass on the Users page first, so nobody is locked out if the "
              "identity provider fails.", "error")
        return redirect(url_for("settings.index"))
    org.local_login_disabled = wanted
    record("settings.changed", "sign-in",
           "Password sign-in limited to break-glass admins" if wanted else "Password sign-in allowed for everyone",
           before={"local_login_disabled": not wanted}, after={"local_login_disabled": wanted})
    db.session.commit()
    flash("Sign-in settings saved.", "success")
    return redirect(url_for("settings.index"))


@bp.post("/tokens")
@admin_only
def create_token():
    name = request.form.get("name", "").strip()
    scope = request.form.get("scope", "")
    if not name or len(name) > 100 or scope not in SCOPES:
        flash("Give the token a name (up to 100 characters) and a scope.", "error")
        return _page(422, form={"token_name": name, "scope": scope})
    row, token = ApiToken.issue(name, scope, current_user)
    db.session.add(row)
    record("token.created", f"API token {name}", f"Created with scope {scope}",
           after={"name": name, "scope": scope, "prefix": row.prefix})
    db.session.commit()
    flash(f"API token “{name}” created.", "success")
    return _page(new_token=token)


@bp.post("/tokens/<int:token_id>/revoke")
@admin_only
def revoke_token(token_id: int):
    row = db.session.get(ApiToken, token_id) or abort(404)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record("token.revoked", f"API token {row.name}", "Revoked", before={"revoked": False},
               after={"revoked": True, "prefix": row.prefix})
        db.session.commit()
        flash(f"API token “{row.name}” revoked; requests with it are refused from now on.", "success")
    return redirect(url_for("settings.index"))
