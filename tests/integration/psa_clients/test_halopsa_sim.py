"""HaloPsaClient against the simulated HaloPSA over HTTP, with limits and the token shared through real Redis."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from cryptography.fernet import Fernet

from tests.integration.psa_clients.helpers import company_id, managed_services, sim_client, sim_requests
from webapp.psa_clients.base import (
    ComputedLine,
    CredentialsRejected,
    NotFound,
    QuantityChange,
    ValidationFailed,
    WriteOptions,
)

pytestmark = pytest.mark.integration

OCTOBER = WriteOptions(effective_date=dt.date(2026, 10, 1))
ON = dt.date(2026, 10, 1)
CIPHER = Fernet(Fernet.generate_key())


@pytest.fixture
def connect(psa_sim, real_redis):
    def build(sleeps=None, **overrides):
        return sim_client("halopsa", "instance", psa_sim, real_redis, sleeps=sleeps, config={"TOKEN_CIPHER": CIPHER},
                          **overrides)
    return build


@pytest.fixture
def client(connect):
    return connect()


def item_id(client, name: str) -> str:
    (found,) = [p for p in client.list_products() if p.name == name]
    return found.id


def sim_lines(psa_sim, invoice_id: str) -> list[dict]:
    return psa_sim.data("halopsa")["invoices"][invoice_id]["lines"]


def api_calls(psa_sim) -> list[dict]:
    return [r for r in sim_requests(psa_sim, "halopsa") if r["path"].startswith("/api/")]


def test_good_credentials_authenticate_and_count_the_customers(client, psa_sim):
    assert client.check_credentials() == f"instance {psa_sim.host}, 10 active customers"
    (token,) = sim_requests(psa_sim, "halopsa", "/auth/token")
    assert token["query"] == "tenant=seatsync" and "grant_type=client_credentials" in token["body"]


@pytest.mark.parametrize("field", ["client_secret", "tenant"])
def test_a_wrong_secret_or_tenant_is_rejected_with_a_re_enter_hint_and_no_secret(connect, field):
    with pytest.raises(CredentialsRejected) as error:
        connect(**{field: "not-the-right-one"}).check_credentials()
    assert error.value.status == 401 and "re-enter" in error.value.hint
    assert "not-the-right-one" not in str(error.value)


def test_items_are_the_active_ones_and_search_narrows_them(client):
    assert [p.name for p in client.list_products()] == sorted([
        "Password Manager Business", "Endpoint Backup", "Email Security", "Security Awareness Training"])
    assert [p.name for p in client.list_products("backup")] == ["Endpoint Backup"]  # not the retired plan


def test_scope_limits_company_pickers_to_active_clients(client):
    scope = client.company_scope_options()
    assert [t.name for t in scope["types"]] == ["Client", "Prospect", "Vendor"]
    client_type = next(t.id for t in scope["types"] if t.name == "Client")
    names = [c.name for c in client.search_companies("", type_ids=[client_type], status_ids=["active"])]
    assert "Acme Dental" in names
    assert not {"Prospect Bakery", "Some Vendor Inc", "Closed Customer LLC"} & set(names)
    assert [c.name for c in client.search_companies("", status_ids=["inactive"])] == ["Closed Customer LLC"]
    assert [c.name for c in client.search_companies("cedar")] == ["Cedar Law Group"]
    assert "Closed Customer LLC" in [c.name for c in client.list_companies()]  # no filter: every customer


def test_all_companies_are_read_to_the_end_a_page_per_hundred(client, psa_sim):
    psa_sim.reset(seed=250)
    psa_sim.clear_log()
    assert len(client.list_companies()) == 250
    assert len(sim_requests(psa_sim, "halopsa", "/api/Client")) == 3


def test_only_recurring_invoices_that_are_not_disabled_are_offered(client):
    agreements = client.list_agreements(company_id(client, "Acme Dental"))
    assert [a.name for a in agreements] == ["Acme Dental — Managed Services"]


def test_lines_carry_quantity_price_and_cost(client):
    invoice = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([invoice], ON)[invoice]
    assert (line.quantity, line.unit_price, line.unit_cost, line.currency) == (5.0, 4.0, 2.0, "USD")


def test_lines_of_many_recurring_invoices_are_read_through_the_list_in_few_calls(client, psa_sim):
    psa_sim.reset(seed=300)
    invoices = list(psa_sim.data("halopsa")["invoices"])
    client.check_credentials()
    psa_sim.clear_log()
    lines = client.read_lines(invoices, ON)
    assert set(lines) == set(invoices)
    assert sum(len(v) for v in lines.values()) == sum(len(h["lines"]) for h in psa_sim.data("halopsa")["invoices"]
                                                       .values())
    assert len(api_calls(psa_sim)) == 3  # 300 invoices, 100 a page: not one call per invoice


def test_a_few_recurring_invoices_of_a_long_list_are_read_one_by_one(client, psa_sim):
    psa_sim.reset(seed=1000)
    invoices = list(psa_sim.data("halopsa")["invoices"])[-4:]  # not on the first page
    client.check_credentials()
    psa_sim.clear_log()
    assert set(client.read_lines(invoices, ON)) == set(invoices)
    assert len(api_calls(psa_sim)) == 1 + 4  # the first page shows 10 pages: 4 single reads are cheaper


def test_reading_a_deleted_recurring_invoice_says_to_edit_the_mapping(client):
    with pytest.raises(NotFound) as error:
        client.read_lines(["999999"], ON)
    assert "edit the mapping" in error.value.hint


def test_quantities_are_set_in_place_and_a_repeat_changes_nothing_more(client, psa_sim):
    invoice = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([invoice], ON)[invoice]
    for _ in range(2):
        result = client.set_quantity(invoice, line.product_id, 42, current=line, options=OCTOBER)
    assert (result.action, result.line.quantity, result.line.line_id) == ("updated", 42.0, line.line_id)
    (stored,) = sim_lines(psa_sim, invoice)
    assert (stored["qty_order"], stored["unit_price"]) == (42, 4.0)  # never repriced


def test_a_missing_line_is_created_from_the_item_and_read_back(client, psa_sim):
    invoice = managed_services(client, "Bluebird Logistics")
    assert client.read_lines([invoice], ON)[invoice] == []
    backup = item_id(client, "Endpoint Backup")
    result = client.set_quantity(invoice, backup, 8, current=None, options=OCTOBER)
    assert (result.action, result.line.quantity) == ("created", 8.0)
    (stored,) = sim_lines(psa_sim, invoice)
    assert (stored["_itemid"], stored["qty_order"], stored["unit_price"]) == (int(backup), 8, 6.0)
    (line,) = client.read_lines([invoice], ON)[invoice]
    assert (line.product_id, line.line_id) == (backup, result.line.line_id)


def test_every_line_of_a_recurring_invoice_is_set_by_one_request(client, psa_sim):
    invoice = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([invoice], ON)[invoice]
    backup = item_id(client, "Endpoint Backup")
    psa_sim.clear_log()
    results = client.set_quantities(invoice, [QuantityChange(line.product_id, 9, line),
                                              QuantityChange(backup, 4, None)], options=OCTOBER)
    assert [r.action for r in results] == ["updated", "created"]
    assert len(sim_requests(psa_sim, "halopsa", "/updatelines")) == 1
    assert sorted(s["qty_order"] for s in sim_lines(psa_sim, invoice)) == [4, 9]


def test_a_line_whose_quantity_halo_computes_is_reported_and_never_written(client, psa_sim):
    invoice = managed_services(client, "Cedar Law Group")
    with psa_sim.state.lock:
        (raw,) = psa_sim.state.data["halopsa"]["invoices"][invoice]["lines"]
        raw["recurring_invoice_quantity_type"] = 1  # users
    (line,) = client.read_lines([invoice], ON)[invoice]
    assert isinstance(line, ComputedLine) and line.reason == "quantity managed by HaloPSA"
    psa_sim.clear_log()
    (result,) = client.set_quantities(invoice, [QuantityChange(line.product_id, 50, line)], options=OCTOBER)
    assert isinstance(result, ValidationFailed) and "quantity managed by HaloPSA" in str(result)
    assert sim_requests(psa_sim, "halopsa", "/updatelines") == []


def test_the_token_is_shared_by_every_client_of_the_instance_and_replaced_once_when_revoked(connect, psa_sim,
                                                                                            real_redis):
    first = connect()
    first.company_scope_options()
    connect().company_scope_options()  # another worker's client: the shared token, no new request
    assert len(sim_requests(psa_sim, "halopsa", "/auth/token")) == 1
    (key,) = real_redis.scan_iter("seatsync:halopsa:token:*")
    stored = real_redis.get(key)
    assert first._token.access.encode() not in stored and b"sim-client-secret" not in CIPHER.decrypt(stored)
    with psa_sim.state.lock:
        psa_sim.state.data["halopsa"]["tokens"].clear()  # every token revoked server-side
    assert connect().company_scope_options()["types"]
    assert len(sim_requests(psa_sim, "halopsa", "/auth/token")) == 2
    assert [r["status"] for r in sim_requests(psa_sim, "halopsa", "/api/Lookup")][-2:] == [401, 200]


def test_a_short_lived_token_is_renewed_before_it_expires(client, psa_sim):
    with psa_sim.state.lock:
        psa_sim.state.data["halopsa"]["settings"]["token_lifetime"] = 2.0
    client.company_scope_options()
    time.sleep(1.6)  # inside the last quarter of its life: renewed before use, never refused
    client.company_scope_options()
    assert len(sim_requests(psa_sim, "halopsa", "/auth/token")) == 2
    assert all(r["status"] == 200 for r in sim_requests(psa_sim, "halopsa", "/api/"))


def test_rate_limit_storm_still_ends_with_the_right_quantity(connect, psa_sim):
    sleeps: list[float] = []
    client = connect(sleeps)
    invoice = managed_services(client, "Evergreen Clinic")
    psa_sim.faults(rules=[
        {"psa": "halopsa", "path_contains": "/RecurringInvoice/", "method": "GET", "status": 429, "times": 3,
         "retry_after": 0.5},
        {"psa": "halopsa", "path_contains": "/updatelines", "status": 429, "times": 2, "retry_after": 0.25},
        {"psa": "halopsa", "path_contains": "/updatelines", "status": 503, "times": 1},
    ])
    (line,) = client.read_lines([invoice], ON)[invoice]
    result = client.set_quantity(invoice, line.product_id, 33, current=line, options=OCTOBER)
    psa_sim.faults()
    assert result.line.quantity == 33.0
    (stored,) = sim_lines(psa_sim, invoice)
    assert stored["qty_order"] == 33
    assert sleeps.count(0.5) == 3 and sleeps.count(0.25) == 2
    assert [p["status"] for p in sim_requests(psa_sim, "halopsa", "/updatelines")] == [429, 429, 503, 200]


def test_a_validation_error_in_plain_text_is_kept_scrubbed(client, psa_sim):
    invoice = managed_services(client, "Acme Dental")
    (line,) = client.read_lines([invoice], ON)[invoice]
    psa_sim.faults(rules=[{"psa": "halopsa", "path_contains": "/updatelines", "status": 400, "kind": "text"}])
    with pytest.raises(ValidationFailed, match="Simulated failure"):
        client.set_quantity(invoice, line.product_id, 3, current=line, options=OCTOBER)
