"""Sync schedules: daily or weekly at a local time in the organisation's time zone, fired by the cron tick.

The schedule lives on the Integration row, so a change in the UI takes effect at the next tick
without restarting anything. Each due slot is claimed with one conditional UPDATE of
`last_scheduled_slot` (only a tick that moves it forward matches), so two clock processes, a
restarted clock or two ticks racing never start the same slot twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select, update

from ..extensions import db
from ..jobs import on_cron_tick
from ..models import Integration
from ..models._types import utcnow
from ..timezones import org_zone

log = logging.getLogger(__name__)

# A slot missed while no clock was running (deploy, outage) still fires if it is this recent; an
# older one is skipped rather than surprising anyone with a sync hours late.
CATCH_UP = dt.timedelta(hours=2)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _at(day: dt.date, time: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The UTC instant of a local wall-clock time. A time skipped by a DST change (02:30 on the
    spring-forward night) resolves to the same offset as before the change, i.e. an hour later on
    the wall clock; a repeated time (fall back) resolves to its first occurrence."""
    local = dt.datetime.combine(day, time.replace(tzinfo=None), tzinfo=zone)
    return local.astimezone(dt.UTC)


def _matches(kind: str, weekday: int, day: dt.date) -> bool:
    return kind == "daily" or (kind == "weekly" and day.weekday() == weekday)


def latest_slot(kind: str, time: dt.time, weekday: int, zone: ZoneInfo, now: dt.datetime) -> dt.datetime | None:
    """The most recent slot at or before `now` (UTC), or None when the schedule is off."""
    if kind not in ("daily", "weekly"):
        return None
    today = now.astimezone(zone).date()
    for back in range(0, 9):
        day = today - dt.timedelta(days=back)
        if _matches(kind, weekday, day):
            slot = _at(day, time, zone)
            if slot <= now:
                return slot
    return None


def next_slot(kind: str, time: dt.time, weekday: int, zone: ZoneInfo, now: dt.datetime) -> dt.datetime | None:
    """The next slot after `now` (UTC), for "Next run" on the integration page."""
    if kind not in ("daily", "weekly"):
        return None
    today = now.astimezone(zone).date()
    for ahead in range(0, 9):
        day = today + dt.timedelta(days=ahead)
        if _matches(kind, weekday, day):
            slot = _at(day, time, zone)
            if slot > now:
                return slot
    return None


def next_run(integration: Integration, now: dt.datetime | None = None) -> dt.datetime | None:
    if not integration.enabled:
        return None
    return next_slot(integration.schedule_kind, integration.schedule_time, integration.schedule_weekday,
                     org_zone(), now or utcnow())


def describe(integration: Integration) -> str:
    """The schedule in words, e.g. "Daily at 02:00" or "Weekly on Monday at 06:30"."""
    time = integration.schedule_time.strftime("%H:%M")
    if integration.schedule_kind == "daily":
        return f"Daily at {time}"
    if integration.schedule_kind == "weekly":
        return f"Weekly on {WEEKDAYS[integration.schedule_weekday % 7]} at {time}"
    return "Off"


def claim_slot(integration_id: int, slot: dt.datetime) -> bool:
    """Move the integration's last slot forward to `slot`; True only for the one caller that did it."""
    result = db.session.execute(
        update(Integration)
        .where(Integration.id == integration_id,
               or_(Integration.last_scheduled_slot.is_(None), Integration.last_scheduled_slot < slot))
        .values(last_scheduled_slot=slot)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


@on_cron_tick
def run_due_schedules(now: dt.datetime) -> list[int]:
    """Start the scheduled sync of every enabled integration whose slot is due. Returns the run ids."""
    from . import start_sync

    zone = org_zone()
    started = []
    integrations = db.session.scalars(
        select(Integration).where(Integration.enabled.is_(True), Integration.schedule_kind.in_(("daily", "weekly")))
    ).all()
    for integration in integrations:
        slot = latest_slot(integration.schedule_kind, integration.schedule_time, integration.schedule_weekday,
                           zone, now)
        if slot is None or now - slot > CATCH_UP:
            continue
        if integration.last_scheduled_slot is not None and integration.last_scheduled_slot >= slot:
            continue
        # The claim commits together with the run (start_sync commits), so a crash in between
        # leaves the slot unclaimed and the next tick starts it.
        if not claim_slot(integration.id, slot):
            db.session.rollback()
            continue
        try:
            run = start_sync(integration, trigger="schedule")
            started.append(run.id)
        except Exception as error:
            db.session.rollback()
            # The slot is spent either way: an unavailable sync is not retried every minute.
            if claim_slot(integration.id, slot):
                db.session.commit()
            log.warning("scheduled sync of %s at %s did not start: %s", integration.kind, slot.isoformat(), error)
    return started
