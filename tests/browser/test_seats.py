"""Seats in Chromium: a CSV import with preview, progress and confirmation; the company page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fixtures.browser import screenshot
from webapp.extensions import db
from webapp.models import Company, Product, Seat

pytestmark = pytest.mark.browser

CSV = (
    "company,company_external_id,product,user_email,active_from,active_to,billable\n"
    "Ivy & Oak <Interiors>,ivy,Password Manager Business,ann@ivy.example,2025-01-01,,true\n"
    "Ivy & Oak <Interiors>,ivy,Password Manager Business,bob@ivy.example,2025-01-15,,true\n"
    "Acme Dental,acme,Endpoint Backup,carl@acme.example,2025-02-01,,false\n"
)


def products(live_server):
    with live_server.app.app_context():
        db.session.add_all([Product(name="Password Manager Business"), Product(name="Endpoint Backup")])
        db.session.commit()


def test_billing_imports_a_csv_after_a_preview_and_sees_the_company(live_server, page, tmp_path):
    products(live_server)
    live_server.login(page, "billing")
    page.goto(f"{live_server.url}/seats/import")
    path = tmp_path / "seats.csv"
    path.write_text(CSV)
    page.get_by_label("CSV file").set_input_files(str(path))
    page.get_by_role("button", name="Check the file").click()
    expect(page.get_by_role("button", name="Import these changes")).to_be_visible()
    expect(page.locator(".import-summary")).to_contain_text("New seats")
    screenshot(page, "seats-import-preview")
    with live_server.app.app_context():
        assert db.session.query(Seat).count() == 0
    page.get_by_role("button", name="Import these changes").click()
    expect(page.get_by_text("Imported.")).to_be_visible()
    screenshot(page, "seats-import-done")

    page.goto(f"{live_server.url}/companies")
    page.get_by_label("Search").fill("ivy")
    link = page.get_by_role("link", name="Ivy & Oak <Interiors>")
    expect(link).to_be_visible()
    link.click()
    expect(page.get_by_role("heading", name="Ivy & Oak <Interiors>")).to_be_visible()
    expect(page.locator("#seats-table")).to_contain_text("bob@ivy.example")
    expect(page.locator(".count-chart svg polyline")).to_have_count(1)
    screenshot(page, "seats-company-page")
    with live_server.app.app_context():
        assert db.session.query(Seat).count() == 3
        assert db.session.scalar(db.select(Company.name).filter_by(external_id="ivy")) == "Ivy & Oak <Interiors>"


def test_a_file_with_a_bad_row_shows_every_problem_and_imports_nothing(live_server, page, tmp_path):
    products(live_server)
    live_server.login(page, "billing")
    path = tmp_path / "bad.csv"
    path.write_text(CSV + "Acme Dental,acme,Endpoint Backup,dan@acme.example,2025-02-30,,nope\n")
    page.goto(f"{live_server.url}/seats/import")
    page.get_by_label("CSV file").set_input_files(str(path))
    page.get_by_role("button", name="Check the file").click()
    expect(page.get_by_role("alert")).to_contain_text("Nothing was imported: 2 problem(s)")
    expect(page.locator(".import-errors")).to_contain_text("bad billable value 'nope'")
    expect(page.get_by_role("button", name="Import these changes")).to_have_count(0)
    screenshot(page, "seats-import-errors")
    with live_server.app.app_context():
        assert db.session.query(Seat).count() == 0
