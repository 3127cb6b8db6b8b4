"""Settings › Notifications (admins only): alert channels, their events, a test button and delivery log.

A channel's address (webhook URL, e-mail recipients) and signing secret are encrypted at rest and
never rendered back: pages show a hint (host and last characters). A generic webhook's `whsec_`
secret is shown once, in the answer to the request that created it.
"""

from __future__ import annotations

import base64
import secrets
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from .. import crypto
from ..alerts import CHANNEL_KINDS, EVENTS, SEVERITIES
from ..alerts.jobs import send_test
from ..alerts.send import check_url
from ..audit import record
from ..extensions import db
from ..inputs import page_number
from ..models import Channel, Delivery
from ..psa_clients import HostRefused
from ..responses import htmx_answer
from ..security import admin_only

bp = Blueprint("notifications", __name__, url_prefix="/settings/notifications")

PER_PAGE = 50
MAX_RECIPIENTS = 20


class FormError(ValueError):
    pass


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _hint(kind: str, target: dict) -> str:
    if kind == "email":
        return ", ".join(target["to"])[:255]
    parts = urlsplit(target["url"])
    return f"{parts.scheme}://{parts.netloc}/…{target['url'][-4:]}"[:255]


def _target(kind: str, form) -> dict:
    """The channel's address from the form: recipients, or a URL that passes the host rules."""
    if kind == "email":
        typed = [a.strip() for a in form.get("recipients", "").replace(";", ",").split(",") if a.strip()]
        if not typed or len(typed) > MAX_RECIPIENTS:
            raise FormError(f"Give 1 to {MAX_RECIPIENTS} e-mail addresses, separated by commas.")
        try:
            return {"to": [validate_email(a, check_deliverability=False).normalized for a in typed]}
        except EmailNotValidError as error:
            raise FormError(f"An address is not valid: {error}") from None
    url = form.get("url", "").strip()
    if not url or len(url) > 2000:
        raise FormError("Paste the webhook URL (up to 2,000 characters).")
    try:
        check_url(url)
    except HostRefused as error:
        raise FormError(f"{error.psa_message} {error.hint}") from None
    return {"url": url}


def _choices(form) -> dict:
    events = [e for e in form.getlist("events") if e in EVENTS]
    severity = form.get("min_severity", "warning")
    if severity not in SEVERITIES:
        raise FormError("Choose a minimum severity.")
    if not events:
        raise FormError("Choose at least one event.")
    name = form.get("name", "").strip()
    if not name or len(name) > 100:
        raise FormError("Give the channel a name (up to 100 characters).")
    return {"name": name, "events": events, "min_severity": severity, "digest": form.get("digest") == "on"}


def _described(channel: Channel) -> dict:
    """What the audit log keeps of a channel: never its address or secret."""
    return {"name": channel.name, "kind": channel.kind, "events": list(channel.events or []),
            "min_severity": channel.min_severity, "digest": channel.digest, "enabled": channel.enabled}


def _index(status: int = 200, form=None, new_secret_for: Channel | None = None, secret: str | None = None):
    channels = db.session.scalars(db.select(Channel).order_by(Channel.name, Channel.id)).all()
    return render_template("notifications/index.html", channels=channels, kinds=CHANNEL_KINDS, events=EVENTS,
                           severities=SEVERITIES, form=form or {}, created=new_secret_for, secret=secret), status


@bp.get("")
@admin_only
def index():
    return _index()


@bp.post("")
@admin_only
def create():
    kind = request.form.get("kind", "")
    try:
        if kind not in CHANNEL_KINDS:
            raise FormError("Choose the kind of channel.")
        choices, target = _choices(request.form), _target(kind, request.form)
    except FormError as error:
        flash(str(error), "error")
        return _index(422, form={**request.form.to_dict(), "events": request.form.getlist("events"), "url": ""})
    secret = new_secret() if kind == "webhook" else None
    if secret:
        target["secret"] = secret
    channel = Channel(kind=kind, target_encrypted=crypto.encrypt_json(target), target_hint=_hint(kind, target),
                      **choices)
    db.session.add(channel)
    record("alert_channel.created", f"alert channel {channel.name}", f"{CHANNEL_KINDS[kind]} channel added",
           after=_described(channel))
    db.session.commit()
    flash(f"Channel “{channel.name}” added.", "success")
    if secret:
        return _index(new_secret_for=channel, secret=secret)
    return redirect(url_for("notifications.channel", channel_id=channel.id))


def _log(channel: Channel, page: int = 1) -> dict:
    deliveries = db.session.scalars(db.select(Delivery).where(Delivery.channel_id == channel.id)
                                    .order_by(Delivery.id.desc()).offset((page - 1) * PER_PAGE)
                                    .limit(PER_PAGE + 1)).all()
    return {"channel": channel, "deliveries": deliveries[:PER_PAGE], "page": page,
            "has_next": len(deliveries) > PER_PAGE}


def _channel_page(channel: Channel, status: int = 200, page: int = 1):
    return render_template("notifications/channel.html", kinds=CHANNEL_KINDS, events=EVENTS, severities=SEVERITIES,
                           **_log(channel, page)), status


def _get(channel_id: int) -> Channel:
    return db.session.get(Channel, channel_id) or abort(404)


@bp.get("/<int:channel_id>")
@admin_only
def channel(channel_id: int):
    return _channel_page(_get(channel_id), page=request.args.get("page", 1, type=page_number))


@bp.post("/<int:channel_id>")
@admin_only
def update(channel_id: int):
    channel = _get(channel_id)
    before = _described(channel)
    try:
        choices = _choices(request.form)
        target = _target(channel.kind, request.form) if request.form.get("url") or request.form.get(
            "recipients") else None
    except FormError as error:
        flash(str(error), "error")
        return _channel_page(channel, 422)
    for name, value in choices.items():
        setattr(channel, name, value)
    channel.enabled = request.form.get("enabled") == "on"
    changed = [k for k, v in _described(channel).items() if before[k] != v]
    if target is not None:
        kept = crypto.decrypt_json(channel.target_encrypted)
        if "secret" in kept:
            target["secret"] = kept["secret"]
        channel.target_encrypted, channel.target_hint = crypto.encrypt_json(target), _hint(channel.kind, target)
        changed.append("address")
    if changed:
        record("alert_channel.changed", f"alert channel {channel.name}", "Changed " + ", ".join(changed),
               before=before, after=_described(channel))
    db.session.commit()
    flash("Channel saved." if changed else "Nothing changed.", "success")
    return redirect(url_for("notifications.channel", channel_id=channel.id))


@bp.post("/<int:channel_id>/test")
@admin_only
def test(channel_id: int):
    channel = _get(channel_id)
    delivery = send_test(channel)
    ok = delivery.state == "sent"
    message = "Test message sent." if ok else f"The test message failed: {delivery.error}"
    record("alert_channel.tested", f"alert channel {channel.name}", message[:500])
    db.session.commit()
    return htmx_answer(lambda: render_template("notifications/_log.html", tested=delivery, **_log(channel)),
                       fallback=url_for("notifications.channel", channel_id=channel.id),
                       message=message, category="success" if ok else "error")


@bp.post("/<int:channel_id>/delete")
@admin_only
def delete(channel_id: int):
    channel = _get(channel_id)
    record("alert_channel.deleted", f"alert channel {channel.name}", "Deleted", before=_described(channel))
    # Its log goes with it (explicitly: SQLite, the embedded mode, does not enforce the foreign key's cascade).
    db.session.execute(db.update(Delivery).where(Delivery.channel_id == channel.id).values(digest_id=None))
    db.session.execute(db.delete(Delivery).where(Delivery.channel_id == channel.id))
    db.session.delete(channel)
    db.session.commit()
    flash(f"Channel “{channel.name}” deleted.", "success")
    return redirect(url_for("notifications.index"))
