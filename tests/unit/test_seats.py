"""Companies, products, seats, overrides and counts pages; the CSV import in the browser; the CLI."""

import datetime as dt
import io

import pytest

from webapp import counts, seats_import
from webapp.extensions import db
from webapp.models import AuditEvent, Company, CountOverride, MonthlyCount, Product, Seat

HEADER = "company,company_external_id,product,user_email,active_from,active_to,billable\n"


@pytest.fixture
def pm(app):
    product = Product(name="Password Manager")
    db.session.add(product)
    db.session.commit()
    return product


def add_company(name, external_id=None, seats=0, product=None):
    company = Company(name=name, external_id=external_id)
    db.session.add(company)
    for i in range(seats):
        db.session.add(Seat(company=company, product=product, user_email=f"u{i}@{abs(hash(name))}.example",
                            active_from=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)))
    db.session.commit()
    return company


def run_queued_jobs(app):
    """Work the embedded queue in this thread (the tests run without the worker thread)."""
    from rq import SimpleWorker

    from webapp.queue import get_queue

    SimpleWorker([get_queue()], connection=get_queue().connection).work(burst=True)


def test_companies_are_searched_and_paginated(client, login_as, pm):
    login_as("viewer")
    db.session.add_all([Company(name=f"Company {i:03d}", external_id=f"ext-{i}") for i in range(120)])
    db.session.commit()
    page1 = client.get("/companies").text
    assert "Company 000" in page1 and "Company 050" not in page1 and "Page 1 of 3" in page1
    page3 = client.get("/companies?page=3").text
    assert "Company 119" in page3
    found = client.get("/companies?q=ompany 07", headers={"HX-Request": "true", "HX-Target": "companies-table"})
    assert found.text.startswith('<div id="companies-table">') and "<html" not in found.text
    assert found.text.count("/companies/") == 10
    assert "Company 042" in client.get("/companies?q=ext-42").text


def test_a_search_with_percent_signs_matches_them_literally(client, login_as):
    login_as("viewer")
    add_company("100% Uptime Ltd")
    add_company("Other")
    text = client.get("/companies?q=100%25").text
    assert "100% Uptime Ltd" in text and "Other" not in text


def test_billing_creates_and_edits_a_company_and_a_duplicate_external_id_is_refused(client, login_as):
    login_as("billing")
    response = client.post("/companies", data={"name": "Acme Dental", "external_id": "acme"})
    assert response.status_code == 302
    company = db.session.scalar(db.select(Company))
    assert (company.name, company.external_id) == ("Acme Dental", "acme")
    assert client.post("/companies", data={"name": "Other", "external_id": "acme"}).status_code == 422
    client.post(f"/companies/{company.id}", data={"name": "Acme Dental Group", "external_id": "acme"})
    db.session.refresh(company)
    assert company.name == "Acme Dental Group"
    assert db.session.query(AuditEvent).filter_by(kind="company.changed").count() == 1


def test_deactivating_a_company_ends_its_open_seats(client, login_as, pm):
    login_as("billing")
    company = add_company("Acme", seats=3, product=pm)
    client.post(f"/companies/{company.id}/active", data={"active": "0"})
    db.session.expire_all()
    assert not company.active
    assert all(seat.active_to is not None for seat in db.session.query(Seat))
    assert counts.compute_counts(counts.next_month(counts.current_month())) == {}


def test_company_page_shows_seats_counts_chart_and_html_as_text(client, login_as, pm):
    login_as("viewer")
    company = add_company("Ivy & Oak <Interiors>", seats=4, product=pm)
    text = client.get(f"/companies/{company.id}").text
    assert "Ivy &amp; Oak &lt;Interiors&gt;" in text and "<Interiors>" not in text
    assert "<svg" in text and "<polyline" in text
    assert text.count("\">4</td>") >= 12  # 4 seats in each of the last 12 months
    assert "Add or change a seat" not in text  # viewers read only


def test_billing_adds_a_seat_and_ends_it(client, login_as, pm):
    login_as("billing")
    company = add_company("Acme")
    response = client.post(f"/companies/{company.id}/seats", data={
        "product_id": pm.id, "user_email": "Ann@Acme.example", "active_from": "2025-01-01", "billable": "1"})
    assert response.status_code == 302
    seat = db.session.scalar(db.select(Seat))
    assert seat.user_email == "ann@acme.example" and seat.billable and seat.active_to is None
    assert client.post(f"/companies/{company.id}/seats", data={
        "product_id": pm.id, "user_email": "bob@acme.example", "active_from": "2025-02-01",
        "active_to": "2025-01-01"}).status_code == 422
    client.post(f"/seats/{seat.id}/end")
    db.session.refresh(seat)
    assert seat.active_to is not None


def test_an_override_needs_a_note_and_is_audited(client, login_as, pm):
    login_as("billing")
    company = add_company("Acme", seats=2, product=pm)
    month = counts.current_month().strftime("%Y-%m")
    response = client.post(f"/companies/{company.id}/overrides",
                           data={"product_id": pm.id, "month": month, "count": "5", "note": ""})
    assert response.status_code == 422 and "Note" in response.text
    assert db.session.query(CountOverride).count() == 0
    client.post(f"/companies/{company.id}/overrides",
                data={"product_id": pm.id, "month": month, "count": "5", "note": "two kiosk PCs & shared <desk>"})
    override = db.session.scalar(db.select(CountOverride))
    assert override.count == 5 and override.note == "two kiosk PCs & shared <desk>"
    assert counts.target_counts(counts.current_month())[(company.id, pm.id)] == 5
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="count.overridden"))
    assert "computed 2" in event.summary and event.actor == "billing@msp.example"
    assert "shared &lt;desk&gt;" in client.get(f"/companies/{company.id}").text
    client.post(f"/overrides/{override.id}/delete")
    assert counts.target_counts(counts.current_month())[(company.id, pm.id)] == 2


def test_products_have_count_rules(client, login_as):
    login_as("billing")
    client.post("/products", data={"name": "Backup", "count_rule": "active_at_month_end"})
    product = db.session.scalar(db.select(Product))
    assert product.count_rule == "active_at_month_end"
    client.post(f"/products/{product.id}", data={"name": "Backup", "count_rule": "active_during_month", "active": "1"})
    db.session.refresh(product)
    assert product.count_rule == "active_during_month"
    client.post("/products", data={"name": "backup"})
    assert db.session.query(Product).count() == 1


def test_counts_page_shows_twelve_months_totals_and_exports_csv(client, login_as, pm):
    login_as("viewer")
    add_company("Acme", seats=3, product=pm)
    add_company("=cmd|' /C calc'!A0", seats=1, product=pm)
    text = client.get("/counts").text
    assert "Totals per product" in text and text.count("<td>4</td>") >= 12
    export = client.get("/counts.csv")
    assert export.mimetype == "text/csv"
    lines = export.text.strip().splitlines()
    assert lines[0].startswith("company,company_external_id,product,") and len(lines[0].split(",")) == 15
    assert any(line.startswith("Acme,,Password Manager,3,") for line in lines)
    assert any(line.startswith("\"'=cmd") or line.startswith("'=cmd") for line in lines)  # no formula injection


def test_only_admins_recompute_a_closed_month(client, login_as, pm):
    add_company("Acme", seats=2, product=pm)
    last = counts.previous_month(counts.current_month())
    counts.freeze_month(last)
    login_as("billing")
    assert client.post("/counts/recompute", data={"month": last.isoformat()}).status_code == 403
    login_as("admin")
    assert client.post("/counts/recompute", data={"month": last.isoformat()}).status_code == 302
    assert db.session.query(AuditEvent).filter_by(kind="counts.recomputed").count() == 1


def test_csv_upload_previews_then_imports_on_confirmation(app, client, login_as, pm):
    login_as("billing")
    data = (HEADER + "Acme <b>Dental</b>,acme,Password Manager,ann@acme.example,2025-01-01,,\n").encode()
    response = client.post("/seats/import", data={"file": (io.BytesIO(data), "seats.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302
    status_url = response.headers["Location"]
    assert "Checking the file" in client.get(status_url).text
    run_queued_jobs(app)
    preview = client.get(status_url).text
    assert "New seats" in preview and "Import these changes" in preview
    assert "Acme &lt;b&gt;Dental&lt;/b&gt;" in preview
    assert db.session.query(Seat).count() == 0  # nothing written by the preview
    client.post(status_url + "/commit")
    run_queued_jobs(app)
    assert "Imported" in client.get(status_url).text
    assert db.session.query(Seat).count() == 1
    assert db.session.scalar(db.select(Company.name)) == "Acme <b>Dental</b>"


def test_csv_upload_with_bad_rows_lists_them_and_cannot_be_committed(app, client, login_as, pm):
    login_as("billing")
    data = (HEADER + "Acme,,Nope,ann@acme.example,2025-01-01,,maybe\n"
            "Acme,,Password Manager,bad,2025-01-01,,\n").encode()
    status_url = client.post("/seats/import", data={"file": (io.BytesIO(data), "bad.csv")},
                             content_type="multipart/form-data").headers["Location"]
    run_queued_jobs(app)
    page = client.get(status_url).text
    assert "Nothing was imported: 2 problem(s)" in page and "bad billable value" in page and "bad e-mail" in page
    client.post(status_url + "/commit")
    run_queued_jobs(app)
    assert db.session.query(Seat).count() == 0


def test_progress_partial_polls_while_the_file_is_being_checked(app, client, login_as):
    login_as("viewer")
    seats_import.write_state("abc123", id="abc123", filename="big.csv", size=10, status="validating",
                             step="Checking the file", percent=40)
    partial = client.get("/seats/import/abc123", headers={"HX-Request": "true", "HX-Target": "import-progress"}).text
    assert 'hx-trigger="every 1s"' in partial and 'value="40"' in partial
    seats_import.write_state("abc123", status="previewed", percent=100, result={"rows": 0, "errors": [], "new_seats": 0,
                             "updated_seats": 0, "unchanged": 0, "new_companies": 0, "new_products": 0,
                             "updated_companies": 0, "samples": []})
    partial = client.get("/seats/import/abc123", headers={"HX-Request": "true", "HX-Target": "import-progress"}).text
    assert "every 1s" not in partial


def test_an_upload_over_50_mb_is_refused_before_reading_it(client, login_as, monkeypatch):
    login_as("billing")
    monkeypatch.setattr(seats_import, "MAX_BYTES", 1000)
    response = client.post("/seats/import", data={"file": (io.BytesIO(b"x" * 200_000), "huge.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 413 and "the limit is 50 MB" in response.text


def test_cli_import_seats_is_all_or_nothing_and_idempotent(runner, pm, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "Acme,acme,Password Manager,ann@acme.example,2025-01-01,,\n")
    result = runner.invoke(args=["import-seats", str(good)])
    assert result.exit_code == 0 and "1 new seats" in result.output
    assert "0 new seats" in runner.invoke(args=["import-seats", str(good)]).output
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "Beta,,Password Manager,bob@beta.example,2025-01-01,,\nBeta,,Nope,c@beta.example,x,,\n")
    result = runner.invoke(args=["import-seats", str(bad)])
    assert result.exit_code == 1 and "line 3" in result.output
    assert db.session.query(Seat).count() == 1


def test_cli_freeze_month_twice_changes_nothing(runner, pm):
    add_company("Acme", seats=2, product=pm)
    first = runner.invoke(args=["freeze-month"])
    assert first.exit_code == 0 and "Froze" in first.output
    assert "already frozen" in runner.invoke(args=["freeze-month"]).output
    assert runner.invoke(args=["compute-counts"]).exit_code == 0
    assert db.session.query(MonthlyCount).filter_by(frozen=True).count() == 1
