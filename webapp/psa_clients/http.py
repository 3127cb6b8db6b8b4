"""The HTTP layer every PSA client shares: host safety, retries, and limits across all workers.

- Host safety (PRODUCT.md §5): only public HTTPS hosts with valid certificates; loopback, link-local
  and private addresses are refused unless listed in PSA_DEV_HOSTS, which are reached over plain
  HTTP exactly as typed (the PSA simulator).
- Retries: connection errors, timeouts, 429/502/503/504 and PSA-specific throttling answers are
  retried with exponential backoff and jitter (tenacity), honouring Retry-After. A write that is not
  idempotent (an Autotask delta) is retried only when the PSA surely did not process it.
- Limits: each PSA's documented hourly budget (a moving window from the `limits` library) and its
  concurrency per endpoint (a leased semaphore) are kept in Redis, so every worker on every machine
  shares them.
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import tenacity
from limits import RateLimitItemPerHour
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from .base import HostRefused, RateLimited, TransientError

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}
# Statuses that mean "the PSA did not process the request", safe to retry even for a delta write.
REJECTED_UNPROCESSED = {429, 503}


# --------------------------------------------------------------------------------------------------
# Host safety
# --------------------------------------------------------------------------------------------------
def parse_dev_hosts(value: str | None) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in (value or "").split(",") if h.strip())


def base_url_for(host: str, dev_hosts: frozenset[str]) -> str:
    """`http://host` for a listed development host, `https://host` for a public one, else refuse."""
    host = host.strip().lower().rstrip("/")
    if host in dev_hosts:
        return f"http://{host}"
    check_public_host(host)
    return f"https://{host}"


def check_public_host(host: str) -> None:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if not name or any(c in name for c in "/@?# "):
        raise HostRefused(f"“{host}” is not a host name.")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        raise HostRefused(f"The host “{name}” could not be found.", hint="Check the spelling of the host.") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise HostRefused(
                f"The host “{name}” resolves to a private or local address, which SeatSync refuses.",
                hint="Use the PSA's public host, or list the host in PSA_DEV_HOSTS for development.",
            )


# --------------------------------------------------------------------------------------------------
# Limits shared by all workers
# --------------------------------------------------------------------------------------------------
_ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""
# Extend a slot's lease, if it is still held (a slot whose lease ran out may have been taken since).
_RENEW_SLOT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 0
"""
# Free the slot and wake one waiter. The wake-up list is trimmed to the slot count, so wake-ups
# nobody took cost a waiter at most that many extra acquire attempts.
_RELEASE_SLOT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return 0
"""


def hourly_limit_for(documented: int | None, host: str, dev_hosts: frozenset[str], config) -> int | None:
    """The hourly budget to enforce: the PSA's documented one, unless a benchmark lifted it for the simulator.

    PSA_DEV_HOSTS_NO_HOURLY_LIMIT (settings) only ever applies to a host listed in PSA_DEV_HOSTS.
    """
    if (config or {}).get("DEV_HOSTS_NO_HOURLY_LIMIT") and host.strip().lower() in dev_hosts:
        return None
    return documented


def limiter_for(psa, redis, *, tenant_key: str, host: str, dev_hosts: frozenset[str], config,
                sleep: Callable[[float], None]) -> RequestLimiter | None:
    """The documented limits of a PSA client (its class attributes) for one tenant; None without Redis."""
    if redis is None:
        return None
    return RequestLimiter(
        redis,
        tenant_key=tenant_key,
        hourly_limit=hourly_limit_for(psa.hourly_limit, host, dev_hosts, config),
        concurrency=psa.concurrency_per_endpoint,
        hourly_per_endpoint=psa.hourly_per_endpoint,
        sleep=sleep,
    )


class RequestLimiter:
    """Hourly budget per tenant and concurrent requests per endpoint, shared through Redis.

    A request waiting for a concurrency slot blocks on a wake-up list that every release pushes to,
    so a freed slot is taken at once instead of after a polling back-off (which left the PSA's
    allowed concurrency idle between calls). The short block timeout covers slots freed by lease
    expiry (a worker killed mid-request).

    A slot's lease is short and renewed by a heartbeat thread while its request runs, so a slow
    request keeps its slot and a killed worker's slots come back within seconds (a long fixed lease
    left a restarted fleet writing nothing for two minutes).
    """

    LEASE_SECONDS = 6  # a worker killed mid-request frees its slot after this
    WAKE_TIMEOUT = 0.05  # longest wait between two acquire attempts

    def __init__(
        self,
        redis,
        *,
        tenant_key: str,
        hourly_limit: int | None,
        concurrency: int | None,
        hourly_per_endpoint: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.redis = redis
        self.tenant_key = tenant_key
        self.hourly = RateLimitItemPerHour(hourly_limit) if hourly_limit else None
        self.concurrency = concurrency
        self.hourly_per_endpoint = hourly_per_endpoint  # Kaseya BMS counts its budget per endpoint
        self.sleep = sleep
        self._window = None
        if self.hourly is not None:
            storage = RedisStorage("redis://", connection_pool=redis.connection_pool, key_prefix="seatsync:psa-limit")
            self._window = MovingWindowRateLimiter(storage)
        self._acquire = redis.register_script(_ACQUIRE_SLOT) if concurrency else None
        self._release = redis.register_script(_RELEASE_SLOT) if concurrency else None
        self._renew = redis.register_script(_RENEW_SLOT) if concurrency else None
        self._held: dict[str, str] = {}  # token -> slot key, of the requests running in this process
        self._held_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None

    def budget_key(self, endpoint: str) -> str:
        """The hourly budget's key: per tenant, or per tenant and endpoint (a path template, never a record's URL)."""
        return f"{self.tenant_key}:{endpoint.lower()}" if self.hourly_per_endpoint else self.tenant_key

    def _wait_for_budget(self, endpoint: str) -> None:
        key = self.budget_key(endpoint)
        while not self._window.hit(self.hourly, key):
            reset_at, _remaining = self._window.get_window_stats(self.hourly, key)
            delay = max(0.5, min(60.0, reset_at - time.time()))
            log.info("PSA hourly budget used up for %s; waiting %.1fs", key, delay)
            self.sleep(delay)

    @contextlib.contextmanager
    def slot(self, endpoint: str) -> Iterator[None]:
        if self._window is not None:
            self._wait_for_budget(endpoint)
        if not self._acquire:
            yield
            return
        key = f"seatsync:psa-slots:{self.tenant_key}:{endpoint.lower()}"
        wake = f"{key}:wake"
        token = uuid.uuid4().hex
        while True:
            now = time.time()
            lease = [now, now + self.LEASE_SECONDS, self.concurrency, token, self.LEASE_SECONDS * 2]
            if self._acquire(keys=[key], args=lease):
                break
            self.redis.blpop([wake], timeout=self.WAKE_TIMEOUT)
        try:
            with self._renewed(key, token):
                yield
        finally:
            self._release(keys=[key, wake], args=[token, self.concurrency, self.LEASE_SECONDS * 2])

    @contextlib.contextmanager
    def _renewed(self, key: str, token: str) -> Iterator[None]:
        """Keep the slot's lease alive while the request runs."""
        with self._held_lock:
            self._held[token] = key
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, name="seatsync-slot-heartbeat", daemon=True)
                self._heartbeat.start()
        try:
            yield
        finally:
            with self._held_lock:
                self._held.pop(token, None)

    def _beat(self) -> None:
        """Renew the held slots every third of their lease; ends when none is held."""
        while True:
            time.sleep(self.LEASE_SECONDS / 3)
            with self._held_lock:
                held = list(self._held.items())
                if not held:
                    self._heartbeat = None
                    return
            for token, key in held:
                try:
                    self._renew(keys=[key], args=[token, time.time() + self.LEASE_SECONDS, self.LEASE_SECONDS * 2])
                except Exception:  # a Redis blip: the next beat renews, or the slot lapses like a dead worker's
                    log.warning("could not renew a PSA concurrency slot", exc_info=True)


# --------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------
class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, reason: str, *, response: requests.Response | None = None, throttled: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.response = response
        self.throttled = throttled


def retry_after_seconds(response: requests.Response | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if any."""
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


@dataclass
class RetryPolicy:
    attempts: int = 6
    initial: float = 0.5  # first backoff, doubled each time, with full jitter
    maximum: float = 30.0  # cap of one wait (also caps Retry-After)


class PsaHttp:
    """A requests session with the retry rules and limits of one PSA tenant.

    `is_throttled(response)` lets a client recognise throttling that is not a 429 (Autotask's
    thread-limit errors). Responses that are not retried are returned as they are; the client maps
    them to typed errors with its own hints.
    """

    def __init__(
        self,
        *,
        limiter: RequestLimiter | None = None,
        policy: RetryPolicy | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        is_throttled: Callable[[requests.Response], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "SeatSync/1.0"
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.is_throttled = is_throttled or (lambda response: False)
        self.sleep = sleep
        self.calls = 0  # requests actually sent, for benchmarks and tests

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception()
        after = retry_after_seconds(getattr(error, "response", None))
        if after is not None:
            return min(after, self.policy.maximum)
        ceiling = min(self.policy.maximum, self.policy.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)

    def request(
        self,
        method: str,
        url: str,
        *,
        endpoint: str | None = None,
        idempotent: bool | None = None,
        **kwargs,
    ) -> requests.Response:
        """Send with retries. `endpoint` names the PSA object endpoint the limits apply to."""
        if idempotent is None:
            idempotent = method.upper() in {"GET", "PUT", "PATCH", "DELETE", "HEAD"}
        endpoint = endpoint or urlsplit(url).path
        kwargs.setdefault("timeout", self.timeout)

        def attempt() -> requests.Response:
            slot = self.limiter.slot(endpoint) if self.limiter else contextlib.nullcontext()
            with slot:
                self.calls += 1
                try:
                    response = self.session.request(method, url, **kwargs)
                except (requests.ConnectionError, requests.Timeout) as exc:
                    # A refused connection or connect timeout never reached the PSA: always safe.
                    unsent = isinstance(exc, requests.ConnectTimeout) or (
                        isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout)
                        and "RemoteDisconnected" not in str(exc)
                    )
                    if idempotent or unsent:
                        raise _Retry(f"{type(exc).__name__} talking to the PSA") from None
                    raise TransientError(
                        "The PSA did not answer a write in time; it will be re-read before any retry.",
                    ) from None
            if self.is_throttled(response):
                raise _Retry("throttled by the PSA", response=response, throttled=True)
            if response.status_code in RETRY_STATUSES and (idempotent or response.status_code in REJECTED_UNPROCESSED):
                raise _Retry(f"HTTP {response.status_code}", response=response, throttled=response.status_code == 429)
            return response

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retry),
            stop=tenacity.stop_after_attempt(self.policy.attempts),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as final:
            status = final.response.status_code if final.response is not None else None
            if final.throttled:
                raise RateLimited(f"The PSA kept refusing requests ({final.reason}).", status=status) from None
            raise TransientError(f"The PSA kept failing ({final.reason}).", status=status) from None

    def close(self) -> None:
        self.session.close()
