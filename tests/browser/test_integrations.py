"""The integration screens in Chromium, against the running app and the PSA simulator, for each PSA."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from psa_sim.seed import SIM_CREDENTIALS
from tests.fixtures.browser import screenshot
from webapp.cli import seed_demo_data
from webapp.connections import get_integration, save_credentials
from webapp.extensions import db
from webapp.models import Company, CompanyMapping, LineResult, Product, ProductMapping

pytestmark = pytest.mark.browser

PSAS = {
    "connectwise": ("ConnectWise Manage", "ConnectWise Manage Site", "Private Key"),
    "autotask": ("Autotask PSA", None, "Password"),
    "kaseya_bms": ("Kaseya BMS", "Hostname", "Password"),
    "halopsa": ("HaloPSA", "Instance URL", "Client Secret"),
}
HOST_FIELDS = {"connectwise": "site", "kaseya_bms": "hostname", "halopsa": "instance"}
PRODUCTS = ["Password Manager Business", "Endpoint Backup"]
COMPANIES = ["Acme Dental", "Bluebird Logistics", "Cedar Law Group"]
SYNC_TIMEOUT = 30_000
FINISHED = re.compile("in sync|updated|needs attention")


def seed(live_server):
    with live_server.app.app_context():
        seed_demo_data()


def sim_quantities(kind: str, data: dict, agreement_id: str) -> dict[str, float]:
    """{PSA product/service id: quantity} on one agreement, read from the simulator's own records."""
    if kind == "connectwise":
        return {str(a["product"]["id"]): a["quantity"] for a in data["additions"].values()
                if str(a["agreementId"]) == agreement_id and not a.get("cancelledDate")}
    if kind == "halopsa":
        lines = data["invoices"].get(agreement_id, {}).get("lines", [])
        return {str(line["_itemid"]): sum(o["qty_order"] for o in lines if o["_itemid"] == line["_itemid"])
                for line in lines}
    if kind == "autotask":
        return {str(cs["serviceID"]): sum(change for _day, change in data["unit_events"].get(str(cs["id"]), []))
                for cs in data["contract_services"].values() if str(cs["contractID"]) == agreement_id}
    return {str(cs["serviceId"]): cs["units"] for cs in data["contract_services"].values()
            if str(cs["contractId"]) == agreement_id}


def fill_credentials(page, kind, psa_sim, secret):
    _name, host_label, secret_label = PSAS[kind]
    values = dict(SIM_CREDENTIALS[kind])
    if host_label:
        page.get_by_label(host_label, exact=True).fill(psa_sim.host)
    from webapp.psa_clients import client_class

    for field in client_class(kind).credential_fields:
        if field.name in values:
            value = secret if field.label == secret_label else values[field.name]
            # An optional field's label ends in "(optional)".
            page.get_by_label(re.compile(rf"^{re.escape(field.label)}( \(optional\))?$")).fill(value)


def status_cell(page, company: str):
    return page.get_by_role("row", name=company).locator("td .status")


@pytest.mark.parametrize("kind", list(PSAS))
def test_billing_admin_connects_maps_and_syncs_and_sees_statuses_change_in_place(kind, live_server, page, psa_sim):
    name = PSAS[kind][0]
    seed(live_server)
    live_server.login(page, "admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Integrations").click()
    expect(page.get_by_role("heading", name="Available Integrations")).to_be_visible()
    screenshot(page, "integrations-tiles")
    page.get_by_role("link", name=name, exact=True).click()

    # Authenticate: first a wrong secret (red banner with the PSA's reason and what to do), then the right one.
    fill_credentials(page, kind, psa_sim, "not-the-secret")
    page.get_by_role("button", name="Authenticate").click()
    alert = page.locator("#credentials").get_by_role("alert")
    expect(alert).to_contain_text("did not accept these credentials")
    expect(alert).to_contain_text("What to do")
    screenshot(page, f"credentials-rejected-{kind}")
    fill_credentials(page, kind, psa_sim, SIM_CREDENTIALS[kind][{"connectwise": "private_key", "autotask": "secret",
                                                                 "kaseya_bms": "password",
                                                                 "halopsa": "client_secret"}[kind]])
    page.get_by_role("button", name="Authenticate").click()
    expect(page.locator("#credentials .banner-success")).to_contain_text("Authenticated")
    expect(page.locator("#credentials").get_by_text("saved", exact=True).first).to_be_visible()
    page.get_by_label("Integration enabled").check()
    page.locator("#status").get_by_role("button", name="Save").click()
    expect(page.locator("#status")).to_contain_text("enabled")
    screenshot(page, f"credentials-{kind}")

    # Map two products to the live PSA products/services.
    products = page.locator("#products")
    for product in PRODUCTS:
        products.get_by_role("searchbox", name=f"for {product}").fill(product.split()[0])
        select = products.get_by_label(product, exact=True)
        option = select.locator("option", has_text=product).first
        expect(option).to_be_attached()
        select.select_option(value=option.get_attribute("value"))
    products.get_by_role("button", name="Save").click()
    expect(page.locator("#products")).to_contain_text("Product mappings saved")
    screenshot(page, f"product-mapping-{kind}")

    # Map three companies with the inline editor.
    page.get_by_role("link", name="Company mapping").click()
    page.evaluate("window.__noReload = true")
    for company in COMPANIES:
        page.get_by_role("link", name=f"Edit mapping of {company}").click()
        editor = page.locator("tr.editor-row")
        editor.get_by_label(f"Search {name} companies").fill(company.split()[0])
        psa_company = editor.get_by_label(f"{name} company", exact=True)
        option = psa_company.locator("option", has_text=company).first
        expect(option).to_be_attached()
        psa_company.select_option(value=option.get_attribute("value"))
        agreement = editor.locator("select[name=agreement]")
        expect(agreement.locator("option", has_text="Managed Services")).to_be_attached()
        agreement.select_option(label=agreement.locator("option", has_text="Managed Services").inner_text().strip())
        if company == COMPANIES[0]:
            screenshot(page, f"company-editor-{kind}")
        editor.get_by_role("button", name="Save mapping").click()
        expect(page.get_by_role("row", name=company)).to_contain_text("Managed Services")
    screenshot(page, f"company-mapping-{kind}")

    # Sync now: statuses change in place, without a reload.
    page.locator("#sync-progress").get_by_role("button", name="Sync now").click()
    for company in COMPANIES:
        # "needs attention" is a finished state too: the demo seats include products left unmapped here.
        expect(status_cell(page, company)).to_have_text(FINISHED, timeout=SYNC_TIMEOUT)
    assert page.evaluate("window.__noReload") is True
    expect(page.locator("#sync-progress")).to_contain_text("3 of 3 companies", timeout=SYNC_TIMEOUT)
    screenshot(page, f"company-mapping-synced-{kind}")

    # The simulator holds the quantities SeatSync pushed.
    data = psa_sim.data(kind)
    with live_server.app.app_context():
        mapped = {m.company.name: m for m in db.session.scalars(db.select(CompanyMapping))}
        results = db.session.scalars(db.select(LineResult)).all()
        targets = {(r.company_mapping_id, r.psa_product_id): r.target for r in results}
        psa_products = [m.psa_product_id for m in db.session.scalars(db.select(ProductMapping))]
        pushed = 0
        for company in COMPANIES:
            mapping = mapped[company]
            held = sim_quantities(kind, data, mapping.agreement_id)
            for psa_product in psa_products:
                target = targets.get((mapping.id, psa_product))
                if target is not None:
                    assert held.get(psa_product, 0) == target, (company, psa_product, held, target)
                    pushed += target
        assert pushed > 0

    # Details: per product before / target / after.
    page.get_by_role("link", name=f"Details {COMPANIES[0]}").click()
    expect(page.get_by_role("heading", name=f"Details: {COMPANIES[0]}")).to_be_visible()
    table = page.locator("section table").first
    expect(table.get_by_role("columnheader", name="Before")).to_be_visible()
    expect(table.get_by_role("columnheader", name="After")).to_be_visible()
    expect(table.get_by_role("rowheader", name=PRODUCTS[0])).to_be_visible()
    screenshot(page, f"details-{kind}")


def connect_directly(live_server, psa_sim, kind: str, *, enabled: bool) -> None:
    with live_server.app.app_context():
        integration = get_integration(kind)
        values = dict(SIM_CREDENTIALS[kind])
        if kind in HOST_FIELDS:
            values[HOST_FIELDS[kind]] = psa_sim.host
        save_credentials(integration, values)
        integration.credentials_status = "ok"
        integration.enabled = enabled
        product = db.session.scalar(db.select(Product).filter_by(name=PRODUCTS[0]))
        db.session.add(ProductMapping(integration=integration, product_id=product.id, psa_product_id="101",
                                      psa_product_name=PRODUCTS[0]))
        db.session.commit()


def test_a_disabled_integration_sends_no_request_at_all(live_server, page, psa_sim):
    seed(live_server)
    connect_directly(live_server, psa_sim, "connectwise", enabled=False)
    with live_server.app.app_context():
        acme = db.session.scalar(db.select(Company).filter_by(name="Acme Dental"))
        db.session.add(CompanyMapping(integration=get_integration("connectwise"), company=acme, psa_company_id="105",
                                      psa_company_name="Acme Dental", agreement_id="106", agreement_name="Managed"))
        db.session.commit()
    psa_sim.clear_log()
    live_server.login(page, "admin")
    page.goto(f"{live_server.url}/integrations/connectwise/")
    expect(page.locator("#sync-progress")).to_contain_text("disabled")
    expect(page.locator("#sync-progress").get_by_role("button", name="Sync now")).to_be_disabled()
    page.get_by_role("link", name="Company mapping").click()
    expect(page.get_by_role("button", name="Sync now Acme Dental")).to_be_disabled()
    page.get_by_role("button", name="Exclude Acme Dental").click()  # still editable
    expect(status_cell(page, "Acme Dental")).to_have_text("excluded")
    assert psa_sim.requests("connectwise") == []


def test_a_failing_company_shows_its_troubleshooting_hint(live_server, page, psa_sim):
    seed(live_server)
    connect_directly(live_server, psa_sim, "connectwise", enabled=True)
    with live_server.app.app_context():
        acme = db.session.scalar(db.select(Company).filter_by(name="Acme Dental"))
        db.session.add(CompanyMapping(integration=get_integration("connectwise"), company=acme, psa_company_id="105",
                                      psa_company_name="Acme Dental", agreement_id="999999",
                                      agreement_name="Deleted agreement"))
        db.session.commit()
    live_server.login(page, "billing")
    page.goto(f"{live_server.url}/integrations/connectwise/companies")
    page.get_by_role("button", name="Sync now Acme Dental").click()
    expect(status_cell(page, "Acme Dental")).to_have_text(re.compile("error|needs attention"),
                                                          timeout=SYNC_TIMEOUT)
    page.get_by_role("link", name="Details Acme Dental").click()
    expect(page.locator(".line-detail").first).to_contain_text("What to do")
    screenshot(page, "details-failure")


def test_a_company_name_with_markup_renders_as_text(live_server, page, psa_sim):
    seed(live_server)
    connect_directly(live_server, psa_sim, "autotask", enabled=False)
    live_server.login(page, "viewer")
    page.goto(f"{live_server.url}/integrations/autotask/companies?q=ivy")
    expect(page.get_by_role("rowheader", name="Ivy & Oak <Interiors>")).to_be_visible()
    assert page.locator("interiors").count() == 0
    assert page.get_by_role("link", name="Edit mapping of Ivy & Oak <Interiors>").count() == 0  # viewer: read-only
