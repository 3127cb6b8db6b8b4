"""Redis leases: a company is pushed by one job at a time, and a job shows it is alive.

A lease is a Redis key holding a token, renewed by a heartbeat thread while the job runs and left to
expire when its worker dies, so a killed worker's companies are taken over after one lease period.
"""

from __future__ import annotations

import logging
import threading
import uuid

from flask import current_app

log = logging.getLogger(__name__)

LOCK_PREFIX = "seatsync:sync:lock"
LEASE_PREFIX = "seatsync:sync:lease"

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) "
          "else return 0 end")


def lease_seconds() -> int:
    return int(current_app.config["SYNC_LEASE_SECONDS"])


def lock_key(integration_id: int, mapping_id: int) -> str:
    """The push lock of one company mapping."""
    return f"{LOCK_PREFIX}:{integration_id}:{mapping_id}"


def job_lease_key(job_id: str) -> str:
    """Held while a job runs: the sweeper takes a job's companies over only once this has expired."""
    return f"{LEASE_PREFIX}:{job_id}"


class Leases:
    """Redis keys a job holds while it works; a heartbeat thread renews them until released."""

    def __init__(self, redis, ttl: int):
        self.redis = redis
        self.ttl = max(1, int(ttl))
        self.token = uuid.uuid4().hex
        self.keys: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="seatsync-lease-heartbeat", daemon=True)

    def acquire(self, key: str) -> bool:
        if self.redis.set(key, self.token, nx=True, ex=self.ttl):
            self.keys.add(key)
            return True
        return False

    def hold(self, key: str) -> None:
        self.redis.set(key, self.token, ex=self.ttl)
        self.keys.add(key)

    def release(self, key: str) -> None:
        if key in self.keys:
            self.keys.discard(key)
            self.redis.eval(_RELEASE, 1, key, self.token)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            for key in list(self.keys):
                try:
                    self.redis.eval(_RENEW, 1, key, self.token, self.ttl)
                except Exception:  # a Redis blip must not kill the push; the next beat retries
                    log.warning("could not renew lease %s", key, exc_info=True)

    def __enter__(self) -> Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for key in list(self.keys):
            try:
                self.release(key)
            except Exception:  # the lease expires by itself
                log.warning("could not release %s", key, exc_info=True)
