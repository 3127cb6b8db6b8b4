"""An RQ worker process: `python worker.py` (see Procfile; run as many as needed, anywhere).

Jobs run inside the Flask application context. SimpleWorker runs each job in this process instead
of a forked child, so database connections are never shared across a fork; a process killed mid-job
leaves the job in RQ's registries and its work recorded in the database for the next run to finish.
"""

import sys
import threading

from rq import SimpleWorker

from webapp import create_app


def start_sweeper(app) -> None:
    """Take over the companies of dead sync jobs every lease period, so a restarted fleet goes on
    within seconds even before the clock's next minute tick (several workers sweeping is harmless:
    a takeover is a conditional UPDATE)."""
    from webapp.models._types import utcnow
    from webapp.sync.jobs import sweep_stale_runs
    from webapp.sync.leases import lease_seconds

    def sweep_forever() -> None:
        import logging
        import time

        with app.app_context():
            interval = max(1, min(30, lease_seconds()))
            while True:
                try:
                    sweep_stale_runs(utcnow())
                except Exception:  # the database or Redis is away for a moment: the next sweep retries
                    logging.getLogger(__name__).warning("sync sweep failed", exc_info=True)
                finally:
                    from webapp.extensions import db

                    db.session.remove()
                time.sleep(interval)

    threading.Thread(target=sweep_forever, name="seatsync-sweeper", daemon=True).start()


def main(burst: bool = False) -> None:
    app = create_app()
    if app.config["EMBEDDED_QUEUE"]:
        sys.exit("worker.py needs REDIS_URL; without it the web process runs jobs itself (embedded mode).")
    start_sweeper(app)
    with app.app_context():
        worker = SimpleWorker([app.extensions["queue"]], connection=app.extensions["redis"])
        worker.work(burst=burst, with_scheduler=True)


if __name__ == "__main__":
    main(burst="--burst" in sys.argv)
