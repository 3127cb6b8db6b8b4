"""AutotaskClient against the PSA simulator over HTTP, with limits shared through a real Redis."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import requests

from psa_sim.seed import SIM_CREDENTIALS
from webapp.psa_clients import CredentialsRejected, WriteOptions, make_client
from webapp.psa_clients.http import RetryPolicy

pytestmark = pytest.mark.integration

ON = dt.date(2026, 10, 1)


def autotask(sim, redis=None, **credentials):
    return make_client(
        "autotask", {**SIM_CREDENTIALS["autotask"], **credentials}, redis=redis, dev_hosts=frozenset({sim.host}),
        config={
            "AUTOTASK_ZONE_URL": f"{sim.url}/atservicesrest/v1.0/zoneInformation",
            "HTTP_RETRY_POLICY": RetryPolicy(attempts=8, initial=0.01, maximum=0.2),
        },
    )


def api_requests(sim):
    return [r for r in sim.requests("autotask") if "zoneinformation" not in r["path"].lower()]


def customer(sim, name):
    data = sim.data("autotask")
    company = next(c for c in data["companies"].values() if c["companyName"] == name)
    contract = next(k for k in data["contracts"].values()
                    if k["companyID"] == company["id"] and k["contractType"] == 7 and k["status"] == 1)
    return str(company["id"]), str(contract["id"])


def service_id(sim, name):
    return str(next(s["id"] for s in sim.data("autotask")["services"].values() if s["name"] == name))


def test_the_sim_credentials_authenticate_and_a_wrong_secret_is_rejected_with_a_hint(psa_sim, real_redis):
    assert "api@seatsync.test" in autotask(psa_sim, real_redis).check_credentials()
    with pytest.raises(CredentialsRejected) as caught:
        autotask(psa_sim, real_redis, secret="wrong").check_credentials()
    assert caught.value.status == 401 and "re-enter" in caught.value.hint
    with pytest.raises(CredentialsRejected):
        autotask(psa_sim, username="nobody@seatsync.test").check_credentials()


@pytest.mark.parametrize("kind", [None, "empty"], ids=["500 with an error body", "500 without a body"])
def test_one_500_on_the_zone_lookup_is_retried_and_never_rejects_the_credentials(psa_sim, real_redis, kind):
    psa_sim.faults(rules=[{"psa": "autotask", "path_contains": "zoneInformation", "status": 500, "kind": kind}])
    assert "api@seatsync.test" in autotask(psa_sim, real_redis).check_credentials()
    zone_statuses = [r["status"] for r in psa_sim.requests("autotask") if "zoneinformation" in r["path"].lower()]
    assert zone_statuses == [500, 200]


def test_a_zone_lookup_failing_for_good_falls_back_to_the_zone_another_worker_saw(psa_sim, real_redis):
    autotask(psa_sim, real_redis).check_credentials()
    expired = [key for key in real_redis.keys("seatsync:autotask-zone:*") if not key.endswith(b":last")]
    real_redis.delete(*expired)  # the 12-hour cache ran out; the long-lived copy is left
    psa_sim.faults(rules=[{"psa": "autotask", "path_contains": "zoneInformation", "status": 500, "times": -1}])
    assert [p.name for p in autotask(psa_sim, real_redis).list_products("backup")] == ["Endpoint Backup"]


def test_products_are_the_active_services(psa_sim):
    client = autotask(psa_sim)
    names = [p.name for p in client.list_products()]
    assert names == sorted(["Password Manager Business", "Endpoint Backup", "Email Security",
                            "Security Awareness Training"])
    assert [p.name for p in client.list_products("backup")] == ["Endpoint Backup"]


def test_company_scope_keeps_prospects_vendors_and_inactive_companies_out_of_the_pickers(psa_sim):
    client = autotask(psa_sim)
    scope = client.company_scope_options()
    customer_type = next(t.id for t in scope["types"] if t.name == "Customer")
    in_scope = [c.name for c in client.list_companies(type_ids=[customer_type], status_ids=["active"])]
    assert len(in_scope) == 8 and "Acme Dental" in in_scope
    assert not {"Prospect Bakery", "Some Vendor Inc", "Closed Customer LLC"} & set(in_scope)
    assert len(client.list_companies()) == 11
    found = client.search_companies("law", type_ids=[customer_type], status_ids=["active"])
    assert [c.name for c in found] == ["Cedar Law Group"]


def test_only_active_recurring_service_contracts_are_offered(psa_sim):
    client = autotask(psa_sim)
    company_id, _ = customer(psa_sim, "Acme Dental")  # also has an inactive and a Block Hours contract
    assert [a.name for a in client.list_agreements(company_id)] == ["Acme Dental — Managed Services"]


def test_lines_of_600_agreements_are_read_in_a_handful_of_calls(psa_sim, real_redis):
    psa_sim.reset(600)
    data = psa_sim.data("autotask")
    contract_ids = [str(k["id"]) for k in data["contracts"].values() if k["contractType"] == 7]
    assert len(contract_ids) == 600
    expected = {
        (str(cs["contractID"]), str(cs["serviceID"])): data["unit_events"][str(cs["id"])][0][1]
        for cs in data["contract_services"].values()
    }
    psa_sim.clear_log()

    lines = autotask(psa_sim, real_redis).read_lines(contract_ids, ON)

    # 2 batches × (services + units), each at most 2 pages, + the tenant's currency (read once, then cached)
    assert len(api_requests(psa_sim)) <= 9
    read = {(line.agreement_id, line.product_id): line.quantity for rows in lines.values() for line in rows}
    assert read == expected
    assert set(lines) == set(contract_ids)


def test_quantities_are_adjusted_and_missing_lines_created_then_read_back(psa_sim, real_redis):
    client = autotask(psa_sim, real_redis)
    _, contract = customer(psa_sim, "Acme Dental")
    password, backup = service_id(psa_sim, "Password Manager Business"), service_id(psa_sim, "Endpoint Backup")
    options = WriteOptions(effective_date=ON)

    (line,) = client.read_lines([contract], ON)[contract]
    assert (line.product_id, line.quantity) == (password, 5)
    updated = client.set_quantity(contract, password, 12, current=line, options=options)
    created = client.set_quantity(contract, backup, 4, current=None, options=options)
    assert (updated.action, created.action) == ("adjusted", "created")

    after = {ln.product_id: ln for ln in client.read_lines([contract], ON)[contract]}
    assert {p: ln.quantity for p, ln in after.items()} == {password: 12, backup: 4}
    # The adjustment added the contract service itself (one POST); the line id comes with the next read.
    assert after[backup].line_id and created.line.line_id == ""
    assert client.set_quantity(contract, password, 12, current=after[password], options=options).action == "unchanged"
    # The previous month still bills what it billed.
    before = {ln.product_id: ln.quantity for ln in client.read_lines([contract], ON - dt.timedelta(days=1))[contract]}
    assert before == {password: 5, backup: 0}
    adjustments = psa_sim.data("autotask")["adjustments"]
    assert [(a["serviceID"], a["unitChange"]) for a in adjustments] == [(int(password), 7), (int(backup), 4)]


def test_a_mid_month_adjustment_splits_the_period(psa_sim):
    client = autotask(psa_sim)
    _, contract = customer(psa_sim, "Cedar Law Group")
    (line,) = client.read_lines([contract], ON)[contract]
    client.set_quantity(contract, line.product_id, 20, current=line,
                        options=WriteOptions(effective_date=ON + dt.timedelta(days=14)))
    assert client.read_lines([contract], ON)[contract][0].quantity == line.quantity
    assert client.read_lines([contract], ON + dt.timedelta(days=14))[contract][0].quantity == 20
    assert client.read_lines([contract], ON + dt.timedelta(days=40))[contract][0].quantity == 20


def test_a_storm_of_429s_and_thread_limit_errors_still_ends_with_the_right_quantities(psa_sim, real_redis):
    client = autotask(psa_sim, real_redis)
    contracts = [customer(psa_sim, name)[1] for name in ("Acme Dental", "Cedar Law Group", "Evergreen Clinic")]
    psa_sim.faults(rules=[
        {"psa": "autotask", "path_contains": "/query", "status": 429, "times": 5, "retry_after": 0.01},
        {"psa": "autotask", "path_contains": "ContractServiceAdjustments", "status": 429, "times": 3,
         "retry_after": 0.01},
        {"psa": "autotask", "path_contains": "ContractServiceAdjustments", "status": 500, "times": 2,
         "kind": "thread_limit"},
    ])
    targets = {contract: 30 + i for i, contract in enumerate(contracts)}
    for contract, lines in client.read_lines(contracts, ON).items():
        (line,) = lines
        client.set_quantity(contract, line.product_id, targets[contract], current=line,
                            options=WriteOptions(effective_date=ON))
    statuses = [r["status"] for r in psa_sim.requests("autotask")]
    assert statuses.count(429) == 8 and statuses.count(500) == 2

    psa_sim.faults(rules=[])
    read = {c: lines[0].quantity for c, lines in autotask(psa_sim).read_lines(contracts, ON).items()}
    assert read == targets
    assert len(psa_sim.data("autotask")["adjustments"]) == 3  # each delta posted exactly once


def test_workers_together_never_exceed_three_requests_at_once_per_endpoint(psa_sim, real_redis):
    psa_sim.faults(latency_ms=30)
    contracts = [customer(psa_sim, name)[1] for name in ("Acme Dental", "Cedar Law Group")]
    errors = []

    def worker():
        try:
            autotask(psa_sim, real_redis).read_lines(contracts, ON)
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    peaks = psa_sim.control("GET", "concurrency")["endpoints"]
    assert peaks["autotask ContractServiceUnits"]["max"] <= 3 and peaks["autotask ContractServices"]["max"] <= 3
    assert all(r["status"] == 200 for r in psa_sim.requests("autotask"))


def test_the_simulator_is_as_strict_as_the_real_api(psa_sim):
    base = f"{psa_sim.url}/ATServicesRest/V1.0/"
    creds = SIM_CREDENTIALS["autotask"]
    headers = {"ApiIntegrationCode": creds["integration_code"], "UserName": creds["username"],
               "Secret": creds["secret"]}
    unauthorized = requests.post(base + "Companies/query", json={"filter": []}, timeout=5)
    assert unauthorized.status_code == 401 and unauthorized.text == ""
    assert "www-authenticate" in {k.lower() for k in unauthorized.headers}
    no_filter = requests.post(base + "Companies/query", json={"filter": []}, headers=headers, timeout=5)
    assert no_filter.status_code == 500 and no_filter.json()["errors"]
    too_many = requests.post(base + "Companies/query", headers=headers, timeout=5,
                             json={"filter": [{"op": "gte", "field": "id", "value": 0}], "maxRecords": 501})
    assert too_many.status_code == 500 and "500" in too_many.json()["errors"][0]
    for method in ("GET", "POST"):
        unreadable = requests.request(method, base + "ContractServiceAdjustments/query", headers=headers, timeout=5,
                                      json={"filter": [{"op": "gte", "field": "id", "value": 0}]})
        assert unreadable.status_code == 405


def test_the_simulators_lines_view_shows_the_units_in_effect_on_each_day(psa_sim):
    client = autotask(psa_sim)
    _, contract = customer(psa_sim, "Cedar Law Group")
    (line,) = client.read_lines([contract], ON)[contract]
    later = ON + dt.timedelta(days=14)
    client.set_quantity(contract, line.product_id, 20, current=line, options=WriteOptions(effective_date=later))

    def held(day: dt.date) -> float:
        lines = psa_sim.control("GET", "lines/autotask", params={"on": day.isoformat()})
        return next(row["quantity"] for row in lines
                    if (row["agreement"], row["product"]) == (contract, line.product_id))

    assert (held(ON), held(later)) == (line.quantity, 20)
