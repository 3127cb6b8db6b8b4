"""AutotaskClient against mocked HTTP (responses): every request it makes, and how failures surface."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket

import fakeredis
import pytest
import requests
import responses
from responses import matchers

from webapp.psa_clients import (
    CredentialsRejected,
    HostRefused,
    Line,
    NotFound,
    PermissionDenied,
    RateLimited,
    TransientError,
    ValidationFailed,
    WriteOptions,
    make_client,
)
from webapp.psa_clients.autotask import AutotaskClient, parse_datetime
from webapp.psa_clients.http import RetryPolicy

ZONE_URL = "https://webservices.autotask.net/atservicesrest/v1.0/zoneInformation"
ROOT = "https://webservices14.autotask.net/ATServicesRest/"
BASE = ROOT + "v1.0/"
USER = "api-user@example.com"
SECRET = "S3cr3t-Pa55word!"
CODE = "TRACKINGIDENTIFIER123456789"
CREDS = {"username": USER, "secret": SECRET, "integration_code": CODE}
ZONE = {"zoneName": "Pre-Release", "url": ROOT, "webUrl": "https://ww14.autotask.net/", "ci": 8765}
ON = dt.date(2026, 10, 1)


@pytest.fixture(autouse=True)
def public_dns(monkeypatch):
    """Autotask hosts resolve to a public address (no DNS in tests); `private` hosts to a private one."""

    def fake_getaddrinfo(host, port, *args, **kwargs):
        address = "10.1.2.3" if "private" in host else "204.12.34.56"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    return make_autotask(sleeps)


def make_autotask(sleeps, *, redis=None, dev_hosts=frozenset(), config=None) -> AutotaskClient:
    settings = {"HTTP_SLEEP": sleeps.append, "HTTP_RETRY_POLICY": RetryPolicy(attempts=4, initial=0.5, maximum=30)}
    settings.update(config or {})
    return make_client("autotask", CREDS, redis=redis, dev_hosts=dev_hosts, config=settings)


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(ZONE_URL, json=ZONE)
        yield rsps


def body_of(call) -> dict:
    return json.loads(call.request.body)


def api_calls(rsps) -> list:
    return [c for c in rsps.calls if "zoneInformation" not in c.request.url]


def page(items, next_url=None):
    return {"items": items, "pageDetails": {"count": len(items), "requestCount": 500, "prevPageUrl": None,
                                            "nextPageUrl": next_url}}


# --------------------------------------------------------------------------------------------------
# Zone, auth headers, credentials
# --------------------------------------------------------------------------------------------------
def test_zone_lookup_carries_no_secrets_and_every_api_call_carries_the_three_auth_headers(client, mocked):
    mocked.post(BASE + "Companies/query", json=page([{"id": 0}]))

    assert "Pre-Release" in client.check_credentials()

    zone_call, query_call = mocked.calls
    assert zone_call.request.url == ZONE_URL + "?user=api-user%40example.com"
    for header in ("ApiIntegrationCode", "UserName", "Secret"):
        assert header not in zone_call.request.headers
    headers = query_call.request.headers
    assert (headers["ApiIntegrationCode"], headers["UserName"], headers["Secret"]) == (CODE, USER, SECRET)
    assert headers["Content-Type"] == "application/json"
    assert body_of(query_call) == {
        "filter": [{"op": "gte", "field": "id", "value": 0}], "maxRecords": 1, "includeFields": ["id"],
    }


def test_the_zone_is_looked_up_once_per_client(client, mocked):
    mocked.post(BASE + "Services/query", json=page([]))
    client.list_products()
    client.list_products("mail")
    assert sum("zoneInformation" in c.request.url for c in mocked.calls) == 1


def test_workers_share_the_zone_through_redis(sleeps, mocked):
    redis = fakeredis.FakeRedis()
    mocked.post(BASE + "Services/query", json=page([]))
    make_autotask(sleeps, redis=redis).list_products()
    make_autotask(sleeps, redis=redis).list_products()
    assert sum("zoneInformation" in c.request.url for c in mocked.calls) == 1


def test_a_moved_zone_is_looked_up_again_once_after_a_401(sleeps, mocked):
    redis = fakeredis.FakeRedis()
    old_root = "https://webservices2.autotask.net/ATServicesRest/"
    stale = make_autotask(sleeps, redis=redis)
    stale._use_zone({**ZONE, "url": old_root})  # what an earlier run cached
    redis.set(stale._zone_cache_key(), json.dumps({**ZONE, "url": old_root}))
    mocked.post(old_root + "v1.0/Services/query", status=401)
    mocked.post(BASE + "Services/query", json=page([{"id": 5, "name": "Backup"}]))

    client = make_autotask(sleeps, redis=redis)
    assert [p.name for p in client.list_products()] == ["Backup"]
    assert [c.request.url.split("/v1.0/")[0] for c in mocked.calls] == [
        old_root.rstrip("/"), ZONE_URL.split("/v1.0/")[0], ROOT.rstrip("/"),
    ]
    assert json.loads(redis.get(client._zone_cache_key()))["url"] == ROOT


def test_wrong_secret_is_reported_with_a_hint_to_re_enter_the_credentials(client, mocked):
    mocked.post(BASE + "Companies/query", status=401, headers={"WWW-Authenticate": 'Basic realm="webservices14"'})
    with pytest.raises(CredentialsRejected) as caught:
        client.check_credentials()
    assert caught.value.status == 401
    assert "API user or secret was rejected — re-enter them" in caught.value.hint
    assert len(api_calls(mocked)) == 1  # the zone was fresh: no pointless second lookup


def test_an_unknown_username_is_reported_at_the_zone_lookup_without_retrying_it(client, sleeps):
    with responses.RequestsMock() as rsps:
        rsps.get(ZONE_URL, status=500, json={"errors": ["Zone information could not be determined"]})
        with pytest.raises(CredentialsRejected) as caught:
            client.check_credentials()
        assert len(rsps.calls) == 1 and sleeps == []  # Autotask's answer about the user: asking again changes nothing
    assert "Username" in caught.value.hint


ZONE_FAILURES = {
    "http 500 without a body": {"status": 500, "body": ""},
    "http 500 with another error": {"status": 500, "json": {"errors": ["An unexpected error has occurred."]}},
    "gateway page": {"status": 502, "body": "<html>Bad gateway</html>"},
    "timeout": {"body": requests.ReadTimeout("read timed out")},
    "connection refused": {"body": requests.ConnectionError("connection refused")},
}


@pytest.mark.parametrize("failure", ZONE_FAILURES.values(), ids=ZONE_FAILURES.keys())
def test_a_failing_zone_lookup_is_retried_then_transient_never_rejected_credentials(client, sleeps, failure):
    with responses.RequestsMock() as rsps:
        for _ in range(4):
            rsps.get(ZONE_URL, **failure)
        with pytest.raises(TransientError) as caught:
            client.check_credentials()
        assert len(rsps.calls) == 4 and len(sleeps) == 3  # retried with backoff first
    assert not isinstance(caught.value, CredentialsRejected)
    assert "re-enter" not in caught.value.hint


def test_a_zone_lookup_answering_200_without_a_zone_is_transient(client):
    with responses.RequestsMock() as rsps:
        rsps.get(ZONE_URL, body="<html>maintenance</html>")
        with pytest.raises(TransientError):
            client.check_credentials()


def test_one_failed_zone_lookup_costs_a_retry_not_the_run(client, sleeps):
    with responses.RequestsMock() as rsps:
        rsps.get(ZONE_URL, status=500, body="")
        rsps.get(ZONE_URL, json=ZONE)
        rsps.post(BASE + "Services/query", json=page([{"id": 5, "name": "Backup"}]))
        assert [p.name for p in client.list_products()] == ["Backup"]
    assert len(sleeps) == 1


def test_a_failing_zone_lookup_falls_back_to_the_last_known_zone_after_the_cache_expired(sleeps):
    redis = fakeredis.FakeRedis()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(ZONE_URL, json=ZONE)
        rsps.post(BASE + "Services/query", json=page([{"id": 5, "name": "Backup"}]))
        first = make_autotask(sleeps, redis=redis)
        first.list_products()
        redis.delete(first._zone_cache_key())  # the 12-hour cache ran out
        rsps.replace(responses.GET, ZONE_URL, status=500, body="")

        later = make_autotask(sleeps, redis=redis)
        assert [p.name for p in later.list_products()] == ["Backup"]
        assert sum("zoneInformation" in c.request.url for c in rsps.calls) == 1 + 4  # looked up, kept failing


def test_a_real_401_stays_rejected_credentials_when_looking_up_the_zone_again_fails(client, sleeps):
    with responses.RequestsMock() as rsps:
        rsps.get(ZONE_URL, json=ZONE)
        rsps.post(BASE + "Companies/query", json=page([{"id": 0}]))
        client.check_credentials()
        rsps.replace(responses.GET, ZONE_URL, status=503, body="")
        rsps.post(BASE + "Services/query", status=401)
        with pytest.raises(CredentialsRejected) as caught:
            client.list_products()
    assert caught.value.status == 401


def test_a_zone_on_a_private_address_is_refused(client):
    with responses.RequestsMock() as rsps:
        rsps.get(ZONE_URL, json={**ZONE, "url": "https://private.example.net/ATServicesRest/"})
        with pytest.raises(HostRefused):
            client.list_products()


def test_a_development_zone_is_used_over_plain_http_as_returned(sleeps):
    zone_url = "http://127.0.0.1:8099/atservicesrest/v1.0/zoneInformation"
    client = make_autotask(sleeps, dev_hosts=frozenset({"127.0.0.1:8099"}), config={"AUTOTASK_ZONE_URL": zone_url})
    with responses.RequestsMock() as rsps:
        rsps.get(zone_url, json={**ZONE, "url": "http://127.0.0.1:8099/ATServicesRest/"})
        rsps.post("http://127.0.0.1:8099/ATServicesRest/v1.0/Services/query", json=page([]))
        assert client.list_products() == []


def test_credential_form_uses_the_seed_labels_and_requires_every_field():
    labels = [(f.name, f.label, f.secret) for f in AutotaskClient.credential_fields]
    assert labels == [("username", "Username", False), ("secret", "Password", True),
                      ("integration_code", "API Tracking Identifier", True)]
    cleaned, notices = AutotaskClient.normalize_credentials({"username": f" {USER} ", "secret": SECRET,
                                                             "integration_code": f"{CODE}\n"})
    assert cleaned == CREDS and notices == []
    with pytest.raises(ValidationFailed, match="API Tracking Identifier"):
        AutotaskClient.normalize_credentials({"username": USER, "secret": SECRET, "integration_code": " "})


def test_limits_are_kept_per_database_without_the_tracking_identifier_in_clear(sleeps, mocked):
    mocked.post(BASE + "Services/query", json=page([]))
    client = make_autotask(sleeps, redis=fakeredis.FakeRedis())
    client.list_products()
    limiter = client.http.limiter
    assert limiter.tenant_key.startswith("autotask:8765:")
    assert CODE not in limiter.tenant_key and SECRET not in limiter.tenant_key
    assert (limiter.concurrency, limiter.hourly.amount) == (3, 10_000)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, body", [
    (403, None),
    (500, {"errors": ["The logged in Resource does not have the adequate permissions to query this entity."]}),
])
def test_missing_permissions_name_the_security_level_to_grant(client, mocked, status, body):
    mocked.post(BASE + "Services/query", status=status, json=body)
    with pytest.raises(PermissionDenied) as caught:
        client.list_products()
    assert "API User (API-only)" in caught.value.hint
    assert caught.value.status == status


def test_a_validation_error_sent_as_http_500_is_not_treated_as_transient(client, mocked):
    mocked.post(BASE + "ContractServiceAdjustments", status=500,
                json={"errors": ["effectiveDate must be within the contract period."]})
    current = Line("11", "22", "33", 5)
    with pytest.raises(ValidationFailed, match="effectiveDate must be within"):
        client.set_quantity("11", "22", 7, current=current, options=WriteOptions(effective_date=ON))
    assert len(api_calls(mocked)) == 1


def test_a_validation_error_on_a_query_is_autotasks_answer_and_not_retried(client, mocked, sleeps):
    mocked.post(BASE + "Services/query", status=500, json={"errors": ["Unable to find field xyz in Service."]})
    with pytest.raises(ValidationFailed, match="Unable to find field xyz"):
        client.list_products()
    assert len(api_calls(mocked)) == 1 and sleeps == []


def test_a_429_with_an_errors_list_is_still_retried(client, mocked, sleeps):
    mocked.post(BASE + "Services/query", status=429, json={"errors": ["Too many requests"]})
    mocked.post(BASE + "Services/query", json=page([]))
    assert client.list_products() == []
    assert len(sleeps) == 1


def test_a_bare_http_500_is_transient(client, mocked):
    mocked.post(BASE + "Services/query", status=500, body="")
    with pytest.raises(TransientError) as caught:
        client.list_products()
    assert not isinstance(caught.value, ValidationFailed) and caught.value.status == 500


def test_a_retried_query_honours_retry_after(client, mocked, sleeps):
    mocked.post(BASE + "Services/query", status=429, headers={"Retry-After": "7"})
    mocked.post(BASE + "Services/query", json=page([{"id": 1, "name": "Backup"}]))
    assert [p.name for p in client.list_products()] == ["Backup"]
    assert sleeps == [7.0]


def test_gateway_errors_on_queries_are_retried(client, mocked, sleeps):
    mocked.post(BASE + "Services/query", status=503)
    mocked.post(BASE + "Services/query", status=504)
    mocked.post(BASE + "Services/query", json=page([]))
    assert client.list_products() == []
    assert len(sleeps) == 2


def test_an_ambiguous_failure_of_an_adjustment_is_never_retried_blindly(client, mocked):
    mocked.post(BASE + "ContractServiceAdjustments", status=502)
    with pytest.raises(TransientError):
        client.set_quantity("11", "22", 9, current=Line("11", "22", "33", 4), options=WriteOptions(effective_date=ON))
    mocked.post(BASE + "ContractServiceAdjustments", body=requests.ReadTimeout("read timed out"))
    with pytest.raises(TransientError):
        client.set_quantity("11", "22", 9, current=Line("11", "22", "33", 4), options=WriteOptions(effective_date=ON))
    assert len(api_calls(mocked)) == 2


def test_a_thread_limit_rejection_of_an_adjustment_is_retried_because_it_was_not_processed(client, mocked, sleeps):
    thread_limit = {"errors": ["Thread Threshold Exceeded — The Autotask API thread threshold of 3 threads "
                               "has been exceeded. (Itgenatr005)"]}
    mocked.post(BASE + "ContractServiceAdjustments", status=500, json=thread_limit)
    mocked.post(BASE + "ContractServiceAdjustments", json={"itemId": 77})
    result = client.set_quantity("11", "22", 9, current=Line("11", "22", "33", 4),
                                 options=WriteOptions(effective_date=ON))
    assert result.action == "adjusted" and result.line.quantity == 9
    assert [body_of(c)["unitChange"] for c in api_calls(mocked)] == [5, 5]
    assert len(sleeps) == 1


def test_a_persistent_thread_limit_is_reported_as_rate_limited(client, mocked):
    body = {"errors": ["The thread threshold of 3 threads has been exceeded"]}
    mocked.post(BASE + "Services/query", status=405, json=body)  # any status: matched on the message
    with pytest.raises(RateLimited):
        client.list_products()
    assert len(api_calls(mocked)) == 4


def test_no_secret_reaches_an_error_message_a_repr_or_a_log(client, mocked, caplog):
    caplog.set_level(logging.DEBUG)
    mocked.post(BASE + "Services/query", status=500,
                json={"errors": [f"Invalid tracking identifier {CODE} for secret {SECRET}"]})
    with pytest.raises(ValidationFailed) as caught:
        client.list_products()
    mocked.post(BASE + "Companies/query", status=401)
    with pytest.raises(CredentialsRejected) as rejected:
        client.check_credentials()
    texts = [str(caught.value), repr(caught.value), caught.value.hint, str(rejected.value), repr(rejected.value),
             repr(client), caplog.text]
    for text in texts:
        assert SECRET not in text and CODE not in text


# --------------------------------------------------------------------------------------------------
# Catalog, companies, contracts
# --------------------------------------------------------------------------------------------------
def test_products_are_active_services_searched_by_name(client, mocked):
    mocked.post(BASE + "Services/query", json=page([
        {"id": 9, "name": "Email Security", "sku": "ES-1", "unitPrice": 4.5},
        {"id": 3, "name": "Backup", "sku": None, "unitPrice": None},
    ]))
    products = client.list_products(" mail ")
    assert [(p.id, p.name, p.detail) for p in products] == [
        ("3", "Backup", ""), ("9", "Email Security", "ES-1 · unit price 4.5"),
    ]
    assert body_of(api_calls(mocked)[0])["filter"] == [
        {"op": "eq", "field": "isActive", "value": True},
        {"op": "contains", "field": "name", "value": "mail"},
    ]


def test_company_scope_offers_the_company_type_picklist_and_active_states(client, mocked):
    mocked.get(BASE + "Companies/entityInformation/fields", json={"fields": [
        {"name": "companyName", "isPickList": False},
        {"name": "companyType", "isPickList": True, "picklistValues": [
            {"value": "7", "label": "Vendor", "sortOrder": 3, "isActive": True},
            {"value": "1", "label": "Customer", "sortOrder": 1, "isActive": True},
            {"value": "9", "label": "Old type", "sortOrder": 2, "isActive": False},
        ]},
    ]})
    scope = client.company_scope_options()
    assert [(t.id, t.name) for t in scope["types"]] == [("1", "Customer"), ("7", "Vendor")]
    assert [s.id for s in scope["statuses"]] == ["active", "inactive"]


def test_company_search_is_restricted_to_the_chosen_types_and_status(client, mocked):
    mocked.post(BASE + "Companies/query", json=page([{"id": 4, "companyName": "Acme", "companyNumber": "C1",
                                                      "isActive": True}]))
    found = client.search_companies("acme", type_ids=["1", "8"], status_ids=["active"], limit=20)
    assert [(c.id, c.name) for c in found] == [("4", "Acme")]
    sent = body_of(api_calls(mocked)[0])
    assert sent["maxRecords"] == 20
    assert sent["filter"] == [
        {"op": "contains", "field": "companyName", "value": "acme"},
        {"op": "in", "field": "companyType", "value": [1, 8]},
        {"op": "eq", "field": "isActive", "value": True},
    ]
    client.search_companies(status_ids=["active", "inactive"])
    assert body_of(api_calls(mocked)[1])["filter"] == [{"op": "gte", "field": "id", "value": 0}]


def test_listing_all_companies_follows_next_page_urls_to_the_end_with_the_same_body(client, mocked):
    second = BASE + "Companies/query?paging=%7B%22pageSize%22%3A500%7D&n=2"
    third = BASE + "Companies/query?paging=%7B%22pageSize%22%3A500%7D&n=3"
    mocked.post(BASE + "Companies/query", json=page([{"id": i, "companyName": f"C{i:04d}"} for i in range(500)],
                                                    second))
    mocked.post(second, json=page([{"id": i, "companyName": f"C{i:04d}"} for i in range(500, 1000)], third),
                match=[matchers.query_string_matcher("paging=%7B%22pageSize%22%3A500%7D&n=2")])
    mocked.post(third, json=page([{"id": 1000, "companyName": "C1000"}]),
                match=[matchers.query_string_matcher("paging=%7B%22pageSize%22%3A500%7D&n=3")])
    companies = client.list_companies(type_ids=["1"])
    assert len(companies) == 1001
    calls = api_calls(mocked)
    assert len(calls) == 3
    assert {json.dumps(body_of(c), sort_keys=True) for c in calls} == {json.dumps(body_of(calls[0]), sort_keys=True)}
    assert body_of(calls[0])["maxRecords"] == 500 and "id" in body_of(calls[0])["includeFields"]


def test_a_next_page_url_on_another_host_never_receives_the_credentials(client, mocked):
    mocked.post(BASE + "Services/query", json=page([{"id": 1, "name": "A"}],
                                                   "http://evil.example.com/ATServicesRest/v1.0/Services/query?p=2"))
    mocked.post(BASE + "Services/query?p=2", json=page([{"id": 2, "name": "B"}]),
                match=[matchers.query_string_matcher("p=2")])
    assert [p.name for p in client.list_products()] == ["A", "B"]
    assert all(c.request.url.startswith(ROOT) for c in api_calls(mocked))


def test_a_never_ending_page_chain_is_stopped(client, mocked):
    loop = BASE + "Services/query?paging=same"
    mocked.post(BASE + "Services/query", json=page([{"id": 1, "name": "A"}], loop))
    with pytest.raises(TransientError, match="loop"):
        client.list_products()
    assert len(api_calls(mocked)) <= 3


def test_agreements_are_the_companys_active_recurring_service_contracts(client, mocked):
    mocked.post(BASE + "Contracts/query", json=page([
        {"id": 70, "contractName": "Managed Services", "contractNumber": "K70", "companyID": 4,
         "startDate": "2024-01-01T00:00:00", "endDate": "2026-12-31T00:00:00"},
    ]))
    agreements = client.list_agreements("4")
    assert [(a.id, a.name, a.company_id) for a in agreements] == [("70", "Managed Services", "4")]
    assert "2024-01-01 – 2026-12-31" in agreements[0].detail
    assert body_of(api_calls(mocked)[0])["filter"] == [
        {"op": "eq", "field": "companyID", "value": 4},
        {"op": "eq", "field": "contractType", "value": 7},
        {"op": "eq", "field": "status", "value": 1},
    ]


def test_dates_without_a_zone_designator_are_read_as_utc():
    parsed = parse_datetime("2024-01-31T15:04:05.3070000")
    assert parsed == dt.datetime(2024, 1, 31, 15, 4, 5, 307000, tzinfo=dt.UTC)
    assert parse_datetime("2024-01-31T00:00:00Z") == dt.datetime(2024, 1, 31, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------------
# Lines and quantities
# --------------------------------------------------------------------------------------------------
def test_lines_of_600_contracts_are_read_in_four_queries_with_the_units_of_the_billed_period(client, mocked):
    contract_ids = [str(1000 + i) for i in range(600)]

    def services(request):
        ids = json.loads(request.body)["filter"][0]["value"]
        rows = [{"id": 5000 + cid, "contractID": cid, "serviceID": 22, "invoiceDescription": "Backup"} for cid in ids]
        if 1000 in ids:
            rows.append({"id": 9999, "contractID": 1000, "serviceID": 23, "invoiceDescription": ""})
        return 200, {}, json.dumps(page(rows))

    def units(request):
        ids = json.loads(request.body)["filter"][0]["value"]
        rows = [{"id": 1, "contractID": cid, "contractServiceID": 5000 + cid, "serviceID": 22,
                 "startDate": "2026-10-01T00:00:00", "endDate": "2026-10-31T00:00:00", "units": cid % 7}
                for cid in ids]
        if 1000 in ids:
            # The period was split by an adjustment effective on the 1st: the later row bills.
            rows.append({"id": 2, "contractID": 1000, "contractServiceID": 6000, "serviceID": 22,
                         "startDate": "2026-09-01T00:00:00", "endDate": "2026-10-01T00:00:00", "units": 99})
            rows.append({"id": 3, "contractID": 1000, "contractServiceID": 6000, "serviceID": 22,
                         "startDate": "2026-10-01T00:00:00", "endDate": "2026-10-31T00:00:00", "units": 12})
            rows.append({"id": 4, "contractID": 1000, "contractServiceID": 6000, "serviceID": 22,
                         "startDate": "2026-09-01T00:00:00", "endDate": "2026-09-30T00:00:00", "units": 98})
        return 200, {}, json.dumps(page(rows))

    mocked.add_callback(responses.POST, BASE + "ContractServices/query", callback=services)
    mocked.add_callback(responses.POST, BASE + "ContractServiceUnits/query", callback=units)
    mock_currency(mocked)

    lines = client.read_lines([*contract_ids, "1000"], ON)

    calls = [c for c in api_calls(mocked) if "Currencies" not in c.request.url]
    assert len(calls) == 4 and len(api_calls(mocked)) == 5  # + the tenant's currency, read once
    assert [len(body_of(c)["filter"][0]["value"]) for c in calls] == [500, 500, 100, 100]
    assert body_of(calls[1])["filter"][1:] == [
        {"op": "lte", "field": "startDate", "value": "2026-10-02T00:00:00"},
        {"op": "gte", "field": "endDate", "value": "2026-09-30T00:00:00"},
    ]
    assert set(lines) == set(contract_ids)
    usd = {"currency": "USD"}
    assert lines["1000"] == [Line("1000", "22", "6000", 12.0, "Backup", **usd),
                             Line("1000", "23", "9999", 0.0, "", **usd)]
    assert lines["1599"] == [Line("1599", "22", "6599", float(1599 % 7), "Backup", **usd)]


def test_a_changed_quantity_posts_the_delta_from_the_current_units(client, mocked):
    mocked.post(BASE + "ContractServiceAdjustments", json={"itemId": 4321})
    result = client.set_quantity("11", "22", 3, current=Line("11", "22", "33", 8),
                                 options=WriteOptions(effective_date=ON))
    assert body_of(api_calls(mocked)[0]) == {
        "contractID": 11, "serviceID": 22, "unitChange": -5, "effectiveDate": "2026-10-01T00:00:00",
    }
    assert result.action == "adjusted"
    assert result.line == Line("11", "22", "33", 3.0)
    assert "4321" in result.response and "-5" in result.response


def test_an_unchanged_quantity_writes_nothing(client, mocked):
    result = client.set_quantity("11", "22", 8, current=Line("11", "22", "33", 8),
                                 options=WriteOptions(effective_date=ON))
    assert result.action == "unchanged" and result.line.quantity == 8
    assert len(mocked.calls) == 0


def test_a_missing_line_is_created_by_one_adjustment_that_adds_the_service_to_the_contract(client, mocked):
    mocked.post(BASE + "ContractServiceAdjustments", json={"itemId": 556})

    result = client.set_quantity("11", "22", 6, current=None, options=WriteOptions(effective_date=ON))

    calls = api_calls(mocked)
    assert [(c.request.method, c.request.url.removeprefix(BASE)) for c in calls] == [
        ("POST", "ContractServiceAdjustments"),
    ]
    assert body_of(calls[0]) == {"contractID": 11, "serviceID": 22, "unitChange": 6,
                                 "effectiveDate": f"{ON.isoformat()}T00:00:00"}
    assert result.action == "created"
    assert result.line == Line("11", "22", "", 6.0)
    assert "556" in result.response


def test_a_missing_line_for_a_deleted_service_asks_to_edit_the_product_mapping(client, mocked):
    mocked.post(BASE + "ContractServiceAdjustments", status=500,
                json={"errors": ["serviceID: no matching records found."]})
    with pytest.raises(NotFound) as caught:
        client.set_quantity("11", "22", 6, current=None, options=WriteOptions(effective_date=ON))
    assert "product mapping" in caught.value.hint


# --------------------------------------------------------------------------------------------------
# Money (PRODUCT.md §4b)
# --------------------------------------------------------------------------------------------------
def mock_currency(mocked, **answer):
    mocked.post(BASE + "Currencies/query", **(answer or {"json": page([{"id": 1, "name": "USD"}])}))


def test_lines_carry_the_unit_price_in_the_tenants_internal_currency_and_the_cost(client, mocked):
    mocked.post(BASE + "ContractServices/query", json=page([
        {"id": 5, "contractID": 11, "serviceID": 22, "invoiceDescription": "", "unitPrice": 7.5, "unitCost": 3},
        # Multi-currency: unitPrice is the customer's currency, internalCurrencyUnitPrice the tenant's.
        {"id": 6, "contractID": 11, "serviceID": 23, "invoiceDescription": "", "unitPrice": 10,
         "internalCurrencyUnitPrice": 11.8, "unitCost": 4}]))
    mocked.post(BASE + "ContractServiceUnits/query", json=page([]))
    mock_currency(mocked)
    first, second = client.read_lines(["11"], ON)["11"]
    assert (first.unit_price, first.unit_cost, first.currency) == (7.5, 3.0, "USD")
    assert (second.unit_price, second.unit_cost, second.currency) == (11.8, 4.0, "USD")
    assert {"unitPrice", "internalCurrencyUnitPrice", "unitCost"} <= set(body_of(api_calls(mocked)[0])["includeFields"])
    currency_query = [c for c in api_calls(mocked) if "Currencies" in c.request.url]
    assert len(currency_query) == 1
    assert body_of(currency_query[0])["filter"] == [{"op": "eq", "field": "isInternalCurrency", "value": True}]


def test_a_tenant_currency_the_api_user_may_not_read_leaves_money_without_a_currency(client, mocked):
    refused = {"errors": ["The logged in Resource does not have the adequate permissions"]}
    mock_currency(mocked, status=403, json=refused)
    assert client.tenant_currency() == ""


def test_catalog_prices_are_one_services_query(client, mocked):
    mocked.post(BASE + "Services/query", json=page([{"id": 22, "unitPrice": 4, "unitCost": None}]))
    mock_currency(mocked)
    prices = client.product_prices(["22", "23"])
    assert (prices["22"].unit_price, prices["22"].unit_cost, prices["22"].currency) == (4.0, None, "USD")
    assert body_of(api_calls(mocked)[0])["filter"] == [{"op": "in", "field": "id", "value": [22, 23]}]


def test_a_deferred_decrease_is_an_adjustment_effective_from_the_next_period(client, mocked):
    from webapp.psa_clients.base import QuantityChange

    mocked.post(BASE + "ContractServiceAdjustments", json={"itemId": 1})
    next_period = dt.date(2026, 11, 1)
    (result,) = client.set_quantities("11", [QuantityChange("22", 3, Line("11", "22", "33", 8), next_period)],
                                      options=WriteOptions(effective_date=ON))
    assert body_of(api_calls(mocked)[0])["effectiveDate"] == "2026-11-01T00:00:00"
    assert body_of(api_calls(mocked)[0])["unitChange"] == -5 and result.line.quantity == 3
