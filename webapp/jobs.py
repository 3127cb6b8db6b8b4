"""RQ entry points that are not part of a sync (the sync's own jobs live in webapp/sync/jobs.py).

Jobs run inside an application context: the embedded thread pushes one, and worker.py runs its
workers inside one.
"""

from __future__ import annotations

import logging

from .extensions import db
from .models._types import utcnow

log = logging.getLogger(__name__)

# Callables run by every cron tick, registered by the features that need one (schedules, month-end
# freeze), so this module does not import them.
TICK_HANDLERS: list = []


def on_cron_tick(func):
    TICK_HANDLERS.append(func)
    return func


def cron_tick() -> list[str]:
    """Runs every minute from the clock process (or the embedded thread)."""
    from .queue import record_tick

    now = utcnow()
    record_tick(now)
    done = []
    for handler in TICK_HANDLERS:
        try:
            handler(now)
            done.append(handler.__name__)
        except Exception:
            db.session.rollback()
            log.exception("cron tick handler %s failed", handler.__name__)
    return done


def ping() -> str:
    """A trivial job: proves the queue and the database are reachable from a worker."""
    db.session.execute(db.text("SELECT 1"))
    return "pong"
