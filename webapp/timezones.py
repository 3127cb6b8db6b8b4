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
    """Read once per request: a page shows dozens of times (each row's Last Sync), and the
    Organisation row was re-read from the database for each (the company mapping page went from 60 to
    125 ms). A setting saved in a request redirects, so the next request reads it afresh."""
    from flask import has_request_context, request

    from .models import Organisation

    if not has_request_context():
        return zone_named(Organisation.get().timezone)
    if "seatsync.org_zone" not in request.environ:  # the request's own, not `g` (an app context may span requests)
        request.environ["seatsync.org_zone"] = zone_named(Organisation.get().timezone)
    return request.environ["seatsync.org_zone"]
