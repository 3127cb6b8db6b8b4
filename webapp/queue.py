"""The job queue: RQ on Redis, or — embedded default — RQ on an in-memory Redis worked by a thread.

With REDIS_URL, web processes only enqueue; `worker.py` processes work the jobs and one `clock`
process (`rq cron webapp.clock`) enqueues the cron tick. Without it, everything runs inside the web
process: a daemon thread works the queue (RQ's SimpleWorker in burst mode, with the scheduler for
delayed retries) and fires the cron tick, all on one shared fakeredis server.
"""

from __future__ import annotations

import logging
import threading
import time

import fakeredis
from flask import Flask, current_app
from redis import Redis
from rq import Queue, SimpleWorker
from rq.cron import CronScheduler
from rq.timeouts import TimerDeathPenalty

log = logging.getLogger(__name__)

CRON_TICK_SECONDS = 60


def init_queue(app: Flask) -> None:
    if app.config["REDIS_URL"]:
        connection = Redis.from_url(app.config["REDIS_URL"])
    else:
        connection = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    app.extensions["redis"] = connection
    app.extensions["queue"] = Queue(app.config["QUEUE_NAME"], connection=connection)
    app.extensions["embedded_worker"] = None
    # Embedded mode: the serving process starts the worker thread (and with it the cron tick) on
    # its first request, so one-shot CLI commands such as `flask db upgrade` never start one.
    app.before_request(lambda: ensure_embedded_worker(app))


def get_redis() -> Redis:
    return current_app.extensions["redis"]


def get_queue() -> Queue:
    return current_app.extensions["queue"]


def register_cron(cron: CronScheduler, queue_name: str) -> None:
    """The periodic jobs, shared by the clock process and the embedded thread."""
    from .jobs import cron_tick

    cron.register(cron_tick, queue_name=queue_name, interval=CRON_TICK_SECONDS, name="cron_tick")


def last_tick_key() -> str:
    return f"seatsync:{current_app.config['QUEUE_NAME']}:last-tick"


def record_tick(now) -> None:
    """The clock's heartbeat, read by /readyz: when a cron tick last ran."""
    get_redis().set(last_tick_key(), f"{now.timestamp():.3f}", ex=7 * 24 * 3600)


def enqueue(func, *args, job_id: str | None = None, **kwargs):
    """Enqueue a job; in embedded mode make sure the worker thread is running."""
    ensure_embedded_worker(current_app._get_current_object())
    return get_queue().enqueue(func, *args, job_id=job_id, **kwargs)


class ThreadWorker(SimpleWorker):
    """A SimpleWorker that can run outside the main thread (signals belong to the main thread)."""

    death_penalty_class = TimerDeathPenalty  # job timeouts by a timer thread, not SIGALRM

    def _install_signal_handlers(self) -> None:
        pass


class EmbeddedWorker(threading.Thread):
    def __init__(self, app: Flask):
        super().__init__(name="seatsync-embedded-worker", daemon=True)
        self.app = app
        self.stopping = threading.Event()

    def run(self) -> None:
        connection = self.app.extensions["redis"]
        queue = self.app.extensions["queue"]
        cron = CronScheduler(connection=connection, name="embedded")
        register_cron(cron, queue.name)
        cron.register_birth()  # so the operator's queue view lists it, as it lists the clock process
        worker = ThreadWorker([queue], connection=connection)
        while not self.stopping.is_set():
            try:
                with self.app.app_context():
                    if cron.enqueue_jobs():
                        cron.save()
                    cron.heartbeat()
                    worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            except Exception:  # the thread must outlive a bad job or a database hiccup
                log.exception("embedded worker loop failed; continuing")
                self.stopping.wait(5)
            self.stopping.wait(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the job or cron tick in progress, and wait for it: its transaction must not outlive
        the caller's (a test's TRUNCATE deadlocked against a tick still reading)."""
        self.stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


_start_lock = threading.Lock()


def ensure_embedded_worker(app: Flask) -> None:
    if not app.config["EMBEDDED_QUEUE"] or not app.config["EMBEDDED_WORKER"]:
        return
    if app.extensions.get("embedded_worker") is not None:
        return
    with _start_lock:
        if app.extensions.get("embedded_worker") is None:
            worker = EmbeddedWorker(app)
            worker.start()
            app.extensions["embedded_worker"] = worker


def wait_for_job(job, timeout: float = 10.0):
    """Block until a job ends (CLI commands and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.get_status(refresh=True)
        if status in ("finished", "failed", "stopped", "canceled"):
            return status
        time.sleep(0.05)
    return job.get_status(refresh=True)
