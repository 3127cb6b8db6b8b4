"""Reading a request the way the simulated PSAs' ASP.NET back ends bind it: names in any case, lenient values."""

from __future__ import annotations

import time
from typing import Any

from flask import request


def ci(obj: Any, name: str, default: Any = None) -> Any:
    """`obj[name]` ignoring case."""
    if not isinstance(obj, dict):
        return default
    lowered = name.lower()
    for key, value in obj.items():
        if str(key).lower() == lowered:
            return value
    return default


def arg(name: str) -> str | None:
    """A query parameter, its name in any case."""
    lowered = name.lower()
    for key in request.args:
        if key.lower() == lowered:
            return request.args.get(key)
    return None


def as_bool(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1")


def as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def contains(haystack: str, needle: Any) -> bool:
    return not needle or str(needle).strip().lower() in (haystack or "").lower()


def new_id(tables: dict) -> int:
    tables["next_id"] += 1
    return tables["next_id"]


def bearer_is_live(state, psa: str) -> bool:
    """Whether the request's `Authorization: Bearer …` is a token the PSA issued and that has not expired
    (`tokens` of the PSA's tables: token -> expiry in epoch seconds)."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    with state.lock:
        expires = state.data[psa]["tokens"].get(token)
    return expires is not None and expires > time.time()
