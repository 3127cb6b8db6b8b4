"""HaloPsaClient against mocked HTTP (responses): every request it makes, and how failures surface."""

from __future__ import annotations

import datetime as dt
import json
import logging
from urllib.parse import parse_qs, urlsplit

import fakeredis
import pytest
import responses
from cryptography.fernet import Fernet

from webapp.psa_clients import (
    PSA_KINDS,
    ComputedLine,
    CredentialsRejected,
    HostRefused,
    Line,
    NotFound,
    PermissionDenied,
    RateLimited,
    TransientError,
    ValidationFailed,
    WriteOptions,
    client_class,
    make_client,
)
from webapp.psa_clients.base import QuantityChange
from webapp.psa_clients.halopsa import HaloPsaClient
from webapp.psa_clients.http import RetryPolicy

BASE = "https://acme.halopsa.com"
SECRET = "Halo-Cl1ent-S3cret-Value"
CREDS = {"instance": "acme.halopsa.com", "tenant": "acme", "client_id": "seatsync-app", "client_secret": SECRET}
ACCESS = "HALO-ACCESS-TOKEN-0123456789"
ON = dt.date(2026, 10, 1)
OPTIONS = WriteOptions(effective_date=ON)
CIPHER = Fernet(Fernet.generate_key())


pytestmark = pytest.mark.usefixtures("public_dns")  # tests/unit/psa_clients/conftest.py


@pytest.fixture
def sleeps():
    return []


def make_halo(sleeps, redis=None, **overrides) -> HaloPsaClient:
    config = {"HTTP_SLEEP": sleeps.append, "HTTP_RETRY_POLICY": RetryPolicy(attempts=4, initial=0.5, maximum=30),
              "TOKEN_CIPHER": CIPHER}
    return make_client("halopsa", {**CREDS, **overrides}, redis=redis, config=config)


@pytest.fixture
def client(sleeps):
    return make_halo(sleeps)


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(f"{BASE}/auth/token", json={"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600})
        yield rsps


def api_calls(mocked) -> list:
    return [c for c in mocked.calls if "/api/" in c.request.url]


def query(call) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


def line(id_, item, qty, **extra) -> dict:
    return {"id": id_, "ihid": 7, "_itemid": item, "item_shortdescription": f"Item {item}", "qty_order": qty,
            "unit_price": 4.0, "unit_cost": 2.0, **extra}


def invoice(id_=7, lines=(), **extra) -> dict:
    return {"id": id_, "client_id": 12, "name": f"Invoice {id_}", "disabled": False, "currency_code_name": "USD",
            "lines": list(lines), **extra}


# --------------------------------------------------------------------------------------------------
# Registration, credentials form, token
# --------------------------------------------------------------------------------------------------
def test_halopsa_is_the_fourth_psa_kind():
    assert PSA_KINDS[-1] == "halopsa" and client_class("halopsa") is HaloPsaClient
    fields = {f.name: f for f in HaloPsaClient.credential_fields}
    assert [f.label for f in fields.values()] == ["Instance URL", "Tenant", "Client ID", "Client Secret", "Scope"]
    assert fields["client_secret"].secret and fields["instance"].host
    assert not fields["tenant"].required and not fields["scope"].required


@pytest.mark.parametrize("typed", ["https://acme.halopsa.com/", "acme.halopsa.com/auth/token", "ACME.halopsa.com"])
def test_a_pasted_instance_url_is_shortened_to_the_host(typed):
    values, notices = HaloPsaClient.normalize_credentials({**CREDS, "instance": typed})
    assert values["instance"] == "acme.halopsa.com"
    assert bool(notices) == (typed != "ACME.halopsa.com")


@pytest.mark.parametrize("typed", ["http://acme.halopsa.com", "ftp://acme.halopsa.com", "user:pw@acme.halopsa.com"])
def test_an_unusable_instance_url_is_refused_with_a_clear_message(typed):
    with pytest.raises(ValidationFailed) as error:
        HaloPsaClient.normalize_credentials({**CREDS, "instance": typed})
    assert "acme.halopsa.com" in error.value.hint


def test_the_client_secret_is_never_trimmed():
    values, _ = HaloPsaClient.normalize_credentials({**CREDS, "client_secret": " spaced "})
    assert values["client_secret"] == " spaced "


def test_the_token_request_is_client_credentials_for_the_tenant_with_the_default_scope(client, mocked):
    mocked.get(f"{BASE}/api/Client", json={"record_count": 42, "clients": []})
    assert client.check_credentials() == "instance acme.halopsa.com, 42 active customers"
    token = mocked.calls[0].request
    assert urlsplit(token.url).path == "/auth/token" and query(mocked.calls[0]) == {"tenant": "acme"}
    form = {k: v[0] for k, v in parse_qs(token.body).items()}
    assert form == {"grant_type": "client_credentials", "client_id": "seatsync-app", "client_secret": SECRET,
                    "scope": "all"}
    assert api_calls(mocked)[0].request.headers["Authorization"] == f"Bearer {ACCESS}"


def test_a_self_hosted_instance_sends_no_tenant_and_a_typed_scope(sleeps, mocked):
    mocked.get(f"{BASE}/api/Client", json={"record_count": 1, "clients": []})
    make_halo(sleeps, tenant="", scope="read:customers edit:invoices").check_credentials()
    assert query(mocked.calls[0]) == {}
    assert "scope=read%3Acustomers+edit%3Ainvoices" in mocked.calls[0].request.body


def test_a_refused_secret_is_rejected_with_a_hint_and_never_echoed(client, mocked):
    mocked.replace(responses.POST, f"{BASE}/auth/token", status=401,
                   json={"error": "invalid_client", "error_description": f"bad secret {SECRET}"})
    with pytest.raises(CredentialsRejected) as error:
        client.check_credentials()
    assert error.value.status == 401 and "Client Secret" in error.value.hint
    assert SECRET not in str(error.value) and "bad secret ***" in str(error.value)


def test_an_outage_of_the_token_endpoint_is_transient_not_a_rejection(client, mocked, sleeps):
    mocked.replace(responses.POST, f"{BASE}/auth/token", status=503, body="down")
    with pytest.raises(TransientError) as error:
        client.check_credentials()
    assert not isinstance(error.value, CredentialsRejected)
    assert len(sleeps) == 3  # retried like a read


def test_a_token_refused_mid_session_is_replaced_once_then_the_credentials_are_rejected(client, mocked):
    mocked.get(f"{BASE}/api/Lookup", json=[])
    client.company_scope_options()
    mocked.replace(responses.GET, f"{BASE}/api/Lookup", status=401, body="Unauthorized")
    with pytest.raises(CredentialsRejected):
        client.company_scope_options()
    assert sum(c.request.url.startswith(f"{BASE}/auth/token") for c in mocked.calls) == 2  # one new token only


def test_a_token_near_its_expiry_is_renewed_before_use(client, mocked):
    mocked.get(f"{BASE}/api/Lookup", json=[])
    client.company_scope_options()
    client._token.expires_at = client._token.margin + 1  # long past its renewal time
    client.company_scope_options()
    assert sum("/auth/token" in c.request.url for c in mocked.calls) == 2
    assert all(c.response.status_code == 200 for c in api_calls(mocked))


def test_workers_share_one_encrypted_token_and_never_the_secret(sleeps, mocked):
    redis = fakeredis.FakeRedis()
    mocked.get(f"{BASE}/api/Lookup", json=[])
    for _ in range(3):
        make_halo(sleeps, redis=redis).company_scope_options()
    assert sum("/auth/token" in c.request.url for c in mocked.calls) == 1
    (key,) = redis.scan_iter("seatsync:halopsa:token:*")
    stored = redis.get(key)
    assert ACCESS.encode() not in stored and SECRET.encode() not in CIPHER.decrypt(stored)
    assert SECRET.encode() not in b"".join(redis.scan_iter())


def test_the_secret_and_token_stay_out_of_reprs_and_logs(client, mocked, caplog):
    caplog.set_level(logging.DEBUG)
    mocked.get(f"{BASE}/api/Lookup", json=[])
    client.company_scope_options()
    assert SECRET not in repr(client) and ACCESS not in repr(client._token)
    assert SECRET not in caplog.text and ACCESS not in caplog.text


def test_a_private_instance_host_is_refused(sleeps):
    with pytest.raises(HostRefused):
        make_halo(sleeps, instance="10.0.0.5").check_credentials()


# --------------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------------
def test_customers_are_paged_to_the_end_and_filtered_by_type_and_status(client, mocked):
    page1 = [{"id": i, "name": f"C{i:03d}", "customertype": 1 if i % 2 else 2, "inactive": False} for i in range(100)]
    page2 = [{"id": 100, "name": "Last", "customertype": 1, "inactive": True}]
    mocked.get(f"{BASE}/api/Client", json={"record_count": 101, "clients": page1})
    mocked.get(f"{BASE}/api/Client", json={"record_count": 101, "clients": page2})
    found = client.list_companies(type_ids=["1"], status_ids=["inactive"])
    assert [c.name for c in found] == ["Last"]
    assert [query(c)["page_no"] for c in api_calls(mocked)] == ["1", "2"]
    assert query(api_calls(mocked)[0]) == {"includeinactive": "true", "pageinate": "true", "page_size": "100",
                                           "page_no": "1"}


def test_company_search_stops_at_the_limit(client, mocked):
    rows = [{"id": i, "name": f"Acme {i}", "inactive": False} for i in range(100)]
    mocked.get(f"{BASE}/api/Client", json={"record_count": 500, "clients": rows})
    assert len(client.search_companies("acme", limit=5)) == 5
    assert len(api_calls(mocked)) == 1 and query(api_calls(mocked)[0])["search"] == "acme"


def test_items_are_the_products_with_their_recurring_price(client, mocked):
    mocked.get(f"{BASE}/api/Item", json={"record_count": 2, "items": [
        {"id": 5, "name": "Backup", "recurringprice": 4.5}, {"id": 3, "name": "Antivirus", "baseprice": 2}]})
    assert [(p.id, p.name, p.detail) for p in client.list_products()] == [("3", "Antivirus", "2.00"),
                                                                         ("5", "Backup", "4.50")]
    assert "includeinactive" not in query(api_calls(mocked)[0])


def test_agreements_are_the_customers_recurring_invoices_that_are_not_disabled(client, mocked):
    mocked.get(f"{BASE}/api/RecurringInvoice", json={"record_count": 2, "invoices": [
        invoice(8, name="Monthly", nextcreationdate="2026-11-01T00:00:00"), invoice(9, disabled=True)]})
    (agreement,) = client.list_agreements("12")
    assert (agreement.id, agreement.name, agreement.company_id, agreement.detail) == (
        "8", "Monthly", "12", "next invoice 2026-11-01")
    assert query(api_calls(mocked)[0])["client_id"] == "12"


def test_one_recurring_invoice_is_read_with_its_lines_in_one_call(client, mocked):
    mocked.get(f"{BASE}/api/RecurringInvoice/7", json=invoice(7, [
        line(70, 5, 12.0), line(71, 6, 3.0, isinactive=True), line(72, 7, 1.0, enddate="2026-09-30T00:00:00")]))
    (only,) = client.read_lines(["7"], ON)["7"]
    assert (only.line_id, only.product_id, only.quantity, only.unit_price, only.unit_cost, only.currency) == (
        "70", "5", 12.0, 4.0, 2.0, "USD")
    assert query(api_calls(mocked)[0]) == {"includedetails": "true"}


def test_many_recurring_invoices_are_read_through_the_list_a_page_per_hundred(client, mocked):
    pages = [[invoice(i, [line(1000 + i, 5, i)]) for i in range(start, start + 100)] for start in (1, 101, 201)]
    for rows in pages:
        mocked.get(f"{BASE}/api/RecurringInvoice", json={"record_count": 300, "invoices": rows})
    wanted = [str(i) for i in range(1, 301, 7)]
    lines = client.read_lines(wanted, ON)
    assert set(lines) == set(wanted) and lines["8"][0].quantity == 8.0
    assert len(api_calls(mocked)) == 3
    assert all(query(c)["includelines"] == "true" for c in api_calls(mocked))


def test_a_line_whose_quantity_halo_computes_is_marked_and_never_written(client, mocked):
    mocked.get(f"{BASE}/api/RecurringInvoice/7", json=invoice(7, [line(70, 5, 12, recurring_invoice_quantity_type=1)]))
    (computed,) = client.read_lines(["7"], ON)["7"]
    assert isinstance(computed, ComputedLine) and computed.reason == "quantity managed by HaloPSA"
    assert "fixed quantity" in computed.hint
    (result,) = client.set_quantities("7", [QuantityChange("5", 20, computed)], options=OPTIONS)
    assert isinstance(result, ValidationFailed)
    plain = Line("7", "5", "70", 12.0)  # even when the caller passes a plain line, the last read says so
    with pytest.raises(ValidationFailed):
        client.set_quantity("7", "5", 20, current=plain, options=OPTIONS)
    assert not any("updatelines" in c.request.url for c in mocked.calls)


def test_a_deleted_recurring_invoice_says_to_edit_the_mapping(client, mocked):
    mocked.get(f"{BASE}/api/RecurringInvoice/7", status=404, json={"message": "not found"})
    with pytest.raises(NotFound) as error:
        client.read_lines(["7"], ON)
    assert "edit the mapping" in error.value.hint


def test_a_missing_permission_names_what_the_api_application_needs(client, mocked):
    mocked.get(f"{BASE}/api/Item", status=403, body="Forbidden")
    with pytest.raises(PermissionDenied) as error:
        client.list_products()
    assert "edit on invoices" in error.value.hint


# --------------------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------------------
def test_several_lines_of_one_recurring_invoice_are_written_in_one_request_as_absolute_quantities(client, mocked):
    mocked.get(f"{BASE}/api/RecurringInvoice/7", json=invoice(7, [line(70, 5, 12), line(71, 6, 3)]))
    a, b = client.read_lines(["7"], ON)["7"]
    mocked.post(f"{BASE}/api/RecurringInvoice/updatelines", json=[line(70, 5, 15), line(71, 6, 1), line(99, 9, 4)])
    results = client.set_quantities("7", [QuantityChange("5", 15, a), QuantityChange("6", 1, b),
                                          QuantityChange("9", 4, None)], options=OPTIONS)
    (write,) = [c for c in mocked.calls if "updatelines" in c.request.url]
    assert json.loads(write.request.body) == [
        {"id": 70, "ihid": 7, "qty_order": 15}, {"id": 71, "ihid": 7, "qty_order": 1},
        {"ihid": 7, "_itemid": 9, "qty_order": 4, "startdate": "2026-10-01T00:00:00"}]
    assert [(r.action, r.line.line_id, r.line.quantity) for r in results] == [
        ("updated", "70", 15.0), ("updated", "71", 1.0), ("created", "99", 4.0)]
    assert results[0].response == "recurring invoice line 70: qty_order 12 → 15"


def test_a_write_of_updates_only_is_retried_after_a_5xx(client, mocked, sleeps):
    mocked.get(f"{BASE}/api/RecurringInvoice/7", json=invoice(7, [line(70, 5, 12)]))
    (current,) = client.read_lines(["7"], ON)["7"]
    url = f"{BASE}/api/RecurringInvoice/updatelines"
    mocked.post(url, status=500, body="oops")
    mocked.post(url, json=[line(70, 5, 15)])
    assert client.set_quantity("7", "5", 15, current=current, options=OPTIONS).line.quantity == 15.0
    assert sum("updatelines" in c.request.url for c in mocked.calls) == 2


def test_a_write_that_adds_a_line_is_not_blindly_retried_after_a_500(client, mocked, sleeps):
    mocked.post(f"{BASE}/api/RecurringInvoice/updatelines", status=500, body="oops")
    (result,) = client.set_quantities("7", [QuantityChange("9", 4, None)], options=OPTIONS)
    assert isinstance(result, TransientError)
    assert sum("updatelines" in c.request.url for c in mocked.calls) == 1  # it may have been added


def test_429_waits_retry_after_and_a_storm_that_outlasts_the_retries_is_rate_limited(client, mocked, sleeps):
    mocked.get(f"{BASE}/api/Item", status=429, headers={"Retry-After": "7"}, body="slow down")
    with pytest.raises(RateLimited):
        client.list_products()
    assert sleeps == [7.0, 7.0, 7.0]


def test_a_validation_error_keeps_the_psa_message_scrubbed(client, mocked):
    mocked.get(f"{BASE}/api/RecurringInvoice/7", json=invoice(7, [line(70, 5, 12)]))
    (current,) = client.read_lines(["7"], ON)["7"]
    mocked.post(f"{BASE}/api/RecurringInvoice/updatelines", status=400, json=f"Line locked by {ACCESS}")
    with pytest.raises(ValidationFailed) as error:
        client.set_quantity("7", "5", 15, current=current, options=OPTIONS)
    assert str(error.value) == "HaloPSA refused the request: Line locked by ***"


@pytest.mark.parametrize("target", [-1, 2.5])
def test_a_quantity_halo_cannot_bill_is_refused_before_any_request(client, mocked, target):
    with pytest.raises(ValidationFailed):
        client.set_quantity("7", "5", target, current=None, options=OPTIONS)
    assert api_calls(mocked) == []


def test_the_budget_is_sixty_requests_a_minute_per_instance_shared_by_all_workers(sleeps):
    client = make_halo(sleeps, redis=fakeredis.FakeRedis())
    limiter = client.http.limiter
    assert (limiter.per_minute.amount, limiter.hourly, limiter.concurrency) == (60, None, 3)
    assert limiter.tenant_key == "halopsa:acme.halopsa.com:acme" and SECRET not in limiter.tenant_key
