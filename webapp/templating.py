"""Template filters and globals: times in the organisation's time zone, the navigation."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from flask import Flask, request
from flask_login import current_user
from markupsafe import Markup

NAV = [
    ("Dashboard", "dashboard.index"),
    ("Companies & seats", "seats.companies"),
    ("Integrations", "integrations.index"),
    ("Sync runs", "runs.index"),
    ("Audit log", "audit.index"),
    ("Settings", "settings.index"),
]


def org_zone() -> ZoneInfo:
    from .models import Organisation

    try:
        return ZoneInfo(Organisation.get().timezone)
    except Exception:
        return ZoneInfo("UTC")


def localtime(value: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return "—"
    return value.astimezone(org_zone()).strftime(fmt)


def month_label(value: dt.date | None) -> str:
    return value.strftime("%b %Y") if value else "—"


def psa_name(kind: str) -> str:
    from .psa_clients import client_class

    return client_class(kind).display_name


# Every status word SeatSync shows (company mapping status, run state, line action, credential and
# account states) and its colour, the same on every page. Stored values stay as they are (e.g.
# "needs_attention" on a line, "needs attention" on a mapping); templates only call `status_badge`,
# so the sync engine's state module can later supply these words in one place.
TONES: dict[str, tuple[str, ...]] = {
    "ok": ("in sync", "updated", "ok", "finished", "connected", "enabled", "active", "saved", "up to date",
           "created", "replaced", "adjusted", "approved", "unchanged"),
    "live": ("queued", "syncing", "running", "pending"),
    "attention": ("needs attention", "awaiting review", "planned", "rotation pending", "partial"),
    "error": ("error", "failing", "failed", "credentials failing"),
    "muted": ("none", "excluded", "disabled", "never synced", "not set up", "unverified", "dismissed",
              "deactivated", "revoked", "cancelled", "skipped"),
}
TONE_OF = {word: tone for tone, words in TONES.items() for word in words}
# Stored values whose word for people differs (the sync engine's own words: webapp/sync/state.py).
WORDS = {"none": "no change", "awaiting review": "waiting for approval", "planned": "waiting for approval",
         "approved": "approved, pushing", "not verifiable": "not verifiable", "mismatch": "PSA differs"}


def status_word(value: str | None) -> str:
    word = (value or "").replace("_", " ")
    return WORDS.get(word, word)


def status_tone(value: str | None) -> str:
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
    from .sync import state as sync_state  # the sync engine's words and colours, one place for every page

    app.jinja_env.filters["run_words"] = sync_state.run_words
    app.jinja_env.filters["line_words"] = sync_state.line_words
    app.jinja_env.filters["verification_words"] = sync_state.verification_words
    app.jinja_env.filters["tone"] = sync_state.tone
    app.jinja_env.globals["sync_state"] = sync_state

    @app.context_processor
    def navigation():
        items = [(label, endpoint) for label, endpoint in NAV if endpoint in app.view_functions]
        active = (request.endpoint or "").split(".")[0]
        return {"nav_items": items, "nav_active": active, "user": current_user}
