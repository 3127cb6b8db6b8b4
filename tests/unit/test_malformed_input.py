"""Malformed input gets a clear 4xx, never a 500 (issue 11 §8)."""

import datetime as dt
import io
import json

import pytest

from webapp.extensions import db
from webapp.models import ApiToken, AuditEvent, Company, Product, Seat

HUGE = "9" * 30  # far past any integer column
JUST_PAST = str(2**31)  # one past PostgreSQL's INTEGER, the id columns' type


@pytest.fixture
def api(app):
    row, secret = ApiToken.issue("vendor", "write", None)
    db.session.add(row)
    db.session.commit()
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def seat(app):
    company = Company(name="C" * 255, external_id="long")
    product = Product(name="P" * 200)
    db.session.add_all([company, product])
    db.session.flush()
    row = Seat(company_id=company.id, product_id=product.id, user_email=("u" * 60) + "@msp.example",
               active_from=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    db.session.add(row)
    db.session.commit()
    return row


@pytest.mark.parametrize("path", [f"/api/v1/companies/{HUGE}", f"/api/v1/companies/{JUST_PAST}",
                                  f"/api/v1/seats/{HUGE}/deactivate"])
def test_api_ids_beyond_64_bits_are_not_found(client, api, path):
    method = client.post if path.endswith("deactivate") else client.get
    response = method(path, headers=api, json={})
    assert response.status_code == 404 and response.json["error"] == "not_found"


@pytest.mark.parametrize("query", [f"page={HUGE}", f"per_page={HUGE}", f"company_id={HUGE}", f"company_id={JUST_PAST}",
                                   "company_id=%C2%B2"])
def test_api_numbers_beyond_64_bits_in_the_query_are_a_validation_error(client, api, query):
    path = "/api/v1/seats" if "company_id" in query else "/api/v1/companies"
    response = client.get(f"{path}?{query}", headers=api)
    assert response.status_code == 422 and response.json["error"] == "validation_failed"


@pytest.mark.parametrize("path", [f"/runs/{HUGE}", f"/companies/{HUGE}", f"/seats/{HUGE}/end"])
def test_page_ids_beyond_64_bits_are_not_found(client, login_as, path):
    login_as("admin")
    response = client.post(path) if path.endswith("end") else client.get(path)
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/companies", "/runs/", "/audit", "/integrations/connectwise/companies"])
def test_page_numbers_beyond_64_bits_show_the_first_page(client, login_as, path):
    login_as("admin")
    assert client.get(f"{path}?page={HUGE}").status_code == 200


def test_company_ids_beyond_64_bits_in_a_form_are_skipped(client, login_as):
    login_as("admin")
    response = client.post("/integrations/connectwise/suggest/confirm", data={"company": [HUGE]})
    assert response.status_code < 500


def test_nul_characters_are_refused_in_json_query_and_forms(client, api, login_as):
    response = client.post("/api/v1/companies", headers=api, json={"name": "Acme\u0000Dental"})
    assert response.status_code == 400 and "NUL character" in response.json["message"]
    assert client.get("/api/v1/companies?q=a%00b", headers=api).status_code == 400
    login_as("billing")
    page = client.post("/companies", data={"name": "Acme\x00", "external_id": ""})
    assert page.status_code == 400 and "NUL character" in page.text
    assert db.session.scalar(db.select(db.func.count(Company.id))) == 0


def test_lone_surrogates_in_json_are_refused(client, api):
    body = '{"name": "Acme \\ud800 Dental"}'
    response = client.post("/api/v1/companies", headers={**api, "Content-Type": "application/json"}, data=body)
    assert response.status_code == 400 and "unpaired surrogate" in response.json["message"]
    keyed = client.post("/api/v1/seats", headers={**api, "Content-Type": "application/json"},
                        data='{"seats": [{"\\udfff": 1}]}')
    assert keyed.status_code == 400


def test_deeply_nested_json_is_a_bad_request(client, api):
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/seats", headers={**api, "Content-Type": "application/json"}, data=body)
    assert response.status_code == 400
    assert response.json["error"] == "bad_request"


def test_ending_a_seat_of_a_company_with_a_255_character_name_works_and_is_audited(client, api, login_as, seat):
    response = client.post(f"/api/v1/seats/{seat.id}/deactivate", headers=api, json={})
    assert response.status_code == 200
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="seat.ended"))
    assert len(event.target) == 255 and event.target.startswith("C" * 255)


def test_ending_a_seat_on_the_page_with_a_255_character_company_name_works(client, login_as, seat):
    login_as("billing")
    assert client.post(f"/seats/{seat.id}/end").status_code == 302
    assert db.session.get(Seat, seat.id).active_to is not None


def test_a_28_mb_json_body_is_refused_with_413(client, api):
    body = json.dumps({"seats": [{"user_email": "x" * 1000}] * 28_000})
    assert len(body) > 28_000_000
    response = client.post("/api/v1/seats", headers={**api, "Content-Type": "application/json"}, data=body)
    assert response.status_code == 413 and response.json["error"] == "request_entity_too_large", response.json


def test_a_csv_upload_may_be_larger_than_a_form(client, login_as):
    login_as("billing")
    rows = "".join(f"Acme,acme,Password Manager,user{i}@acme.example,2026-01-01,,yes\n" for i in range(60_000))
    data = ("company,company_external_id,product,user_email,active_from,active_to,billable\n" + rows).encode()
    assert len(data) > 3 * 1024 * 1024
    response = client.post("/seats/import", data={"file": (io.BytesIO(data), "big.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302 and "/seats/import/" in response.headers["Location"]


def test_a_form_larger_than_the_limit_is_refused_with_413(client, login_as):
    login_as("billing")
    response = client.post("/companies", data={"name": "x" * (3 * 1024 * 1024)})
    assert response.status_code == 413


@pytest.mark.parametrize("path,form", [
    ("seats", {"product_id": HUGE, "user_email": "a@acme.example", "active_from": "2026-01-01"}),
    ("seats", {"product_id": "²", "user_email": "a@acme.example", "active_from": "2026-01-01"}),
    ("overrides", {"product_id": HUGE, "month": "2026-01", "count": "1", "note": "n"}),
    ("overrides", {"product_id": "PRODUCT", "month": "2026-01", "count": HUGE, "note": "n"}),
    ("overrides", {"product_id": "PRODUCT", "month": "2026-01", "count": "²", "note": "n"}),
])
def test_numbers_a_form_cannot_hold_are_refused_with_a_message(client, login_as, seat, path, form):
    login_as("billing")
    form = {k: str(seat.product_id) if v == "PRODUCT" else v for k, v in form.items()}
    response = client.post(f"/companies/{seat.company_id}/{path}", data=form)
    assert response.status_code == 422
    assert "pick a product" in response.text or "a whole number" in response.text
