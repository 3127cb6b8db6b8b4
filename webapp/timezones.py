"""The organisation's time zone: months, schedules and the times pages show are all in it."""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)
UTC = ZoneInfo("UTC")


def zone_named(name: str | None) -> ZoneInfo:
    """The zone of that name; UTC for none or an unknown one (a bad name must never stop billing)."""
    try:
        return ZoneInfo(name or "UTC")
    except (KeyError, ValueError):
        log.warning("unknown time zone %r; using UTC", name)
        return UTC


def org_zone() -> ZoneInfo:
    from .models import Organisation

    return zone_named(Organisation.get().timezone)
