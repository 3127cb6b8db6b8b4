"""Requests in flight, per key ("psa endpoint" and "psa"), integrated over time since the window opened.

How busy a client keeps a PSA's allowed concurrency is the time-weighted average of requests in flight:
the integral of in-flight requests over time, divided by the time at least one was in flight (how full
the slots are while the client is at work) or by the whole window (wall time, idle gaps included).
The caller holds the simulator's lock around every method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Gauge:
    last: float  # when `current` last changed or was integrated
    current: int = 0
    peak: int = 0
    area: float = 0.0  # ∫ in-flight dt, request-seconds
    busy: float = 0.0  # seconds with at least one request in flight

    def advance(self, now: float) -> None:
        if self.current:
            self.area += self.current * (now - self.last)
            self.busy += now - self.last
        self.last = now


@dataclass
class InFlight:
    clock: Callable[[], float] = time.monotonic
    gauges: dict[str, Gauge] = field(default_factory=dict)
    since: float = 0.0

    def __post_init__(self) -> None:
        self.since = self.clock()

    def restart(self) -> None:
        """Open a new window; requests still in flight count on in it."""
        now = self.clock()
        self.since = now
        self.gauges = {key: Gauge(last=now, current=g.current, peak=g.current)
                       for key, g in self.gauges.items() if g.current}

    def enter(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            gauge = self.gauges.setdefault(key, Gauge(last=now))
            gauge.advance(now)
            gauge.current += 1
            gauge.peak = max(gauge.peak, gauge.current)

    def leave(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            gauge = self.gauges[key]
            gauge.advance(now)
            gauge.current -= 1

    def current(self, key: str) -> int:
        gauge = self.gauges.get(key)
        return gauge.current if gauge else 0

    def items(self) -> list[tuple[str, int]]:
        """(key, requests in flight now) pairs, as from a dict of current counts."""
        return [(key, gauge.current) for key, gauge in self.gauges.items()]

    def report(self) -> dict[str, dict[str, float]]:
        """Per key: the most in flight at once, and the time-weighted averages while busy and over the window."""
        now = self.clock()
        wall = now - self.since
        out = {}
        for key, gauge in sorted(self.gauges.items()):
            gauge.advance(now)
            out[key] = {
                "max": gauge.peak,
                "average_while_busy": round(gauge.area / gauge.busy, 3) if gauge.busy else 0.0,
                "average_over_wall": round(gauge.area / wall, 3) if wall else 0.0,
                "busy_seconds": round(gauge.busy, 3),
            }
        return out
