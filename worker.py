"""An RQ worker process: `python worker.py` (see Procfile; run as many as needed, anywhere).

Jobs run inside the Flask application context. SimpleWorker runs each job in this process instead
of a forked child, so database connections are never shared across a fork; a process killed mid-job
leaves the job in RQ's registries and its work recorded in the database for the next run to finish.
"""

import sys

from rq import SimpleWorker

from webapp import create_app


def main(burst: bool = False) -> None:
    app = create_app()
    if app.config["EMBEDDED_QUEUE"]:
        sys.exit("worker.py needs REDIS_URL; without it the web process runs jobs itself (embedded mode).")
    with app.app_context():
        worker = SimpleWorker([app.extensions["queue"]], connection=app.extensions["redis"])
        worker.work(burst=burst, with_scheduler=True)


if __name__ == "__main__":
    main(burst="--burst" in sys.argv)
