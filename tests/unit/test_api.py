"""The JSON API: token authentication and scopes, upserts, validation errors with field names, pagination."""

import datetime as dt

import pytest

from webapp import counts
from webapp.extensions import db
from webapp.models import ApiToken, AuditEvent, Company, CountOverride, Product, Seat


def token(scope="write", revoked=False):
    row, secret = ApiToken.issue("vendor sync", scope, None)
    if revoked:
        row.revoked_at = dt.datetime.now(dt.UTC)
    db.session.add(row)
    db.session.commit()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def pm(app):
    product = Product(name="Password Manager")
    db.session.add(product)
    db.session.commit()
    return product


@pytest.fixture
def acme(app):
    company = Company(name="Acme Dental", external_id="acme")
    db.session.add(company)
    db.session.commit()
    return company


def test_requests_without_a_token_are_refused_with_json(client):
    response = client.get("/api/v1/companies")
    assert response.status_code == 401 and response.json["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/companies", headers={"Authorization": "Bearer ss_nope"}).status_code == 401
    assert client.post("/api/v1/companies", json={"name": "X"}, csrf=False).status_code == 401


def test_a_revoked_token_is_refused(client):
    assert client.get("/api/v1/companies", headers=token(revoked=True)).status_code == 401


def test_a_read_token_reads_but_cannot_write(client, acme):
    headers = token("read")
    assert client.get("/api/v1/companies", headers=headers).json["data"][0]["name"] == "Acme Dental"
    response = client.post("/api/v1/companies", json={"name": "X"}, headers=headers, csrf=False)
    assert response.status_code == 403 and "read scope" in response.json["message"]
    assert db.session.query(Company).count() == 1


def test_a_session_cookie_is_not_an_api_credential(client, login_as):
    login_as("admin")
    assert client.get("/api/v1/companies").status_code == 401


def test_the_token_records_when_it_was_last_used(client):
    headers = token("read")
    client.get("/api/v1/products", headers=headers)
    assert db.session.scalar(db.select(ApiToken)).last_used_at is not None


def test_companies_are_upserted_by_external_id(client):
    headers = token()
    created = client.post("/api/v1/companies", json={"name": "Acme", "external_id": "acme"}, headers=headers)
    assert created.status_code == 201
    updated = client.post("/api/v1/companies", json={"name": "Acme Dental", "external_id": "acme"}, headers=headers)
    assert updated.status_code == 200 and updated.json["id"] == created.json["id"]
    assert db.session.scalar(db.select(Company.name)) == "Acme Dental"
    assert db.session.scalar(db.select(AuditEvent.actor).filter_by(kind="company.changed")).startswith("api token")


def test_validation_errors_name_the_fields(client, pm):
    headers = token()
    response = client.post("/api/v1/companies", json={"name": "", "active": "yes"}, headers=headers)
    assert response.status_code == 422
    assert response.json["error"] == "validation_failed"
    assert response.json["fields"] == {"name": "required", "active": "must be true or false"}
    response = client.post("/api/v1/seats", json={"company_id": 999, "product": "Nope", "user_email": "not-mail",
                                                  "active_from": "31/01/2025"}, headers=headers)
    assert set(response.json["fields"]) == {"company_id", "product", "user_email", "active_from"}
    assert client.post("/api/v1/seats", data="nope", headers=headers).json["error"] == "bad_request"
    assert client.get("/api/v1/companies?per_page=9999", headers=headers).json["fields"] == {
        "per_page": "a whole number from 1 to 500"}


def test_seats_are_upserted_and_re_sending_changes_nothing(client, acme, pm):
    headers = token()
    seat = {"company_external_id": "acme", "product": "password manager", "user_email": "Ann@Acme.example",
            "active_from": "2025-01-01T09:00:00Z"}
    first = client.post("/api/v1/seats", json=seat, headers=headers)
    assert first.status_code == 201
    assert first.json["user_email"] == "ann@acme.example" and first.json["active_from"] == "2025-01-01T09:00:00Z"
    again = client.post("/api/v1/seats", json=seat, headers=headers)
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    assert db.session.query(AuditEvent).filter_by(kind="seats.upserted").count() == 1
    ended = client.post("/api/v1/seats", json={**seat, "active_to": "2025-02-01T00:00:00Z", "billable": False},
                        headers=headers)
    assert ended.json["active_to"] == "2025-02-01T00:00:00Z" and ended.json["billable"] is False


def test_a_batch_of_seats_is_all_or_nothing(client, acme, pm):
    headers = token()
    good = {"company_id": acme.id, "product_id": pm.id, "user_email": "a@acme.example", "active_from": "2025-01-01"}
    bad = {**good, "user_email": "b@acme.example", "active_to": "2024-01-01"}
    response = client.post("/api/v1/seats", json={"seats": [good, bad]}, headers=headers)
    assert response.status_code == 422
    assert response.json["fields"] == {"seats[1].active_to": "must be after active_from"}
    assert db.session.query(Seat).count() == 0
    duplicate = client.post("/api/v1/seats", json={"seats": [good, good]}, headers=headers)
    assert duplicate.status_code == 422 and "seats[1]" in duplicate.json["fields"]
    response = client.post("/api/v1/seats", json={"seats": [good, {**good, "user_email": "c@acme.example"}]},
                           headers=headers)
    assert response.status_code == 200 and response.json["created"] == 2


def test_a_seat_is_deactivated(client, acme, pm):
    headers = token()
    seat_id = client.post("/api/v1/seats", json={"company_id": acme.id, "product_id": pm.id,
                                                  "user_email": "a@acme.example", "active_from": "2025-01-01"},
                          headers=headers).json["id"]
    response = client.post(f"/api/v1/seats/{seat_id}/deactivate", headers=headers)
    assert response.status_code == 200 and response.json["active_to"] is not None
    assert client.post("/api/v1/seats/999/deactivate", headers=headers).status_code == 404


def test_lists_are_paginated_with_a_next_link(client):
    db.session.add_all([Company(name=f"C{i}") for i in range(7)])
    db.session.commit()
    headers = token("read")
    first = client.get("/api/v1/companies?per_page=3", headers=headers).json
    assert (len(first["data"]), first["total"], first["page"]) == (3, 7, 1)
    assert "page=2" in first["next"] and "per_page=3" in first["next"]
    last = client.get("/api/v1/companies?per_page=3&page=3", headers=headers).json
    assert len(last["data"]) == 1 and last["next"] is None


def test_monthly_counts_are_read_with_overrides_and_zeros(client, acme, pm):
    other = Company(name="Gone Ltd")
    db.session.add(other)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    db.session.add_all([
        Seat(company=acme, product=pm, user_email="a@x.example", active_from=start),
        Seat(company=acme, product=pm, user_email="b@x.example", active_from=start),
        Seat(company=other, product=pm, user_email="c@x.example", active_from=start, active_to=start.replace(month=2)),
    ])
    last = counts.previous_month(counts.current_month())
    db.session.add(CountOverride(company_id=acme.id, product_id=pm.id, month=last, count=9, note="kiosk"))
    db.session.commit()
    headers = token("read")
    body = client.get(f"/api/v1/counts?month={last:%Y-%m}", headers=headers).json
    assert body["month"] == f"{last:%Y-%m}" and body["closed"] is True
    by_company = {row["company_id"]: row for row in body["data"]}
    assert by_company[acme.id]["count"] == 9 and by_company[acme.id]["overridden"]
    assert by_company[other.id]["count"] == 0
    one = client.get(f"/api/v1/counts?company_id={acme.id}", headers=headers).json
    assert one["data"] == [{"company_id": acme.id, "company_external_id": "acme", "product_id": pm.id,
                            "product": "Password Manager", "month": f"{counts.current_month():%Y-%m}", "count": 2,
                            "frozen": False, "overridden": False}]
    assert client.get("/api/v1/counts?month=2025-13", headers=headers).json["fields"] == {"month": "YYYY-MM"}


def test_the_openapi_document_is_served_and_describes_every_route(app, client):
    document = client.get("/api/v1/openapi.json")
    assert document.status_code == 200 and document.json["openapi"].startswith("3.")
    documented = {("/api/v1" + path, method.upper()) for path, ops in document.json["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = rule.rule.replace("<int:", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method) in documented, (path, method)


def test_an_unknown_api_path_answers_json_not_a_page(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.is_json and response.json["error"] == "not_found"


def test_a_seat_sent_late_for_a_frozen_month_names_that_month_for_recompute(client, acme, pm):
    closed = counts.previous_month(counts.current_month())
    db.session.add(Seat(company=acme, product=pm, user_email="early@acme.example",
                        active_from=dt.datetime.combine(counts.add_months(closed, -1), dt.time(), dt.UTC)))
    db.session.commit()
    counts.freeze_month(closed)
    late = {"company_external_id": "acme", "product": "Password Manager", "user_email": "late@acme.example",
            "active_from": f"{closed.isoformat()}T12:00:00Z"}
    response = client.post("/api/v1/seats", json={"seats": [late]}, headers=token())
    assert response.json["closed_months_affected"] == [closed.strftime("%Y-%m")]
    assert response.headers["SeatSync-Closed-Months-Affected"] == closed.strftime("%Y-%m")
    current = {**late, "user_email": "now@acme.example", "active_from": dt.datetime.now(dt.UTC).isoformat()}
    counts.recompute_month(closed)
    response = client.post("/api/v1/seats", json=current, headers=token())
    assert response.status_code == 201 and "SeatSync-Closed-Months-Affected" not in response.headers
