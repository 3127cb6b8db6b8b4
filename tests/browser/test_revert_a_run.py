"""Reverting a sync run in Chromium: the app served with real RQ worker processes behind it and the PSA
simulator in front. Sync now, then "Revert this run": the PSA holds what it held before; a line changed by
hand since is listed and only written once the admin confirms."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fixtures.browser import screenshot
from tests.fixtures.workers import EB, PM, REVIEW_SEATS, build_world, companies_of, held_quantities, set_by_hand

pytestmark = pytest.mark.browser

SYNC_TIMEOUT = 30_000  # a worker process may take seconds to load on a busy machine


def test_billing_admin_reverts_a_sync_run_and_the_psa_is_back_where_it_was(
        psa_sim, rq_workers, live_server_with_workers, page):
    server = live_server_with_workers
    world = build_world("connectwise", psa_sim, REVIEW_SEATS, companies=companies_of(REVIEW_SEATS))
    untouched = held_quantities(psa_sim, world)  # Acme Dental 5 PM, Cedar Law Group 7 PM
    rq_workers.start(1)
    server.login(page, "billing")

    page.goto(f"{server.url}/integrations/connectwise/")
    progress = page.locator("#sync-progress")
    progress.get_by_role("button", name="Sync now").click()
    expect(progress).to_contain_text("Last sync finished", timeout=SYNC_TIMEOUT)
    synced = {("Acme Dental", PM): [5.0], ("Acme Dental", EB): [2.0], ("Bluebird Logistics", PM): [4.0],
              ("Cedar Law Group", PM): [3.0]}
    assert held_quantities(psa_sim, world) == synced
    set_by_hand(world, "Cedar Law Group", PM, 6)  # changed in the PSA after the run

    progress.get_by_role("link", name="sync runs").click()
    page.locator("table.runs tbody tr").get_by_role("link").first.click()
    page.get_by_role("button", name="Revert this run").click()
    expect(page.get_by_role("status").filter(has_text="Revert of run")).to_be_visible()
    expect(page.locator(".run-state")).to_have_text("finished", timeout=SYNC_TIMEOUT)
    expect(page.locator(".run-link")).to_contain_text("Reverts run")
    # The lines the run created are at 0, never deleted; the hand-edited line is listed and left alone.
    changed = page.locator("#overwrite-form")
    expect(changed).to_contain_text("1 line(s) changed in the PSA since run")
    expect(changed).to_contain_text("that run left 3, the line holds 6 now")
    assert held_quantities(psa_sim, world) == {**untouched, ("Acme Dental", EB): [0.0],
                                               ("Bluebird Logistics", PM): [0.0], ("Cedar Law Group", PM): [6.0]}
    screenshot(page, "revert-changed-since")

    changed.get_by_role("button", name="Revert these lines anyway").click()
    expect(page.locator(".run-state")).to_have_text("finished", timeout=SYNC_TIMEOUT)
    expect(page.locator(".run-link")).to_contain_text("writing over lines changed in the PSA since")
    expect(page.locator("#overwrite-form")).to_have_count(0)
    assert held_quantities(psa_sim, world) == {**untouched, ("Acme Dental", EB): [0.0],
                                               ("Bluebird Logistics", PM): [0.0]}

    # The reverted run links to both reverts.
    page.locator(".run-link a").first.click()
    expect(page.locator(".run-link")).to_contain_text("Reverted by run")
    expect(page.locator(".run-link a")).to_have_count(2)
    screenshot(page, "revert-finished")
