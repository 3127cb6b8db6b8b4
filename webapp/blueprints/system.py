"""The operator's view of the job queue (admins): workers, queued / running / failed / delayed jobs, the
cron schedulers with their next run, and a retry for failed jobs. Read with RQ's own registry APIs,
on the same Redis the app enqueues to (the in-memory one in embedded mode).
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from rq import Worker
from rq.cron import CronScheduler
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from ..audit import record
from ..extensions import db
from ..queue import ensure_embedded_worker, get_queue, get_redis
from ..security import admin_only

bp = Blueprint("system", __name__, url_prefix="/system")

LIST_LIMIT = 50


@bp.app_template_filter("rq_time")
def rq_time(value: dt.datetime | None) -> dt.datetime | None:
    """RQ keeps some times naive (in UTC); make them aware so |localtime converts them right."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _jobs(ids: list[str]) -> list[Job]:
    return [job for job in Job.fetch_many(ids[:LIST_LIMIT], connection=get_redis()) if job is not None]


def error_line(text: str | None) -> str:
    """The line of a traceback that names the error. It follows the last (indented) frame; lines below
    it such as SQLAlchemy's "[SQL: …]" and "(Background on this error at: sqlalche.me…)" say nothing
    about the error, and the frames are for the logs, not the page."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=-1)
    message = lines[last_frame + 1:] or lines[-1:]
    return message[0][:300] if message else ""


def _error_of(job: Job) -> str:
    result = job.latest_result()
    return error_line(result.exc_string if result else "")


def queue_overview() -> dict:
    queue = get_queue()
    connection = get_redis()
    started = StartedJobRegistry(queue=queue)
    failed = FailedJobRegistry(queue=queue)
    scheduled = ScheduledJobRegistry(queue=queue)
    failed_jobs = _jobs(failed.get_job_ids(desc=True))
    return {
        "queue": queue.name,
        "embedded": current_app.config["EMBEDDED_QUEUE"],
        "workers": sorted(Worker.all(connection=connection), key=lambda w: w.name),
        "counts": {"queued": queue.count, "started": started.count, "failed": failed.count,
                   "delayed": scheduled.count},
        "queued": _jobs(queue.get_job_ids(0, LIST_LIMIT)),
        "started": _jobs(started.get_job_ids()),
        "failed": [(job, _error_of(job)) for job in failed_jobs],
        "delayed": [(job, scheduled.get_scheduled_time(job)) for job in _jobs(scheduled.get_job_ids())],
        "schedulers": sorted(CronScheduler.all(connection), key=lambda s: s.name),
    }


@bp.get("/queue")
@admin_only
def queue():
    return render_template("system/queue.html", **queue_overview())


@bp.post("/queue/failed/<job_id>/retry")
@admin_only
def retry(job_id: str):
    registry = FailedJobRegistry(queue=get_queue())
    if job_id not in registry:
        abort(404)
    try:
        job = registry.requeue(job_id)
    except NoSuchJobError:
        abort(404)
    ensure_embedded_worker(current_app._get_current_object())
    record("job.retried", job.func_name or job_id, f"Failed job {job_id} put back on the queue",
           after={"job_id": job_id})
    db.session.commit()
    flash(f"Job {job_id} is queued again.", "success")
    return redirect(url_for("system.queue"))
