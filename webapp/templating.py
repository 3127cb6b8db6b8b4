"""Template filters and globals: times in the organisation's time zone, the navigation."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from flask import Flask, request
from flask_login import current_user

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


def init_templating(app: Flask) -> None:
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
