"""The sync engine with real RQ worker processes, real Redis and the database, against the PSA simulator."""

from __future__ import annotations

import pytest

from tests.fixtures.workers import (
    EB,
    PM,
    adjustments_per_line,
    bms_units,
    build_world,
    companies_of,
    psa_writes,
    wait_for_run,
    wait_until_in_flight,
)
from webapp.extensions import db
from webapp.models import CompanyMapping, LineResult

pytestmark = pytest.mark.integration

# Demo agreements: even-numbered customers already bill Password Manager Business (5, 7, 9, 11).
SEATS = {
    ("Acme Dental", PM): 5,  # already 5 in the PSA: in sync
    ("Acme Dental", EB): 2,  # no line yet: created
    ("Bluebird Logistics", PM): 4,  # no line: created
    ("Cedar Law Group", PM): 3,  # 7 in the PSA: lowered
    ("Delta Architects", EB): 1,
}


def expected():
    return {k: [float(v)] for k, v in SEATS.items()}


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "halopsa"])
def test_a_full_sync_leaves_exactly_the_target_quantities_and_a_second_sync_writes_nothing(kind, psa_sim, rq_workers):
    world = build_world(kind, psa_sim, SEATS)
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    assert run.state == "finished", rq_workers.output()
    quantities = world.quantities()
    got = {k: v for k, v in quantities.items() if k in SEATS}
    assert got == expected()
    # Companies with no seats: lines for mapped products on their agreements are set to zero or left absent.
    assert all(v in ([0.0],) for k, v in quantities.items() if k not in SEATS and k[0] != "Evergreen Clinic"
               and k[0] != "Granite Accounting"), quantities
    assert run.total == len(world.mappings) and run.done == run.total
    errors = [(r.message, r.hint) for r in db.session.scalars(db.select(LineResult).filter_by(action="error"))]
    assert run.errors == 0 and run.updated >= 4, errors

    psa_sim.clear_log()
    second = wait_for_run(world.start().id)
    writes = psa_writes(psa_sim, kind)
    assert second.state == "finished" and second.updated == 0, rq_workers.output()
    assert writes == []
    statuses = set(db.session.scalars(db.select(CompanyMapping.status)))
    assert statuses == {"in sync"}
    assert db.session.scalar(db.select(db.func.count(LineResult.id)).where(LineResult.run_id == second.id,
                                                                            LineResult.action != "none")) == 0


def test_a_kaseya_bms_sync_sets_the_target_units_in_one_write_per_contract_and_a_second_sync_writes_nothing(
        psa_sim, rq_workers):
    world = build_world("kaseya_bms", psa_sim, SEATS)
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    errors = [(r.message, r.hint) for r in db.session.scalars(db.select(LineResult).filter_by(action="error"))]
    assert run.state == "finished" and run.errors == 0, (errors, rq_workers.output()[-3000:])
    units = bms_units(psa_sim, world)
    assert {k: v for k, v in units.items() if k in SEATS} == expected()
    assert all(v == [0.0] for k, v in units.items() if k not in SEATS), units  # billed lines without seats: 0
    posts = [r["path"] for r in psa_writes(psa_sim, "kaseya_bms")]
    assert posts and len(posts) == len(set(posts))  # every changed line of a contract in one request
    assert run.done == run.total == len(world.mappings)

    psa_sim.clear_log()
    second = wait_for_run(world.start().id)
    assert second.state == "finished" and second.updated == 0 and second.errors == 0, rq_workers.output()[-3000:]
    assert psa_writes(psa_sim, "kaseya_bms") == []  # SeatSync last wrote exactly these targets
    assert bms_units(psa_sim, world) == units
    assert set(db.session.scalars(db.select(CompanyMapping.status))) == {"in sync"}


def test_double_sync_now_pushes_each_company_once(psa_sim, rq_workers):
    from webapp.sync import SyncUnavailable

    world = build_world("connectwise", psa_sim, SEATS)
    first = world.start()
    with pytest.raises(SyncUnavailable, match="already running"):
        world.start()
    with pytest.raises(SyncUnavailable, match="already syncing"):
        world.start(trigger="row", company_mapping=world.mappings["Acme Dental"])
    rq_workers.start(2)
    assert wait_for_run(first.id).state == "finished", rq_workers.output()
    posts = [r for r in psa_writes(psa_sim, "connectwise") if r["method"] == "POST"]
    assert len(posts) == 3  # Acme Dental EB, Bluebird PM, Delta EB: created once each
    assert {k: v for k, v in world.quantities().items() if k in SEATS} == expected()


def test_a_row_sync_or_the_schedule_during_a_full_sync_never_double_counts_an_autotask_delta(psa_sim, rq_workers):
    from webapp.sync import SyncUnavailable

    world = build_world("autotask", psa_sim, SEATS)
    run = world.start()
    with pytest.raises(SyncUnavailable, match="already syncing"):
        world.start(trigger="row", company_mapping=world.mappings["Cedar Law Group"])
    with pytest.raises(SyncUnavailable, match="already running"):
        world.start(trigger="schedule")
    rq_workers.start(2)
    assert wait_for_run(run.id).state == "finished", rq_workers.output()
    assert {k: v for k, v in world.quantities().items() if k in SEATS} == expected()
    assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values())
    # Once the run is over, the row sync is available again and writes nothing.
    again = wait_for_run(world.start(trigger="row", company_mapping=world.mappings["Cedar Law Group"]).id)
    assert again.state == "finished" and again.in_sync == 1
    assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values())


def test_a_disabled_integration_sends_no_request_at_all(psa_sim, rq_workers):
    from webapp.sync import SyncUnavailable

    world = build_world("autotask", psa_sim, SEATS)
    run = world.start()  # queued while enabled, then disabled before any worker took it
    world.integration.enabled = False
    db.session.commit()
    with pytest.raises(SyncUnavailable, match="disabled"):
        world.start()
    psa_sim.clear_log()
    rq_workers.start(1)
    run = wait_for_run(run.id)
    assert psa_sim.requests("autotask") == []
    assert set(db.session.scalars(db.select(CompanyMapping.status))) == {"disabled"}


def test_a_401_marks_the_credentials_failing_and_stops_the_run(psa_sim, rq_workers):
    from psa_sim.seed import SIM_CREDENTIALS
    from webapp.connections import save_credentials
    from webapp.sync import SyncUnavailable

    world = build_world("connectwise", psa_sim, SEATS)
    save_credentials(world.integration, {**SIM_CREDENTIALS["connectwise"], "site": psa_sim.host,
                                         "private_key": "revoked"})
    db.session.commit()
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    db.session.refresh(world.integration)
    assert run.state == "failed" and "credentials" in run.message
    assert world.integration.credentials_status == "failing"
    assert run.errors == run.total == len(world.mappings)
    assert psa_writes(psa_sim, "connectwise") == []
    hints = set(db.session.scalars(db.select(LineResult.hint).filter_by(run_id=run.id)))
    assert any("re-enter" in h for h in hints)
    with pytest.raises(SyncUnavailable, match="rejected"):
        world.start()


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "halopsa"])
def test_error_storms_end_with_the_right_quantities(kind, psa_sim, rq_workers):
    world = build_world(kind, psa_sim, SEATS)
    rules = [
        {"psa": kind, "status": 429, "retry_after": 0.2, "times": 3},
        {"psa": kind, "method": "GET", "status": 502, "times": 2},
        {"psa": kind, "method": "PATCH", "status": 503, "times": 2},
    ]
    if kind == "halopsa":
        rules[2] = {"psa": kind, "path_contains": "updatelines", "status": 503, "times": 2}
    if kind == "autotask":
        rules = [
            {"psa": kind, "status": 429, "retry_after": 0.2, "times": 3},
            {"psa": kind, "path_contains": "/query", "status": 503, "times": 2},
            {"psa": kind, "path_contains": "ContractServiceAdjustments", "status": 500, "kind": "thread_limit",
             "times": 3},
        ]
    psa_sim.faults(rules=rules)
    rq_workers.start(2)
    run = wait_for_run(world.start().id, timeout=60)
    assert run.state == "finished" and run.errors == 0, rq_workers.output()[-3000:]
    assert {k: v for k, v in world.quantities().items() if k in SEATS} == expected()
    if kind == "autotask":
        assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values())


def killed_mid_write_then_taken_over(world, psa_sim, rq_workers, path_word: str, start=None):
    """One run (`start()`, default a Sync now) whose only worker is SIGKILLed while a write to `path_word` is
    in flight (the simulator holds it for its latency, then applies it); a new worker takes the companies
    over. Returns the run."""
    import time

    psa_sim.faults(latency_ms=400)  # the sim applies a request after its latency, even if the caller died
    run = (start or world.start)()
    (victim,) = rq_workers.start(1, SEATSYNC_SYNC_BATCH="2")
    wait_until_in_flight(psa_sim, path_word)
    rq_workers.kill(victim)
    time.sleep(0.6)
    psa_sim.faults(latency_ms=0)
    db.session.rollback()
    assert db.session.get(type(run), run.id).state == "running"
    # Its sweeper takes the dead job's companies over once their lease expires (a sweep from the test
    # raced with it, and found nothing left to take when the worker's own sweep came first).
    rq_workers.start(1)
    return wait_for_run(run.id)


def test_a_worker_killed_mid_autotask_run_leaves_work_the_next_worker_finishes_without_double_counting(
        psa_sim, rq_workers):

    from webapp.models import PushIntent

    # Lines that exist already (7, 9 and 11 units), so the first write is a bare delta.
    seats = {("Cedar Law Group", PM): 3, ("Evergreen Clinic", PM): 2, ("Granite Accounting", PM): 12}
    world = build_world("autotask", psa_sim, seats, companies=[name for name, _ in seats])
    # A delta is in flight when the worker dies: the PSA applies it, SeatSync never hears back.
    finished = killed_mid_write_then_taken_over(world, psa_sim, rq_workers, "adjustment")
    assert finished.state == "finished" and finished.errors == 0, rq_workers.output()[-3000:]
    assert finished.done == finished.total == len(world.mappings)
    assert world.quantities() == {k: [float(v)] for k, v in seats.items()}
    assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values()), adjustments_per_line(psa_sim)
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))
    completed = db.session.scalars(db.select(LineResult).where(LineResult.message.like("completed%"))).all()
    # Both companies of the batch may have had their adjustment in flight (writes run in parallel):
    # each reached Autotask once and is reported as completed, none twice.
    assert 1 <= len(completed) <= 2 and {r.action for r in completed} == {"updated"}
    assert len({(r.company_mapping_id, r.psa_product_id) for r in completed}) == len(completed)


@pytest.mark.parametrize("trigger", ["row", "schedule"])
def test_a_worker_killed_during_a_row_sync_or_a_scheduled_run_leaves_work_the_next_worker_finishes_once(
        trigger, psa_sim, rq_workers):
    import datetime as dt

    from webapp.jobs import cron_tick
    from webapp.models import SyncRun
    from webapp.models._types import utcnow

    seats = {("Cedar Law Group", PM): 3, ("Evergreen Clinic", PM): 2, ("Granite Accounting", PM): 12}
    world = build_world("autotask", psa_sim, seats, companies=[name for name, _ in seats])
    held = world.quantities()
    if trigger == "row":
        pushed = {("Granite Accounting", PM): 12}

        def start():
            return world.start(trigger="row", company_mapping=world.mappings["Granite Accounting"])
    else:  # the clock's own tick, one minute after the daily slot (the organisation's zone is UTC)
        pushed = seats
        world.integration.schedule_kind = "daily"
        world.integration.schedule_time = (utcnow() - dt.timedelta(minutes=1)).time().replace(second=0,
                                                                                               microsecond=0)
        db.session.commit()

        def start():
            cron_tick()
            return db.session.scalars(db.select(SyncRun).filter_by(trigger="schedule")).one()
    finished = killed_mid_write_then_taken_over(world, psa_sim, rq_workers, "adjustment", start=start)
    assert finished.trigger == trigger
    assert finished.state == "finished" and finished.errors == 0, rq_workers.output()[-3000:]
    assert finished.done == finished.total == len(pushed)
    assert world.quantities() == {**held, **{k: [float(v)] for k, v in pushed.items()}}
    assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values()), adjustments_per_line(psa_sim)


def test_a_worker_killed_mid_halopsa_write_leaves_work_the_next_worker_finishes_without_duplicate_lines(
        psa_sim, rq_workers):

    from webapp.models import PushIntent

    # One existing line to change and one missing line to add per company: the addition is the write
    # that must never happen twice.
    seats = {("Cedar Law Group", PM): 3, ("Cedar Law Group", EB): 4, ("Evergreen Clinic", PM): 2,
             ("Evergreen Clinic", EB): 5}
    world = build_world("halopsa", psa_sim, seats, companies=companies_of(seats), create_missing_lines=True)
    finished = killed_mid_write_then_taken_over(world, psa_sim, rq_workers, "updatelines")
    assert finished.state == "finished" and finished.errors == 0, rq_workers.output()[-3000:]
    assert finished.done == finished.total == len(world.mappings)
    assert world.quantities() == {k: [float(v)] for k, v in seats.items()}  # one line each: no duplicate
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))


def test_a_halopsa_line_whose_quantity_halo_computes_is_reported_and_left_as_it_is(psa_sim, rq_workers):
    world = build_world("halopsa", psa_sim, SEATS)
    cedar = world.mappings["Cedar Law Group"].agreement_id
    with psa_sim.state.lock:
        (raw,) = psa_sim.state.data["halopsa"]["invoices"][cedar]["lines"]
        raw["recurring_invoice_quantity_type"] = 1  # Halo counts the users itself
    rq_workers.start(1)
    run = wait_for_run(world.start().id)
    assert run.state == "finished" and run.errors == 0, rq_workers.output()[-3000:]
    (result,) = db.session.scalars(db.select(LineResult).filter_by(
        run_id=run.id, company_mapping_id=world.mappings["Cedar Law Group"].id, psa_product_id=world.psa_products[PM]))
    assert (result.action, result.message) == ("needs_attention", "needs attention: quantity managed by HaloPSA")
    assert "fixed quantity" in result.hint
    assert world.quantities()[("Cedar Law Group", PM)] == [7.0]  # untouched
    assert not [w for w in psa_writes(psa_sim, "halopsa") if f'"ihid": {cedar}' in w["body"]]


STORM_SEATS = {**SEATS, ("Evergreen Clinic", PM): 6, ("Granite Accounting", EB): 3, ("Bluebird Logistics", EB): 2}


def storm_rules(kind: str) -> list[dict]:
    """≥ 20 % of requests fail transiently: 5xx at random, every 5th a 429 with Retry-After, and for Autotask
    its thread-limit answers and bare 500s (a 500 with an errors list is Autotask's validation answer)."""
    server_error = {"psa": kind, "rate": 0.2, "status": 503}
    rules = [{"psa": kind, "every": 5, "status": 429, "retry_after": 0.2}, server_error,
             {"psa": kind, "rate": 0.05, "status": 502}]
    if kind == "autotask":
        rules += [{"psa": kind, "rate": 0.05, "status": 500, "kind": "thread_limit"},
                  {"psa": kind, "rate": 0.05, "status": 500, "kind": "empty"}]
    return rules


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "kaseya_bms", "halopsa"])
def test_one_sync_now_in_a_fault_storm_ends_with_every_line_right_and_no_company_in_error(kind, psa_sim, rq_workers):
    world = build_world(kind, psa_sim, STORM_SEATS)
    psa_sim.faults(rules=storm_rules(kind), seed=7)
    rq_workers.start(2)
    run = wait_for_run(world.start().id, timeout=240)
    failed = [(r.message, r.hint) for r in db.session.scalars(db.select(LineResult).filter_by(run_id=run.id,
                                                                                             action="error"))]
    assert run.state == "finished" and run.errors == 0, (failed, rq_workers.output()[-3000:])
    assert run.in_sync + run.updated + run.needs_attention + run.errors == run.done == run.total
    faults = [r for r in psa_sim.requests(kind) if r.get("fault")]
    assert len(faults) >= 0.15 * len(psa_sim.requests(kind)), "the storm was not a storm"
    psa_sim.faults()
    if kind == "kaseya_bms":
        got = {k: v for k, v in bms_units(psa_sim, world).items() if k in STORM_SEATS}
    else:
        got = {k: v for k, v in world.quantities().items() if k in STORM_SEATS}
    assert got == {k: [float(v)] for k, v in STORM_SEATS.items()}
    if kind == "autotask":
        assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values())
    assert not db.session.scalar(db.select(db.func.count(CompanyMapping.id))
                                 .where(CompanyMapping.status.in_(("queued", "syncing"))))


def test_progress_moves_as_each_company_finishes_not_all_at_the_end(psa_sim, rq_workers):
    import time

    from webapp.models import SyncRun

    world = build_world("connectwise", psa_sim, STORM_SEATS)  # eight companies in one batch
    psa_sim.faults(latency_ms=300)
    rq_workers.start(1)
    run = world.start()
    seen, deadline = set(), time.monotonic() + 60
    while time.monotonic() < deadline:
        db.session.rollback()
        current = db.session.get(SyncRun, run.id)
        seen.add(current.done)
        if current.state == "finished":
            break
        time.sleep(0.05)
    assert current.state == "finished", rq_workers.output()[-2000:]
    intermediate = sorted(n for n in seen if 0 < n < current.total)
    assert len(intermediate) >= 2, f"progress jumped: saw {sorted(seen)} of {current.total}"
