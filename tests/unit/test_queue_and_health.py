from redis import Redis

from webapp.jobs import ping
from webapp.queue import enqueue, ensure_embedded_worker, wait_for_job


def test_the_embedded_queue_runs_a_job_in_the_web_process(app):
    app.config["EMBEDDED_WORKER"] = True
    ensure_embedded_worker(app)
    try:
        job = enqueue(ping)
        assert str(wait_for_job(job, timeout=15).value) == "finished"
        assert job.return_value() == "pong"
    finally:
        app.extensions["embedded_worker"].stop()


def test_healthz_reports_database_and_queue(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "queue": "ok"}


def test_healthz_says_which_part_is_down(app, client):
    app.extensions["redis"] = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["database"] == "ok" and response.json["queue"].startswith("error")
