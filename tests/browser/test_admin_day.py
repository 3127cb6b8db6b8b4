"""The admin's day (issue 12): every screen tells the truth at a glance and never fights the user."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from playwright.sync_api import expect

from tests.fixtures.browser import screenshot
from tests.fixtures.integrations import KINDS, company, connect
from webapp import counts
from webapp.cli import seed_demo_data
from webapp.connections import get_integration
from webapp.extensions import db
from webapp.models import (
    ApiToken,
    AuditEvent,
    Company,
    CompanyMapping,
    CountOverride,
    Product,
    ProductMapping,
    Seat,
    SyncRun,
    User,
)

pytestmark = pytest.mark.browser



def set_role(live_server, email: str, role: str) -> None:
    with live_server.app.app_context():
        db.session.scalar(db.select(User).filter_by(email=email)).role = role
        db.session.commit()


def test_forbidden_htmx_action_shows_a_banner(connected, page):
    email = connected.login(page, "billing")
    page.goto(f"{connected.url}/integrations/connectwise/companies")
    set_role(connected, email, "viewer")  # an admin demoted this user meanwhile
    page.get_by_role("button", name="Exclude Acme Dental").click()
    banner = page.locator("#htmx-banners").get_by_role("alert")
    expect(banner).to_contain_text("Your role does not allow this")
    expect(page.get_by_role("row", name="Acme Dental").locator(".status")).not_to_have_text("excluded")
    banner.get_by_role("button", name="Dismiss").click()
    expect(banner).to_have_count(0)


def test_an_expired_form_token_on_an_htmx_action_shows_a_banner(connected, page):
    connected.login(page, "billing")
    page.goto(f"{connected.url}/integrations/connectwise/companies")
    page.evaluate("""() => {
        document.body.setAttribute("hx-headers", '{"X-CSRFToken": "expired"}');
        document.querySelectorAll("input[name=csrf_token]").forEach((input) => { input.value = "expired"; });
    }""")
    page.get_by_role("button", name="Exclude Acme Dental").click()
    expect(page.locator("#htmx-banners").get_by_role("alert")).to_contain_text("The form expired")


@pytest.mark.parametrize("kind", KINDS)
def test_searching_products_keeps_the_select_usable(kind, live_server, page, psa_sim):
    with live_server.app.app_context():
        seed_demo_data()
        connect(kind, psa_sim)
    live_server.login(page, "billing")
    page.goto(f"{live_server.url}/integrations/{kind}/")
    row = page.get_by_role("row", name="Password Manager Business")
    row.get_by_role("searchbox").fill("backup")
    select = row.get_by_role("combobox")
    expect(select.locator("option")).to_have_count(2)  # "— not mapped —" and the one match
    expect(select).to_be_visible()
    select.select_option(select.locator("option", has_text="Endpoint Backup").get_attribute("value"))
    page.get_by_role("region", name="Product mappings").get_by_role("button", name="Save").click()
    expect(page.locator("#products").get_by_role("status")).to_contain_text("Product mappings saved")
    expect(page.get_by_role("row", name="Password Manager Business").get_by_role("combobox")
           .locator("option:checked")).to_contain_text("Endpoint Backup")


def mark_error(live_server, kind: str, company_name: str) -> None:
    with live_server.app.app_context():
        integration = get_integration(kind)
        db.session.add(CompanyMapping(integration=integration, company=company(company_name), psa_company_id="1",
                                      psa_company_name=company_name, agreement_id="2", agreement_name="Managed",
                                      status="error", status_reason="HTTP 404: the agreement no longer exists"))
        db.session.commit()


def test_back_button_restores_filter_and_table_together(connected, page):
    mark_error(connected, "connectwise", "Bluebird Logistics")
    connected.login(page, "billing")
    page.goto(f"{connected.url}/integrations/connectwise/companies")
    show = page.get_by_label("Show")
    table = page.locator("#company-table")
    expect(table.get_by_role("row", name="Acme Dental")).to_be_visible()
    show.select_option("error")
    expect(table.get_by_role("row", name="Acme Dental")).to_have_count(0)
    expect(page).to_have_url(re.compile("filter=error"))
    show.select_option("")
    expect(table.get_by_role("row", name="Acme Dental")).to_be_visible()
    for _ in range(2):
        page.go_back()
        expect(page).to_have_url(re.compile("filter=error"))
        expect(page.get_by_label("Show")).to_have_value("error")
        expect(table.get_by_role("row", name="Acme Dental")).to_have_count(0)
        expect(table.get_by_role("row", name="Bluebird Logistics")).to_be_visible()
        page.go_forward()
        expect(page).not_to_have_url(re.compile("filter=error"))
        expect(page.get_by_label("Show")).to_have_value("")
        expect(table.get_by_role("row", name="Acme Dental")).to_be_visible()


def test_disabled_integration_rows_say_disabled_and_offer_no_sync(live_server, page, psa_sim):
    with live_server.app.app_context():
        seed_demo_data()
        integration = connect("connectwise", psa_sim, enabled=False)
        integration.product_mappings.append(ProductMapping(product_id=db.session.scalar(db.select(Product.id)),
                                                           psa_product_id="101", psa_product_name="PMB"))
        db.session.commit()
    mark_error(live_server, "connectwise", "Bluebird Logistics")
    psa_sim.clear_log()
    live_server.login(page, "billing")
    page.goto(f"{live_server.url}/integrations/connectwise/companies")
    for name in ("Acme Dental", "Bluebird Logistics"):
        row = page.get_by_role("row", name=name)
        expect(row.locator(".status")).to_have_text("disabled")
        sync = row.get_by_role("button", name=f"Sync now {name}")
        expect(sync).to_be_disabled()
        expect(sync).to_have_accessible_description(re.compile("Sync now is unavailable: The integration is disabled"))
    page.get_by_role("button", name="Exclude Acme Dental").click()  # still editable
    expect(page.get_by_role("row", name="Acme Dental").locator(".status")).to_have_text("excluded")
    assert psa_sim.requests("connectwise") == []


LONG_NAME = "The Extraordinarily Long-Named Regional Veterinary Hospital Group of Northern Holdings Incorporated"


def seed_counts(live_server) -> dict:
    """Demo seats, a company with a very long name, an override in the billed (last closed) month."""
    with live_server.app.app_context():
        seed_demo_data()
        billed = counts.previous_month(counts.current_month())
        product = db.session.scalar(db.select(Product).order_by(Product.name))
        long_company = Company(name=LONG_NAME, external_id="long")
        db.session.add(long_company)
        started = dt.datetime.combine(counts.add_months(billed, -2), dt.time(), dt.UTC)
        db.session.add_all([Seat(company=long_company, product=product, user_email=f"u{i}@long.example",
                                 active_from=started) for i in range(7)])
        db.session.flush()
        db.session.add(CountOverride(company_id=long_company.id, product_id=product.id, month=billed, count=9,
                                     note="kiosk users"))
        db.session.commit()
        return {"billed": billed, "company_id": long_company.id, "current": counts.current_month()}


def assert_in_view(locator, container=None) -> None:
    box = locator.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 1280, box
    if container is not None:
        outer = container.bounding_box()
        assert box["x"] + box["width"] <= outer["x"] + outer["width"], (box, outer)


def test_billed_month_is_visible_without_scrolling_at_1280px(live_server, page):
    seeded = seed_counts(live_server)
    billed = seeded["billed"].isoformat()
    page.set_viewport_size({"width": 1280, "height": 900})
    live_server.login(page, "billing")
    page.goto(f"{live_server.url}/counts?q=Extraordinarily")
    table = page.locator("#counts-table")
    header = table.locator(f"th[data-month='{billed}']")
    expect(header).to_contain_text("billed")
    assert_in_view(header, table)
    row = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name=LONG_NAME))
    cell = row.locator(f"td[data-month='{billed}']")
    expect(cell).to_have_accessible_name("overridden: 9")  # marked; the long name pushes nothing away
    expect(cell).to_have_attribute("title", "Override: kiosk users")
    assert_in_view(cell, table)
    assert_in_view(table.locator(f"th[data-month='{seeded['current'].isoformat()}']"), table)
    screenshot(page, "counts")

    page.goto(f"{live_server.url}/companies/{seeded['company_id']}")
    current = page.locator("#monthly-counts th[data-month]").first
    expect(current).to_contain_text("to date")
    assert_in_view(current)
    assert_in_view(page.locator(f"#monthly-counts td[data-month='{billed}']"))
    screenshot(page, "company-counts")


IMPORT_CSV = (
    "company,company_external_id,product,user_email,active_from,active_to,billable\n"
    "Acme Dental,acme,Password Manager Business,ann@acme.example,2025-01-01,,true\n"
    "Juniper Vets,juniper,Email Security,jo@juniper.example,2025-01-01,,true\n"
)


def test_an_import_lists_the_products_and_companies_it_creates_and_creates_them(live_server, page, tmp_path):
    live_server.login(page, "billing")  # no product exists yet: nothing has to be created by hand first
    path = tmp_path / "seats.csv"
    path.write_text(IMPORT_CSV)
    page.goto(f"{live_server.url}/seats/import")
    page.get_by_label("CSV file").set_input_files(str(path))
    page.get_by_role("button", name="Check the file").click()
    products = page.get_by_role("region", name="Products it will create")
    expect(products.get_by_role("listitem")).to_have_text(["Password Manager Business", "Email Security"])
    expect(page.get_by_role("region", name="Companies it will create").get_by_role("listitem")).to_have_text(
        ["Acme Dental", "Juniper Vets"])
    with live_server.app.app_context():
        assert db.session.query(Product).count() == 0  # the preview writes nothing
    page.get_by_role("button", name="Import these changes").click()
    expect(page.get_by_text("Imported.")).to_be_visible()
    expect(page.get_by_role("region", name="Products created").get_by_role("listitem")).to_have_count(2)
    with live_server.app.app_context():
        assert db.session.query(Seat).count() == 2 and db.session.query(Product).count() == 2


SYNC_TIMEOUT = 30_000
FINISHED = re.compile("in sync|updated|needs attention")  # the demo seats include unmapped products


def pushed_quantity(psa_sim, agreement_id: str = "106", psa_product_id: str = "101") -> float:
    additions = psa_sim.data("connectwise")["additions"].values()
    return sum(a["quantity"] for a in additions if str(a["agreementId"]) == agreement_id
               and str(a["product"]["id"]) == psa_product_id and not a.get("cancelledDate"))


def sync_acme(page, live_server) -> None:
    """Sync now on Acme Dental's row, and wait until that run has finished."""
    with live_server.app.app_context():
        runs_before = db.session.query(SyncRun).count()
    page.goto(f"{live_server.url}/integrations/connectwise/companies?q=Acme")
    page.get_by_role("button", name="Sync now Acme Dental").click()
    expect(page.get_by_role("row", name="Acme Dental").locator(".status")).to_have_text(FINISHED,
                                                                                       timeout=SYNC_TIMEOUT)
    deadline = time.monotonic() + SYNC_TIMEOUT / 1000
    while time.monotonic() < deadline:
        with live_server.app.app_context():
            runs = db.session.scalars(db.select(SyncRun).order_by(SyncRun.id)).all()
            if len(runs) > runs_before and runs[-1].finished_at is not None:
                return
        time.sleep(0.2)
    raise AssertionError("the row's sync did not finish")


def test_late_seats_for_a_closed_month_are_announced_and_pushed_after_recompute(live_server, page, psa_sim,
                                                                                  tmp_path):
    with live_server.app.app_context():
        seed_demo_data()
        integration = connect("connectwise", psa_sim)
        product = db.session.scalar(db.select(Product).filter_by(name="Password Manager Business"))
        integration.product_mappings.append(ProductMapping(product_id=product.id, psa_product_id="101",
                                                           psa_product_name=product.name))
        acme = company("Acme Dental")
        db.session.add(CompanyMapping(integration=integration, company=acme, psa_company_id="105",
                                      psa_company_name="Acme Dental", agreement_id="106", agreement_name="Managed"))
        billed = counts.previous_month(counts.current_month())
        db.session.add(Seat(company=acme, product=product, user_email="early@acme.example",
                            active_from=dt.datetime.combine(counts.add_months(billed, -1), dt.time(), dt.UTC)))
        db.session.commit()
        counts.freeze_month(billed)  # the month closed: its counts are frozen
    live_server.login(page, "admin")
    sync_acme(page, live_server)
    before = pushed_quantity(psa_sim)
    assert before >= 1

    # A file arrives late: one more user for Acme Dental during the closed month.
    path = tmp_path / "late.csv"
    path.write_text("company,company_external_id,product,user_email,active_from,active_to,billable\n"
                    f"Acme Dental,demo-001,Password Manager Business,late@acme.example,{billed.isoformat()},,true\n")
    page.goto(f"{live_server.url}/seats/import")
    page.get_by_label("CSV file").set_input_files(str(path))
    page.get_by_role("button", name="Check the file").click()
    page.get_by_role("button", name="Import these changes").click()
    announcement = page.locator("#closed-months")
    expect(announcement).to_contain_text(f"Closed month changed after freezing: {billed:%b %Y}")
    page.goto(f"{live_server.url}/counts")  # the counts page says so too, until it is recomputed
    expect(page.locator("#closed-months")).to_contain_text(f"{billed:%b %Y}")
    page.locator("#closed-months").get_by_role("button", name=f"Recompute {billed:%b %Y}").click()
    expect(page.get_by_role("status").filter(has_text="recomputed")).to_contain_text("1 count(s) changed")
    expect(page.locator("#closed-months")).to_have_count(0)

    sync_acme(page, live_server)
    assert pushed_quantity(psa_sim) == before + 1
    with live_server.app.app_context():
        assert db.session.scalar(db.select(AuditEvent).filter_by(kind="counts.recomputed")) is not None


def test_a_failed_authenticate_keeps_what_was_typed_and_saved_secrets_stay_saved(live_server, page, psa_sim):
    with live_server.app.app_context():
        seed_demo_data()
        connect("autotask", psa_sim)
    live_server.login(page, "admin")
    page.goto(f"{live_server.url}/integrations/autotask/")
    credentials = page.locator("#credentials")
    expect(credentials.locator(".status", has_text="saved")).to_have_count(2)
    typed = {"Username": "someone-else@seatsync.test", "Password": "not-the-secret",
             "API Tracking Identifier": "RETYPEDTRACKINGID"}
    for label, value in typed.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Authenticate").click()
    expect(credentials.get_by_role("alert")).to_contain_text("did not accept these credentials")
    for label, value in typed.items():
        expect(page.get_by_label(label, exact=True)).to_have_value(value)
    expect(credentials.locator(".status", has_text="saved")).to_have_count(2)  # the saved ones were kept


def add_run(integration, **outcome) -> SyncRun:
    run = SyncRun(integration=integration, trigger="sync_now", state="finished", total=sum(outcome.values()),
                  done=sum(outcome.values()), finished_at=dt.datetime.now(dt.UTC), **outcome)
    db.session.add(run)
    return run


def test_tiles_and_dashboard_show_each_integrations_last_outcome_with_links(live_server, page, psa_sim):
    with live_server.app.app_context():
        seed_demo_data()
        connectwise = connect("connectwise", psa_sim)
        autotask = connect("autotask", psa_sim)
        add_run(connectwise, in_sync=2, updated=1, needs_attention=1, errors=1)
        add_run(autotask, in_sync=3)
        db.session.commit()
    mark_error(live_server, "connectwise", "Bluebird Logistics")
    live_server.login(page, "billing")

    page.goto(f"{live_server.url}/integrations/")
    tile = page.get_by_role("article").filter(has=page.get_by_role("heading", name="ConnectWise Manage"))
    expect(tile).to_contain_text("in sync 2")
    expect(tile).to_contain_text("updated 1")
    expect(page.get_by_role("article").filter(has=page.get_by_role("heading", name="Autotask PSA"))).to_contain_text(
        "in sync 3")
    screenshot(page, "integrations-tiles")
    tile.get_by_role("link", name="errors 1").click()
    expect(page).to_have_url(re.compile(r"/integrations/connectwise/companies\?filter=error"))
    expect(page.get_by_label("Show")).to_have_value("error")
    expect(page.locator("#company-table").get_by_role("rowheader", name="Bluebird Logistics")).to_be_visible()

    page.goto(f"{live_server.url}/")
    expect(page.get_by_role("columnheader", name="Errors")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("^ConnectWise Manage"))).to_contain_text("needs attention 1")
    screenshot(page, "dashboard")
    page.get_by_role("link", name="1 companies needing attention").click()
    expect(page).to_have_url(re.compile(r"/integrations/connectwise/companies\?filter=error"))

    page.goto(f"{live_server.url}/integrations/connectwise/")
    page.get_by_role("navigation", name="ConnectWise Manage sections").get_by_role("link", name="Sync runs").click()
    expect(page.get_by_role("heading", name="ConnectWise Manage sync runs")).to_be_visible()
    runs = page.locator("table.runs tbody tr")
    expect(runs).to_have_count(1)
    expect(runs).to_contain_text("ConnectWise Manage")
    page.get_by_label("PSA").select_option("")
    page.get_by_role("button", name="Show").click()
    expect(runs).to_have_count(2)


def test_a_new_api_token_can_be_copied_and_revoking_one_asks_first(live_server, page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    live_server.login(page, "admin")
    page.goto(f"{live_server.url}/settings")
    tokens = page.locator("#api-tokens")
    tokens.get_by_label("Token name").fill("Vendor portal sync")
    tokens.get_by_role("button", name="Create token").click()
    shown = page.locator("#new-token").inner_text()
    page.locator("#api-tokens").get_by_role("button", name="Copy").click()
    expect(page.locator("#api-tokens").get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == shown

    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.locator("#api-tokens").get_by_role("button", name="Revoke").click()
    assert "Revoke the API token Vendor portal sync?" in questions[0]
    page.wait_for_timeout(500)  # time for a (wrongly) submitted form to land
    with live_server.app.app_context():
        assert db.session.scalar(db.select(ApiToken)).revoked_at is None  # dismissed: nothing was revoked
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#api-tokens").get_by_role("button", name="Revoke").click()
    expect(page.locator("#api-tokens .status")).to_contain_text("revoked")


SCREENS = {  # docs/screenshots/NAME.png: the main screens at 1280 px (README)
    "dashboard": "/",
    "integration-tiles": "/integrations/",
    "company-mapping": "/integrations/connectwise/companies",
    "monthly-counts": "/counts",
}


def test_every_main_screen_fits_1280px_without_scrolling_sideways(live_server, page, psa_sim):
    with live_server.app.app_context():
        seed_demo_data()
        integration = connect("connectwise", psa_sim)
        product = db.session.scalar(db.select(Product).filter_by(name="Password Manager Business"))
        integration.product_mappings.append(ProductMapping(product_id=product.id, psa_product_id="101",
                                                           psa_product_name=product.name))
        for name, psa_id, agreement in (("Acme Dental", "105", "106"), ("Bluebird Logistics", "1", "2")):
            db.session.add(CompanyMapping(integration=integration, company=company(name), psa_company_id=psa_id,
                                          psa_company_name=name, agreement_id=agreement,
                                          agreement_name=f"{name} — Managed Services"))
        db.session.commit()
        counts.freeze_month(counts.previous_month(counts.current_month()))
    page.set_viewport_size({"width": 1280, "height": 900})
    live_server.login(page, "admin")
    page.goto(f"{live_server.url}/integrations/connectwise/companies")
    page.locator("#sync-progress").get_by_role("button", name="Sync now").click()
    expect(page.locator("#sync-progress")).to_contain_text("Last sync finished", timeout=SYNC_TIMEOUT)
    with live_server.app.app_context():
        screens = {**SCREENS, "sync-run": f"/runs/{db.session.scalar(db.select(SyncRun.id))}"}
    for name, path in screens.items():
        page.goto(f"{live_server.url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, name
        screenshot(page, f"1280-{name}")
