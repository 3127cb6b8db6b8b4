"""The limits every worker shares through Redis: concurrent requests per endpoint, hourly budgets."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from webapp.psa_clients.http import RequestLimiter


@pytest.fixture(params=["real", "fake"])
def redis(request, real_redis):
    return real_redis if request.param == "real" else fakeredis.FakeRedis()


def limiter(redis, concurrency=2, **kwargs):
    return RequestLimiter(redis, tenant_key="t", hourly_limit=None, concurrency=concurrency, **kwargs)


def test_limiters_in_two_workers_never_exceed_the_concurrency_together(redis):
    workers = [limiter(redis, 3), limiter(redis, 3)]
    in_flight, peak, lock = [0], [0], threading.Lock()

    def call(n):
        with workers[n % 2].slot("ContractServiceAdjustments"):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.01)
            with lock:
                in_flight[0] -= 1

    threads = [threading.Thread(target=call, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 3


def test_a_freed_slot_wakes_the_waiting_request_instead_of_leaving_it_to_a_timer(redis, monkeypatch):
    # With the fallback timer set far beyond the test, only the release's wake-up can hand over the slot.
    monkeypatch.setattr(RequestLimiter, "WAKE_TIMEOUT", 60)
    first = limiter(redis, 1)
    got_slot = threading.Event()
    release = threading.Event()

    def holder():
        with first.slot("x"):
            release.wait(10)

    def waiter():
        with limiter(redis, 1).slot("x"):
            got_slot.set()

    hold = threading.Thread(target=holder, daemon=True)
    hold.start()
    time.sleep(0.05)
    wait = threading.Thread(target=waiter, daemon=True)
    wait.start()
    assert not got_slot.wait(0.3)  # the slot is taken: the second request waits
    release.set()
    assert got_slot.wait(10)  # woken by the release, long before the 60 s fallback
    hold.join(5)
    wait.join(5)


def test_slots_of_a_killed_worker_come_back_when_their_lease_ends(real_redis, monkeypatch):
    import contextlib

    monkeypatch.setattr(RequestLimiter, "LEASE_SECONDS", 1)
    killed = limiter(real_redis, 1)
    killed._renewed = lambda key, token: contextlib.nullcontext()  # its heartbeat died with it
    dead = killed.slot("x")
    dead.__enter__()  # never released: its worker died
    started = time.monotonic()
    with limiter(real_redis, 1).slot("x"):
        pass
    waited = time.monotonic() - started
    # held until the lease ran out (not taken at once), then handed over (not blocked for good)
    assert 0.9 <= waited < 10


def test_a_per_endpoint_hourly_budget_is_counted_per_path_template():
    shared = RequestLimiter(fakeredis.FakeRedis(), tenant_key="bms", hourly_limit=1500, concurrency=None,
                            hourly_per_endpoint=True)
    assert shared.budget_key("recurringservices/services") == "bms:recurringservices/services"
    tenant = RequestLimiter(fakeredis.FakeRedis(), tenant_key="at", hourly_limit=10_000, concurrency=3)
    assert tenant.budget_key("ContractServices") == tenant.budget_key("Companies") == "at"


def test_the_benchmark_override_lifts_hourly_budgets_only_for_the_simulator_host():
    from webapp.psa_clients.http import hourly_limit_for

    lifted = {"DEV_HOSTS_NO_HOURLY_LIMIT": True}
    assert hourly_limit_for(1500, "127.0.0.1:8099", frozenset({"127.0.0.1:8099"}), lifted) is None
    assert hourly_limit_for(1500, "api.bms.kaseya.com", frozenset({"127.0.0.1:8099"}), lifted) == 1500
    assert hourly_limit_for(1500, "127.0.0.1:8099", frozenset({"127.0.0.1:8099"}), {}) == 1500


def test_a_slow_request_keeps_its_slot_beyond_the_lease(real_redis, monkeypatch):
    monkeypatch.setattr(RequestLimiter, "LEASE_SECONDS", 1)
    got_slot = threading.Event()

    def other_request():
        with limiter(real_redis, 1).slot("x"):
            got_slot.set()

    with limiter(real_redis, 1).slot("x"):  # a request running three leases long, renewed meanwhile
        waiter = threading.Thread(target=other_request, daemon=True)
        waiter.start()
        assert not got_slot.wait(3)
    assert got_slot.wait(5)  # released: taken at once
    waiter.join(5)
