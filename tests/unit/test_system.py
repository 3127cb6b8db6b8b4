"""The operator's queue view: workers, jobs by state, cron entries with their next run, retrying a failed job."""

import pytest
from rq import Worker
from rq.cron import CronScheduler
from rq.registry import FailedJobRegistry

from webapp.extensions import db
from webapp.jobs import cron_tick
from webapp.models import AuditEvent
from webapp.queue import ThreadWorker, get_queue, get_redis


def explode():
    raise RuntimeError("The PSA said no")


def say_hello():
    return "hello"


def test_the_queue_view_shows_workers_jobs_and_cron_entries(client, login_as):
    login_as("admin")
    queue = get_queue()
    worker = Worker([queue], connection=get_redis(), name="worker-on-box-7")
    worker.register_birth()
    cron = CronScheduler(connection=get_redis(), name="clock-1")
    cron.register(cron_tick, queue_name=queue.name, interval=60, name="cron_tick")
    cron.register_birth()
    cron.enqueue_jobs()  # enqueues the tick once and sets its next run
    cron.save()
    queue.enqueue(say_hello, job_id="waiting-job")
    page = client.get("/system/queue")
    assert page.status_code == 200
    assert "worker-on-box-7" in page.text
    assert "cron_tick" in page.text and "60 s" in page.text
    next_run = cron.get_jobs()[0].next_enqueue_time
    assert next_run.strftime("%Y-%m-%d %H:%M") in page.text
    assert "waiting-job" in page.text and "say_hello" in page.text


def test_a_failed_job_shows_its_error_and_can_be_retried_once_audited(client, login_as):
    login_as("admin")
    queue = get_queue()
    queue.enqueue(explode, job_id="doomed")
    ThreadWorker([queue], connection=get_redis()).work(burst=True, logging_level="ERROR")
    page = client.get("/system/queue")
    assert "doomed" in page.text and "RuntimeError: The PSA said no" in page.text
    assert 'Traceback' not in page.text
    response = client.post("/system/queue/failed/doomed/retry", follow_redirects=True)
    assert "Job doomed is queued again." in response.text
    assert "doomed" not in FailedJobRegistry(queue=queue).get_job_ids()
    assert queue.get_job_ids() == ["doomed"]
    rows = db.session.scalars(db.select(AuditEvent)).all()
    assert [(r.kind, r.after) for r in rows] == [("job.retried", {"job_id": "doomed"})]


def test_retrying_an_unknown_job_is_a_404(client, login_as):
    login_as("admin")
    assert client.post("/system/queue/failed/nope/retry").status_code == 404


@pytest.mark.parametrize("role", ["viewer", "billing"])
def test_only_admins_see_the_queue(client, login_as, role):
    login_as(role)
    assert client.get("/system/queue").status_code == 403


def test_a_failed_database_job_shows_its_error_not_sqlalchemys_background_link():
    from webapp.blueprints.system import error_line

    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/app/webapp/counts.py", line 12, in compute\n'
        "    db.session.execute(query)\n"
        'sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection to server failed\n'
        "[SQL: SELECT 1]\n"
        "(Background on this error at: https://sqlalche.me/e/20/e3q8)\n"
    )
    assert error_line(traceback) == ("sqlalchemy.exc.OperationalError: (psycopg.OperationalError) "
                                     "connection to server failed")
    assert error_line("Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: no") == \
        "RuntimeError: no"
