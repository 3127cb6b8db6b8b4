"""The sync engine's harder paths with real worker processes against the PSA simulator: review before
push, workers killed mid-write, a database error after a write, a 401 in a busy multi-batch run."""

from __future__ import annotations

import time

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from sqlalchemy import text

from tests.fixtures.app import PASSWORD, CsrfClient
from tests.fixtures.workers import (
    EB,
    PM,
    REVIEW_SEATS,
    adjustments_per_line,
    build_world,
    companies_of,
    held_quantities,
    psa_writes,
    wait_for_run,
    wait_until_in_flight,
)
from webapp.cli import create_user
from webapp.extensions import db
from webapp.models import Company, CompanyMapping, LineResult, Product, PushIntent, SyncRun
from webapp.sync import BUSY, LineAction, RunState, Verification, review_changes
from webapp.sync.state import WRITTEN

pytestmark = pytest.mark.integration

def run_lines(run_id: int) -> dict[tuple[str, str], list[LineResult]]:
    """The run's line results by (company, product name)."""
    rows = db.session.execute(
        db.select(LineResult, Company.name, Product.name)
        .join(CompanyMapping, CompanyMapping.id == LineResult.company_mapping_id)
        .join(Company, Company.id == CompanyMapping.company_id)
        .outerjoin(Product, Product.id == LineResult.product_id)
        .where(LineResult.run_id == run_id)).all()
    out: dict[tuple[str, str], list[LineResult]] = {}
    for row, company, product in rows:
        out.setdefault((company, product or ""), []).append(row)
    return out


def assert_run_settled(run: SyncRun, companies: int) -> None:
    """Every company counted once in one outcome, and none left busy."""
    assert run.in_sync + run.updated + run.needs_attention + run.errors == run.done == run.total == companies, (
        run.in_sync, run.updated, run.needs_attention, run.errors, run.done, run.total)
    busy = db.session.scalars(db.select(CompanyMapping.status).where(CompanyMapping.status.in_(BUSY))).all()
    assert busy == []


def assert_no_pending_intent() -> None:
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))


def decide(run_id: int, *, approve: bool, lines: list[LineResult] | None = None) -> SyncRun:
    """Approve or dismiss as the run page does, then wait until the workers are done with it."""
    run = db.session.get(SyncRun, run_id)
    assert review_changes(run, approve=approve, line_ids=None if lines is None else [r.id for r in lines]) > 0
    return wait_for_run(run_id)


def assert_written_once(row: LineResult, *, before: float | None, target: float, readable: bool) -> None:
    assert row.action in WRITTEN and row.target == target and row.after == target, (row.action, row.after)
    if readable:
        assert row.before == before and row.verification == Verification.VERIFIED
    else:
        assert row.verification == Verification.NOT_VERIFIABLE


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "kaseya_bms"])
def test_review_before_push_writes_exactly_the_approved_changes_and_finishes_the_run(kind, psa_sim, rq_workers):
    world = build_world(kind, psa_sim, REVIEW_SEATS, companies=companies_of(REVIEW_SEATS), review_before_push=True)
    readable = kind != "kaseya_bms"
    untouched = held_quantities(psa_sim, world)
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    assert run.state == RunState.AWAITING_REVIEW, rq_workers.output()[-3000:]
    assert psa_writes(psa_sim, kind) == []  # a review pass only reads
    planned = {key: rows for key, rows in run_lines(run.id).items()
               if any(r.action == LineAction.PLANNED for r in rows)}
    changes = {("Acme Dental", EB), ("Bluebird Logistics", PM), ("Cedar Law Group", PM)}
    # Kaseya BMS cannot read Units, so it also asks to write the line already at its target.
    assert set(planned) == (changes if readable else changes | {("Acme Dental", PM)})

    # Approve one line: only that line is written.
    cedar = decide(run.id, approve=True, lines=planned[("Cedar Law Group", PM)])
    assert cedar.state == RunState.AWAITING_REVIEW, rq_workers.output()[-3000:]
    assert held_quantities(psa_sim, world) == {**untouched, ("Cedar Law Group", PM): [3.0]}

    # Dismiss one: nothing is sent; the run still waits for Acme Dental's changes.
    assert decide(run.id, approve=False, lines=planned[("Bluebird Logistics", PM)]).state == RunState.AWAITING_REVIEW
    writes_so_far = len(psa_writes(psa_sim, kind))

    # Approve all the rest.
    run = decide(run.id, approve=True)
    assert run.state == RunState.FINISHED, rq_workers.output()[-3000:]
    assert len(psa_writes(psa_sim, kind)) > writes_so_far
    assert held_quantities(psa_sim, world) == {("Acme Dental", PM): [5.0], ("Acme Dental", EB): [2.0],
                                               ("Cedar Law Group", PM): [3.0]}  # Bluebird never got its line

    lines = run_lines(run.id)
    assert all(len(rows) == 1 for rows in lines.values()), lines  # approved rows replaced, not doubled
    assert_written_once(lines[("Cedar Law Group", PM)][0], before=7.0, target=3.0, readable=readable)
    assert_written_once(lines[("Acme Dental", EB)][0], before=None, target=2.0, readable=readable)
    assert lines[("Bluebird Logistics", PM)][0].action == LineAction.DISMISSED
    assert run.updated == 2 and run.needs_attention == 1  # the dismissed change leaves the PSA different
    assert_run_settled(run, companies=3)
    assert_no_pending_intent()


def test_a_change_approved_while_its_company_syncs_in_another_run_is_pushed_once_that_run_lets_it_go(
        psa_sim, rq_workers):
    world = build_world("connectwise", psa_sim, REVIEW_SEATS, companies=companies_of(REVIEW_SEATS),
                        review_before_push=True)
    (worker,) = rq_workers.start(1)
    run = wait_for_run(world.start().id)
    assert run.state == RunState.AWAITING_REVIEW, rq_workers.output()[-3000:]
    rq_workers.kill(worker)  # so the row sync below still holds Cedar Law Group when the admin approves
    row_sync = world.start(trigger="row", company_mapping=world.mappings["Cedar Law Group"])

    review_changes(db.session.get(SyncRun, run.id), approve=True)
    rq_workers.start(1)
    assert wait_for_run(row_sync.id).state == RunState.AWAITING_REVIEW  # a review pass of its own
    run = wait_for_run(run.id, timeout=30, states=(RunState.FINISHED, RunState.FAILED))
    assert run.state == RunState.FINISHED, rq_workers.output()[-3000:]
    assert world.quantities() == {("Acme Dental", PM): [5.0], ("Acme Dental", EB): [2.0],
                                  ("Bluebird Logistics", PM): [4.0], ("Cedar Law Group", PM): [3.0]}
    lines = run_lines(run.id)
    assert_written_once(lines[("Cedar Law Group", PM)][0], before=7.0, target=3.0, readable=True)
    assert run.updated == 3
    assert_run_settled(run, companies=3)


def test_a_worker_killed_right_after_an_approved_autotask_adjustment_was_sent_is_finished_by_the_next_worker(
        psa_sim, rq_workers):
    seats = {("Cedar Law Group", PM): 3, ("Evergreen Clinic", PM): 2}  # 7 and 9 in the PSA: bare deltas
    world = build_world("autotask", psa_sim, seats, companies=companies_of(seats), review_before_push=True)
    (victim,) = rq_workers.start(1)
    run = wait_for_run(world.start().id)
    assert run.state == RunState.AWAITING_REVIEW, rq_workers.output()[-3000:]

    psa_sim.faults(latency_ms=400)  # the simulator applies a request after its latency, even if the caller died
    review_changes(run, approve=True)
    wait_until_in_flight(psa_sim, "adjustment")
    rq_workers.kill(victim)  # the delta is on its way: Autotask applies it, SeatSync never hears back
    time.sleep(0.6)
    psa_sim.faults(latency_ms=0)
    assert adjustments_per_line(psa_sim), "the adjustment in flight should have reached Autotask"
    db.session.rollback()
    assert db.session.get(SyncRun, run.id).state == RunState.RUNNING

    rq_workers.start(1)  # its sweeper takes the dead job's companies over once their lease expires
    run = wait_for_run(run.id, states=(RunState.FINISHED, RunState.FAILED))
    assert run.state == RunState.FINISHED and run.errors == 0, rq_workers.output()[-3000:]
    assert world.quantities() == {k: [float(v)] for k, v in seats.items()}
    assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values()), adjustments_per_line(psa_sim)
    lines = run_lines(run.id)
    for key, before in ((("Cedar Law Group", PM), 7.0), (("Evergreen Clinic", PM), 9.0)):
        assert len(lines[key]) == 1, lines[key]
        assert_written_once(lines[key][0], before=before, target=float(seats[key]), readable=True)
    assert any(r.message.startswith("completed") for rows in lines.values() for r in rows)
    assert_run_settled(run, companies=2)
    assert_no_pending_intent()


@pytest.fixture
def line_results_fail_once(sync_app):
    """A real database error: PostgreSQL refuses the first written line result (a sequence, which a
    rolled-back transaction does not undo, makes it fail exactly once)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the injected error needs PostgreSQL: a rolled-back SQLite transaction keeps no trace")
    written = ", ".join(f"'{action}'" for action in WRITTEN)
    statements = [
        "CREATE SEQUENCE test_line_results_failures",
        """CREATE FUNCTION test_fail_first_written_line() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF nextval('test_line_results_failures') = 1 THEN
               RAISE EXCEPTION 'injected failure: recording a written line';
             END IF;
             RETURN NEW;
           END $$""",
        f"""CREATE TRIGGER test_fail_first_written_line BEFORE INSERT ON line_results
            FOR EACH ROW WHEN (NEW.action IN ({written})) EXECUTE FUNCTION test_fail_first_written_line()""",
    ]
    for statement in statements:
        db.session.execute(text(statement))
    db.session.commit()

    def failures() -> int:
        db.session.rollback()
        return db.session.scalar(text("SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                                      "FROM test_line_results_failures"))

    yield failures
    db.session.rollback()
    db.session.execute(text("DROP TRIGGER IF EXISTS test_fail_first_written_line ON line_results"))
    db.session.execute(text("DROP FUNCTION IF EXISTS test_fail_first_written_line()"))
    db.session.execute(text("DROP SEQUENCE IF EXISTS test_line_results_failures"))
    db.session.commit()


def test_a_database_error_while_recording_a_write_still_ends_the_run_with_the_write_recorded_once(
        psa_sim, rq_workers, line_results_fail_once, sync_app):
    seats = {("Bluebird Logistics", PM): 4, ("Cedar Law Group", PM): 3, ("Evergreen Clinic", PM): 2}
    world = build_world("autotask", psa_sim, seats, companies=companies_of(seats))
    rq_workers.start(1)
    run = wait_for_run(world.start().id, timeout=60, states=(RunState.FINISHED, RunState.FAILED))
    assert line_results_fail_once() >= 2, "the injected error never fired"
    assert "injected failure" in rq_workers.output()
    assert run.state == RunState.FINISHED and run.errors == 0, rq_workers.output()[-3000:]
    assert world.quantities() == {k: [float(v)] for k, v in seats.items()}
    # One adjustment per line (Autotask creates a missing line from its first adjustment).
    assert sorted(len(v) for v in adjustments_per_line(psa_sim).values()) == [1, 1, 1], adjustments_per_line(psa_sim)
    lines = run_lines(run.id)
    for key, target in seats.items():
        assert len(lines[key]) == 1, lines[key]
        row = lines[key][0]
        assert row.action in WRITTEN and row.after == target and row.verification == Verification.VERIFIED
    # The write whose recording failed reached the PSA: the next attempt reports it as completed.
    assert any(r.message.startswith("completed") for rows in lines.values() for r in rows)
    assert_run_settled(run, companies=3)
    assert_no_pending_intent()

    # The crashed job stays in the Queue view's failed list; "Retry" there runs it again, and it must
    # push nothing: its companies were handed on and finished.
    writes = len(psa_writes(psa_sim, "autotask"))
    (failed,) = FailedJobRegistry(queue=sync_app.extensions["queue"]).get_job_ids()
    sync_app.test_client_class = CsrfClient
    client = sync_app.test_client()
    create_user("ops@msp.example", "admin", PASSWORD)
    db.session.commit()
    assert client.post("/login", data={"email": "ops@msp.example", "password": PASSWORD}).status_code == 302
    assert client.post(f"/system/queue/failed/{failed}/retry").status_code == 302
    job = Job.fetch(failed, connection=sync_app.extensions["redis"])
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) != JobStatus.FINISHED:
        assert time.monotonic() < deadline, (job.get_status(), rq_workers.output()[-3000:])
        time.sleep(0.1)
    assert len(psa_writes(psa_sim, "autotask")) == writes
    assert world.quantities() == {k: [float(v)] for k, v in seats.items()}
    db.session.refresh(run)
    assert run.state == RunState.FINISHED and len(run_lines(run.id)) == len(lines)
    assert_run_settled(run, companies=3)


def test_a_401_in_the_middle_of_a_busy_multi_batch_run_stops_it_without_a_deadlock(psa_sim, rq_workers):
    from psa_sim.seed import DEMO_COMPANIES

    seats = {(name, PM): 1 + i for i, name in enumerate(DEMO_COMPANIES)}
    world = build_world("connectwise", psa_sim, seats)
    psa_sim.faults(latency_ms=150)
    rq_workers.start(3, SEATSYNC_SYNC_BATCH="2")
    run = world.start()
    deadline = time.monotonic() + 30
    while not psa_writes(psa_sim, "connectwise"):  # the run is under way on several workers
        assert time.monotonic() < deadline, rq_workers.output()[-3000:]
        time.sleep(0.02)
    psa_sim.faults(latency_ms=150, rules=[{"psa": "connectwise", "status": 401, "times": -1}])  # key revoked

    run = wait_for_run(run.id, timeout=60, states=(RunState.FINISHED, RunState.FAILED))
    output = rq_workers.output()
    assert "deadlock" not in output.lower(), output[-3000:]
    assert run.state == RunState.FAILED and "credentials" in run.message, (run.state, run.message)
    db.session.refresh(world.integration)
    assert world.integration.credentials_status == "failing"
    assert 0 < run.errors < run.total  # companies pushed before the 401 keep their outcome
    assert_run_settled(run, companies=len(DEMO_COMPANIES))
    hints = set(db.session.scalars(db.select(LineResult.hint).filter_by(run_id=run.id)))
    assert any("re-enter" in h.lower() for h in hints), hints


def test_a_new_worker_after_every_worker_was_killed_writes_within_ten_seconds_and_completes_the_run(
        psa_sim, rq_workers):
    from psa_sim.seed import DEMO_COMPANIES

    seats = {(name, PM): 1 + i for i, name in enumerate(DEMO_COMPANIES)}  # each line changes
    world = build_world("connectwise", psa_sim, seats)
    psa_sim.faults(latency_ms=300)
    fleet = rq_workers.start(2, SEATSYNC_SYNC_BATCH="2")
    run = world.start()
    # ConnectWise reads and writes agreement lines on one endpoint, three requests at a time: the
    # machine dies with all three of them (and their concurrency slots) in flight.
    wait_until_in_flight(psa_sim, "finance/agreements/additions", at_least=3)
    for worker in fleet:
        rq_workers.kill(worker)
    time.sleep(0.5)  # the requests in flight land before the new worker starts
    db.session.rollback()
    assert db.session.get(SyncRun, run.id).state == RunState.RUNNING
    writes_before = len(psa_writes(psa_sim, "connectwise"))

    started = time.time()
    (worker,) = rq_workers.start(1, SEATSYNC_SYNC_BATCH="2")
    # Counted from when the worker listens: loading Python and the app takes from 1 s to 10 s on a
    # busy test machine, which says nothing about the engine.
    ready = rq_workers.wait_listening(worker)
    deadline = time.monotonic() + 30
    while len(psa_writes(psa_sim, "connectwise")) == writes_before:
        assert time.monotonic() < deadline, "the new worker wrote nothing within 30 s\n" + rq_workers.output()[-3000:]
        time.sleep(0.05)
    first_write = min(r["at"] for r in psa_writes(psa_sim, "connectwise")[writes_before:])
    assert first_write - ready < 10, (f"the new worker wrote {first_write - ready:.1f}s after it was ready\n"
                                      + rq_workers.output()[-4000:])
    print(f"new worker: ready {ready - started:.1f}s after its start, first write {first_write - ready:.1f}s later")

    psa_sim.faults(latency_ms=0)
    run = wait_for_run(run.id, timeout=60, states=(RunState.FINISHED, RunState.FAILED))
    assert run.state == RunState.FINISHED and run.errors == 0, rq_workers.output()[-3000:]
    assert world.quantities() == {k: [float(v)] for k, v in seats.items()}
    assert all(len(rows) == 1 for rows in run_lines(run.id).values())
    assert_run_settled(run, companies=len(DEMO_COMPANIES))
    assert_no_pending_intent()
