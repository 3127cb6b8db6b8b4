"""The audit log page: who, when, what (before → after), filters, pagination, CSV export; read-only."""

import csv
import datetime as dt
import io

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from webapp.audit import record
from webapp.blueprints.audit import AuditRowsAreImmutable
from webapp.extensions import db
from webapp.models import AuditEvent, Organisation


def add(kind="mapping.saved", target="Acme Dental", actor="billing@msp.example", at=None, **kw):
    event = record(kind, target, kw.pop("summary", ""), actor=actor, **kw)
    if at:
        event.at = at
    db.session.commit()
    return event


def test_the_log_shows_who_when_and_what_changed(client, login_as):
    login_as("viewer")
    add("schedule.changed", "ConnectWise Manage", before={"schedule": "daily 06:00"},
        after={"schedule": "weekly Mon 07:00"}, at=dt.datetime(2026, 3, 4, 9, 30, tzinfo=dt.UTC))
    page = client.get("/audit")
    assert page.status_code == 200
    text = page.text
    assert "2026-03-04 09:30:00" in text and "billing@msp.example" in text and "schedule.changed" in text
    assert "ConnectWise Manage" in text
    assert '<span class="before">daily 06:00</span> → <span class="after">weekly Mon 07:00</span>' in text


def test_times_and_date_filters_use_the_organisation_time_zone(client, login_as):
    login_as("viewer")
    Organisation.get().timezone = "America/New_York"
    # 02:00 UTC on 5 March is still 4 March in New York.
    add(target="late evening", at=dt.datetime(2026, 3, 5, 2, 0, tzinfo=dt.UTC))
    add(target="next morning", at=dt.datetime(2026, 3, 5, 14, 0, tzinfo=dt.UTC))
    page = client.get("/audit?from=2026-03-04&to=2026-03-04").text
    assert "late evening" in page and "next morning" not in page
    assert "2026-03-04 21:00:00" in page


def test_filters_by_user_and_kind(client, login_as):
    login_as("viewer")
    add("mapping.saved", "one", actor="ann@msp.example")
    add("sync.manual", "two", actor="ann@msp.example")
    add("mapping.saved", "three", actor="bob@msp.example")
    page = client.get("/audit?actor=ann@msp.example&kind=mapping.saved").text
    assert "one" in page and "two" not in page and "three" not in page and "1 event" in page


def test_a_bad_date_says_so(client, login_as):
    login_as("viewer")
    assert "From must be a date" in client.get("/audit?from=yesterday").text


def test_pagination_walks_back_through_history(client, login_as):
    login_as("viewer")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for n in range(120):
        record("import.seats", f"file-{n:03d}", actor="ann@msp.example").at = start + dt.timedelta(minutes=n)
    db.session.commit()
    first = client.get("/audit").text
    assert "file-119" in first and "file-070" in first and "file-069" not in first and "Page 1 of 3" in first
    last = client.get("/audit?page=3").text
    assert "file-019" in last and "file-000" in last and "file-020" not in last
    assert client.get("/audit?page=99").status_code == 200


def test_filtering_with_htmx_swaps_only_the_results(client, login_as):
    login_as("viewer")
    add(target="only row")
    partial = client.get("/audit?kind=mapping.saved", headers={"HX-Request": "true", "HX-Target": "audit-results"})
    assert "only row" in partial.text and "<html" not in partial.text


def test_the_csv_export_has_every_filtered_event_and_is_safe_to_open_in_a_spreadsheet(client, login_as):
    login_as("viewer")
    add("import.seats", "=HYPERLINK(\"http://evil\")", after={"rows": 12})
    add("mapping.saved", "Acme Dental")
    response = client.get("/audit/export.csv?kind=import.seats")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["time", "user", "kind", "target", "summary", "before", "after"]
    assert len(rows) == 2
    assert rows[1][2] == "import.seats" and rows[1][6] == '{"rows": 12}'
    assert rows[1][3] == "'=HYPERLINK(\"http://evil\")"


def test_a_secret_that_slipped_into_an_event_is_never_shown(client, login_as):
    login_as("viewer")
    add("credentials.changed", "Autotask", before={"password": "hunter2", "username": "api@x"},
        after={"private_key": "pk-secret", "username": "api2@x"})
    page = client.get("/audit").text
    csv_text = client.get("/audit/export.csv").text
    for leak in ("hunter2", "pk-secret"):
        assert leak not in page and leak not in csv_text
    assert "[hidden]" in page and "api2@x" in page


def test_audit_rows_cannot_be_edited_or_deleted(app, client, login_as):
    login_as("admin")
    event = add()
    assert not [rule for rule in app.url_map.iter_rules()
                if rule.endpoint.startswith("audit.") and (rule.methods - {"GET", "HEAD", "OPTIONS"})]
    event.summary = "rewritten history"
    with pytest.raises(AuditRowsAreImmutable):
        db.session.commit()
    db.session.rollback()
    db.session.delete(db.session.get(AuditEvent, event.id))
    with pytest.raises(AuditRowsAreImmutable):
        db.session.commit()
    db.session.rollback()
    assert db.session.get(AuditEvent, event.id).summary == ""


def test_the_database_itself_refuses_to_change_or_delete_audit_rows(app):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the trigger is PostgreSQL's; SQLite (embedded mode) keeps the ORM guard only")
    event = add()
    # Plain SQL, as anyone holding the application's database role could send, past the ORM guard.
    for statement in ("UPDATE audit_events SET summary = 'rewritten history'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="audit_events rows are immutable"):
            db.session.execute(text(statement))
        db.session.rollback()
    assert db.session.get(AuditEvent, event.id).summary == ""
