"""The limits every worker shares through Redis: concurrent requests per endpoint, hourly budgets."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fakeredis
import pytest

from tests.fixtures.redis import TEST_REDIS_URL
from webapp.psa_clients.http import RequestLimiter

ROOT = Path(__file__).resolve().parents[3]


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


# A worker process whose request holds the one slot of endpoint "x": argv = Redis URL, lease seconds.
HOLDER = """
import signal, sys, threading, time
import redis
from webapp.psa_clients.http import RequestLimiter

url, lease = sys.argv[1], float(sys.argv[2])
RequestLimiter.LEASE_SECONDS = lease
limiter = RequestLimiter(redis.Redis.from_url(url), tenant_key="t", hourly_limit=None, concurrency=1)

def hold():
    with limiter.slot("x"):
        print("held", flush=True)
        time.sleep(600)

# RQ turns SIGTERM into a warm shutdown that ends in a normal exit; this does the same.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
threading.Thread(target=hold, daemon=True).start()  # cut short by the exit
while True:
    time.sleep(0.1)
"""


def start_holder(lease: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, TEST_REDIS_URL, str(lease)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    return holder


class Waiter:
    """A request of another worker waiting for the same slot; records when it got it."""

    def __init__(self, redis):
        self.got_at: float | None = None
        self.got = threading.Event()
        self.thread = threading.Thread(target=self._take, args=(limiter(redis, 1),), daemon=True)
        self.thread.start()

    def _take(self, other):
        with other.slot("x"):
            self.got_at = time.monotonic()
            self.got.set()


def test_slots_of_a_killed_worker_are_free_within_one_lease_while_a_live_one_keeps_them(real_redis):
    assert RequestLimiter.LEASE_SECONDS <= 10  # a restarted fleet is writing within seconds
    lease = 3.0
    holder = start_holder(lease)
    try:
        waiter = Waiter(real_redis)
        assert not waiter.got.wait(lease * 2)  # alive: its heartbeat keeps the slot past its lease
        holder.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert waiter.got.wait(lease + 5)
        assert waiter.got_at - killed_at <= lease + 2
    finally:
        holder.kill()
        holder.wait(10)


def test_a_worker_shutting_down_frees_its_slots_at_once_not_after_their_lease(real_redis):
    holder = start_holder(RequestLimiter.LEASE_SECONDS)
    try:
        waiter = Waiter(real_redis)
        assert not waiter.got.wait(0.3)
        holder.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert holder.wait(10) == 0
        assert waiter.got.wait(RequestLimiter.LEASE_SECONDS)
        assert waiter.got_at - stopped_at < 3  # released by the exit, long before the 10 s lease
    finally:
        holder.kill()
        holder.wait(10)


def test_a_request_longer_than_the_lease_keeps_its_slot_and_nobody_is_let_in_beside_it(redis, monkeypatch):
    monkeypatch.setattr(RequestLimiter, "LEASE_SECONDS", 1)
    in_flight, peak, lock = [0], [0], threading.Lock()
    finished = []
    slow_holds = threading.Event()

    def request(seconds):
        with limiter(redis, 1).slot("x"):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            if seconds > 1:
                slow_holds.set()
            time.sleep(seconds)
            with lock:
                in_flight[0] -= 1
        finished.append(seconds)

    slow = threading.Thread(target=request, args=(3.5,))
    slow.start()
    assert slow_holds.wait(10)
    quick = [threading.Thread(target=request, args=(0.01,)) for _ in range(3)]
    for t in quick:
        t.start()
    for t in [slow, *quick]:
        t.join(15)
    assert peak[0] == 1  # 3.5 s is three leases: the slot was renewed, never handed out twice
    assert finished[0] == 3.5  # the quick requests waited for the long one to end


def test_a_per_endpoint_hourly_budget_is_counted_per_path_template():
    shared = RequestLimiter(fakeredis.FakeRedis(), tenant_key="bms", hourly_limit=1500, concurrency=None,
                            hourly_per_endpoint=True)
    assert shared.budget_key("recurringservices/services") == "bms:recurringservices/services"
    tenant = RequestLimiter(fakeredis.FakeRedis(), tenant_key="at", hourly_limit=10_000, concurrency=3)
    assert tenant.budget_key("ContractServices") == tenant.budget_key("Companies") == "at"


def test_the_benchmark_override_lifts_hourly_budgets_only_for_the_simulator_host():
    from webapp.psa_clients.http import budget_for

    lifted = {"DEV_HOSTS_NO_HOURLY_LIMIT": True}
    assert budget_for(1500, "127.0.0.1:8099", frozenset({"127.0.0.1:8099"}), lifted) is None
    assert budget_for(1500, "api.bms.kaseya.com", frozenset({"127.0.0.1:8099"}), lifted) == 1500
    assert budget_for(1500, "127.0.0.1:8099", frozenset({"127.0.0.1:8099"}), {}) == 1500


def test_a_per_minute_budget_makes_the_request_past_it_wait_for_the_window_to_move():
    """HaloPSA's 60 a minute per instance: shared by every worker through Redis, like the hourly budgets."""
    redis, sleeps = fakeredis.FakeRedis(), []

    def sleep(seconds):
        sleeps.append(seconds)
        redis.flushdb()  # the window moved on: the budget is free again

    workers = [RequestLimiter(redis, tenant_key="halo", hourly_limit=None, minute_limit=2, concurrency=None,
                              sleep=sleep) for _ in range(2)]
    for limiter in (*workers, workers[0]):  # two workers' requests use up the minute; the third waits
        with limiter.slot("Client"):
            pass
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 60
