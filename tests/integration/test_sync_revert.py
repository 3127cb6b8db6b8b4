"""Reverting a run, and products billed on an override agreement, with real workers against the simulator."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.fixtures.workers import (
    EB,
    PM,
    adjustments_per_line,
    build_world,
    companies_of,
    held_quantities,
    psa_writes,
    set_by_hand,
    wait_for_run,
    wait_until_in_flight,
)
from webapp.extensions import db
from webapp.models import AgreementOverride, AuditEvent, LineResult, PushIntent, Seat, SyncRun
from webapp.sync import LineAction, RunState, SyncUnavailable
from webapp.sync.plan import billed_month_start
from webapp.sync.revert import start_revert
from webapp.sync.state import WRITTEN

pytestmark = pytest.mark.integration

# Demo agreements: Acme Dental bills 5 Password Manager Business, Cedar Law Group 7, Evergreen Clinic 9.
SEATS = {
    ("Acme Dental", PM): 5,  # as in the PSA: not written, so not reverted
    ("Acme Dental", EB): 2,  # created by the sync: the revert sets it to 0
    ("Cedar Law Group", PM): 3,  # 7 → 3, reverted to 7
    ("Evergreen Clinic", PM): 2,  # 9 → 2, reverted to 9
}


def revert(run: SyncRun, **kwargs) -> SyncRun:
    return wait_for_run(start_revert(db.session.get(SyncRun, run.id), user=None, **kwargs).id,
                        states=(RunState.FINISHED, RunState.FAILED))


def lines_of(run_id: int) -> list[LineResult]:
    return list(db.session.scalars(db.select(LineResult).where(LineResult.run_id == run_id)))


def add_seats(world, company: str, product: str, count: int) -> None:
    since = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for n in range(count):
        db.session.add(Seat(company_id=world.companies[company].id, product_id=world.products[product].id,
                            user_email=f"later{n}@{company.split()[0].lower()}.example", active_from=since))
    db.session.commit()


def finished(run: SyncRun, rq_workers) -> SyncRun:
    run = wait_for_run(run.id, states=(RunState.FINISHED, RunState.FAILED))
    assert run.state == RunState.FINISHED and run.errors == 0, rq_workers.output()[-3000:]
    return run


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "kaseya_bms"])
def test_a_revert_puts_back_every_before_quantity_once_and_a_second_revert_writes_nothing(kind, psa_sim, rq_workers):
    companies = [*companies_of(SEATS), "Bluebird Logistics"]
    world = build_world(kind, psa_sim, SEATS, companies=companies)
    seeded = {**held_quantities(psa_sim, world), ("Acme Dental", EB): [0.0]}
    rq_workers.start(2)
    first = finished(world.start(), rq_workers)
    after_first = held_quantities(psa_sim, world)
    assert after_first == {k: [float(v)] for k, v in SEATS.items()}
    add_seats(world, "Cedar Law Group", PM, 2)  # 3 → 5
    add_seats(world, "Bluebird Logistics", PM, 4)  # a line the second run creates
    second = finished(world.start(), rq_workers)
    assert held_quantities(psa_sim, world) == {**after_first, ("Cedar Law Group", PM): [5.0],
                                               ("Bluebird Logistics", PM): [4.0]}

    undo = revert(second)
    assert undo.state == RunState.FINISHED and undo.errors == 0, rq_workers.output()[-3000:]
    assert undo.trigger == "revert" and undo.reverts_run_id == second.id
    assert held_quantities(psa_sim, world) == {**after_first, ("Bluebird Logistics", PM): [0.0]}
    rows = {(r.agreement_id, r.psa_product_id): r for r in lines_of(undo.id)}
    written = [r for r in lines_of(second.id) if r.action in WRITTEN]
    assert len(rows) == len(written) >= 2
    created = next(r for r in rows.values() if r.target == 0)
    assert created.action in WRITTEN and "created by the reverted run" in created.message
    assert db.session.scalar(db.select(db.func.count(AuditEvent.id)).filter_by(kind="sync.revert")) == 1

    psa_sim.clear_log()
    again = revert(second)  # every line already holds what the revert puts back
    assert again.state == RunState.FINISHED and again.updated == 0, rq_workers.output()[-3000:]
    assert psa_writes(psa_sim, kind) == []

    oldest = revert(first)  # the lines hold what the first run left: nothing changed since
    assert oldest.state == RunState.FINISHED and oldest.errors == 0, rq_workers.output()[-3000:]
    held = held_quantities(psa_sim, world)
    if kind == "kaseya_bms":  # Units cannot be read: quantities SeatSync never wrote are unknown, not guessed
        assert held[("Acme Dental", EB)] == [0.0]
        unknown = [r for r in lines_of(oldest.id) if r.action == LineAction.NEEDS_ATTENTION]
        assert unknown and all("unknown" in r.message for r in unknown)
    else:
        assert held == {**seeded, ("Bluebird Logistics", PM): [0.0]}
    if kind == "autotask":  # every adjustment compensated exactly once
        assert all(sum(v) == 0 for v in adjustments_per_line(psa_sim).values()), adjustments_per_line(psa_sim)
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))


def test_a_line_changed_in_the_psa_since_the_run_is_not_reverted_until_the_admin_confirms(psa_sim, rq_workers):
    world = build_world("connectwise", psa_sim, SEATS, companies=companies_of(SEATS))
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    assert run.state == RunState.FINISHED, rq_workers.output()[-3000:]
    cedar = world.mappings["Cedar Law Group"].agreement_id
    set_by_hand(world, "Cedar Law Group", PM, 4)

    undo = revert(run)
    assert undo.state == RunState.FINISHED and undo.needs_attention == 1, rq_workers.output()[-3000:]
    (refused,) = [r for r in lines_of(undo.id) if r.action == LineAction.CHANGED_SINCE]
    assert refused.agreement_id == cedar and "changed in the PSA since run" in refused.message
    held = world.quantities()
    assert held[("Cedar Law Group", PM)] == [4.0]  # left as the admin set it
    assert held[("Evergreen Clinic", PM)] == [9.0] and held[("Acme Dental", EB)] == [0.0]

    confirmed = revert(run, mapping_ids=[refused.company_mapping_id], overwrite_changed=True)
    assert confirmed.state == RunState.FINISHED and confirmed.updated == 1, rq_workers.output()[-3000:]
    assert world.quantities()[("Cedar Law Group", PM)] == [7.0]

    # Reverting the revert re-applies what it undid; a run that wrote nothing cannot be reverted.
    redo = revert(confirmed)
    assert redo.state == RunState.FINISHED and world.quantities()[("Cedar Law Group", PM)] == [4.0]
    assert wait_for_run(world.start().id).state == RunState.FINISHED
    quiet = wait_for_run(world.start().id)
    with pytest.raises(SyncUnavailable, match="wrote nothing"):
        start_revert(quiet, user=None)


def test_a_worker_killed_during_an_autotask_revert_leaves_one_compensating_adjustment_per_line(psa_sim, rq_workers):
    seats = {("Cedar Law Group", PM): 3, ("Evergreen Clinic", PM): 2}  # 7 and 9 in the PSA
    world = build_world("autotask", psa_sim, seats, companies=companies_of(seats))
    (victim,) = rq_workers.start(1)
    run = wait_for_run(world.start().id)
    assert run.state == RunState.FINISHED, rq_workers.output()[-3000:]

    psa_sim.faults(latency_ms=400)  # the simulator applies a request after its latency, even if the caller died
    undo = start_revert(run, user=None)
    wait_until_in_flight(psa_sim, "adjustment")
    rq_workers.kill(victim)  # the compensating delta is on its way: Autotask applies it, SeatSync never hears
    time.sleep(0.6)
    psa_sim.faults(latency_ms=0)
    rq_workers.start(1)  # its sweeper takes the dead job's companies over once their lease expires
    undo = wait_for_run(undo.id, states=(RunState.FINISHED, RunState.FAILED))
    assert undo.state == RunState.FINISHED and undo.errors == 0, rq_workers.output()[-3000:]
    assert world.quantities() == {("Cedar Law Group", PM): [7.0], ("Evergreen Clinic", PM): [9.0]}
    adjustments = adjustments_per_line(psa_sim)
    assert sorted(adjustments.values()) == sorted([[3 - 7, 7 - 3], [2 - 9, 9 - 2]]), adjustments
    rows = lines_of(undo.id)
    assert len(rows) == 2 and all(r.action in WRITTEN and r.after == r.target for r in rows), \
        [(r.action, r.after, r.message) for r in rows]
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))


def agreement_quantities(world, sim, agreement_id: str) -> dict[str, list[float]]:
    """{product name: [quantity of each line]} on one agreement (Kaseya BMS: from the simulator's records)."""
    names = {str(v): k for k, v in world.psa_products.items()}
    out: dict[str, list[float]] = {}
    if world.integration.kind == "kaseya_bms":
        for line in sim.data("kaseya_bms")["contract_services"].values():
            if str(line["contractId"]) == str(agreement_id) and str(line["serviceId"]) in names:
                out.setdefault(names[str(line["serviceId"])], []).append(float(line["units"]))
        return out
    on = billed_month_start(dt.datetime.now(dt.UTC), "UTC")
    for line in world.client().read_lines([agreement_id], on)[agreement_id]:
        if line.product_id in names:
            out.setdefault(names[line.product_id], []).append(line.quantity)
    return out


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "kaseya_bms"])
def test_a_product_on_an_override_agreement_is_pushed_there_and_not_to_the_default_one(kind, psa_sim, rq_workers):
    seats = {("Harbor Marine Supply", PM): 3, ("Harbor Marine Supply", EB): 2}
    world = build_world(kind, psa_sim, seats, companies=companies_of(seats))
    mapping = world.mappings["Harbor Marine Supply"]
    (backup,) = [a for a in world.client().list_agreements(mapping.psa_company_id) if a.name.endswith("Backup")]
    db.session.add(AgreementOverride(company_mapping_id=mapping.id, product_id=world.products[EB].id,
                                     agreement_id=backup.id, agreement_name=backup.name))
    db.session.commit()
    default = mapping.agreement_id
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    assert run.state == RunState.FINISHED and run.errors == 0, rq_workers.output()[-3000:]
    assert agreement_quantities(world, psa_sim, default) == {PM: [3.0]}  # no backup line on the default one
    assert agreement_quantities(world, psa_sim, backup.id) == {EB: [2.0]}
    rows = {r.psa_product_id: r for r in lines_of(run.id)}
    assert rows[world.psa_products[EB]].agreement_id == backup.id
    assert rows[world.psa_products[PM]].agreement_id == default

    psa_sim.clear_log()
    second = wait_for_run(world.start().id)
    assert second.state == RunState.FINISHED and second.errors == 0
    if kind != "kaseya_bms":
        assert second.in_sync == 1 and psa_writes(psa_sim, kind) == []  # exactly once: nothing left to write

    undo = revert(run)  # lines on the override agreement are reverted too
    assert undo.state == RunState.FINISHED and undo.errors == 0, rq_workers.output()[-3000:]
    assert agreement_quantities(world, psa_sim, default) == {PM: [0.0]}
    assert agreement_quantities(world, psa_sim, backup.id) == {EB: [0.0]}


def test_a_connectwise_keep_history_revert_bills_the_earlier_quantities_and_deletes_no_addition(psa_sim, rq_workers):
    world = build_world("connectwise", psa_sim, SEATS, companies=companies_of(SEATS), keep_history=True)
    rq_workers.start(2)
    run = finished(world.start(), rq_workers)
    additions = len(psa_sim.data("connectwise")["additions"])
    replaced = [r for r in lines_of(run.id) if r.action == LineAction.REPLACED]
    assert replaced, [(r.action, r.message) for r in lines_of(run.id)]

    undo = revert(run)
    assert undo.state == RunState.FINISHED and undo.errors == 0, rq_workers.output()[-3000:]
    assert world.quantities() == {("Acme Dental", PM): [5.0], ("Acme Dental", EB): [0.0],
                                  ("Cedar Law Group", PM): [7.0], ("Evergreen Clinic", PM): [9.0]}
    assert len(psa_sim.data("connectwise")["additions"]) >= additions  # nothing deleted
    notes = [r.message for r in lines_of(undo.id) if r.psa_product_id == replaced[0].psa_product_id
             and r.agreement_id == replaced[0].agreement_id]
    assert notes and "cancelled one stays in the history" in notes[0]
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))
