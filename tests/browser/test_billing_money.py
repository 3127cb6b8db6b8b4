"""Billing rules and money in Chromium: a billing admin sets a rule, reviews a sync, sees what it does to the
invoice before approving, approves, and sees the money of the run and the rule in Details."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.fixtures.browser import screenshot
from tests.fixtures.workers import EB, PM, REVIEW_SEATS, build_world, companies_of, held_quantities
from webapp.sync.money import amount

pytestmark = pytest.mark.browser

SYNC_TIMEOUT = 30_000


def test_billing_admin_sees_the_money_of_a_sync_before_approving_it(psa_sim, rq_workers, live_server_with_workers,
                                                                     page):
    server = live_server_with_workers
    world = build_world("autotask", psa_sim, REVIEW_SEATS, companies=companies_of(REVIEW_SEATS))
    prices = world.client().product_prices([world.psa_products[PM], world.psa_products[EB]])
    pm, eb = prices[world.psa_products[PM]], prices[world.psa_products[EB]]
    rq_workers.start(1)
    server.login(page, "billing")
    page.goto(f"{server.url}/integrations/autotask/")

    # One seat of Password Manager Business is included in the customers' bundle price.
    products = page.locator("#products")
    products.get_by_label(f"Included for {PM}").fill("1")
    products.get_by_role("button", name="Save").click()
    expect(products.get_by_role("status")).to_have_text("Product mappings saved.")
    expect(page.locator("#products").get_by_label(f"Included for {PM}")).to_have_value("1")

    options = page.locator("#options")
    options.get_by_label("Review before push").check()
    options.get_by_role("button", name="Save options").click()
    expect(options.get_by_role("status")).to_have_text("Options saved.")

    progress = page.locator("#sync-progress")
    progress.get_by_role("button", name="Sync now").click()
    expect(progress).to_contain_text("Last sync waiting for approval", timeout=SYNC_TIMEOUT)
    progress.get_by_role("link", name="sync runs").click()
    page.locator("table.runs tbody tr").get_by_role("link").first.click()

    # Before anything is approved: Acme Dental 5 → 4 Password Manager, +2 Endpoint Backup (a new line);
    # Bluebird +3 (new line); Cedar Law Group 7 → 2.
    acme = -1 * pm.unit_price + 2 * eb.unit_price
    bluebird, cedar = 3 * pm.unit_price, -5 * pm.unit_price
    up = [v for v in (acme, bluebird, cedar) if v > 0]
    down = [v for v in (acme, bluebird, cedar) if v < 0]
    usd = "USD"  # the tenant's internal currency, as Autotask names it
    sentence = f"{amount(sum(up), usd)}/month across {len(up)} companies, {amount(sum(down), usd)} on {len(down)}"
    review = page.locator("#review-money")
    expect(review).to_contain_text(sentence)
    expect(review).to_contain_text(f"net {amount(acme + bluebird + cedar, usd)}/month")
    expect(page.locator("section.run-company").filter(has_text="Cedar Law Group").locator(".company-money")) \
        .to_contain_text(f"{amount(cedar, usd)}/month")
    screenshot(page, "review-money")

    page.locator("#review-form").get_by_role("button", name="Approve all", exact=True).click()
    expect(page.locator(".run-state")).to_have_text("finished", timeout=SYNC_TIMEOUT)
    expect(page.locator("#run-money")).to_contain_text(sentence)
    assert held_quantities(psa_sim, world) == {("Acme Dental", PM): [4.0], ("Acme Dental", EB): [2.0],
                                               ("Bluebird Logistics", PM): [3.0], ("Cedar Law Group", PM): [2.0]}

    # Details tells the count, what was pushed and why.
    page.goto(f"{server.url}/integrations/autotask/companies")
    page.get_by_role("link", name="Details Acme Dental").click()
    run_section = page.locator("section").filter(has=page.get_by_role("heading", name=re.compile("^Run of"))).first
    row = run_section.locator("tbody tr").filter(has_text=PM).first
    expect(row).to_contain_text("count 5 → pushed 4 (1 included)")
    expect(row).to_contain_text(f"{amount(-pm.unit_price, 'USD')}/month")
    screenshot(page, "details-rule-and-money")
