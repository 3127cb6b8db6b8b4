"""The Sync runs pages: history with counts, a run's lines, review before push, CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from webapp.extensions import db
from webapp.models import Company, CompanyMapping, Integration, LineResult, Product, SyncRun


@pytest.fixture
def reviewed_run(app):
    integration = Integration(kind="autotask", enabled=True)
    company, product = Company(name="Acme <Dental>"), Product(name="Endpoint Backup")
    db.session.add_all([integration, company, product])
    db.session.flush()
    mapping = CompanyMapping(integration_id=integration.id, company_id=company.id, psa_company_id="1",
                             agreement_id="10", status="needs attention")
    db.session.add(mapping)
    db.session.flush()
    start = dt.datetime(2026, 11, 2, 2, 0, tzinfo=dt.UTC)
    run = SyncRun(integration_id=integration.id, trigger="schedule", state="awaiting_review", dry_run=True,
                  total=1, done=1, needs_attention=1, started_at=start, finished_at=None,
                  month=dt.date(2026, 10, 1))
    db.session.add(run)
    db.session.flush()
    for target, before in ((3, 5.0), (8, 2.0)):
        db.session.add(LineResult(run_id=run.id, company_mapping_id=mapping.id, product_id=product.id,
                                  psa_product_id=str(target), agreement_id="10", before=before, target=target,
                                  action="planned", message="=HYPERLINK(\"x\")"))
    db.session.commit()
    return run


def test_the_runs_page_lists_each_run_with_its_trigger_and_counts(client, login_as, reviewed_run):
    login_as("viewer")
    page = client.get("/runs/")
    assert page.status_code == 200
    assert "Schedule" in page.text and "waiting for approval" in page.text
    assert f"/runs/{reviewed_run.id}" in page.text


def test_a_run_shows_each_company_line_and_escapes_psa_text(client, login_as, reviewed_run):
    login_as("viewer")
    page = client.get(f"/runs/{reviewed_run.id}")
    assert "Acme &lt;Dental&gt;" in page.text and "Acme <Dental>" not in page.text
    assert "Approve ticked" not in page.text  # a viewer sees the plan but cannot decide it


def test_billing_approves_one_change_and_dismisses_the_rest_in_bulk(client, login_as, reviewed_run, app):
    login_as("billing")
    page = client.get(f"/runs/{reviewed_run.id}")
    assert "2 planned change(s)" in page.text
    first, second = db.session.scalars(db.select(LineResult).order_by(LineResult.id)).all()
    response = client.post(f"/runs/{reviewed_run.id}/review", data={"decision": "approve", "line": [str(first.id)]})
    assert response.status_code == 302
    db.session.rollback()
    assert db.session.get(LineResult, first.id).action == "approved"
    assert len(app.extensions["queue"]) == 1  # the approved change is pushed by a job
    client.post(f"/runs/{reviewed_run.id}/review?scope=all", data={"decision": "dismiss"})
    db.session.rollback()
    assert db.session.get(LineResult, second.id).action == "dismissed"
    assert db.session.get(LineResult, first.id).action == "approved"


def test_a_run_exports_as_csv_without_spreadsheet_formulas(client, login_as, reviewed_run):
    login_as("viewer")
    response = client.get(f"/runs/{reviewed_run.id}.csv")
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["company"], r["before"], r["target"], r["action"]) for r in rows] == [
        ("Acme <Dental>", "5", "3", "planned"), ("Acme <Dental>", "2", "8", "planned")]
    assert all(r["message"].startswith("'=") for r in rows)


@pytest.fixture
def pushed_run(reviewed_run):
    """A finished run that wrote one line (5 → 3) and left one planned change undecided."""
    reviewed_run.state, reviewed_run.finished_at = "finished", dt.datetime(2026, 11, 2, 2, 5, tzinfo=dt.UTC)
    first = db.session.scalars(db.select(LineResult).order_by(LineResult.id)).first()
    first.action, first.after = "updated", 3.0
    db.session.commit()
    return reviewed_run


def test_a_viewer_sees_no_revert_button_and_cannot_revert(client, login_as, pushed_run):
    login_as("viewer")
    assert "Revert this run" not in client.get(f"/runs/{pushed_run.id}").text
    assert client.post(f"/runs/{pushed_run.id}/revert").status_code == 403
    assert db.session.scalar(db.select(db.func.count(SyncRun.id))) == 1


def test_billing_sees_revert_buttons_only_for_what_the_run_wrote(client, login_as, pushed_run):
    login_as("billing")
    page = client.get(f"/runs/{pushed_run.id}").text
    assert "Revert this run" in page and "Revert this company" in page
    mapping_id = db.session.scalar(db.select(CompanyMapping.id))
    page = client.get(f"/runs/{pushed_run.id}?company={mapping_id}").text
    assert "Revert this run" not in page and "Revert this company" in page  # narrowed to one company


def test_a_run_that_wrote_nothing_or_is_still_running_is_not_reverted(client, login_as, reviewed_run):
    login_as("billing")
    answer = client.post(f"/runs/{reviewed_run.id}/revert", follow_redirects=True)
    assert "wrote nothing to the PSA: there is nothing to revert" in answer.text
    assert "Revert this run" not in answer.text
    reviewed_run.state = "running"
    db.session.commit()
    answer = client.post(f"/runs/{reviewed_run.id}/revert", follow_redirects=True)
    assert "still running" in answer.text
    assert db.session.scalar(db.select(db.func.count(SyncRun.id))) == 1


def test_a_revert_form_with_a_bad_company_is_a_clear_400(client, login_as, pushed_run):
    login_as("billing")
    assert client.post(f"/runs/{pushed_run.id}/revert", data={"company": "abc"}).status_code == 400
