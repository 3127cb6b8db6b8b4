"""One scrubber for every PSA client: a secret never reaches an error, a log, a page or a CSV in any form.

A PSA (or a proxy in front of it) may echo a request back in an error: the secret can then come back
raw, URL-encoded, JSON-escaped or inside a base64 value such as ConnectWise's
`Authorization: Basic base64(company+public:private)`. A secret inside a larger base64 value is
found at each of its three possible alignments (only the characters that encode the secret alone
are matched, so it is found whatever surrounds it).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_LENGTH = 4  # shorter values would mask ordinary words


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that encode `secret` alone, at offsets 0, 1 and 2 of any base64 stream."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode("ascii").rstrip("=")
        start = -(-offset * 8 // 6)  # first character made only of the secret's bits
        end = (offset + len(secret)) * 8 // 6  # last character made only of the secret's bits, exclusive
        core = encoded[start:end]
        cores.update({core, core.replace("+", "-").replace("/", "_")})  # standard and URL-safe alphabets
    return {core for core in cores if len(core) >= MIN_LENGTH}


def forms_of(secret: str) -> set[str]:
    """Every way `secret` can come back in a PSA's answer."""
    raw = secret.encode()
    forms = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    forms.add(base64.b64encode(raw).decode("ascii"))
    forms.update(_base64_cores(raw))
    return {form for form in forms if len(form) >= MIN_LENGTH}


class Scrubber:
    """Masks the secrets it was given, in every form; call it on any PSA text before it is kept or shown.

    Secrets learned later (a Kaseya BMS token) are added with `add`. Prints without its secrets.
    """

    __slots__ = ("_lock", "_pattern", "_secrets")

    def __init__(self, *secrets: str | None):
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        new = {s for s in secrets if s and len(s) >= MIN_LENGTH} - self._secrets
        if not new:
            return
        with self._lock:
            self._secrets |= new
            forms = set().union(*(forms_of(s) for s in self._secrets))
            # Longest first, case-insensitive: an echo may change the case of percent-escapes.
            alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
            self._pattern = re.compile(alternatives, re.IGNORECASE)

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def __repr__(self) -> str:
        return "<Scrubber>"
