"""Template filters and globals: times in the organisation's time zone, the navigation."""

from __future__ import annotations

import datetime as dt

from flask import Flask, request
from flask_login import current_user
from markupsafe import Markup

from .sync import state as sync_state
from .sync.money import amount
from .timezones import org_zone

NAV = [
    ("Dashboard", "dashboard.index"),
    ("Companies & seats", "seats.companies"),
    ("Integrations", "integrations.index"),
    ("Sync runs", "runs.index"),
    ("Audit log", "audit.index"),
    ("Settings", "settings.index"),
]


def localtime(value: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return "—"
    return value.astimezone(org_zone()).strftime(fmt)


def month_label(value: dt.date | None) -> str:
    return value.strftime("%b %Y") if value else "—"


def psa_name(kind: str) -> str:
    from .psa_clients import client_class

    return client_class(kind).display_name


# Every status word SeatSync shows and its colour, the same on every page: the sync engine's values
# (run state, company status, line action, read-back) from its state module, the few others here.
TONES: dict[str, tuple[str, ...]] = {
    "ok": ("ok", "connected", "enabled", "active", "saved", "up to date", "unchanged", "sent"),
    "live": ("pending", "retrying"),
    "attention": ("rotation pending", "partial"),
    "error": ("failing", "credentials failing", "paused"),
    "muted": ("not set up", "unverified", "deactivated", "revoked", "skipped", "digest", "digested", "disabled"),
}
TONE_OF = {word: tone for tone, words in TONES.items() for word in words}


def status_word(value: str | None) -> str:
    return sync_state.word(value) if sync_state.is_engine_value(value) else (value or "").replace("_", " ")


def status_tone(value: str | None) -> str:
    if sync_state.is_engine_value(value):
        return sync_state.tone(value)
    return TONE_OF.get((value or "").replace("_", " "), "muted")


def status_badge(value: str | None, label: str | None = None) -> Markup:
    """The badge of a status: its word (or `label`) in its tone's colour."""
    return Markup('<span class="status tone-{}" data-status="{}">{}</span>').format(
        status_tone(value), (value or "").replace("_", " "), label or status_word(value))


def init_templating(app: Flask) -> None:
    app.jinja_env.filters["status"] = status_badge
    app.jinja_env.filters["status_word"] = status_word
    app.jinja_env.filters["status_tone"] = status_tone
    app.jinja_env.filters["localtime"] = localtime
    app.jinja_env.filters["month"] = month_label
    app.jinja_env.filters["psa_name"] = psa_name
    app.jinja_env.filters["money"] = amount
    app.jinja_env.globals["sync_state"] = sync_state

    @app.context_processor
    def navigation():
        items = [(label, endpoint) for label, endpoint in NAV if endpoint in app.view_functions]
        active = (request.endpoint or "").split(".")[0]
        return {"nav_items": items, "nav_active": active, "user": current_user}
