"""The simulator's fault knobs, over HTTP: what the fault-storm tests and the sync bench rely on."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from psa_sim.seed import SIM_CREDENTIALS

pytestmark = pytest.mark.integration

CW = SIM_CREDENTIALS["connectwise"]
CW_HEADERS = {
    "Authorization": "Basic " + base64.b64encode(
        f"{CW['company_id']}+{CW['public_key']}:{CW['private_key']}".encode()).decode(),
    "clientId": "sim-test",
}


def company_info(psa_sim) -> requests.Response:
    """ConnectWise's unauthenticated company lookup: the cheapest request that reaches the fault rules."""
    return requests.get(f"{psa_sim.url}/login/companyinfo/{CW['company_id']}", timeout=5)


def statuses(psa_sim, count: int) -> list[int]:
    return [company_info(psa_sim).status_code for _ in range(count)]


def post_faults(psa_sim, **payload) -> requests.Response:
    return requests.post(f"{psa_sim.url}/_sim/faults", json=payload, timeout=5)


def first_addition(psa_sim) -> dict:
    return next(iter(psa_sim.data("connectwise")["additions"].values()))


def patch_quantity(psa_sim, addition: dict, quantity: int, timeout: float = 5) -> requests.Response:
    url = (f"{psa_sim.url}/v4_6_release/apis/3.0/finance/agreements/{addition['agreementId']}"
           f"/additions/{addition['id']}")
    return requests.patch(url, json=[{"op": "replace", "path": "quantity", "value": quantity}],
                          headers=CW_HEADERS, timeout=timeout)


def quantity_of(psa_sim, addition: dict) -> float:
    return psa_sim.data("connectwise")["additions"][str(addition["id"])]["quantity"]


def test_a_rate_rule_fails_the_same_requests_again_with_the_same_seed(psa_sim):
    rule = {"psa": "connectwise", "rate": 0.3, "status": 503}
    post_faults(psa_sim, seed=7, rules=[rule]).raise_for_status()
    first = statuses(psa_sim, 60)
    post_faults(psa_sim, seed=7, rules=[rule]).raise_for_status()
    again = statuses(psa_sim, 60)
    post_faults(psa_sim, seed=8, rules=[rule]).raise_for_status()
    other_seed = statuses(psa_sim, 60)

    assert first == again
    assert other_seed != first
    assert set(first) == {200, 503}
    assert 8 <= first.count(503) <= 30  # about 30 % of 60


def test_an_every_rule_answers_every_nth_request_429_with_retry_after(psa_sim):
    psa_sim.faults(rules=[{"psa": "connectwise", "every": 5, "status": 429, "retry_after": 1}])
    answers = [company_info(psa_sim) for _ in range(20)]
    throttled = [i + 1 for i, answer in enumerate(answers) if answer.status_code == 429]
    assert throttled == [5, 10, 15, 20]
    assert {answers[i - 1].headers["Retry-After"] for i in throttled} == {"1"}
    assert [r["fault"] for r in psa_sim.requests("connectwise")].count(429) == 4


def test_times_caps_the_failures_of_a_count_or_a_rate_rule(psa_sim):
    psa_sim.faults(rules=[{"psa": "connectwise", "times": 2, "status": 502}])
    assert statuses(psa_sim, 4) == [502, 502, 200, 200]
    psa_sim.faults(rules=[{"psa": "connectwise", "rate": 1, "times": 3}])
    assert statuses(psa_sim, 5) == [500, 500, 500, 200, 200]


def test_count_rules_take_turns_each_failing_its_own_number_of_requests(psa_sim):
    psa_sim.faults(rules=[{"psa": "connectwise", "times": 2, "status": 429, "retry_after": 1},
                          {"psa": "connectwise", "times": 2, "status": 503}])
    assert statuses(psa_sim, 5) == [429, 429, 503, 503, 200]


def test_a_rule_fails_only_the_psa_method_and_path_it_names(psa_sim):
    psa_sim.faults(rules=[
        {"psa": "autotask", "times": -1},
        {"psa": "connectwise", "method": "PATCH", "times": -1},
        {"psa": "connectwise", "path_contains": "/additions/", "times": -1},
    ])
    assert statuses(psa_sim, 3) == [200, 200, 200]
    addition = first_addition(psa_sim)
    assert patch_quantity(psa_sim, addition, 9).status_code == 500


def test_every_rule_counts_the_requests_an_earlier_rule_already_failed(psa_sim):
    psa_sim.faults(rules=[
        {"psa": "connectwise", "every": 2, "status": 503},
        {"psa": "connectwise", "every": 3, "status": 429, "retry_after": 1},
    ])
    # Requests 2, 4, 6 fail with 503 (the first rule wins request 6); 3 and 9 with 429.
    assert statuses(psa_sim, 9) == [200, 503, 429, 503, 200, 503, 200, 503, 429]


def test_an_autotask_thread_limit_answer_carries_autotasks_own_error_text(psa_sim):
    psa_sim.faults(rules=[{"psa": "autotask", "path_contains": "ContractServiceAdjustments", "status": 500,
                           "kind": "thread_limit", "times": -1}])
    answer = requests.post(f"{psa_sim.url}/atservicesrest/v1.0/ContractServiceAdjustments", json={}, timeout=5)
    assert answer.status_code == 500
    (error,) = answer.json()["errors"]
    assert "Thread Threshold Exceeded" in error and "Itgenatr005" in error


def test_an_applied_fault_processes_the_write_and_loses_its_answer(psa_sim):
    addition = first_addition(psa_sim)
    psa_sim.faults(rules=[{"psa": "connectwise", "method": "PATCH", "kind": "applied"}])
    lost = patch_quantity(psa_sim, addition, 41)
    assert lost.status_code == 500
    assert quantity_of(psa_sim, addition) == 41
    held = psa_sim.control("GET", "lines/connectwise")
    assert {"agreement": str(addition["agreementId"]), "product": str(addition["product"]["id"]),
            "quantity": 41} in held
    assert patch_quantity(psa_sim, addition, 42).status_code == 200  # times defaults to 1
    assert [r["fault"] for r in psa_sim.requests("connectwise")] == ["applied", None]


def test_an_applied_fault_leaves_a_refused_write_refused(psa_sim):
    addition = first_addition(psa_sim)
    psa_sim.faults(rules=[{"psa": "connectwise", "method": "PATCH", "kind": "applied"}])
    url = (f"{psa_sim.url}/v4_6_release/apis/3.0/finance/agreements/{addition['agreementId']}"
           f"/additions/{addition['id']}")
    refused = requests.patch(url, json={"quantity": 3}, headers=CW_HEADERS, timeout=5)  # not a JSON Patch list
    assert refused.status_code == 400
    assert psa_sim.requests("connectwise")[0]["fault"] is None


def test_a_timeout_fault_lands_the_write_but_the_client_gives_up_waiting(psa_sim):
    addition = first_addition(psa_sim)
    psa_sim.faults(rules=[{"psa": "connectwise", "method": "PATCH", "kind": "timeout", "delay_ms": 1500}])
    with pytest.raises(requests.ReadTimeout):
        patch_quantity(psa_sim, addition, 17, timeout=0.5)
    assert quantity_of(psa_sim, addition) == 17
    while psa_sim.state.in_flight.current("connectwise"):  # the held answer: let it go before the next test
        time.sleep(0.05)


def test_a_rule_the_simulator_cannot_honour_is_refused(psa_sim):
    assert post_faults(psa_sim, rules=[{"rate": 1.5}]).status_code == 400
    assert post_faults(psa_sim, rules=[{"every": 0}]).status_code == 400
    refused = post_faults(psa_sim, rules=[{"psa": "connectwise", "probability": 0.2}])
    assert refused.status_code == 400 and "probability" in refused.json()["error"]
    assert statuses(psa_sim, 2) == [200, 200]  # nothing half-installed


def test_concurrency_reports_the_time_weighted_requests_in_flight_per_psa_and_endpoint(psa_sim):
    psa_sim.faults(latency_ms=200)
    psa_sim.clear_log()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: company_info(psa_sim), range(6)))  # three at a time, twice
    time.sleep(0.4)  # idle: lowers the wall average, not the busy one

    report = psa_sim.control("GET", "concurrency")
    psa = report["psas"]["connectwise"]
    assert psa == report["endpoints"]["connectwise login/companyinfo"]
    assert psa["max"] == 3
    assert 2.5 <= psa["average_while_busy"] <= 3
    assert 0.4 <= psa["busy_seconds"] < 1.0 and report["seconds"] >= psa["busy_seconds"] + 0.4
    in_flight_seconds = psa["average_while_busy"] * psa["busy_seconds"]
    assert abs(psa["average_over_wall"] - in_flight_seconds / report["seconds"]) < 0.01

    psa_sim.clear_log()
    assert psa_sim.control("GET", "concurrency")["psas"] == {}
