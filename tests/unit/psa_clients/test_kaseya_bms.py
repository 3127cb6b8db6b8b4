"""KaseyaBmsClient against mocked HTTP (responses): every request it makes, and how failures surface."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from cryptography.fernet import Fernet

from webapp.psa_clients import (
    CredentialsRejected,
    Line,
    NotFound,
    PermissionDenied,
    RateLimited,
    TransientError,
    ValidationFailed,
    WriteOptions,
    kaseya_bms,
    make_client,
)
from webapp.psa_clients.http import RetryPolicy
from webapp.psa_clients.kaseya_bms import ContractServiceLine, KaseyaBmsClient, api_host_for

BASE = "https://api.bms.kaseya.com"
USER = "api-employee"
PASSWORD = "Pa55-w0rd-S3cret!"
COMPANY = "Contoso MSP"
CREDS = {"hostname": "bms.kaseya.com", "username": USER, "password": PASSWORD, "company": COMPANY}
ACCESS = "eyJhbGciOiJIUzI1NiJ9.ACCESS-TOKEN-VALUE.sig"
REFRESH = "REFRESH-TOKEN-VALUE-123"
ON = dt.date(2026, 10, 1)
CIPHER = Fernet(Fernet.generate_key())
OPTIONS = WriteOptions(effective_date=dt.date(2026, 10, 1))


pytestmark = pytest.mark.usefixtures("public_dns")  # tests/unit/psa_clients/conftest.py


@pytest.fixture
def sleeps():
    return []


def make_bms(sleeps, **overrides) -> KaseyaBmsClient:
    config = {"HTTP_SLEEP": sleeps.append, "HTTP_RETRY_POLICY": RetryPolicy(attempts=4, initial=0.5, maximum=30)}
    return make_client("kaseya_bms", {**CREDS, **overrides}, config=config)


@pytest.fixture
def client(sleeps):
    return make_bms(sleeps)


def envelope(result=None, total=None, *, success=True, code=0, message=None, pascal=False):
    body = {"success": success, "error": {"code": code, "message": message, "details": None,
                                          "stackStrace": None, "subErrors": []}, "result": result}
    if total is not None:
        body["totalRecords"] = total
    if pascal:
        body = {k[0].upper() + k[1:]: v for k, v in body.items()}
    return body


def token(access=ACCESS, refresh=REFRESH, expires_in=3600.0):
    expires = dt.datetime.fromtimestamp(time.time() + expires_in, dt.UTC).replace(tzinfo=None)
    return {"accessToken": access, "refreshToken": refresh, "accessTokenExpireOn": expires.isoformat(),
            "refreshTokenExpireOn": (expires + dt.timedelta(days=1)).isoformat()}


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(f"{BASE}/v2/security/authenticate", json=envelope(token()))
        yield rsps


def form_of(call) -> dict[str, str]:
    """The fields of a multipart/form-data body."""
    body = call.request.body
    body = body.decode() if isinstance(body, bytes) else body
    return dict(re.findall(r'name="([^"]+)"\r\n\r\n(.*?)\r\n--', body, flags=re.S))


def query_of(call) -> dict[str, list[str]]:
    return parse_qs(urlsplit(call.request.url).query)


def api_calls(rsps) -> list:
    return [c for c in rsps.calls if "/security/" not in c.request.url]


def service_row(service_id, name, price=10.0, **extra):
    return {"id": service_id, "name": name, "description": f"{name} per user", "unitCost": price / 2,
            "unitPrice": price, "category": "Licensing", "unitOfMeasure": "User", "isActive": True, **extra}


def related_row(line_id, service_id, contract_id, **extra):
    return {"id": line_id, "serviceId": service_id, "contractId": contract_id, "accountId": 7,
            "serviceName": f"Service {service_id}", "serviceDescription": "custom description",
            "contractName": f"Contract {contract_id}", "accountName": "Acme", "effectiveDate": "2026-01-01T00:00:00",
            "unitCost": 3.5, "unitPrice": 9.25, **extra}


# --------------------------------------------------------------------------------------------------
# Credentials form
# --------------------------------------------------------------------------------------------------
def test_credential_form_has_the_seed_labels_and_only_the_password_is_secret():
    fields = {f.name: f for f in KaseyaBmsClient.credential_fields}
    assert [(f.name, f.label) for f in fields.values()] == [
        ("hostname", "Hostname"), ("username", "Username"), ("password", "Password"), ("company", "Company Name")]
    assert [f.name for f in fields.values() if f.secret] == ["password"]
    assert "bms.kaseya.com" in fields["hostname"].help


@pytest.mark.parametrize(("typed", "api_host"), [
    ("bms.kaseya.com", "api.bms.kaseya.com"),
    ("bmsemea.kaseya.com", "api.bmsemea.kaseya.com"),
    ("bmsapac.kaseya.com", "api.bmsapac.kaseya.com"),
    ("api.bms.kaseya.com", "api.bms.kaseya.com"),
    ("BMS.Kaseya.com", "api.bms.kaseya.com"),
])
def test_ui_hostname_is_mapped_to_its_regional_api_host(typed, api_host):
    assert api_host_for(typed, frozenset()) == api_host


def test_dev_host_is_used_as_typed_over_http(mocked, sleeps):
    mocked.post("http://127.0.0.1:8099/v2/security/authenticate", json=envelope(token()))
    client = make_client("kaseya_bms", {**CREDS, "hostname": "127.0.0.1:8099"},
                         dev_hosts=frozenset({"127.0.0.1:8099"}), config={"HTTP_SLEEP": sleeps.append})
    client.check_credentials()
    assert mocked.calls[-1].request.url == "http://127.0.0.1:8099/v2/security/authenticate"


def test_pasted_url_is_shortened_to_the_host_with_a_notice():
    values, notices = KaseyaBmsClient.normalize_credentials(
        {**CREDS, "hostname": " https://bmsemea.kaseya.com/Home/Dashboard?x=1 "})
    assert values["hostname"] == "bmsemea.kaseya.com"
    assert notices and "bmsemea.kaseya.com" in notices[0]


def test_http_address_is_refused_unless_it_is_a_dev_host():
    with pytest.raises(ValidationFailed, match="HTTPS"):
        KaseyaBmsClient.normalize_credentials({**CREDS, "hostname": "http://bms.kaseya.com"})
    values, _ = KaseyaBmsClient.normalize_credentials(
        {**CREDS, "hostname": "http://127.0.0.1:8099/"}, dev_hosts=frozenset({"127.0.0.1:8099"}))
    assert values["hostname"] == "127.0.0.1:8099"


def test_password_is_kept_exactly_as_typed_while_other_fields_are_trimmed():
    values, notices = KaseyaBmsClient.normalize_credentials(
        {"hostname": "bms.kaseya.com", "username": " api ", "password": " pw ", "company": " Contoso "})
    assert values == {"hostname": "bms.kaseya.com", "username": "api", "password": " pw ", "company": "Contoso"}
    assert notices == []


# --------------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------------
def test_authenticate_posts_the_spec_form_fields_and_names_the_company(client, mocked):
    assert client.check_credentials() == "Kaseya BMS company “Contoso MSP” on api.bms.kaseya.com"
    (call,) = mocked.calls
    assert call.request.url == f"{BASE}/v2/security/authenticate"
    assert call.request.headers["Content-Type"].startswith("multipart/form-data")
    assert form_of(call) == {"GrantType": "password", "UserName": USER, "Password": PASSWORD, "Tenant": COMPANY}


def test_api_calls_carry_the_bearer_token(client, mocked):
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    client.company_scope_options()
    assert mocked.calls[-1].request.headers["Authorization"] == f"Bearer {ACCESS}"
    assert len(mocked.calls) == 2  # one login, reused


def test_wrong_password_is_reported_with_a_hint(client, mocked):
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate",
                   json=envelope(success=False, code=978002, message="Invalid username or password."))
    with pytest.raises(CredentialsRejected) as caught:
        client.check_credentials()
    assert "Invalid username or password" in str(caught.value)
    assert caught.value.status == 401
    assert "Company Name" in caught.value.hint and "API Employee" in caught.value.hint


def test_missing_company_400_is_reported_as_rejected_credentials(client, mocked):
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate", status=400,
                   json=envelope(success=False, code=400, message="Tenant can't be empty"))
    with pytest.raises(CredentialsRejected, match="Tenant can't be empty"):
        client.check_credentials()


LOGIN_FAILURES = {
    "http 500": {"status": 500, "json": envelope(success=False, code=500, message="Internal error")},
    "gateway page": {"status": 502, "body": "<html>Bad gateway</html>"},
    "timeout": {"body": requests.ReadTimeout("read timed out")},
    "connection refused": {"body": requests.ConnectionError("connection refused")},
    "200 that is not the envelope": {"body": "<html>Down for maintenance</html>"},
    "200 success without a token": {"json": envelope({"accessToken": None})},
}


@pytest.mark.parametrize("failure", LOGIN_FAILURES.values(), ids=LOGIN_FAILURES.keys())
def test_a_login_that_fails_without_refusing_is_transient_never_rejected_credentials(client, mocked, failure):
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate", **failure)
    with pytest.raises(TransientError) as caught:
        client.check_credentials()
    assert not isinstance(caught.value, CredentialsRejected)
    assert PASSWORD not in str(caught.value)


def test_a_login_answered_500_once_is_retried_and_the_sync_goes_on(client, mocked, sleeps):
    url = f"{BASE}/v2/security/authenticate"
    mocked.replace(responses.POST, url, status=500, body="")
    mocked.post(url, json=envelope(token()))
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    assert client.company_scope_options()["types"] == []
    assert sum(c.request.url == url for c in mocked.calls) == 2 and len(sleeps) == 1


def test_a_refresh_that_times_out_falls_back_to_a_login_not_to_rejected_credentials(client, mocked):
    mocked.post(f"{BASE}/v2/security/refreshtoken", body=requests.ReadTimeout("read timed out"))
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    client.company_scope_options()
    client._token.expires_at = time.time()
    assert client.company_scope_options()["types"] == []
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 2


def test_pascal_case_answers_are_understood_as_well_as_camel_case(client, mocked):
    pascal_token = {k[0].upper() + k[1:]: v for k, v in token().items()}
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate", json=envelope(pascal_token, pascal=True))
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup",
               json=envelope([{"Id": 1, "Name": "Client", "IsActive": True, "IsClient": True}], pascal=True))
    assert client.company_scope_options()["types"][0].name == "Client"
    assert mocked.calls[-1].request.headers["Authorization"] == f"Bearer {ACCESS}"


def test_token_is_refreshed_shortly_before_it_expires(client, mocked):
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate", json=envelope(token(expires_in=30)))
    mocked.post(f"{BASE}/v2/security/refreshtoken", json=envelope(token(access="NEW.ACCESS.TOKEN")))
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    client.company_scope_options()
    client._token.expires_at = time.time() + 1  # now inside the refresh margin
    client.company_scope_options()
    refresh = next(c for c in mocked.calls if c.request.url.endswith("/refreshtoken"))
    assert form_of(refresh) == {"AccessToken": ACCESS, "RefreshToken": REFRESH}
    assert mocked.calls[-1].request.headers["Authorization"] == "Bearer NEW.ACCESS.TOKEN"
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 1


def test_failed_refresh_falls_back_to_a_new_login(client, mocked):
    mocked.post(f"{BASE}/v2/security/refreshtoken", status=401, json=envelope(success=False, code=978001))
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    client.company_scope_options()
    client._token.expires_at = time.time()
    client.company_scope_options()
    assert [urlsplit(c.request.url).path for c in mocked.calls] == [
        "/v2/security/authenticate", "/v2/system/accounttypes/lookup", "/v2/security/refreshtoken",
        "/v2/security/authenticate", "/v2/system/accounttypes/lookup"]


def test_expired_token_401_logs_in_again_once_and_retries(client, mocked):
    url = f"{BASE}/v2/system/accounttypes/lookup"
    mocked.get(url, status=401, json=envelope(success=False, code=978001, message="Security Error"))
    mocked.get(url, json=envelope([{"id": 1, "name": "Client", "isActive": True}]))
    assert [t.name for t in client.company_scope_options()["types"]] == ["Client"]
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 2


def test_token_refused_again_after_a_fresh_login_is_rejected_credentials(client, mocked):
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", status=401,
               json=envelope(success=False, code=978001, message="Security Error"))
    with pytest.raises(CredentialsRejected) as caught:
        client.company_scope_options()
    assert caught.value.status == 401
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 2


# --------------------------------------------------------------------------------------------------
# Pickers
# --------------------------------------------------------------------------------------------------
def test_products_are_the_active_services_paged_to_the_end(client, mocked, monkeypatch):
    monkeypatch.setattr(kaseya_bms, "PAGE_SIZE", 2)
    url = f"{BASE}/v2/admin/finance/services/search"
    mocked.post(url, json=envelope([service_row(1, "Backup"), service_row(2, "Antivirus")], total=3))
    mocked.post(url, json=envelope([service_row(3, "Password Manager", price=4)], total=3))
    products = client.list_products()
    assert [(p.id, p.name) for p in products] == [("2", "Antivirus"), ("1", "Backup"), ("3", "Password Manager")]
    assert products[2].detail == "Licensing · User · 4.00"
    bodies = [json.loads(c.request.body) for c in api_calls(mocked)]
    assert bodies == [{"Filter": {"IsActive": 1}, "PageSize": 2, "PageNumber": 1},
                      {"Filter": {"IsActive": 1}, "PageSize": 2, "PageNumber": 2}]


def test_product_search_filters_by_name(client, mocked):
    mocked.post(f"{BASE}/v2/admin/finance/services/search", json=envelope([service_row(1, "Backup")], total=1))
    client.list_products("back")
    assert json.loads(api_calls(mocked)[0].request.body)["Filter"] == {"IsActive": 1, "Name": "back"}


def test_company_scope_lists_active_account_types_and_both_statuses(client, mocked):
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([
        {"id": 1, "name": "Client", "isActive": True, "isClient": True, "isVendor": False},
        {"id": 3, "name": "Vendor", "isActive": True, "isClient": False, "isVendor": True},
        {"id": 4, "name": "Old type", "isActive": False},
    ]))
    scope = client.company_scope_options()
    assert [(t.id, t.name, t.detail) for t in scope["types"]] == [("1", "Client", "client"), ("3", "Vendor", "vendor")]
    assert [s.id for s in scope["statuses"]] == ["active", "inactive"]


def account(account_id, name, type_id=1, active=True):
    return {"id": account_id, "accountName": name, "accountTypeId": type_id, "accountType": "Client",
            "isActive": active}


def test_company_search_sends_the_scope_filters_and_stops_at_the_limit(client, mocked):
    mocked.get(f"{BASE}/v2/crm/accounts/summary",
               json=envelope([account(i, f"Acme {i}") for i in range(1, 6)], total=500))
    found = client.search_companies("acme", type_ids=["1"], status_ids=["active"], limit=3)
    assert [c.name for c in found] == ["Acme 1", "Acme 2", "Acme 3"]
    assert found[0].detail == "Client · Active"
    (call,) = api_calls(mocked)
    assert query_of(call) == {"Filter.AccountName": ["acme"], "Filter.AccountTypeId": ["1"],
                              "Filter.IsActive": ["true"], "PageSize": ["100"], "PageNumber": ["1"]}


def test_several_company_types_are_filtered_on_our_side(client, mocked):
    mocked.get(f"{BASE}/v2/crm/accounts/summary", json=envelope(
        [account(1, "A", type_id=1), account(2, "B", type_id=2), account(3, "C", type_id=5)], total=3))
    found = client.list_companies(type_ids=["1", "5"], status_ids=["active", "inactive"])
    assert [c.id for c in found] == ["1", "3"]
    assert "Filter.AccountTypeId" not in query_of(api_calls(mocked)[0])
    assert "Filter.IsActive" not in query_of(api_calls(mocked)[0])


def test_all_companies_are_paged_until_total_records(client, mocked, monkeypatch):
    monkeypatch.setattr(kaseya_bms, "PAGE_SIZE", 2)
    url = f"{BASE}/v2/crm/accounts/summary"
    for page in ([account(1, "A"), account(2, "B")], [account(3, "C"), account(4, "D")], [account(5, "E")]):
        mocked.get(url, json=envelope(page, total=5))
    assert [c.id for c in client.list_companies()] == ["1", "2", "3", "4", "5"]
    assert [query_of(c)["PageNumber"] for c in api_calls(mocked)] == [["1"], ["2"], ["3"]]


def test_a_zero_based_server_still_yields_every_company(client, mocked, monkeypatch):
    monkeypatch.setattr(kaseya_bms, "PAGE_SIZE", 2)
    url = f"{BASE}/v2/crm/accounts/summary"
    # Page 1 of a 0-based server is the second page; page 2 is empty; page 0 holds the first records.
    mocked.get(url, json=envelope([account(3, "C")], total=3))
    mocked.get(url, json=envelope([], total=3))
    mocked.get(url, json=envelope([account(1, "A"), account(2, "B")], total=3))
    assert sorted(c.id for c in client.list_companies()) == ["1", "2", "3"]
    assert query_of(api_calls(mocked)[-1])["PageNumber"] == ["0"]


def test_agreements_are_the_active_recurring_services_contracts_of_the_account(client, mocked):
    mocked.get(f"{BASE}/v2/crm/accounts/lookup", json=envelope([{"id": 7, "name": "Acme", "isActive": True}]))
    mocked.get(f"{BASE}/v2/finance/contracts/lookup", json=envelope([
        {"id": 11, "name": "Managed services", "isActive": True, "endDate": "2027-12-31T00:00:00"},
        {"id": 12, "name": "Old", "isActive": False},
        {"id": 13, "name": "T&M", "isActive": True},
    ]))
    mocked.get(f"{BASE}/v2/finance/contracts/summary", json=envelope([
        {"id": 11, "contractName": "Managed services", "contractType": "Recurring Services"},
        {"id": 12, "contractName": "Old", "contractType": "Recurring Services"},
        {"id": 13, "contractName": "T&M", "contractType": "Time and Materials"},
        {"id": 99, "contractName": "Acme Two's contract", "contractType": "Recurring Services"},
    ], total=4))
    agreements = client.list_agreements("7")
    assert [(a.id, a.name, a.company_id) for a in agreements] == [("11", "Managed services", "7")]
    assert agreements[0].detail == "Recurring Services · ends 2027-12-31"
    lookup, contracts, summary = api_calls(mocked)
    assert query_of(lookup) == {"Filter.Ids": ["7"], "Filter.WithInactiveAccounts": ["true"]}
    assert query_of(contracts) == {"AccountId": ["7"], "ExcludeExpiredContracts": ["true"]}
    assert query_of(summary)["Filter.AccountName"] == ["Acme"]


def test_unknown_account_is_not_found_with_a_hint(client, mocked):
    mocked.get(f"{BASE}/v2/crm/accounts/lookup", json=envelope([]))
    with pytest.raises(NotFound) as caught:
        client.list_agreements("7")
    assert "pick another company" in caught.value.hint


# --------------------------------------------------------------------------------------------------
# Reading lines
# --------------------------------------------------------------------------------------------------
def mock_catalog(mocked, *services):
    mocked.post(f"{BASE}/v2/admin/finance/services/search", json=envelope(list(services), total=len(services)))


def test_lines_of_many_contracts_cost_one_search_per_service_not_per_contract(client, mocked):
    contracts = list(range(1000, 1250))
    for chunk in range(0, 250, 100):
        mocked.get(f"{BASE}/v2/finance/contracts/lookup",
                   json=envelope([{"id": c, "name": f"C{c}"} for c in contracts[chunk:chunk + 100]]))
    mock_catalog(mocked, service_row(5, "Backup"), service_row(6, "Email"))
    mocked.post(f"{BASE}/v2/admin/finance/services/5/relatedservices/search",
                json=envelope([related_row(50, 5, 1000), related_row(51, 5, 1249), related_row(52, 5, 7)], total=3))
    mocked.post(f"{BASE}/v2/admin/finance/services/6/relatedservices/search",
                json=envelope([related_row(60, 6, 1000)], total=1))
    lines = client.read_lines([str(c) for c in contracts], ON)
    assert set(lines) == {str(c) for c in contracts}
    assert [(ln.product_id, ln.line_id) for ln in lines["1000"]] == [("5", "50"), ("6", "60")]
    assert [ln.line_id for ln in lines["1249"]] == ["51"]
    assert lines["1001"] == []
    # 3 contract lookups (100 ids each) + the catalog + one related-services search per service.
    assert len(api_calls(mocked)) == 3 + 1 + 2
    assert len(query_of(api_calls(mocked)[0])["Ids"]) == 100


def test_only_the_mapped_services_are_searched_when_the_caller_names_them(client, mocked):
    mocked.get(f"{BASE}/v2/finance/contracts/lookup", json=envelope([{"id": 1000, "name": "Acme MS"},
                                                                     {"id": 1001, "name": "Bluebird MS"}]))
    mock_catalog(mocked, service_row(5, "Backup"), service_row(6, "Email"), service_row(7, "Training"))
    mocked.post(f"{BASE}/v2/admin/finance/services/6/relatedservices/search",
                json=envelope([related_row(60, 6, 1000)], total=1))
    lines = client.read_lines(["1000", "1001"], ON, product_ids=["6"])
    assert [(ln.product_id, ln.line_id) for ln in lines["1000"]] == [("6", "60")] and lines["1001"] == []
    searched = [c.request.url for c in api_calls(mocked) if "relatedservices" in c.request.url]
    assert searched == [f"{BASE}/v2/admin/finance/services/6/relatedservices/search"]


def test_lines_carry_no_units_because_the_api_cannot_report_them(client, mocked):
    mocked.get(f"{BASE}/v2/finance/contracts/lookup", json=envelope([{"id": 1000, "name": "Acme MS"}]))
    mock_catalog(mocked, service_row(5, "Backup"))
    mocked.post(f"{BASE}/v2/admin/finance/services/5/relatedservices/search",
                json=envelope([related_row(50, 5, 1000)], total=1))
    (line,) = client.read_lines(["1000"], ON)["1000"]
    assert line.quantity is None and KaseyaBmsClient.quantity_readable is False
    assert (line.unit_cost, line.unit_price, line.description) == (3.5, 9.25, "custom description")
    search = api_calls(mocked)[-1]
    # One contract: the search is narrowed to its name instead of paging over every contract.
    assert json.loads(search.request.body) == {"Filter": {"ContractName": "Acme MS"}, "PageSize": 100,
                                               "PageNumber": 1}


def test_duplicate_lines_of_a_service_are_both_reported(client, mocked):
    mocked.get(f"{BASE}/v2/finance/contracts/lookup", json=envelope([{"id": 1000, "name": "Acme MS"}]))
    mock_catalog(mocked, service_row(5, "Backup"))
    mocked.post(f"{BASE}/v2/admin/finance/services/5/relatedservices/search",
                json=envelope([related_row(50, 5, 1000), related_row(51, 5, 1000)], total=2))
    assert [ln.line_id for ln in client.read_lines(["1000"], ON)["1000"]] == ["50", "51"]


def test_a_deleted_contract_is_not_found_with_an_edit_the_mapping_hint(client, mocked):
    mocked.get(f"{BASE}/v2/finance/contracts/lookup", json=envelope([{"id": 1000, "name": "Acme MS"}]))
    with pytest.raises(NotFound) as caught:
        client.read_lines(["1000", "1001"], ON)
    assert "1001" in str(caught.value) and "edit the mapping" in caught.value.hint


# --------------------------------------------------------------------------------------------------
# Writing units
# --------------------------------------------------------------------------------------------------
POST_URL = f"{BASE}/v2/finance/contracts/recurringservices/1000/services"


def posted_row(units, line_id=50, service_id=5):
    return {"id": line_id, "serviceId": service_id, "serviceName": "Backup", "description": "custom description",
            "contractId": 1000, "contractName": "Acme MS", "units": float(units), "unitCost": 3.5, "unitPrice": 9.25,
            "effectiveDate": "2026-10-01T00:00:00"}


def existing_line():
    return ContractServiceLine(agreement_id="1000", product_id="5", line_id="50", quantity=None,
                               description="custom description", service_name="Backup", unit_cost=3.5,
                               unit_price=9.25)


def test_updating_a_line_posts_absolute_units_with_its_current_prices(client, mocked):
    mocked.post(POST_URL, json=envelope(posted_row(42)))
    result = client.set_quantity("1000", "5", 42, current=existing_line(), options=OPTIONS)
    (call,) = api_calls(mocked)
    assert json.loads(call.request.body) == [{
        "ServiceId": 5, "Units": 42, "EffectiveDate": "2026-10-01T00:00:00", "ServiceName": "Backup",
        "ServiceDescription": "custom description", "UnitCost": 3.5, "UnitPrice": 9.25}]
    assert result.action == "updated"
    assert (result.line.line_id, result.line.quantity) == ("50", 42.0)
    assert result.response == "contract service 50: Units 42 from 2026-10-01"


def test_creating_a_line_uses_the_catalog_name_and_price(client, mocked):
    mocked.get(f"{BASE}/v2/admin/finance/services/6", json=envelope(service_row(6, "Email", price=8)))
    mocked.post(POST_URL, json=envelope(posted_row(3, line_id=77, service_id=6)))
    result = client.set_quantity("1000", "6", 3, current=None, options=OPTIONS)
    get, post = api_calls(mocked)
    assert json.loads(post.request.body) == [{
        "ServiceId": 6, "Units": 3, "EffectiveDate": "2026-10-01T00:00:00", "ServiceName": "Email",
        "ServiceDescription": "Email per user", "UnitCost": 4.0, "UnitPrice": 8}]
    assert (result.action, result.line.line_id, result.line.quantity) == ("created", "77", 3.0)


def test_a_plain_line_from_the_database_is_looked_up_for_its_prices(client, mocked):
    mocked.get(f"{BASE}/v2/finance/contracts/lookup", json=envelope([{"id": 1000, "name": "Acme MS"}]))
    mocked.post(f"{BASE}/v2/admin/finance/services/5/relatedservices/search",
                json=envelope([related_row(50, 5, 1000)], total=1))
    mocked.post(POST_URL, json=envelope(posted_row(9)))
    plain = Line(agreement_id="1000", product_id="5", line_id="50", quantity=0)
    client.set_quantity("1000", "5", 9, current=plain, options=OPTIONS)
    body = json.loads(api_calls(mocked)[-1].request.body)[0]
    assert (body["UnitCost"], body["UnitPrice"], body["ServiceDescription"]) == (3.5, 9.25, "custom description")


def test_all_changed_lines_of_a_contract_are_written_in_one_request(client, mocked):
    from webapp.psa_clients.base import QuantityChange

    mocked.get(f"{BASE}/v2/admin/finance/services/6", json=envelope(service_row(6, "Email", price=8)))
    mocked.post(POST_URL, json=envelope(posted_row(42)))
    changes = [QuantityChange("5", 42, existing_line()), QuantityChange("6", 3, None), QuantityChange("7", -1, None)]
    updated, created, refused = client.set_quantities("1000", changes, options=OPTIONS)
    posts = [c for c in api_calls(mocked) if c.request.method == "POST"]
    assert len(posts) == 1
    assert [(i["ServiceId"], i["Units"]) for i in json.loads(posts[0].request.body)] == [(5, 42), (6, 3)]
    assert (updated.action, updated.line.line_id, updated.line.quantity) == ("updated", "50", 42.0)
    assert (created.action, created.line.quantity) == ("created", 3.0)
    assert isinstance(refused, ValidationFailed)  # left out of the request, recorded on its own


def test_a_refused_batch_write_is_an_error_on_every_line_it_carried(client, mocked):
    from webapp.psa_clients.base import QuantityChange

    mocked.post(POST_URL, json=envelope(success=False, code=400, message="Units must be a whole number."))
    results = client.set_quantities("1000", [QuantityChange("5", 4, existing_line())] * 2, options=OPTIONS)
    assert [type(r) for r in results] == [ValidationFailed, ValidationFailed]


@pytest.mark.parametrize("target", [-1, 2.5])
def test_negative_or_fractional_units_are_refused_before_any_request(client, mocked, target):
    with pytest.raises(ValidationFailed):
        client.set_quantity("1000", "5", target, current=existing_line(), options=OPTIONS)
    assert len(mocked.calls) == 0


def test_the_write_is_retried_on_503_because_units_are_absolute(client, mocked, sleeps):
    mocked.post(POST_URL, status=503)
    mocked.post(POST_URL, json=envelope(posted_row(42)))
    assert client.set_quantity("1000", "5", 42, current=existing_line(), options=OPTIONS).line.quantity == 42.0
    assert len(api_calls(mocked)) == 2 and len(sleeps) == 1


def test_without_the_replace_assumption_existing_lines_are_never_posted_to(client, mocked, monkeypatch):
    monkeypatch.setattr(kaseya_bms, "ASSUME_POST_REPLACES_UNITS", False)
    with pytest.raises(ValidationFailed, match="cannot change the Units"):
        client.set_quantity("1000", "5", 42, current=existing_line(), options=OPTIONS)
    assert api_calls(mocked) == []


# --------------------------------------------------------------------------------------------------
# Errors, retries, secrets
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("message", "error", "hint_part"), [
    ("Contract 1000 not found.", NotFound, "edit the mapping"),
    ("You do not have permission to edit contracts.", PermissionDenied, "Has API Access"),
    ("Units must be a whole number of 0 or more.", ValidationFailed, "which field"),
])
def test_success_false_on_http_200_becomes_a_typed_error_with_a_hint(client, mocked, message, error, hint_part):
    mocked.post(POST_URL, json=envelope(success=False, code=400, message=message))
    with pytest.raises(error) as caught:
        client.set_quantity("1000", "5", 1, current=existing_line(), options=OPTIONS)
    assert message in str(caught.value)
    assert hint_part in caught.value.hint


def test_http_403_is_permission_denied_with_the_role_hint(client, mocked):
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", status=403, json={"message": "Forbidden"})
    with pytest.raises(PermissionDenied) as caught:
        client.company_scope_options()
    assert caught.value.status == 403 and "Finance Contracts" in caught.value.hint


def test_http_500_is_a_transient_error(client, mocked):
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", status=500, body="<html>oops</html>")
    with pytest.raises(TransientError) as caught:
        client.company_scope_options()
    assert caught.value.status == 500


def test_429_is_retried_after_the_seconds_the_server_asks(client, mocked, sleeps):
    url = f"{BASE}/v2/system/accounttypes/lookup"
    mocked.get(url, status=429, headers={"Retry-After": "7"})
    mocked.get(url, status=429, headers={"Retry-After": "3"})
    mocked.get(url, json=envelope([{"id": 1, "name": "Client", "isActive": True}]))
    assert client.company_scope_options()["types"][0].name == "Client"
    assert sleeps == [7.0, 3.0]


def test_endless_429_ends_as_rate_limited(client, mocked, sleeps):
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", status=429, headers={"Retry-After": "1"})
    with pytest.raises(RateLimited):
        client.company_scope_options()
    assert sleeps == [1.0, 1.0, 1.0]


def test_throttling_reported_inside_the_envelope_is_retried(client, mocked, sleeps):
    url = f"{BASE}/v2/system/accounttypes/lookup"
    mocked.get(url, json=envelope(success=False, code=429, message="Too many requests, rate limit exceeded"))
    mocked.get(url, json=envelope([]))
    assert client.company_scope_options()["types"] == []
    assert len(sleeps) == 1


def test_no_secret_reaches_an_error_a_repr_or_a_log(client, mocked, caplog):
    caplog.set_level(logging.DEBUG)
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup",
               json=envelope(success=False, code=400, message=f"Bad token {ACCESS} for password {PASSWORD}"))
    with pytest.raises(ValidationFailed) as caught:
        client.company_scope_options()
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate",
                   json=envelope(success=False, message=f"Wrong password {PASSWORD}"))
    with pytest.raises(CredentialsRejected) as rejected:
        client.check_credentials()
    texts = [str(caught.value), repr(caught.value), str(rejected.value), repr(rejected.value), repr(client),
             repr(client._token), caplog.text, *(r.getMessage() for r in caplog.records)]
    for text in texts:
        assert PASSWORD not in text and ACCESS not in text and REFRESH not in text
    assert "***" in str(caught.value)


def test_limits_are_1500_an_hour_per_endpoint_and_seatsyncs_own_three_at_a_time(sleeps):
    import fakeredis

    client = make_client("kaseya_bms", CREDS, redis=fakeredis.FakeRedis(), config={"HTTP_SLEEP": sleeps.append})
    assert client.http.limiter.hourly.amount == 1500
    assert client.http.limiter.hourly_per_endpoint is True
    assert client.http.limiter.concurrency == 3  # none documented: SeatSync's ceiling, shared by all workers
    assert "Pa55" not in client.http.limiter.tenant_key


def shared_config(sleeps) -> dict:
    """What connections.client_config gives a worker's client: the app's credential key as TOKEN_CIPHER."""
    return {"HTTP_SLEEP": sleeps.append, "TOKEN_CIPHER": CIPHER}


def test_clients_of_the_same_tenant_share_one_login_through_redis(mocked, sleeps):
    import fakeredis

    redis = fakeredis.FakeRedis()
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    for _ in range(3):  # e.g. three per-company jobs on different workers
        make_client("kaseya_bms", CREDS, redis=redis, config=shared_config(sleeps)).company_scope_options()
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 1
    assert all(c.request.headers.get("Authorization") == f"Bearer {ACCESS}" for c in api_calls(mocked))
    assert not any(PASSWORD.encode() in key for key in redis.scan_iter())


def test_the_token_shared_through_redis_is_encrypted_with_the_credential_key(mocked, sleeps):
    import fakeredis

    redis = fakeredis.FakeRedis()
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    make_client("kaseya_bms", CREDS, redis=redis, config=shared_config(sleeps)).company_scope_options()
    (stored,) = [redis.get(key) for key in redis.scan_iter("seatsync:kaseya_bms:token:*")]
    for secret in (ACCESS, REFRESH, "ACCESS-TOKEN-VALUE", PASSWORD):
        assert secret.encode() not in stored
    assert ACCESS in CIPHER.decrypt(stored).decode()
    make_client("kaseya_bms", CREDS, redis=redis, config=shared_config(sleeps)).company_scope_options()
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 1  # the second client reused it


def test_without_the_credential_key_no_token_is_kept_in_redis(mocked, sleeps):
    import fakeredis

    redis = fakeredis.FakeRedis()
    mocked.get(f"{BASE}/v2/system/accounttypes/lookup", json=envelope([]))
    make_client("kaseya_bms", CREDS, redis=redis, config={"HTTP_SLEEP": sleeps.append}).company_scope_options()
    assert list(redis.scan_iter("seatsync:kaseya_bms:token:*")) == []


def test_a_shared_token_refused_by_the_psa_is_replaced_by_a_new_login(mocked, sleeps):
    import fakeredis

    redis = fakeredis.FakeRedis()
    url = f"{BASE}/v2/system/accounttypes/lookup"
    mocked.get(url, json=envelope([]))
    make_client("kaseya_bms", CREDS, redis=redis, config=shared_config(sleeps)).company_scope_options()
    mocked.replace(responses.POST, f"{BASE}/v2/security/authenticate", json=envelope(token(access="NEW.TOKEN.X")))
    mocked.replace(responses.GET, url, status=401, json=envelope(success=False, code=978001))
    mocked.add(responses.GET, url, json=envelope([]))
    make_client("kaseya_bms", CREDS, redis=redis, config=shared_config(sleeps)).company_scope_options()
    assert mocked.calls[-1].request.headers["Authorization"] == "Bearer NEW.TOKEN.X"
    third = make_client("kaseya_bms", CREDS, redis=redis, config=shared_config(sleeps))
    third.company_scope_options()
    assert mocked.calls[-1].request.headers["Authorization"] == "Bearer NEW.TOKEN.X"
    assert sum(c.request.url.endswith("/authenticate") for c in mocked.calls) == 2


# --------------------------------------------------------------------------------------------------
# Money and effective dates (PRODUCT.md §4b)
# --------------------------------------------------------------------------------------------------
def test_catalog_prices_come_from_the_active_services_catalog(client, mocked):
    mock_catalog(mocked, service_row(5, "Backup", price=12.0), service_row(6, "Email"))
    prices = client.product_prices(["5", "9"])
    assert list(prices) == ["5"] and (prices["5"].unit_price, prices["5"].unit_cost) == (12.0, 6.0)
    assert len(api_calls(mocked)) == 1


def test_a_decrease_deferred_to_the_next_period_is_posted_with_its_own_effective_date(client, mocked):
    from webapp.psa_clients.base import QuantityChange

    mocked.post(POST_URL, json=envelope(posted_row(42)))
    mocked.post(POST_URL, json=envelope(posted_row(2, line_id=60, service_id=6)))
    other = ContractServiceLine(agreement_id="1000", product_id="6", line_id="60", quantity=None,
                                service_name="Email", unit_cost=1.0, unit_price=2.0)
    changes = [QuantityChange("5", 42, existing_line()),
               QuantityChange("6", 2, other, effective_date=dt.date(2026, 11, 1))]
    now, later = client.set_quantities("1000", changes, options=OPTIONS)
    bodies = [json.loads(c.request.body) for c in api_calls(mocked)]
    assert [[(i["ServiceId"], i["Units"], i["EffectiveDate"]) for i in body] for body in bodies] == [
        [(5, 42, "2026-10-01T00:00:00")], [(6, 2, "2026-11-01T00:00:00")]]
    assert later.response == "contract service 60: Units 2 from 2026-11-01"
    assert now.line.unit_price == 9.25
