"""Issue 16: a transient failure of a PSA's sign-in lookup (Autotask zone lookup, Kaseya BMS and HaloPSA tokens,
ConnectWise companyinfo) never stops a run or marks the credentials failing — one Sync now still ends right.

Real worker processes, Redis, the database and the simulator. The lookups are cached in Redis once a client
has made them, so each test drops the cached answers (and the last-known copies) where the lookup should
happen again: before the run (at its start) or after its first companies are done (in its middle).
"""

from __future__ import annotations

import time

import pytest

from tests.fixtures.workers import build_world, wait_for_run
from webapp.extensions import db
from webapp.models import CompanyMapping, Integration, LineResult

pytestmark = pytest.mark.integration

PM, EB = "Password Manager Business", "Endpoint Backup"
SEATS = {("Acme Dental", PM): 5, ("Acme Dental", EB): 2, ("Bluebird Logistics", PM): 4, ("Cedar Law Group", PM): 3,
         ("Delta Architects", EB): 1, ("Evergreen Clinic", PM): 6, ("Granite Accounting", EB): 3}
LOOKUP = {  # the sign-in lookup of each PSA, and the Redis keys that cache its answer
    "autotask": ("zoneInformation", "seatsync:autotask-zone:*"),
    "kaseya_bms": ("/v2/security/authenticate", "seatsync:kaseya_bms:token:*"),
    "connectwise": ("/login/companyinfo/", "seatsync:cw-codebase:*"),
    "halopsa": ("/auth/token", "seatsync:halopsa:token:*"),
}
FAULTS = {
    "500": {"status": 500, "kind": "empty"},
    "timeout": {"status": 500, "kind": "timeout", "delay_ms": 3000},  # past the workers' 1 s read timeout
}


def forget_lookups(redis, kind: str) -> None:
    for key in redis.scan_iter(LOOKUP[kind][1]):
        redis.delete(key)


def fail_next_lookup(sim, kind: str, fault: str, latency_ms: float = 0) -> None:
    rule = {"psa": kind, "path_contains": LOOKUP[kind][0], "times": 1, **FAULTS[fault]}
    sim.faults(latency_ms=latency_ms, rules=[rule])


def assert_ended_right(world, run, kind: str, workers) -> None:
    errors = [(r.message, r.hint) for r in db.session.scalars(db.select(LineResult).filter_by(run_id=run.id,
                                                                                              action="error"))]
    assert run.state == "finished" and run.errors == 0, (errors, run.message, workers.output()[-3000:])
    assert run.in_sync + run.updated + run.needs_attention + run.errors == run.done == run.total
    integration = db.session.get(Integration, world.integration.id)
    db.session.refresh(integration)
    assert integration.credentials_status == "ok"
    assert not db.session.scalar(db.select(db.func.count(CompanyMapping.id))
                                 .where(CompanyMapping.status.in_(("queued", "syncing"))))


def quantities(world, sim, kind: str) -> dict:
    from tests.integration.test_sync_engine import bms_units

    sim.faults()
    got = bms_units(sim, world) if kind == "kaseya_bms" else world.quantities()
    return {k: v for k, v in got.items() if k in SEATS}


@pytest.mark.parametrize("fault", ["500", "timeout"])
@pytest.mark.parametrize("kind", ["autotask", "kaseya_bms", "connectwise", "halopsa"])
def test_one_failed_lookup_at_the_start_of_a_run_is_retried_and_the_run_ends_right(kind, fault, psa_sim, rq_workers,
                                                                                     sync_redis):
    world = build_world(kind, psa_sim, SEATS)
    forget_lookups(sync_redis, kind)
    fail_next_lookup(psa_sim, kind, fault)
    rq_workers.start(2, PSA_READ_TIMEOUT_SECONDS="1")
    run = wait_for_run(world.start().id, timeout=90)
    assert_ended_right(world, run, kind, rq_workers)
    assert any(r.get("fault") for r in psa_sim.requests(kind)), "the lookup did not fail: the test proves nothing"
    assert quantities(world, psa_sim, kind) == {k: [float(v)] for k, v in SEATS.items()}


@pytest.mark.parametrize("kind", ["autotask", "kaseya_bms", "connectwise", "halopsa"])
def test_one_failed_lookup_in_the_middle_of_a_run_is_retried_and_the_run_ends_right(kind, psa_sim, rq_workers,
                                                                                      sync_redis):
    world = build_world(kind, psa_sim, SEATS)
    psa_sim.faults(latency_ms=150)
    rq_workers.start(2, PSA_READ_TIMEOUT_SECONDS="1", SEATSYNC_SYNC_BATCH="1")
    run = world.start()
    deadline = time.monotonic() + 60
    while True:  # once the first companies are done, the next jobs' clients must look the tenant up again
        db.session.rollback()
        if db.session.get(type(run), run.id).done >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    forget_lookups(sync_redis, kind)
    fail_next_lookup(psa_sim, kind, "500", latency_ms=150)
    run = wait_for_run(run.id, timeout=90)
    assert_ended_right(world, run, kind, rq_workers)
    assert quantities(world, psa_sim, kind) == {k: [float(v)] for k, v in SEATS.items()}


@pytest.mark.parametrize("kind", ["autotask", "kaseya_bms", "connectwise", "halopsa"])
def test_a_real_refusal_at_the_lookup_still_marks_the_credentials_failing(kind, psa_sim, rq_workers, sync_redis):
    from psa_sim.seed import SIM_CREDENTIALS
    from tests.fixtures.integrations import HOST_FIELD
    from webapp.connections import save_credentials

    world = build_world(kind, psa_sim, SEATS)
    wrong = {"autotask": {"username": "nobody@seatsync.test"}, "kaseya_bms": {"password": "wrong"},
             "connectwise": {"company_id": "nosuchcompany"}, "halopsa": {"client_secret": "wrong"}}[kind]
    values = {**SIM_CREDENTIALS[kind], **wrong}
    if HOST_FIELD[kind]:
        values[HOST_FIELD[kind]] = psa_sim.host
    save_credentials(world.integration, values)
    db.session.commit()
    forget_lookups(sync_redis, kind)
    rq_workers.start(1)
    run = wait_for_run(world.start().id, timeout=60)
    integration = db.session.get(Integration, world.integration.id)
    db.session.refresh(integration)
    assert run.state == "failed" and "credentials" in run.message, rq_workers.output()[-2000:]
    assert integration.credentials_status == "failing"
    assert run.in_sync + run.updated + run.needs_attention + run.errors == run.done == run.total
