"""Billing rules, bundles, decreases from the next period and money (PRODUCT.md §4b), with real worker
processes against the PSA simulator for each PSA."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.fixtures.workers import (
    EB,
    PM,
    adjustments_per_line,
    build_world,
    companies_of,
    held_quantities,
    psa_writes,
    wait_for_run,
)
from webapp.extensions import db
from webapp.models import Company, CompanyMapping, LineResult, Product, ProductMapping, PushIntent, Seat
from webapp.sync.money import run_money
from webapp.sync.plan import billed_month_start, next_period_start
from webapp.sync.state import WRITTEN

pytestmark = pytest.mark.integration

KINDS = ["connectwise", "autotask", "kaseya_bms"]
ADDON = "Password Manager Add-on"  # a second SeatSync product billed on the Password Manager line (a bundle)
# Demo agreements: Acme Dental bills 5 Password Manager Business, Cedar Law Group 7.
SEATS = {
    ("Acme Dental", PM): 9,  # 9 − 2 included + 1 extra = 8
    ("Acme Dental", EB): 2,  # no rule: a new line of 2
    ("Bluebird Logistics", PM): 3,  # bundle: 3 + 2 add-on = 5 − 2 + 1 = 4, raised to the add-on's minimum 6
    ("Cedar Law Group", PM): 2,  # bundle: 2 + 4 add-on = 6 − 2 + 1 = 5, minimum 6 (7 in the PSA: lowered)
}
ADDON_SEATS = {"Bluebird Logistics": 2, "Cedar Law Group": 4}


def add_bundle_and_rules(world) -> None:
    """Password Manager Business: 2 included, +1 (the admin account); the add-on shares its line, minimum 6."""
    pm = db.session.scalar(db.select(ProductMapping).filter_by(product_id=world.products[PM].id))
    pm.included, pm.extra = 2, 1
    addon = Product(name=ADDON)
    db.session.add(addon)
    db.session.flush()
    db.session.add(ProductMapping(integration_id=world.integration.id, product_id=addon.id, minimum=6,
                                  psa_product_id=world.psa_products[PM], psa_product_name=PM))
    since = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for company, count in ADDON_SEATS.items():
        for n in range(count):
            db.session.add(Seat(company_id=world.companies[company].id, product_id=addon.id,
                                user_email=f"addon{n}@{company.split()[0].lower()}.example", active_from=since))
    db.session.commit()


def lines_of(run_id: int) -> dict[tuple[str, str], LineResult]:
    """The run's line results by (company, PSA product id)."""
    rows = db.session.execute(
        db.select(LineResult, Company.name)
        .join(CompanyMapping, CompanyMapping.id == LineResult.company_mapping_id)
        .join(Company, Company.id == CompanyMapping.company_id)
        .where(LineResult.run_id == run_id)).all()
    return {(company, row.psa_product_id): row for row, company in rows}


@pytest.mark.parametrize("kind", KINDS)
def test_rules_and_a_bundle_push_the_ruled_quantity_and_record_the_count_the_rule_and_the_money(
        kind, psa_sim, rq_workers):
    world = build_world(kind, psa_sim, SEATS, companies=companies_of(SEATS))
    add_bundle_and_rules(world)
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    errors = [(r.message, r.hint) for r in db.session.scalars(db.select(LineResult).filter_by(action="error"))]
    assert run.state == "finished" and run.errors == 0, (errors, rq_workers.output()[-3000:])
    assert held_quantities(psa_sim, world) == {
        ("Acme Dental", PM): [8.0], ("Acme Dental", EB): [2.0],
        ("Bluebird Logistics", PM): [6.0],  # one line for the bundle
        ("Cedar Law Group", PM): [6.0],
    }
    pm, eb = world.psa_products[PM], world.psa_products[EB]
    lines = lines_of(run.id)
    acme = lines[("Acme Dental", pm)]
    # The add-on's minimum belongs to the Password Manager line: it holds at Acme Dental too (no add-on seats).
    assert (acme.count, acme.target, acme.rule) == (9, 8, "2 included, +1 extra, minimum 6")
    bundle = lines[("Bluebird Logistics", pm)]
    assert (bundle.count, bundle.target, bundle.rule) == (5, 6, "2 included, +1 extra, minimum 6")
    assert bundle.product_id is None  # a bundle line belongs to no single SeatSync product
    created = lines[("Acme Dental", eb)]
    assert (created.count, created.rule, created.action) == (2, "", "created")
    # A created line is priced at the product's catalog price (read once, before the write).
    assert created.unit_price and created.price_change == pytest.approx(2 * created.unit_price)

    # Money: each updated line at the PSA's unit price and cost; the run adds them up.
    cedar = lines[("Cedar Law Group", pm)]
    assert cedar.unit_price and cedar.unit_cost is not None
    if kind != "kaseya_bms":  # Kaseya BMS cannot read the quantity before a first write: unknown
        assert cedar.price_change == pytest.approx((6 - 7) * cedar.unit_price)
        assert cedar.margin_change == pytest.approx((6 - 7) * (cedar.unit_price - cedar.unit_cost))
        assert acme.price_change == pytest.approx((8 - 5) * acme.unit_price)
    money = run_money(run.id)
    written = [r for r in lines.values() if r.action in WRITTEN]
    (total,) = money.totals.values()
    # Autotask names its internal currency; the other PSAs give none with these reads: no symbol is invented.
    assert total.currency == ("USD" if kind == "autotask" else "") == cedar.currency
    assert total.price == pytest.approx(sum(r.price_change or 0 for r in written))
    assert total.priced + total.unpriced == len(written)

    psa_writes_before = len(psa_writes(psa_sim, kind))
    second = wait_for_run(world.start().id)
    assert second.state == "finished" and second.updated == 0, rq_workers.output()[-3000:]
    assert len(psa_writes(psa_sim, kind)) == psa_writes_before  # the ruled quantities are in sync


def test_a_created_line_is_priced_at_the_psas_price_and_kaseya_prices_later_changes_from_its_own_last_write(
        psa_sim, rq_workers):
    world = build_world("kaseya_bms", psa_sim, {("Bluebird Logistics", EB): 3},
                        companies=["Bluebird Logistics"])
    rq_workers.start(1)
    first = wait_for_run(world.start().id)
    (created,) = [r for r in db.session.scalars(db.select(LineResult).filter_by(run_id=first.id))
                  if r.action in WRITTEN]
    assert created.unit_price and created.price_change == pytest.approx(3 * created.unit_price)
    seat = db.session.scalar(db.select(Seat).limit(1))
    db.session.delete(seat)
    db.session.commit()
    second = wait_for_run(world.start().id)
    (lowered,) = [r for r in db.session.scalars(db.select(LineResult).filter_by(run_id=second.id))
                  if r.action in WRITTEN]
    assert lowered.before is None and lowered.price_change == pytest.approx(-created.unit_price)


# --------------------------------------------------------------------------------------------------
# Decreases from the next billing period
# --------------------------------------------------------------------------------------------------
DATES = {
    ("Acme Dental", PM): 6,  # 5 in the PSA: an increase, billed now
    ("Cedar Law Group", PM): 3,  # 7 in the PSA: a decrease, billed from the next period
}


def periods() -> tuple[dt.date, dt.date]:
    now = billed_month_start(dt.datetime.now(dt.UTC), "UTC")
    return now, next_period_start(now)


def deferred_world(kind, psa_sim, rq_workers):
    options = {"decreases_from": "next_period", **({"keep_history": True} if kind == "connectwise" else {})}
    world = build_world(kind, psa_sim, DATES, companies=companies_of(DATES), **options)
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    assert run.state == "finished" and run.errors == 0, rq_workers.output()[-3000:]
    return world, run


def assert_second_sync_writes_nothing(world, psa_sim, kind) -> None:
    writes = len(psa_writes(psa_sim, kind))
    again = wait_for_run(world.start().id)
    assert again.state == "finished" and again.updated == 0 and again.needs_attention == 0
    assert len(psa_writes(psa_sim, kind)) == writes
    flagged = db.session.scalars(db.select(LineResult).filter_by(run_id=again.id, changed_in_psa=True)).all()
    assert flagged == []  # the scheduled decrease is not mistaken for a hand edit


def test_connectwise_keep_history_cancels_at_the_period_end_and_adds_the_lower_quantity_from_the_next(
        psa_sim, rq_workers):
    world, run = deferred_world("connectwise", psa_sim, rq_workers)
    this, following = periods()
    cedar = world.mappings["Cedar Law Group"].agreement_id
    additions = [a for a in psa_sim.data("connectwise")["additions"].values()
                 if str(a["agreementId"]) == cedar and str(a["product"]["id"]) == world.psa_products[PM]]
    old = next(a for a in additions if a["quantity"] == 7.0)
    new = next(a for a in additions if a["quantity"] == 3.0)
    assert old["cancelledDate"][:10] == (following - dt.timedelta(days=1)).isoformat()
    assert new["effectiveDate"][:10] == following.isoformat()
    acme = world.mappings["Acme Dental"].agreement_id
    raised = [a for a in psa_sim.data("connectwise")["additions"].values()
              if str(a["agreementId"]) == acme and a["quantity"] == 6.0]
    assert [a["effectiveDate"][:10] for a in raised] == [this.isoformat()]  # the increase bills now
    row = lines_of(run.id)[("Cedar Law Group", world.psa_products[PM])]
    assert row.effective_from == following and row.before == 7.0 and row.verification == "verified"
    assert_second_sync_writes_nothing(world, psa_sim, "connectwise")


def test_autotask_posts_the_decrease_for_the_next_period_and_never_twice(psa_sim, rq_workers):
    world, run = deferred_world("autotask", psa_sim, rq_workers)
    this, following = periods()
    posted = [json.loads(r["body"]) for r in psa_writes(psa_sim, "autotask")]
    by_change = {p["unitChange"]: p["effectiveDate"][:10] for p in posted}
    assert by_change == {1: this.isoformat(), -4: following.isoformat()}
    # This period still bills 7 at Cedar; the next bills 3. Acme bills 6 in both.
    assert world.quantities(this)[("Cedar Law Group", PM)] == [7.0]
    assert world.quantities(following)[("Cedar Law Group", PM)] == [3.0]
    assert world.quantities(following)[("Acme Dental", PM)] == [6.0]
    row = lines_of(run.id)[("Cedar Law Group", world.psa_products[PM])]
    assert (row.before, row.target, row.effective_from, row.verification) == (7.0, 3, following, "verified")
    assert_second_sync_writes_nothing(world, psa_sim, "autotask")
    assert all(len(v) == 1 for v in adjustments_per_line(psa_sim).values())  # exactly once


def test_kaseya_bms_posts_the_decrease_with_the_next_periods_effective_date(psa_sim, rq_workers):
    # Kaseya BMS cannot read Units: a decrease is known only against what SeatSync last wrote, so the
    # first sync writes the PSA's own quantities, then the seats change.
    world = build_world("kaseya_bms", psa_sim, {("Acme Dental", PM): 5, ("Cedar Law Group", PM): 7},
                        companies=companies_of(DATES), decreases_from="next_period")
    rq_workers.start(2)
    assert wait_for_run(world.start().id).errors == 0, rq_workers.output()[-3000:]
    cedar_seats = db.session.scalars(db.select(Seat).filter_by(company_id=world.companies["Cedar Law Group"].id)
                                     .order_by(Seat.id).limit(4)).all()
    for seat in cedar_seats:
        db.session.delete(seat)
    db.session.add(Seat(company_id=world.companies["Acme Dental"].id, product_id=world.products[PM].id,
                        user_email="new@acme.example", active_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    db.session.commit()
    psa_sim.clear_log()
    run = wait_for_run(world.start().id)
    assert run.state == "finished" and run.errors == 0, rq_workers.output()[-3000:]
    this, following = periods()
    sent = {}
    for request in psa_writes(psa_sim, "kaseya_bms"):
        for item in json.loads(request["body"]):
            sent[(request["path"], item["Units"])] = item["EffectiveDate"][:10]

    def sent_to(company):
        suffix = f"/{world.mappings[company].agreement_id}/services"
        return {units: day for (path, units), day in sent.items() if path.endswith(suffix)}

    assert sent_to("Cedar Law Group") == {3: following.isoformat()}
    assert sent_to("Acme Dental") == {6: this.isoformat()}
    row = lines_of(run.id)[("Cedar Law Group", world.psa_products[PM])]
    assert row.effective_from == following and row.price_change == pytest.approx(-4 * row.unit_price)
    assert_second_sync_writes_nothing(world, psa_sim, "kaseya_bms")


def test_a_lost_answer_to_an_autotask_decrease_for_the_next_period_is_completed_by_the_next_sync_not_reposted(
        psa_sim, rq_workers):
    world = build_world("autotask", psa_sim, {("Cedar Law Group", PM): 3}, companies=["Cedar Law Group"],
                        decreases_from="next_period")
    # The adjustment reaches Autotask, but its answer is lost (a 500 after it was applied): the line is an error.
    psa_sim.faults(rules=[{"psa": "autotask", "method": "POST", "path_contains": "ContractServiceAdjustments",
                           "kind": "applied", "status": 500}])
    rq_workers.start(1)
    first = wait_for_run(world.start().id)
    assert first.errors == 1, rq_workers.output()[-3000:]
    # The next sync reads both periods, finds the decrease already scheduled, and reports it completed.
    run = wait_for_run(world.start().id)
    assert run.state == "finished" and run.errors == 0, rq_workers.output()[-3000:]
    this, following = periods()
    assert adjustments_per_line(psa_sim) == {
        (int(world.mappings["Cedar Law Group"].agreement_id), int(world.psa_products[PM])): [-4]}
    assert world.quantities(this)[("Cedar Law Group", PM)] == [7.0]
    assert world.quantities(following)[("Cedar Law Group", PM)] == [3.0]
    (row,) = db.session.scalars(db.select(LineResult).filter_by(run_id=run.id)).all()
    assert row.message.startswith("completed") and (row.before, row.after) == (7.0, 3.0)
    assert not db.session.scalar(db.select(db.func.count(PushIntent.id)).filter_by(state="pending"))
    assert_second_sync_writes_nothing(world, psa_sim, "autotask")
