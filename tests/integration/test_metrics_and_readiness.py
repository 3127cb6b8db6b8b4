"""/metrics after a real sync (workers, Redis, the simulator) carries the domain series with the right values;
/readyz says ready with a worker and a recent clock tick, and not ready when Redis cannot be reached."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.app import app_environ
from tests.fixtures.workers import EB, PM, build_world, wait_for_run
from webapp import create_app
from webapp.extensions import db
from webapp.jobs import cron_tick
from webapp.models import CompanyMapping, LineResult
from webapp.psa_clients.http import PSA_REQUESTS_KEY
from webapp.queue import enqueue, get_redis, wait_for_job
from webapp.sync.state import NEEDING_ATTENTION, WRITTEN

pytestmark = pytest.mark.integration

TOKEN = "metrics-test-token-0123456789"
SEATS = {("Acme Dental", EB): 2, ("Bluebird Logistics", PM): 4, ("Cedar Law Group", PM): 3}


@pytest.fixture
def sync_environ(sync_environ):
    return {**sync_environ, "METRICS_TOKEN": TOKEN}


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_metrics_after_a_sync_show_runs_psa_requests_lines_and_attention_with_the_right_values(psa_sim, rq_workers,
                                                                                                 sync_app):
    world = build_world("connectwise", psa_sim, SEATS)
    psa_sim.clear_log()  # setting up went partly through clients without Redis; count the sync's requests
    get_redis().delete(PSA_REQUESTS_KEY)
    psa_sim.faults(rules=[{"psa": "connectwise", "method": "POST", "path_contains": "additions", "status": 400,
                           "times": -1}])
    rq_workers.start(1)
    run = wait_for_run(world.start().id, timeout=60)
    assert run.state == "finished" and run.errors > 0

    client = sync_app.test_client()
    assert client.get("/healthz").status_code == 200
    metrics = scrape(client)
    assert metrics[("seatsync_sync_runs_total", (("outcome", "errors"), ("psa", "connectwise")))] == 1
    # Every request the simulator answered, counted by the process that sent it, summed in Redis.
    answered: dict[str, int] = {}
    for request in psa_sim.requests("connectwise"):
        answered[str(request["status"])] = answered.get(str(request["status"]), 0) + 1
    counted = {dict(labels)["status"]: value for (name, labels), value in metrics.items()
               if name == "seatsync_psa_requests_total" and dict(labels)["psa"] == "connectwise"}
    assert counted == answered and answered["400"] >= 2
    written = db.session.scalar(db.select(db.func.count(LineResult.id)).where(LineResult.action.in_(WRITTEN)))
    verified = db.session.scalar(db.select(db.func.count(LineResult.id)).filter_by(verification="verified"))
    assert written > 0 and verified == written
    assert metrics[("seatsync_sync_lines_total", (("psa", "connectwise"), ("result", "written")))] == written
    assert metrics[("seatsync_sync_lines_total", (("psa", "connectwise"), ("result", "verified")))] == verified
    assert metrics[("seatsync_sync_lines_total", (("psa", "connectwise"), ("result", "mismatch")))] == 0
    needing = db.session.scalar(db.select(db.func.count(CompanyMapping.id)).where(
        CompanyMapping.status.in_(NEEDING_ATTENTION)))
    assert needing == run.errors + run.needs_attention > 0
    assert metrics[("seatsync_companies_needing_attention", (("psa", "connectwise"),))] == needing
    assert 0 <= metrics[("seatsync_seconds_since_last_successful_sync", (("psa", "connectwise"),))] < 120
    assert metrics[("seatsync_workers", ())] == 1
    assert ("seatsync_queue_jobs", (("state", "failed"),)) in metrics
    healthz = (("endpoint", "/healthz"), ("method", "GET"), ("status", "200"))
    assert metrics[("seatsync_http_requests_total", healthz)] >= 1


def test_metrics_need_the_bearer_token(sync_app):
    client = sync_app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


def test_readyz_is_ready_with_a_worker_and_a_clock_tick_and_not_ready_when_redis_is_unreachable(
        rq_workers, sync_app, migrated_database, tmp_path):
    client = sync_app.test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.json["workers"] == {"ok": False, "seen": 0}
    rq_workers.start(1)
    assert wait_for_job(enqueue(cron_tick), timeout=60) == "finished", rq_workers.output()[-2000:]
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "ready" and answer.json["workers"]["seen"] == 1
    assert 0 <= answer.json["clock"]["last_tick_age_seconds"] < 60

    with socket.socket() as probe:  # a port nothing listens on: Redis is unreachable
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    away = create_app(environ=app_environ(migrated_database, str(tmp_path / "away"),
                                          REDIS_URL=f"redis://127.0.0.1:{closed}/0"), overrides={"TESTING": True})
    with away.app_context():
        answer = away.test_client().get("/readyz")
        assert answer.status_code == 503
        assert answer.json["status"] == "not ready" and answer.json["database"] == {"ok": True}
        assert answer.json["redis"] == {"ok": False, "error": "ConnectionError"}
        assert away.test_client().get("/healthz").status_code == 503  # the liveness check says so too
        db.session.remove()
