"""KaseyaBmsClient against the simulated Kaseya BMS over HTTP, with limits shared through real Redis."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.integration.psa_clients.helpers import company_id, managed_services, sim_client, sim_requests
from webapp.psa_clients.base import CredentialsRejected, NotFound, ValidationFailed, WriteOptions

pytestmark = pytest.mark.integration

OCTOBER = WriteOptions(effective_date=dt.date(2026, 10, 1))


@pytest.fixture
def connect(psa_sim, real_redis):
    def build(sleeps=None, **overrides):
        return sim_client("kaseya_bms", "hostname", psa_sim, real_redis, sleeps=sleeps, **overrides)
    return build


@pytest.fixture
def client(connect):
    return connect()





def product_id(client, name: str) -> str:
    (found,) = [p for p in client.list_products() if p.name == name]
    return found.id


def sim_lines(psa_sim, contract_id: str) -> list[dict]:
    return [s for s in psa_sim.data("kaseya_bms")["contract_services"].values() if str(s["contractId"]) == contract_id]


@pytest.mark.parametrize("status", [500, 503])
def test_one_failed_login_is_retried_and_never_rejects_the_credentials(client, psa_sim, status):
    psa_sim.faults(rules=[{"psa": "kaseya_bms", "path_contains": "authenticate", "status": status}])
    assert client.check_credentials() == f"Kaseya BMS company “SeatSync Sim” on {psa_sim.host}"
    assert [r["status"] for r in sim_requests(psa_sim, "kaseya_bms", "authenticate")] == [status, 200]


def test_good_credentials_authenticate_and_name_the_company(client, psa_sim):
    assert client.check_credentials() == f"Kaseya BMS company “SeatSync Sim” on {psa_sim.host}"


def test_wrong_password_is_rejected_with_a_re_enter_hint(connect):
    with pytest.raises(CredentialsRejected) as error:
        connect(password="not-the-password").check_credentials()
    assert error.value.status == 401 and "re-enter" in error.value.hint
    assert "not-the-password" not in str(error.value)


def test_wrong_company_name_is_rejected(connect):
    with pytest.raises(CredentialsRejected):
        connect(company="Someone Else").check_credentials()


def test_products_are_the_active_services_and_search_narrows_them(client):
    names = [p.name for p in client.list_products()]
    assert names == sorted(["Password Manager Business", "Endpoint Backup", "Email Security",
                            "Security Awareness Training"])
    assert [p.name for p in client.list_products("backup")] == ["Endpoint Backup"]  # not the retired plan


def test_scope_limits_company_pickers_to_active_clients(client):
    scope = client.company_scope_options()
    assert [t.name for t in scope["types"]] == ["Client", "Prospect", "Vendor"]
    client_type = next(t.id for t in scope["types"] if t.name == "Client")
    names = [c.name for c in client.search_companies("", type_ids=[client_type], status_ids=["active"])]
    assert "Acme Dental" in names
    assert not {"Prospect Bakery", "Some Vendor Inc", "Closed Customer LLC"} & set(names)
    assert [c.name for c in client.search_companies("cedar")] == ["Cedar Law Group"]


def test_all_companies_are_read_to_the_end(client, psa_sim):
    psa_sim.reset(seed=250)
    assert len(client.list_companies()) == 250
    assert len(sim_requests(psa_sim, "kaseya_bms", "/crm/accounts/summary")) == 3  # 100 a page


def test_only_active_recurring_services_contracts_are_offered(client):
    agreements = client.list_agreements(company_id(client, "Acme Dental"))
    assert [a.name for a in agreements] == ["Acme Dental — Managed Services"]  # no old one, no T&M


def test_lines_of_many_contracts_are_read_in_few_calls(client, psa_sim):
    psa_sim.reset(seed=300)
    contracts = [str(c["id"]) for c in psa_sim.data("kaseya_bms")["contracts"].values()]
    assert len(contracts) == 301  # one Managed Services contract each, and one T&M contract
    psa_sim.clear_log()
    lines = client.read_lines(contracts, dt.date(2026, 10, 1))
    assert set(lines) == set(contracts)
    state = psa_sim.data("kaseya_bms")["contract_services"].values()
    assert sum(len(v) for v in lines.values()) == len(state)
    # 4 contract lookups (100 ids each) + the catalog + 2 pages of related services per service (3 here):
    # the cost grows with the services, not with the contracts.
    calls = [r for r in sim_requests(psa_sim, "kaseya_bms") if "/security/" not in r["path"]]
    assert len(calls) == 4 + 1 + 3 * 2
    assert all(line.quantity is None for v in lines.values() for line in v)


def test_reading_a_deleted_contract_says_to_edit_the_mapping(client):
    with pytest.raises(NotFound) as error:
        client.read_lines(["999999"], dt.date(2026, 10, 1))
    assert "edit the mapping" in error.value.hint


def test_units_are_updated_in_place_and_read_back(client, psa_sim):
    contract = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    result = client.set_quantity(contract, line.product_id, 42, current=line, options=OCTOBER)
    assert (result.action, result.line.quantity, result.line.line_id) == ("updated", 42.0, line.line_id)
    (stored,) = sim_lines(psa_sim, contract)
    assert (stored["units"], stored["effectiveDate"], stored["unitPrice"]) == (42, "2026-10-01T00:00:00", 4.0)
    (again,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    assert again.line_id == line.line_id  # still one line: no duplicate


def test_repeating_a_write_changes_nothing_more(client, psa_sim):
    contract = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    for _ in range(2):
        client.set_quantity(contract, line.product_id, 17, current=line, options=OCTOBER)
    (stored,) = sim_lines(psa_sim, contract)
    assert stored["units"] == 17


def test_missing_line_is_created_from_the_catalog_and_read_back(client, psa_sim):
    contract = managed_services(client, "Bluebird Logistics")
    assert client.read_lines([contract], dt.date(2026, 10, 1))[contract] == []
    backup = product_id(client, "Endpoint Backup")
    result = client.set_quantity(contract, backup, 8, current=None, options=OCTOBER)
    assert (result.action, result.line.quantity) == ("created", 8.0)
    (stored,) = sim_lines(psa_sim, contract)
    assert (stored["serviceId"], stored["units"], stored["unitPrice"]) == (int(backup), 8, 6.0)
    (line,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    assert (line.product_id, line.line_id) == (backup, result.line.line_id)


def test_writing_to_a_deleted_contract_is_not_found(client):
    with pytest.raises(NotFound):
        client.set_quantity("999999", "201", 3, current=None, options=OCTOBER)


def test_writing_to_a_time_and_materials_contract_shows_the_psa_reason(client, psa_sim):
    contracts = psa_sim.data("kaseya_bms")["contracts"].values()
    (tm,) = [c for c in contracts if c["contractType"] != "Recurring Services"]
    with pytest.raises(ValidationFailed, match="Recurring Services"):
        client.set_quantity(str(tm["id"]), "201", 3, current=None, options=OCTOBER)


def test_short_lived_tokens_are_refreshed_and_revoked_ones_replaced(client, psa_sim):
    with psa_sim.state.lock:
        psa_sim.state.data["kaseya_bms"]["settings"]["token_lifetime"] = 1.0
    client.company_scope_options()
    time.sleep(1.05)
    client.company_scope_options()
    assert len(sim_requests(psa_sim, "kaseya_bms", "/security/refreshtoken")) >= 1
    with psa_sim.state.lock:
        psa_sim.state.data["kaseya_bms"]["settings"]["token_lifetime"] = 3600.0
        psa_sim.state.data["kaseya_bms"]["tokens"].clear()  # every token revoked server-side
    logins = len(sim_requests(psa_sim, "kaseya_bms", "/security/authenticate"))
    assert client.company_scope_options()["types"]
    assert len(sim_requests(psa_sim, "kaseya_bms", "/security/authenticate")) == logins + 1
    assert [r["status"] for r in sim_requests(psa_sim, "kaseya_bms", "/accounttypes")][-2:] == [401, 200]


def test_rate_limit_storm_still_ends_with_the_right_quantity(connect, psa_sim):
    sleeps: list[float] = []
    client = connect(sleeps)
    contract = managed_services(client, "Cedar Law Group")
    (line,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    psa_sim.faults(rules=[
        {"psa": "kaseya_bms", "path_contains": "/relatedservices/", "status": 429, "times": 3, "retry_after": 0.5},
        {"psa": "kaseya_bms", "path_contains": "/recurringservices/", "status": 429, "times": 4, "retry_after": 0.25},
        {"psa": "kaseya_bms", "path_contains": "/recurringservices/", "status": 503, "times": 1},
    ])
    (again,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    result = client.set_quantity(contract, again.product_id, 33, current=again, options=OCTOBER)
    psa_sim.faults()
    assert result.line.quantity == 33.0
    (stored,) = sim_lines(psa_sim, contract)
    assert stored["units"] == 33
    assert sleeps.count(0.5) == 3 and sleeps.count(0.25) == 4
    posts = sim_requests(psa_sim, "kaseya_bms", "/recurringservices/")
    assert [p["status"] for p in posts] == [429, 429, 429, 429, 503, 200]
    assert line.line_id == again.line_id


def test_every_line_of_a_contract_is_set_by_one_request(client, psa_sim):
    from webapp.psa_clients.base import QuantityChange

    contract = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([contract], dt.date(2026, 10, 1))[contract]
    backup = product_id(client, "Endpoint Backup")
    psa_sim.clear_log()
    results = client.set_quantities(contract, [QuantityChange(line.product_id, 9, line),
                                               QuantityChange(backup, 4, None)], options=OCTOBER)
    assert [r.action for r in results] == ["updated", "created"]
    writes = [r for r in psa_sim.requests("kaseya_bms") if r["path"].endswith("/services") and r["method"] == "POST"]
    assert len(writes) == 1
    assert sorted(s["units"] for s in sim_lines(psa_sim, contract)) == [4, 9]
