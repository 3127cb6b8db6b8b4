"""ConnectWiseClient against the simulated ConnectWise over HTTP, with limits shared through real Redis."""

from __future__ import annotations

import datetime as dt

import pytest

from psa_sim.seed import SIM_CREDENTIALS
from tests.integration.psa_clients.helpers import company_id, managed_services, sim_requests
from webapp.psa_clients import make_client
from webapp.psa_clients.base import CredentialsRejected, NotFound, PermissionDenied, ValidationFailed, WriteOptions
from webapp.psa_clients.http import RetryPolicy

pytestmark = pytest.mark.integration

JUNE = dt.date(2026, 6, 1)


@pytest.fixture
def connect(psa_sim, real_redis):
    def build(**overrides):
        credentials = {"site": psa_sim.host, **SIM_CREDENTIALS["connectwise"], **overrides}
        return make_client("connectwise", credentials, redis=real_redis, dev_hosts=frozenset({psa_sim.host}),
                           config={"CW_CLIENT_ID": "sim-client-id",
                                   "HTTP_RETRY_POLICY": RetryPolicy(attempts=6, initial=0.01, maximum=1.0)})
    return build


@pytest.fixture
def client(connect):
    return connect()





def test_good_credentials_authenticate_and_name_the_tenant(client):
    assert client.check_credentials().startswith("SeatSync Sim MSP — ConnectWise Manage")


@pytest.mark.parametrize("status", [500, 503])
def test_one_failed_companyinfo_is_retried_and_never_rejects_the_credentials(client, psa_sim, status):
    psa_sim.faults(rules=[{"psa": "connectwise", "path_contains": "companyinfo", "status": status}])
    assert client.check_credentials().startswith("SeatSync Sim MSP")
    assert [r["status"] for r in sim_requests(psa_sim, "connectwise", "companyinfo")] == [status, 200]


def test_wrong_private_key_is_rejected_with_a_re_enter_hint(connect):
    with pytest.raises(CredentialsRejected) as error:
        connect(private_key="not-the-key").check_credentials()
    assert error.value.status == 401 and "re-enter" in error.value.hint
    assert "not-the-key" not in str(error.value)


def test_unknown_company_id_is_rejected_before_the_keys_are_sent(connect, psa_sim):
    with pytest.raises(CredentialsRejected) as error:
        connect(company_id="someoneelse").check_credentials()
    assert "Company ID" in error.value.hint
    assert [r["path"] for r in sim_requests(psa_sim, "connectwise")] == ["/login/companyinfo/someoneelse"]


def test_missing_security_right_is_explained(client, psa_sim):
    with psa_sim.state.lock:
        psa_sim.state.data["connectwise"]["denied"] = ["procurement/catalog"]
    with pytest.raises(PermissionDenied) as error:
        client.list_products()
    assert "Product Catalog" in error.value.hint


def test_products_are_the_active_catalog_items_and_search_narrows_them(client, psa_sim):
    with psa_sim.state.lock:
        catalog = psa_sim.state.data["connectwise"]["catalog"]
        catalog[9001] = {"id": 9001, "identifier": "OLD-AV", "description": "Old Antivirus", "inactiveFlag": True,
                         "productClass": "Agreement"}
        catalog[9002] = {"id": 9002, "identifier": "BUNDLE-1", "description": "Starter Bundle",
                         "inactiveFlag": False, "productClass": "Bundle"}
    names = [p.name for p in client.list_products()]
    assert sorted(names) == ["Email Security", "Endpoint Backup", "Password Manager Business",
                             "Security Awareness Training"]
    (found,) = client.list_products("password")
    assert found.detail == "PASSWORD-MANAGER-BUSINESS"


def test_scope_limits_company_pickers_to_active_clients(client):
    scope = client.company_scope_options()
    types = {t.name: t.id for t in scope["types"]}
    statuses = {s.name: s.id for s in scope["statuses"]}
    assert set(types) == {"Client", "Prospect", "Vendor"} and set(statuses) == {"Active", "Inactive"}
    in_scope = client.list_companies(type_ids=[types["Client"]], status_ids=[statuses["Active"]])
    names = {c.name for c in in_scope}
    assert "Acme Dental" in names and len(names) == 8
    assert not names & {"Prospect Bakery", "Some Vendor Inc", "Closed Customer LLC"}
    hits = client.search_companies("law", type_ids=[types["Client"]], status_ids=[statuses["Active"]])
    assert [c.name for c in hits] == ["Cedar Law Group"]
    assert client.search_companies('no "such" company') == []


def test_all_companies_are_read_in_few_pages(client, psa_sim):
    psa_sim.reset(2500)
    psa_sim.clear_log()
    assert len(client.list_companies()) == 2500
    assert len(sim_requests(psa_sim, "connectwise", "/company/companies")) == 3


def test_only_active_agreements_are_offered(client):
    agreements = client.list_agreements(company_id(client, "Acme Dental"))
    assert [a.name for a in agreements] == ["Acme Dental — Managed Services"]


def test_lines_of_many_agreements_are_read_with_one_call_each(client, psa_sim):
    companies = ["Acme Dental", "Bluebird Logistics", "Cedar Law Group", "Delta Architects"]
    agreements = [managed_services(client, name) for name in companies]
    psa_sim.clear_log()
    lines = client.read_lines(agreements, JUNE)
    assert [len(lines[a]) for a in agreements] == [1, 0, 1, 0]
    acme = lines[agreements[0]][0]
    assert acme.quantity == 5.0 and acme.description == "PASSWORD-MANAGER-BUSINESS"
    assert len(sim_requests(psa_sim, "connectwise", "/additions")) == len(agreements)


def test_reading_a_deleted_agreement_says_to_edit_the_mapping(client):
    with pytest.raises(NotFound) as error:
        client.read_lines(["999999"], JUNE)
    assert "edit the mapping" in error.value.hint


def test_quantity_is_updated_in_place_and_reads_back(client):
    agreement = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([agreement], JUNE)[agreement]
    result = client.set_quantity(agreement, line.product_id, 17, current=line,
                                 options=WriteOptions(effective_date=JUNE))
    assert result.action == "updated" and result.line.quantity == 17.0
    assert client.read_lines([agreement], JUNE)[agreement] == [result.line]


def test_missing_line_is_created_and_reads_back(client, psa_sim):
    agreement = managed_services(client, "Bluebird Logistics")
    product = next(p for p in client.list_products() if p.name == "Endpoint Backup")
    result = client.set_quantity(agreement, product.id, 9, current=None, options=WriteOptions(effective_date=JUNE))
    assert result.action == "created"
    (line,) = client.read_lines([agreement], JUNE)[agreement]
    assert (line.product_id, line.quantity, line.line_id) == (product.id, 9.0, result.line.line_id)
    stored = psa_sim.data("connectwise")["additions"][line.line_id]
    assert stored["billCustomer"] == "Billable" and stored["effectiveDate"] == "2026-06-01T00:00:00Z"


def test_keep_history_leaves_the_old_addition_cancelled_and_bills_the_new_one(client, psa_sim):
    agreement = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([agreement], JUNE)[agreement]
    july = dt.date(2026, 7, 1)
    result = client.set_quantity(agreement, line.product_id, 8, current=line,
                                 options=WriteOptions(effective_date=july, keep_history=True))
    assert result.action == "replaced"
    assert client.read_lines([agreement], july)[agreement] == [result.line]
    additions = psa_sim.data("connectwise")["additions"]
    assert additions[line.line_id]["cancelledDate"] == "2026-06-30T00:00:00Z"
    assert additions[line.line_id]["quantity"] == 5.0  # June keeps billing what it billed


def test_creating_an_addition_for_an_unknown_product_shows_the_psa_reason(client):
    agreement = managed_services(client, "Bluebird Logistics")
    with pytest.raises(ValidationFailed) as error:
        client.set_quantity(agreement, "424242", 3, current=None, options=WriteOptions(effective_date=JUNE))
    assert "product" in error.value.psa_message.lower() and error.value.status == 400


def test_rate_limit_storm_still_ends_with_the_right_quantity_and_three_requests_at_most(client, psa_sim):
    companies = ["Acme Dental", "Cedar Law Group", "Evergreen Clinic", "Granite Accounting"]
    agreements = [managed_services(client, name) for name in companies]
    psa_sim.clear_log()
    psa_sim.faults(latency_ms=30, rules=[
        {"psa": "connectwise", "path_contains": "/additions", "status": 429, "times": 6, "retry_after": 0.05},
        {"psa": "connectwise", "method": "PATCH", "status": 429, "times": 3, "retry_after": 0.05},
    ])
    lines = client.read_lines(agreements, JUNE)
    for agreement in agreements:
        (line,) = lines[agreement]
        client.set_quantity(agreement, line.product_id, 42, current=line, options=WriteOptions(effective_date=JUNE))
    psa_sim.faults()
    after = client.read_lines(agreements, JUNE)
    assert [after[a][0].quantity for a in agreements] == [42.0] * 4
    statuses = [r["status"] for r in sim_requests(psa_sim, "connectwise", "/additions")]
    assert statuses.count(429) == 9
    assert psa_sim.control("GET", "concurrency")["endpoints"]["connectwise finance/agreements/additions"]["max"] <= 3


def test_company_names_with_quotes_are_found_by_search(client, psa_sim):
    with psa_sim.state.lock:
        companies = psa_sim.state.data["connectwise"]["companies"]
        companies[9100] = {"id": 9100, "identifier": "BobsBikes", "name": 'Bob\'s "Best" Bikes',
                           "status": {"id": 1, "name": "Active"}, "types": [{"id": 1, "name": "Client"}],
                           "deletedFlag": False}
    assert [c.id for c in client.search_companies('"best" bikes')] == ["9100"]
    assert [c.id for c in client.search_companies("bob's")] == ["9100"]


def test_a_codebase_moved_by_an_upgrade_is_followed(client, psa_sim):
    assert client.company_scope_options()["types"]
    with psa_sim.state.lock:
        psa_sim.state.data["connectwise"]["codebase"] = "v2026_1/"
    psa_sim.clear_log()
    assert len(client.list_products()) == 4
    assert [r["path"].split("/apis")[0] for r in sim_requests(psa_sim, "connectwise")] == [
        "/v4_6_release", "/login/companyinfo/seatsync", "/v2026_1"]


def test_workers_share_the_codebase_so_each_new_client_does_not_ask_again(connect, psa_sim):
    assert connect().company_scope_options()["types"]
    psa_sim.clear_log()
    assert connect().company_scope_options()["types"]  # another worker's client, same tenant
    assert sim_requests(psa_sim, "connectwise", "/login/companyinfo") == []


def test_a_moved_codebase_updates_what_the_other_workers_use(connect, psa_sim):
    connect().company_scope_options()
    with psa_sim.state.lock:
        psa_sim.state.data["connectwise"]["codebase"] = "v2026_1/"
    assert len(connect().list_products()) == 4  # 404 on the old codebase, re-read, retried
    psa_sim.clear_log()
    assert len(connect().list_products()) == 4
    assert [r["path"].split("/apis")[0] for r in sim_requests(psa_sim, "connectwise")] == ["/v2026_1"]
