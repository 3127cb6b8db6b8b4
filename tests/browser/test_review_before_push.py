"""Review before push in Chromium, for each PSA: the app served with real RQ worker processes behind it
and the PSA simulator in front, so every click goes the way it goes in production."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.fixtures.browser import screenshot
from tests.fixtures.workers import (
    EB,
    PM,
    REVIEW_SEATS,
    build_world,
    companies_of,
    held_quantities,
    psa_writes,
)
from webapp.extensions import db
from webapp.models import CompanyMapping
from webapp.psa_clients import client_class
from webapp.sync import BUSY

pytestmark = pytest.mark.browser

SYNC_TIMEOUT = 30_000  # a worker process may take seconds to load on a busy machine
WRITTEN = re.compile("^(updated|adjusted|line created)$")


def company_section(page, company: str):
    """A company's block of lines on the run page."""
    return page.locator("section.run-company").filter(has=page.get_by_role("heading", name=company, exact=True))


def line_values(table, product: str) -> dict[str, str]:
    """{column heading: cell text} of a product's line in a table of lines."""
    row = table.locator("tbody tr").filter(has_text=product).first
    return dict(zip(table.locator("thead th").all_inner_texts(), row.locator("th, td").all_inner_texts(),
                    strict=True))


def action_of(page, company: str, product: str):
    """The action badge of a company's line on the run page (the first badge in its row)."""
    return company_section(page, company).locator("tbody tr").filter(has_text=product).locator(".status").first


def tick_and_press(page, company: str, product: str, button: str) -> None:
    company_section(page, company).get_by_role("checkbox", name=f"Select {product}").check()
    page.locator("#review-form").get_by_role("button", name=button, exact=True).click()


def assert_before_after(values: dict[str, str], *, before: str, after: str, readable: bool) -> None:
    """What the PSA held before the write and after it; a PSA that cannot read quantities back shows no before
    (and, on the run page, says the write could not be read back)."""
    before_column = next(name for name in values if "before" in name.lower())
    after_column = next(name for name in values if "after" in name.lower())
    assert values[after_column] == after, values
    if readable:
        assert values[before_column] == before, values
    else:
        assert values[before_column] in ("—", "unknown"), values
    if "Read back" in values:
        assert values["Read back"] == ("verified" if readable else "not verifiable"), values


@pytest.mark.parametrize("kind", ["connectwise", "autotask", "kaseya_bms", "halopsa"])
def test_billing_admin_reviews_a_sync_and_the_psa_holds_exactly_the_approved_changes(
        kind, psa_sim, rq_workers, live_server_with_workers, page):
    server = live_server_with_workers
    world = build_world(kind, psa_sim, REVIEW_SEATS, companies=companies_of(REVIEW_SEATS))
    readable = client_class(kind).quantity_readable
    untouched = held_quantities(psa_sim, world)
    rq_workers.start(1)
    server.login(page, "billing")

    # Switch on "Review before push" in the integration's options.
    page.goto(f"{server.url}/integrations/{kind}/")
    options = page.locator("#options")
    options.get_by_label("Review before push").check()
    options.get_by_role("button", name="Save options").click()
    expect(options.get_by_role("status")).to_have_text("Options saved.")
    expect(options.get_by_label("Review before push")).to_be_checked()

    # Sync now only plans: the run waits for approval and nothing reaches the PSA.
    progress = page.locator("#sync-progress")
    progress.get_by_role("button", name="Sync now").click()
    expect(progress).to_contain_text("Last sync waiting for approval", timeout=SYNC_TIMEOUT)
    progress.get_by_role("link", name="sync runs").click()
    runs = page.locator("table.runs tbody tr")
    expect(runs).to_have_count(1)
    expect(runs.locator(".status")).to_have_text("waiting for approval")
    runs.get_by_role("link").first.click()
    expect(page.locator(".run-state")).to_have_text("waiting for approval")
    changes = {("Acme Dental", EB), ("Bluebird Logistics", PM), ("Cedar Law Group", PM)}
    # Kaseya BMS cannot read Units, so it also asks to write the line already at its target.
    planned = changes if readable else changes | {("Acme Dental", PM)}
    expect(page.locator("#review-form").get_by_role("status")).to_contain_text(
        f"{len(planned)} planned change(s) wait for approval")
    for company, product in planned:
        expect(action_of(page, company, product)).to_have_text("waiting for approval")
    words = page.locator("body").inner_text()
    assert "awaiting" not in words and "running" not in words, words  # nothing says it is still at work
    assert psa_writes(psa_sim, kind) == []
    assert held_quantities(psa_sim, world) == untouched
    screenshot(page, f"review-waiting-{kind}")

    # Approve one line: only that value lands in the PSA, and the page shows it written, before and after.
    tick_and_press(page, "Cedar Law Group", PM, "Approve ticked")
    expect(page.get_by_role("status").filter(has_text="approved")).to_contain_text("1 change(s) approved")
    expect(action_of(page, "Cedar Law Group", PM)).to_have_text(WRITTEN, timeout=SYNC_TIMEOUT)
    expect(page.locator(".run-state")).to_have_text("waiting for approval")
    assert_before_after(line_values(company_section(page, "Cedar Law Group").locator("table"), PM),
                        before="7", after="3", readable=readable)
    assert held_quantities(psa_sim, world) == {**untouched, ("Cedar Law Group", PM): [3.0]}
    screenshot(page, f"review-approved-one-{kind}")

    # Dismiss one: nothing is sent for it.
    writes = len(psa_writes(psa_sim, kind))
    tick_and_press(page, "Bluebird Logistics", PM, "Dismiss ticked")
    expect(page.get_by_role("status").filter(has_text="dismissed")).to_contain_text("1 change(s) dismissed")
    expect(action_of(page, "Bluebird Logistics", PM)).to_have_text("dismissed")
    expect(page.locator(".run-state")).to_have_text("waiting for approval")
    assert len(psa_writes(psa_sim, kind)) == writes

    # Approve all the rest: the run finishes with exactly the approved values in the PSA.
    page.locator("#review-form").get_by_role("button", name="Approve all", exact=True).click()
    expect(page.locator(".run-state")).to_have_text("finished", timeout=SYNC_TIMEOUT)
    expect(page.locator("#review-form")).to_have_count(0)
    expect(action_of(page, "Acme Dental", EB)).to_have_text(WRITTEN)
    expect(action_of(page, "Bluebird Logistics", PM)).to_have_text("dismissed")
    assert_before_after(line_values(company_section(page, "Acme Dental").locator("table"), EB),
                        before="—", after="2", readable=readable)
    assert held_quantities(psa_sim, world) == {("Acme Dental", PM): [5.0], ("Acme Dental", EB): [2.0],
                                               ("Cedar Law Group", PM): [3.0]}  # Bluebird never got its line
    screenshot(page, f"review-finished-{kind}")

    # No company stays busy, and each tells what happened to it.
    page.goto(f"{server.url}/integrations/{kind}/companies")
    statuses = {"Acme Dental": "updated", "Bluebird Logistics": "needs attention", "Cedar Law Group": "updated"}
    for company, status in statuses.items():
        expect(page.get_by_role("row", name=company).locator("td .status")).to_have_text(status)
    db.session.rollback()
    assert db.session.scalars(db.select(CompanyMapping.status).where(CompanyMapping.status.in_(BUSY))).all() == []

    # The company's Details page shows the PSA's value before and after the push.
    page.get_by_role("link", name="Details Cedar Law Group").click()
    expect(page.get_by_role("heading", name="Details: Cedar Law Group")).to_be_visible()
    run_section = page.locator("section").filter(has=page.get_by_role("heading", name=re.compile("^Run of"))).first
    expect(run_section.get_by_role("heading")).to_contain_text("finished")
    assert_before_after(line_values(run_section.locator("table"), PM), before="7", after="3", readable=readable)
    screenshot(page, f"review-details-{kind}")
