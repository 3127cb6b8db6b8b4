"""Which simulated requests fail, and how: the rules posted to `/_sim/faults` (see server.py for the payload).

A rule matches requests by PSA, method and a path fragment. Of the requests it matches it fails
- the next `times` (count-based, the default: 1), or
- every `every`-th one, and/or
- each with probability `rate`, drawn from one RNG seeded by the payload's `seed`, so a run with the
  same seed and the same request order fails the same requests.
With `rate` or `every`, `times` (if given) caps how many failures the rule produces; -1 = no cap.

Every rule counts every request it matches (so `every: 5` is exact in requests, whatever other rules
do); the first rule in the list that fires decides the answer, and only that one uses up its `times`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

# Kinds the server acts out itself; any other kind shapes the PSA's own error body (e.g. Autotask's
# "thread_limit", Kaseya BMS's "envelope").
TIMEOUT = "timeout"  # processed, but the answer is held `delay_ms` (past the client's read timeout)
APPLIED = "applied"  # processed, then answered `status` (500): the write happened, its answer was lost
SERVER_ACTED = (TIMEOUT, APPLIED)
DEFAULT_DELAY_MS = 65_000  # longer than SeatSync's 60 s read timeout (webapp/psa_clients/http.py)


class InvalidRule(ValueError):
    pass


@dataclass
class FaultRule:
    psa: str | None = None
    method: str | None = None
    path_contains: str | None = None
    status: int = 500
    kind: str | None = None
    retry_after: float | None = None
    times: int | None = None  # failures left; -1 = unlimited; default 1, or unlimited with rate/every
    rate: float | None = None  # probability 0..1 that a matching request fails
    every: int | None = None  # fail every N-th matching request
    delay_ms: float = DEFAULT_DELAY_MS  # for kind "timeout"
    seen: int = field(default=0, init=False)  # matching requests so far

    def __post_init__(self) -> None:
        if self.rate is not None and not 0 <= self.rate <= 1:
            raise InvalidRule(f"rate must be between 0 and 1, not {self.rate}")
        if self.every is not None and self.every < 1:
            raise InvalidRule(f"every must be 1 or more, not {self.every}")
        if self.times is None:
            self.times = -1 if self.rate is not None or self.every is not None else 1

    def matches(self, psa: str, method: str, path: str) -> bool:
        return (
            (self.psa is None or self.psa == psa)
            and (self.method is None or self.method.upper() == method)
            and (self.path_contains is None or self.path_contains.lower() in path.lower())
        )

    def fires(self, rng: random.Random) -> bool:
        """Count one matching request; whether this rule would fail it."""
        self.seen += 1
        # Drawn on every match, fired or not, so the sequence of draws depends only on the seed.
        draw = rng.random() if self.rate is not None else 0.0
        return (self.times != 0 and (self.every is None or self.seen % self.every == 0)
                and (self.rate is None or draw < self.rate))


@dataclass
class Faults:
    rules: list[FaultRule] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @classmethod
    def from_payload(cls, rules: list[dict], seed: int | str | None) -> Faults:
        known = {f.name for f in fields(FaultRule) if f.init}
        for rule in rules:
            unknown = set(rule) - known
            if unknown:
                raise InvalidRule(f"unknown rule fields: {', '.join(sorted(unknown))}")
        return cls([FaultRule(**rule) for rule in rules], random.Random(0 if seed is None else seed))

    def pick(self, psa: str, method: str, path: str) -> FaultRule | None:
        """The rule that fails this request, if any. Call with the simulator's lock held."""
        chosen = None
        for rule in self.rules:
            if rule.matches(psa, method, path) and rule.fires(self.rng) and chosen is None:
                chosen = rule
        if chosen is not None and chosen.times > 0:
            chosen.times -= 1  # only the failures a rule answers use up its `times`
        return chosen
