"""ConnectWiseClient against recorded-shape answers (the `responses` library): every request it sends."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import socket
from urllib.parse import parse_qs, urlsplit

import fakeredis
import pytest
import requests
import responses

from webapp.psa_clients import make_client
from webapp.psa_clients.base import (
    CredentialsRejected,
    HostRefused,
    Line,
    NotFound,
    PermissionDenied,
    TransientError,
    ValidationFailed,
    WriteOptions,
)
from webapp.psa_clients.connectwise import ConnectWiseClient
from webapp.psa_clients.http import RetryPolicy

SITE = "https://api-na.myconnectwise.net"
API = f"{SITE}/v4_6_release/apis/3.0"
INFO_URL = f"{SITE}/login/companyinfo/acmemsp"
PRIVATE_KEY = "PRIV-s3cr3t-9f8e7d"
CLIENT_ID = "0b8c2d6e-1111-2222-3333-444455556666"
CREDENTIALS = {
    "site": "na.myconnectwise.net",
    "company_id": "acmemsp",
    "public_key": "PubKey123",
    "private_key": PRIVATE_KEY,
}
COMPANY_INFO = {"CompanyName": "Acme MSP", "CompanyID": "acmemsp", "Codebase": "v4_6_release/",
                "VersionCode": "v2025.1", "IsCloud": "True", "SiteUrl": "na.myconnectwise.net"}


@pytest.fixture(autouse=True)
def public_dns(monkeypatch):
    """Cloud hosts resolve to a public address without touching the network."""
    monkeypatch.setattr(
        "webapp.psa_clients.http.socket.getaddrinfo",
        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))],
    )


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(INFO_URL, json=COMPANY_INFO)
        yield rsps


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    return make_client("connectwise", CREDENTIALS, config={
        "CW_CLIENT_ID": CLIENT_ID, "HTTP_SLEEP": sleeps.append, "HTTP_RETRY_POLICY": RetryPolicy(attempts=4),
    })


def query(call) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


def api_calls(rsps) -> list:
    return [c for c in rsps.calls if "/apis/3.0/" in c.request.url]


# --------------------------------------------------------------------------------------------------
# Credentials form
# --------------------------------------------------------------------------------------------------
def test_pasted_site_address_is_trimmed_to_the_host_and_the_admin_is_told():
    values, notices = ConnectWiseClient.normalize_credentials(
        {**CREDENTIALS, "site": " https://NA.myconnectwise.net/v4_6_release/ConnectWise.aspx?locale=en_US "})
    assert values["site"] == "na.myconnectwise.net"
    assert len(notices) == 1 and "na.myconnectwise.net" in notices[0]


def test_plain_http_site_is_refused_with_a_clear_message():
    with pytest.raises(ValidationFailed) as error:
        ConnectWiseClient.normalize_credentials({**CREDENTIALS, "site": "http://na.myconnectwise.net"})
    assert "HTTPS" in error.value.psa_message


def test_dev_host_with_port_is_kept_as_typed_without_a_notice():
    values, notices = ConnectWiseClient.normalize_credentials({**CREDENTIALS, "site": "127.0.0.1:8099"})
    assert values["site"] == "127.0.0.1:8099" and notices == []


def test_credential_form_uses_the_seed_labels_and_keeps_the_private_key_secret():
    fields = {f.name: f for f in ConnectWiseClient.credential_fields}
    assert [f.label for f in fields.values()] == [
        "ConnectWise Manage Site", "Company ID", "Public Key", "Private Key", "Client ID"]
    assert fields["private_key"].secret and not fields["public_key"].secret
    assert not fields["client_id"].required


# --------------------------------------------------------------------------------------------------
# Authentication and URLs
# --------------------------------------------------------------------------------------------------
def test_authenticate_reads_the_codebase_then_checks_the_keys_on_the_api_host(api, client):
    api.get(f"{API}/system/info", json={"version": "v2025.1.10431", "isCloud": True})
    assert client.check_credentials() == "Acme MSP — ConnectWise Manage v2025.1.10431"
    info_call, system_call = api.calls
    assert info_call.request.url == INFO_URL
    assert "Authorization" not in info_call.request.headers  # companyinfo is public: no keys sent
    expected = base64.b64encode(f"acmemsp+PubKey123:{PRIVATE_KEY}".encode()).decode()
    assert system_call.request.headers["Authorization"] == f"Basic {expected}"
    assert system_call.request.headers["clientId"] == CLIENT_ID


def test_client_id_typed_in_the_form_overrides_the_configured_one(api):
    client = make_client("connectwise", {**CREDENTIALS, "client_id": "my-own-client-id"},
                         config={"CW_CLIENT_ID": CLIENT_ID})
    api.get(f"{API}/system/info", json={"version": "v1"})
    client.check_credentials()
    assert api.calls[-1].request.headers["clientId"] == "my-own-client-id"


def test_dev_host_is_reached_over_http_exactly_as_typed():
    client = make_client("connectwise", {**CREDENTIALS, "site": "127.0.0.1:8099"},
                         dev_hosts=frozenset({"127.0.0.1:8099"}), config={"CW_CLIENT_ID": CLIENT_ID})
    with responses.RequestsMock() as rsps:
        rsps.get("http://127.0.0.1:8099/login/companyinfo/acmemsp", json={**COMPANY_INFO, "Codebase": "v2019_4/"})
        rsps.get("http://127.0.0.1:8099/v2019_4/apis/3.0/system/info", json={"version": "v1"})
        assert "Acme MSP" in client.check_credentials()


def test_private_site_that_is_not_a_dev_host_is_refused(monkeypatch):
    monkeypatch.setattr("webapp.psa_clients.http.socket.getaddrinfo",
                        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 443))])
    client = make_client("connectwise", {**CREDENTIALS, "site": "cw.internal.example"},
                         config={"CW_CLIENT_ID": CLIENT_ID})
    with responses.RequestsMock() as rsps, pytest.raises(HostRefused):
        client.check_credentials()
    assert len(rsps.calls) == 0


def test_missing_client_id_is_explained_before_any_request(api):
    client = make_client("connectwise", CREDENTIALS, config={})
    with pytest.raises(ValidationFailed) as error:
        client.check_credentials()
    assert "Client ID" in error.value.psa_message and len(api.calls) == 0


def test_unknown_company_id_is_reported_as_a_company_id_problem(client):
    with responses.RequestsMock() as rsps:
        rsps.get(INFO_URL, body="null", content_type="application/json")
        with pytest.raises(CredentialsRejected) as error:
            client.check_credentials()
    assert "acmemsp" in error.value.psa_message and "Company ID" in error.value.hint


def test_cannot_route_answer_points_at_the_company_id(api, client):
    api.get(f"{API}/system/info", body="Cannot route. Codebase/company is invalid", status=400)
    with pytest.raises(CredentialsRejected) as error:
        client.check_credentials()
    assert "Cannot route" in error.value.psa_message and "Company ID" in error.value.hint


def test_wrong_private_key_is_reported_with_a_hint(api, client):
    api.get(f"{API}/system/info", status=401, json={"code": "Unauthorized", "message": "UserNotAuthenticated"})
    with pytest.raises(CredentialsRejected) as error:
        client.check_credentials()
    assert error.value.status == 401
    assert error.value.psa_message == "UserNotAuthenticated"
    assert "keys were rejected — re-enter them" in error.value.hint


def test_missing_permission_lists_the_security_role_rights(api, client):
    api.get(f"{API}/finance/agreements", status=403,
            json={"code": "Forbidden", "message": "You do not have permission to perform this action."})
    with pytest.raises(PermissionDenied) as error:
        client.list_agreements("250")
    assert error.value.status == 403
    for right in ("Company Maintenance", "Finance › Agreements", "Product Catalog", "API Reports"):
        assert right in error.value.hint


def test_site_that_is_not_connectwise_is_refused_with_a_site_hint(client):
    with responses.RequestsMock() as rsps:
        rsps.get(INFO_URL, status=404, body="<html>Not here</html>")
        with pytest.raises(HostRefused) as error:
            client.check_credentials()
    assert "na.myconnectwise.net" in error.value.hint


# --------------------------------------------------------------------------------------------------
# Pickers
# --------------------------------------------------------------------------------------------------
def test_products_are_read_to_the_last_page_with_every_filter_kept(api, client):
    page2 = f"{API}/procurement/catalog?conditions=x&pageSize=1000&page=2"
    api.get(f"{API}/procurement/catalog", json=[{"id": i, "identifier": f"P{i}", "description": f"Product {i}"}
                                                for i in range(1000)],
            headers={"Link": f'<{page2}>; rel="next", <{page2}>; rel="last"'},
            match=[responses.matchers.query_param_matcher({"page": "1"}, strict_match=False)])
    api.get(f"{API}/procurement/catalog", json=[{"id": 1000, "identifier": "LAST", "description": "Last one"}],
            match=[responses.matchers.query_param_matcher({"page": "2"}, strict_match=False)])
    products = client.list_products()
    assert len(products) == 1001 and products[-1].name == "Last one" and products[-1].detail == "LAST"
    first, second = api_calls(api)
    assert query(first)["pageSize"] == "1000"
    assert query(first)["conditions"] == 'inactiveFlag=false and productClass!="Bundle"'
    assert second.request.url == page2  # the Link is followed as given


def test_product_search_escapes_quotes_so_input_cannot_change_the_query(api, client):
    api.get(f"{API}/procurement/catalog", json=[])
    client.list_products('Bob\'s "Pro" \\ plan')
    conditions = query(api_calls(api)[0])["conditions"]
    term = '"Bob\'s \\"Pro\\" \\\\ plan"'
    assert conditions.endswith(f"(identifier contains {term} or description contains {term})")


def test_next_link_to_another_host_is_not_followed_with_the_keys(api, client):
    api.get(f"{API}/procurement/catalog", json=[{"id": 1, "description": "A"}],
            headers={"Link": '<https://evil.example/steal?page=2>; rel="next"'},
            match=[responses.matchers.query_param_matcher({"page": "1"}, strict_match=False)])
    api.get(f"{API}/procurement/catalog", json=[{"id": 2, "description": "B"}],
            match=[responses.matchers.query_param_matcher({"page": "2"}, strict_match=False)])
    assert [p.id for p in client.list_products()] == ["1", "2"]
    assert all(urlsplit(c.request.url).netloc == "api-na.myconnectwise.net" for c in api.calls)


def test_company_scope_offers_company_types_and_statuses(api, client):
    api.get(f"{API}/company/companies/types", json=[{"id": 1, "name": "Client"}, {"id": 2, "name": "Prospect"}])
    api.get(f"{API}/company/companies/statuses",
            json=[{"id": 1, "name": "Active"}, {"id": 2, "name": "Inactive", "inactiveFlag": True}])
    scope = client.company_scope_options()
    assert [t.name for t in scope["types"]] == ["Client", "Prospect"]
    assert [(s.id, s.detail) for s in scope["statuses"]] == [("1", ""), ("2", "inactive status")]


def test_company_search_is_limited_to_the_chosen_types_and_statuses(api, client):
    api.get(f"{API}/company/companies", json=[
        {"id": 250, "identifier": "AcmeDental", "name": "Acme Dental", "status": {"id": 1, "name": "Active"},
         "types": [{"id": 1, "name": "Client"}]}])
    found = client.search_companies('acme "d', type_ids=["1", "3"], status_ids=["1"], limit=20)
    assert found[0].id == "250" and found[0].name == "Acme Dental"
    assert found[0].detail == "AcmeDental · Client · Active"
    sent = query(api_calls(api)[0])
    assert sent["conditions"] == 'deletedFlag=false and name contains "acme \\"d" and status/id in (1)'
    assert sent["childConditions"] == "types/id in (1,3)"
    assert sent["pageSize"] == "20"


def test_company_ids_that_are_not_numbers_are_refused_before_any_request(api, client):
    with pytest.raises(ValidationFailed):
        client.list_companies(status_ids=["1) or (1=1"])
    assert api_calls(api) == []


def test_all_companies_in_scope_are_read_in_pages_of_1000(api, client):
    page2 = f"{API}/company/companies?pageSize=1000&page=2"
    api.get(f"{API}/company/companies", json=[{"id": i, "name": f"C{i}"} for i in range(1000)],
            headers={"Link": f'<{page2}>; rel="next"'},
            match=[responses.matchers.query_param_matcher({"page": "1"}, strict_match=False)])
    api.get(page2, json=[{"id": 5000, "name": "Zed"}])
    assert len(client.list_companies(type_ids=["1"])) == 1001
    assert len(api_calls(api)) == 2


def test_only_active_agreements_of_the_company_are_offered(api, client):
    api.get(f"{API}/finance/agreements", json=[
        {"id": 7, "name": "Managed Services", "type": {"name": "MSA"}, "agreementStatus": "Active",
         "startDate": "2024-01-01T00:00:00Z", "noEndingDateFlag": True},
        {"id": 8, "name": "Old", "agreementStatus": "Cancelled", "cancelledFlag": True},
    ])
    agreements = client.list_agreements("250")
    assert [(a.id, a.company_id, a.detail) for a in agreements] == [("7", "250", "MSA · from 2024-01-01")]
    assert query(api_calls(api)[0])["conditions"] == (
        'company/id=250 and agreementStatus="Active" and cancelledFlag=false')


# --------------------------------------------------------------------------------------------------
# Lines
# --------------------------------------------------------------------------------------------------
def addition(id_, product, quantity, *, cancelled=None, effective="2024-01-01T00:00:00Z", **extra):
    return {"id": id_, "product": {"id": product, "identifier": f"P-{product}"}, "quantity": quantity,
            "effectiveDate": effective, "cancelledDate": cancelled, "billCustomer": "Billable", **extra}


def test_lines_of_many_agreements_take_one_call_each_and_skip_cancelled_additions(api, client):
    api.get(f"{API}/finance/agreements/7/additions", json=[
        addition(70, 11, 5), addition(71, 12, 3, cancelled="2026-05-31T00:00:00Z")])
    api.get(f"{API}/finance/agreements/8/additions", json=[])
    api.get(f"{API}/finance/agreements/9/additions", json=[addition(90, 11, 2, cancelled="2026-06-30T00:00:00Z")])
    lines = client.read_lines(["7", "8", "9", "7"], dt.date(2026, 6, 1))
    assert lines == {
        "7": [Line("7", "11", "70", 5.0, "P-11")],
        "8": [],
        "9": [Line("9", "11", "90", 2.0, "P-11")],  # cancelled at the end of the month: still billing in it
    }
    calls = api_calls(api)
    assert len(calls) == 3
    assert {query(c)["conditions"] for c in calls} == {"cancelledDate=null or cancelledDate>=[2026-06-01T00:00:00Z]"}
    assert {query(c)["pageSize"] for c in calls} == {"1000"}


def test_a_replaced_addition_is_hidden_behind_its_successor(api, client):
    api.get(f"{API}/finance/agreements/7/additions", json=[
        addition(70, 11, 5, cancelled="2026-06-30T00:00:00Z"),
        addition(72, 11, 9, effective="2026-07-01T00:00:00Z")])
    assert client.read_lines(["7"], dt.date(2026, 6, 15))["7"] == [Line("7", "11", "72", 9.0, "P-11")]


def test_deleted_agreement_is_reported_with_the_edit_the_mapping_hint(client):
    with responses.RequestsMock() as rsps:
        rsps.get(INFO_URL, json=COMPANY_INFO)
        rsps.get(f"{API}/finance/agreements/404/additions", status=404,
                 json={"code": "NotFound", "message": "Agreement with id 404 was not found.", "errors": None})
        with pytest.raises(NotFound) as error:
            client.read_lines(["404"], dt.date(2026, 6, 1))
        # The codebase was re-read once in case a hosted upgrade moved it; it had not moved.
        assert [c.request.url.split("?")[0] for c in rsps.calls] == [
            INFO_URL, f"{API}/finance/agreements/404/additions", INFO_URL]
    assert error.value.hint == "The agreement no longer exists — edit the mapping."
    assert "404 was not found" in error.value.psa_message


def test_moved_codebase_is_re_read_and_the_request_sent_again(client):
    new_api = f"{SITE}/v2026_1/apis/3.0"
    with responses.RequestsMock() as rsps:
        rsps.get(INFO_URL, json=COMPANY_INFO)
        rsps.get(INFO_URL, json={**COMPANY_INFO, "Codebase": "v2026_1/"})
        rsps.get(f"{API}/company/companies/types", status=404, body="")
        rsps.get(f"{new_api}/company/companies/types", json=[{"id": 1, "name": "Client"}])
        rsps.get(f"{new_api}/company/companies/statuses", json=[])
        assert client.company_scope_options()["types"][0].name == "Client"


def test_quantity_update_is_an_absolute_json_patch_replace(api, client):
    api.patch(f"{API}/finance/agreements/7/additions/70", json=addition(70, 11, 12))
    result = client.set_quantity("7", "11", 12, current=Line("7", "11", "70", 5.0),
                                 options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert result.action == "updated" and result.line == Line("7", "11", "70", 12.0, "P-11")
    (call,) = api_calls(api)
    assert json.loads(call.request.body) == [{"op": "replace", "path": "quantity", "value": 12}]
    assert call.request.headers["Content-Type"] == "application/json"


def test_missing_line_is_created_billable_from_the_first_day_of_the_month(api, client):
    api.post(f"{API}/finance/agreements/7/additions", status=201, json=addition(99, 11, 4))
    result = client.set_quantity("7", "11", 4, current=None, options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert result.action == "created" and result.line.line_id == "99" and result.line.quantity == 4.0
    assert json.loads(api_calls(api)[0].request.body) == {
        "product": {"id": 11}, "billCustomer": "Billable", "quantity": 4, "effectiveDate": "2026-06-01T00:00:00Z"}


def test_keep_history_ends_the_addition_the_day_before_and_posts_a_successor_at_the_same_price(api, client):
    api.get(f"{API}/finance/agreements/7/additions", json=[addition(70, 11, 5, unitPrice=3.5, lessIncluded=1.0)])
    api.patch(f"{API}/finance/agreements/7/additions/70",
              json=addition(70, 11, 5, cancelled="2026-06-30T00:00:00Z"))
    api.post(f"{API}/finance/agreements/7/additions", status=201, json=addition(71, 11, 8))
    (current,) = client.read_lines(["7"], dt.date(2026, 6, 1))["7"]
    result = client.set_quantity("7", "11", 8, current=current,
                                 options=WriteOptions(effective_date=dt.date(2026, 7, 1), keep_history=True))
    assert result.action == "replaced" and result.line.line_id == "71" and result.line.quantity == 8.0
    _read, patch, post = api_calls(api)
    assert json.loads(patch.request.body) == [{"op": "replace", "path": "cancelledDate",
                                               "value": "2026-06-30T00:00:00Z"}]
    body = json.loads(post.request.body)
    assert body["effectiveDate"] == "2026-07-01T00:00:00Z" and body["quantity"] == 8
    assert body["unitPrice"] == 3.5 and body["lessIncluded"] == 1.0 and body["product"] == {"id": 11}


def test_keep_history_edits_in_place_an_addition_that_starts_on_the_change_date(api, client):
    api.get(f"{API}/finance/agreements/7/additions/70", json=addition(70, 11, 5, effective="2026-07-01T00:00:00Z"))
    api.patch(f"{API}/finance/agreements/7/additions/70", json=addition(70, 11, 6, effective="2026-07-01T00:00:00Z"))
    result = client.set_quantity("7", "11", 6, current=Line("7", "11", "70", 5.0),
                                 options=WriteOptions(effective_date=dt.date(2026, 7, 1), keep_history=True))
    assert result.action == "updated"
    assert json.loads(api_calls(api)[-1].request.body) == [{"op": "replace", "path": "quantity", "value": 6}]


def test_target_equal_to_the_current_quantity_writes_nothing(api, client):
    result = client.set_quantity("7", "11", 5, current=Line("7", "11", "70", 5.0),
                                 options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert result.line.quantity == 5.0 and api_calls(api) == []


def test_refused_addition_shows_the_message_and_the_first_field_error(api, client):
    api.post(f"{API}/finance/agreements/7/additions", status=400, json={
        "code": "InvalidObject", "message": "addition object is invalid",
        "errors": [{"code": "InvalidObject", "message": "Bundles cannot be added to an agreement.",
                    "resource": "addition", "field": "product"}]})
    with pytest.raises(ValidationFailed) as error:
        client.set_quantity("7", "11", 4, current=None, options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert error.value.psa_message == "addition object is invalid: Bundles cannot be added to an agreement."
    assert error.value.status == 400


# --------------------------------------------------------------------------------------------------
# Retries and secrets
# --------------------------------------------------------------------------------------------------
def test_throttled_request_is_retried_after_the_retry_after_delay(api, client, sleeps):
    url = f"{API}/finance/agreements/7/additions/70"
    api.patch(url, status=429, headers={"Retry-After": "2"}, json={"code": "TooManyRequests", "message": "slow"})
    api.patch(url, status=503, headers={"Retry-After": "1"}, body="")
    api.patch(url, json=addition(70, 11, 12))
    result = client.set_quantity("7", "11", 12, current=Line("7", "11", "70", 5.0),
                                 options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert result.line.quantity == 12.0
    assert sleeps == [2.0, 1.0]
    assert len(api_calls(api)) == 3


def test_a_create_that_hit_a_gateway_error_is_not_blindly_posted_again(api, client):
    api.post(f"{API}/finance/agreements/7/additions", status=502, body="Bad gateway")
    with pytest.raises(TransientError) as error:
        client.set_quantity("7", "11", 4, current=None, options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert error.value.status == 502
    assert len(api_calls(api)) == 1  # the PSA may have created it: the next run re-reads first


def test_a_read_answered_500_is_retried_like_a_gateway_error(api, client, sleeps):
    api.get(f"{API}/finance/agreements", status=500, json={"code": "Unexpected", "message": "An error occurred"})
    api.get(f"{API}/finance/agreements", json=[])
    assert client.list_agreements("250") == []
    assert len(api_calls(api)) == 2 and len(sleeps) == 1


def test_a_create_answered_500_is_transient_and_not_posted_again(api, client):
    api.post(f"{API}/finance/agreements/7/additions", status=500, json={"code": "Unexpected", "message": "oops"})
    with pytest.raises(TransientError) as error:
        client.set_quantity("7", "11", 4, current=None, options=WriteOptions(effective_date=dt.date(2026, 6, 1)))
    assert error.value.status == 500
    assert len(api_calls(api)) == 1  # the engine re-reads before any retry


COMPANYINFO_FAILURES = {
    "http 500": {"status": 500, "body": "<html>Server Error</html>"},
    "gateway page": {"status": 503, "body": ""},
    "timeout": {"body": requests.ReadTimeout("read timed out")},
    "connection refused": {"body": requests.ConnectionError("connection refused")},
}


@pytest.mark.parametrize("failure", COMPANYINFO_FAILURES.values(), ids=COMPANYINFO_FAILURES.keys())
def test_a_failing_companyinfo_is_retried_then_transient_never_rejected_credentials(client, sleeps, failure):
    with responses.RequestsMock() as rsps:
        for _ in range(4):
            rsps.get(INFO_URL, **failure)
        with pytest.raises(TransientError) as error:
            client.check_credentials()
        assert len(rsps.calls) == 4 and len(sleeps) == 3
    assert not isinstance(error.value, CredentialsRejected | HostRefused)


def test_a_failing_companyinfo_falls_back_to_the_last_known_codebase_after_the_cache_expired(sleeps):
    redis = fakeredis.FakeRedis()
    config = {"CW_CLIENT_ID": CLIENT_ID, "HTTP_SLEEP": sleeps.append, "HTTP_RETRY_POLICY": RetryPolicy(attempts=4)}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(INFO_URL, json={**COMPANY_INFO, "Codebase": "v2025_1/"})
        agreements = f"{SITE}/v2025_1/apis/3.0/finance/agreements"
        rsps.get(agreements, json=[])
        first = make_client("connectwise", CREDENTIALS, redis=redis, config=config)
        first.list_agreements("250")
        redis.delete(first._codebase_cache_key)  # the 12-hour cache ran out
        rsps.replace(responses.GET, INFO_URL, status=500, body="")

        later = make_client("connectwise", CREDENTIALS, redis=redis, config=config)
        assert later.list_agreements("250") == []
        assert rsps.calls[-1].request.url.startswith(agreements)


def test_a_404_whose_codebase_recheck_fails_stays_a_404(api, client):
    api.get(f"{API}/finance/agreements/7/additions", status=404, json={"code": "NotFound", "message": "gone"})
    api.get(f"{API}/finance/agreements", json=[])
    client.list_agreements("250")  # the codebase is known
    api.replace(responses.GET, INFO_URL, status=500, body="")
    with pytest.raises(NotFound):
        client.read_lines(["7"], dt.date(2026, 6, 1))


def test_secrets_never_reach_messages_reprs_or_logs(api, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client("connectwise", {**CREDENTIALS, "client_id": CLIENT_ID}, config={})
    api.get(f"{API}/system/info", status=401,
            json={"code": "Unauthorized", "message": f"Key {PRIVATE_KEY} for client {CLIENT_ID} is not valid"})
    with pytest.raises(CredentialsRejected) as error:
        client.check_credentials()
    auth_header = api.calls[-1].request.headers["Authorization"]
    for secret in (PRIVATE_KEY, CLIENT_ID, auth_header.split()[1]):
        for text in (str(error.value), repr(error.value), error.value.hint, repr(client), caplog.text,
                     repr(client.__dict__)):
            assert secret not in text


# --------------------------------------------------------------------------------------------------
# Money and effective dates (PRODUCT.md §4b)
# --------------------------------------------------------------------------------------------------
def test_lines_carry_the_additions_unit_price_and_cost(api, client):
    api.get(f"{API}/finance/agreements/7/additions", json=[addition(70, 11, 5, unitPrice=12.5, unitCost=4)])
    (line,) = client.read_lines(["7"], dt.date(2026, 6, 1))["7"]
    assert (line.unit_price, line.unit_cost, line.currency) == (12.5, 4.0, "")


def test_catalog_prices_are_one_catalog_call(api, client):
    api.get(f"{API}/procurement/catalog", json=[{"id": 11, "price": 9, "cost": 5.5}])
    prices = client.product_prices(["11", "12"])
    assert (prices["11"].unit_price, prices["11"].unit_cost) == (9.0, 5.5)
    (call,) = api_calls(api)
    assert query(call)["conditions"] == "id in (11,12)"


def test_only_a_kept_history_write_carries_a_date_a_decrease_can_be_deferred_to(client):
    assert client.dates_changes(WriteOptions(effective_date=dt.date(2026, 6, 1), keep_history=True))
    assert not client.dates_changes(WriteOptions(effective_date=dt.date(2026, 6, 1)))
