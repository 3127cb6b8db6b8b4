"""The HTTP layer every PSA client shares: host safety, retries, and limits across all workers.

- Host safety (PRODUCT.md §5): only public HTTPS hosts with valid certificates; loopback, link-local
  and private addresses (also IPv4 inside IPv6: mapped, NAT64, 6to4, Teredo) are refused unless
  listed in PSA_DEV_HOSTS, which are reached over plain HTTP exactly as typed (the PSA simulator).
  Every URL is checked when it is requested, whoever built it (pagination links, zone answers), the
  connection goes to the address that was checked (no second DNS lookup), redirects are never
  followed, and proxies from the environment are not used (they would resolve the host themselves).
- Retries: connection errors, timeouts, 429/5xx and PSA-specific throttling answers are retried
  with exponential backoff and jitter (tenacity), honouring Retry-After. A 5xx a PSA means as its
  answer (Autotask's errors list) is not a failure and is returned at once. A write that is not
  idempotent (an Autotask delta) is retried only when the PSA surely did not process it.
- Limits: each PSA's documented hourly budget (a moving window from the `limits` library) and its
  concurrency per endpoint (a semaphore of short leases renewed while a request runs) are kept in
  Redis, so every worker on every machine shares them.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import ipaddress
import logging
import math
import os
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
from limits import RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError
from urllib3 import PoolManager

from .base import HostRefused, RateLimited, TransientError, ValidationFailed
from .scrub import Scrubber

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (5.0, 60.0)  # connect, read (seconds); the read timeout is PSA_READ_TIMEOUT_SECONDS
RETRY_STATUSES = {429, 500, 502, 503, 504}
# Statuses that mean "the PSA did not process the request", safe to retry even for a delta write.
REJECTED_UNPROCESSED = {429, 503}


# --------------------------------------------------------------------------------------------------
# Host safety
# --------------------------------------------------------------------------------------------------
def parse_dev_hosts(value: str | None) -> frozenset[str]:
    return frozenset(h.strip().lower() for h in (value or "").split(",") if h.strip())


def base_url_for(host: str, dev_hosts: frozenset[str]) -> str:
    """`http://host` for a listed development host, else `https://host`.

    The host's addresses are checked when a request is made (PsaHttp.check_url), once, and the
    connection goes to the checked address: checking here too would resolve the name twice.
    """
    host = host.strip().lower().rstrip("/")
    if host in dev_hosts:
        return f"http://{host}"
    _host_name(host)
    return f"https://{host}"


def _host_name(host: str) -> str:
    """The name part of `host[:port]`; refuses anything that is not a host name."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    if not name or any(c in name for c in "/@?#\\ "):
        raise HostRefused(f"“{host}” is not a host name.")
    return name


def normalize_host(raw: str, *, psa: str, field: str, hint: str,
                   dev_hosts: frozenset[str] = frozenset()) -> tuple[str, str | None]:
    """The bare host an admin meant in a credential form's host field, and a notice when it was trimmed.

    `https://acme.example.com/path` becomes `acme.example.com`; `http://` is refused unless the host
    is a development host (the simulator). Raises ValidationFailed, in the PSA's words, for the rest.
    """
    value = (raw or "").strip()
    if not value:
        return "", None
    lowered = value.lower()
    scheme = ""
    if "://" in lowered:
        parts = urlsplit(lowered)
        scheme, host = parts.scheme, parts.netloc
    else:
        host = lowered.split("/", 1)[0].split("?", 1)[0]
    if "@" in host:
        raise ValidationFailed(f"The {field} must not contain a user name or password.", hint=hint)
    host = host.rstrip(".")
    if scheme == "http" and host not in dev_hosts:
        raise ValidationFailed(f"{psa} is only reached over HTTPS: an “http://” address is refused.", hint=hint)
    if scheme not in ("", "http", "https"):
        raise ValidationFailed(f"“{scheme}://” is not a web address SeatSync can use.", hint=hint)
    if not host or any(c in host for c in " \\#"):
        raise ValidationFailed(f"“{value}” is not a host name.", hint=hint)
    notice = None
    if host != lowered.rstrip("/"):
        notice = f"The {field} was shortened to “{host}”: SeatSync only needs the host."
    return host, notice


def check_public_host(host: str, port: int = 443) -> list[str]:
    """The addresses of a public host, each checked; refuses a host with any private or local address."""
    name = _host_name(host)
    addresses = resolve(name, port)
    for address in addresses:
        if not is_public_address(address):
            raise HostRefused(
                f"The host “{name}” resolves to a private or local address, which SeatSync refuses.",
                hint="Use the PSA's public host, or list the host in PSA_DEV_HOSTS for development.",
            )
    return addresses


def resolve(name: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise HostRefused(f"The host “{name}” could not be found.", hint="Check the spelling of the host.") from None
    return list(dict.fromkeys(info[4][0].split("%", 1)[0] for info in infos))


# IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-mapped, SIIT, NAT64 (RFC 6052)
# and the deprecated IPv4-compatible form. They reach whatever that IPv4 address is.
_IPV4_IN_LOW_BITS = tuple(
    ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "::/96")
)
# Refused whatever they embed: NAT64 for local use (RFC 8215) and Teredo (its client address is obfuscated).
_REFUSED_IPV6 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "2001::/32"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:  # 2002::/16
        return ip.sixtofour
    if any(ip in network for network in _IPV4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """Whether SeatSync may connect to this address: globally routable, also for IPv4 inside IPv6."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _REFUSED_IPV6):
            return False
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return embedded.is_global
    return ip.is_global


# --------------------------------------------------------------------------------------------------
# Connections go to the address that was checked
# --------------------------------------------------------------------------------------------------
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_HINT = (
    "The PSA answered with a redirect to another address; SeatSync does not follow redirects — "
    "check the host name."
)


class _PinnedPoolManager(PoolManager):
    """Opens each host's connections to the address its check pinned: the name is never resolved again.

    TLS still sends and verifies the host name (SNI and certificate); `_PinnedAdapter` keeps the
    Host header. A host that was not checked gets no connection at all.
    """

    def __init__(self, pins: dict[tuple[str, int], str], **kwargs):
        super().__init__(**kwargs)
        self.pins = pins

    def _new_pool(self, scheme, host, port, request_context=None):
        address = self.pins.get((host.strip("[]").lower(), port))
        if address is None:
            raise HostRefused(f"SeatSync did not check “{host}” before connecting to it.")
        context = dict(request_context if request_context is not None else self.connection_pool_kw)
        if scheme == "https":
            context["server_hostname"] = context["assert_hostname"] = host
        return super()._new_pool(scheme, address, port, context)


class _PinnedAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, pins: dict[tuple[str, int], str]):
        self.pins = pins
        super().__init__()

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager = _PinnedPoolManager(self.pins, num_pools=connections, maxsize=maxsize, block=block,
                                              **pool_kwargs)

    def add_headers(self, request, **kwargs):
        # The pool is opened on the address, so http.client would name it in Host: name the PSA's host.
        request.headers.setdefault("Host", urlsplit(request.url).netloc)


# --------------------------------------------------------------------------------------------------
# Limits shared by all workers
# --------------------------------------------------------------------------------------------------
# Lease times come from the Redis server's clock, so workers on machines whose clocks disagree
# neither steal live slots nor keep dead ones.
_ACQUIRE_SLOT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
"""
# Extend a slot still held; a slot already reaped is not brought back (someone may have it now).
_RENEW_SLOT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
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


def budget_for(documented: int | None, host: str, dev_hosts: frozenset[str], config) -> int | None:
    """A budget to enforce (per hour or per minute): the PSA's documented one, unless a benchmark lifted the
    budgets for the simulator.

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
        hourly_limit=budget_for(psa.hourly_limit, host, dev_hosts, config),
        minute_limit=budget_for(psa.minute_limit, host, dev_hosts, config),
        concurrency=psa.concurrency_per_endpoint,
        hourly_per_endpoint=psa.hourly_per_endpoint,
        sleep=sleep,
    )


class RequestLimiter:
    """Hourly (and per-minute) budget per tenant and concurrent requests per endpoint, shared through Redis.

    A concurrency slot is a short lease (LEASE_SECONDS) that this process's heartbeat renews while
    the request runs (see _HeldSlots), so a request of any length keeps its slot, while the slots of
    a process killed mid-request are free again within one lease. A request waiting for a slot
    blocks on a wake-up list that every release pushes to, so a freed slot is taken at once instead
    of after a polling back-off; the short block timeout covers slots freed by lease expiry.
    """

    LEASE_SECONDS = 6.0  # a process killed mid-request frees its slots after at most this
    WAKE_TIMEOUT = 0.05  # longest wait between two acquire attempts

    def __init__(
        self,
        redis,
        *,
        tenant_key: str,
        hourly_limit: int | None,
        concurrency: int | None,
        hourly_per_endpoint: bool = False,
        minute_limit: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.redis = redis
        self.tenant_key = tenant_key
        self.hourly = RateLimitItemPerHour(hourly_limit) if hourly_limit else None
        self.per_minute = RateLimitItemPerMinute(minute_limit) if minute_limit else None  # HaloPSA
        self.budgets = [item for item in (self.hourly, self.per_minute) if item is not None]
        self.concurrency = concurrency
        self.hourly_per_endpoint = hourly_per_endpoint  # Kaseya BMS counts its budget per endpoint
        self.sleep = sleep
        self._window = None
        if self.budgets:
            storage = RedisStorage("redis://", connection_pool=redis.connection_pool, key_prefix="seatsync:psa-limit")
            self._window = MovingWindowRateLimiter(storage)
        self._acquire = redis.register_script(_ACQUIRE_SLOT) if concurrency else None
        self._renew = redis.register_script(_RENEW_SLOT) if concurrency else None
        self._release = redis.register_script(_RELEASE_SLOT) if concurrency else None

    def budget_key(self, endpoint: str) -> str:
        """The hourly budget's key: per tenant, or per tenant and endpoint (a path template, never a record's URL)."""
        return f"{self.tenant_key}:{endpoint.lower()}" if self.hourly_per_endpoint else self.tenant_key

    def _wait_for_budget(self, endpoint: str) -> None:
        key = self.budget_key(endpoint)
        for budget in self.budgets:
            while not self._window.hit(budget, key):
                reset_at, _remaining = self._window.get_window_stats(budget, key)
                delay = max(0.5, min(60.0, reset_at - time.time()))
                log.info("PSA budget of %s used up for %s; waiting %.1fs", budget, key, delay)
                self.sleep(delay)

    def _key_lifetime(self) -> int:
        """Seconds the slot set and wake-up list outlive their last use (Redis wants whole seconds)."""
        return max(1, math.ceil(self.LEASE_SECONDS * 2))

    @contextlib.contextmanager
    def slot(self, endpoint: str) -> Iterator[None]:
        if self._window is not None:
            self._wait_for_budget(endpoint)
        if not self._acquire:
            yield
            return
        key = f"seatsync:psa-slots:{self.tenant_key}:{endpoint.lower()}"
        token = uuid.uuid4().hex
        while not self._acquire(keys=[key], args=[self.concurrency, token, self.LEASE_SECONDS, self._key_lifetime()]):
            self.redis.blpop([f"{key}:wake"], timeout=self.WAKE_TIMEOUT)
        _HELD.add(token, self, key)
        try:
            yield
        finally:
            _HELD.discard(token)
            self.release(key, token)

    def renew(self, key: str, token: str) -> bool:
        """Extend a held slot by one lease; False when it was already lost (its lease ran out)."""
        return bool(self._renew(keys=[key], args=[token, self.LEASE_SECONDS, self._key_lifetime()]))

    def release(self, key: str, token: str) -> None:
        self._release(keys=[key, f"{key}:wake"], args=[token, self.concurrency, self._key_lifetime()])


class _HeldSlots:
    """The concurrency slots this process holds.

    One daemon thread per process renews all of them every third of a lease, so a slot is kept for
    as long as its request runs and no longer than one lease after its process dies. When the
    process exits normally (including an RQ worker's warm shutdown after SIGTERM) the slots still
    held, e.g. by a thread cut short, are released at once rather than after their lease. A forked
    child starts with none: its parent's slots are its parent's to renew.
    """

    def __init__(self):
        self._reset()
        atexit.register(self.release_all)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, tuple[RequestLimiter, str]] = {}
        self._wake = threading.Event()
        self._period = math.inf  # seconds between two renewals: a third of the shortest lease held
        self._heartbeat: threading.Thread | None = None

    def add(self, token: str, limiter: RequestLimiter, key: str) -> None:
        with self._lock:
            idle = not self._slots
            self._slots[token] = (limiter, key)
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, name="psa-slot-heartbeat", daemon=True)
                self._heartbeat.start()
        if idle or self._period > limiter.LEASE_SECONDS / 3:
            self._wake.set()  # (re)start the beat for this slot's lease

    def discard(self, token: str) -> None:
        with self._lock:
            self._slots.pop(token, None)

    def _held(self) -> list[tuple[str, RequestLimiter, str]]:
        with self._lock:
            return [(token, limiter, key) for token, (limiter, key) in self._slots.items()]

    def _beat(self) -> None:
        while True:
            self._wake.clear()
            held = self._held()
            if not held:
                self._period = math.inf
                self._wake.wait()  # idle until this process takes a slot
                continue
            self._period = min(limiter.LEASE_SECONDS for _token, limiter, _key in held) / 3
            if not self._wake.wait(self._period):
                self.renew_all()

    def renew_all(self) -> None:
        for token, limiter, key in self._held():
            try:
                if not limiter.renew(key, token):
                    log.warning("PSA concurrency slot on %s lapsed before its request ended", key)
                    self.discard(token)
            except RedisError as error:  # the next beat tries again; the lease has two more beats of margin
                log.warning("Could not renew a PSA concurrency slot on %s: %s", key, error)

    def release_all(self) -> None:
        for token, limiter, key in self._held():
            self.discard(token)
            with contextlib.suppress(RedisError):
                limiter.release(key, token)


_HELD = _HeldSlots()


# --------------------------------------------------------------------------------------------------
# Requests counted for /metrics (webapp/observability.py), in Redis so every worker's count adds up
# --------------------------------------------------------------------------------------------------
PSA_REQUESTS_KEY = "seatsync:metrics:psa-requests"


def request_tally(redis, psa: str) -> Callable[[str], None] | None:
    """Counts each answer of a PSA by status ("error": none came); None without Redis (unit tests)."""
    if redis is None:
        return None

    def tally(status: str) -> None:
        try:
            redis.hincrby(PSA_REQUESTS_KEY, f"{psa}:{status}", 1)
        except RedisError:  # a metric must never fail a sync
            log.debug("could not count a PSA request", exc_info=True)

    return tally


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
    """A requests session with the host rules, retry rules and limits of one PSA tenant.

    Every URL is checked against the host rules before it is requested (`check_url`), whatever
    produced it (a typed host, a pagination link, a zone answer), and the connection goes to the
    address that was checked. Redirects are never followed: a 3xx is a HostRefused.
    `scrub` masks the tenant's secrets (each client adds them) in any PSA text.

    `is_throttled(response)` lets a client recognise throttling that is not a 429 (Autotask's
    thread-limit errors); `is_answer(response)` a retry status that is the PSA's considered answer,
    not a failure (Autotask's validation errors come as HTTP 500). Responses that are not retried are
    returned as they are; the client maps them to typed errors with its own hints.
    """

    def __init__(
        self,
        *,
        dev_hosts: frozenset[str] = frozenset(),
        limiter: RequestLimiter | None = None,
        policy: RetryPolicy | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        is_throttled: Callable[[requests.Response], bool] | None = None,
        is_answer: Callable[[requests.Response], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.dev_hosts = parse_dev_hosts(",".join(dev_hosts))
        self.scrub = Scrubber()
        self._pins: dict[tuple[str, int], str] = {}  # (host, port) → the address that passed the check
        self.session = requests.Session()
        # Proxies and .netrc from the environment would send requests elsewhere, or add credentials.
        self.session.trust_env = False
        adapter = _PinnedAdapter(self._pins)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "SeatSync/1.0"
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.is_throttled = is_throttled or (lambda response: False)
        self.is_answer = is_answer or (lambda response: False)
        self.sleep = sleep
        self.calls = 0  # requests actually sent, for benchmarks and tests
        self.tally: Callable[[str], None] | None = None  # counts answers by status (request_tally)

    def _retryable(self, response: requests.Response, idempotent: bool) -> bool:
        """A failure status worth another try: any for a read, only "not processed" ones for a write."""
        if response.status_code not in RETRY_STATUSES or self.is_answer(response):
            return False
        return idempotent or response.status_code in REJECTED_UNPROCESSED

    def check_url(self, url: str) -> None:
        """Refuse a URL the host rules do not allow; pin the address its host was checked at.

        A host listed in PSA_DEV_HOSTS is reached only over http and exactly as listed (with its
        port); every other URL must be https on a host whose every address is public.
        """
        parts = urlsplit(url)
        try:
            host, port = (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            host, port = "", None
        if not host or port is None or parts.username is not None or parts.password is not None:
            raise HostRefused(f"SeatSync refused to request “{self.scrub(url)[:200]}”: not a PSA address.")
        dev = parts.scheme.lower() == "http" and parts.netloc.lower() in self.dev_hosts
        if not dev and parts.scheme.lower() != "https":
            raise HostRefused(f"SeatSync reaches {host} only over HTTPS; a {parts.scheme}:// address was refused.")
        if (host, port) not in self._pins:
            addresses = resolve(host, port) if dev else check_public_host(host, port)
            # One address per host: IPv4 first, which every host (a Heroku dyno has no IPv6 route) reaches.
            self._pins[(host, port)] = next((a for a in addresses if ":" not in a), addresses[0])

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.RequestException:
            if self.tally:
                self.tally("error")
            raise
        if self.tally:
            self.tally(str(response.status_code))
        return response

    def _redirect_error(self, response: requests.Response) -> HostRefused:
        target = urlsplit(response.headers.get("Location", "")).hostname or "another address"
        return HostRefused(
            f"{urlsplit(response.url).hostname} answered HTTP {response.status_code}, a redirect to "
            f"{self.scrub(target)[:100]}; SeatSync did not follow it.",
            status=response.status_code, hint=REDIRECT_HINT,
        )

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
        self.check_url(url)
        kwargs.setdefault("timeout", self.timeout)
        kwargs["allow_redirects"] = False  # a redirect would take the credentials past the host check

        def attempt() -> requests.Response:
            slot = self.limiter.slot(endpoint) if self.limiter else contextlib.nullcontext()
            with slot:
                self.calls += 1
                try:
                    response = self._send(method, url, **kwargs)
                except requests.exceptions.SSLError:
                    host = urlsplit(url).hostname
                    raise HostRefused(f"{host} did not present a valid certificate for its name.",
                                      hint="Check the host name; SeatSync only talks to PSAs with valid certificates.",
                                      ) from None
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
            if response.is_redirect or 300 <= response.status_code < 400:
                raise self._redirect_error(response)
            if self.is_throttled(response):
                raise _Retry("throttled by the PSA", response=response, throttled=True)
            if self._retryable(response, idempotent):
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
