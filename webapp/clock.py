"""Configuration of the one `clock` process: `rq cron webapp.clock` (see Procfile).

It only enqueues the cron tick; workers run it. The tick reads the schedules from the database, so
changing a schedule in the UI needs no restart, and a restarted clock process re-enqueues nothing
twice (each schedule slot is claimed in the database, see webapp/sync/schedule.py).
"""

import os

from rq import cron

from .jobs import cron_tick
from .queue import CRON_TICK_SECONDS

cron.register(cron_tick, queue_name=os.environ.get("QUEUE_NAME", "seatsync"), interval=CRON_TICK_SECONDS,
              name="cron_tick")
