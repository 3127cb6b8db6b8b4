"""Malformed input gets a clear 4xx, never a 500: the guards every request passes.

- Whole numbers from URLs, queries and forms fit the database's integer columns (`<int:…>` routes
  answer 404 beyond; `db_int` and `page_number` refuse them as bad values).
- Text that no database column can store — NUL characters, unpaired UTF-16 surrogates — is refused
  with 400 before any view sees it, in the query, the form and JSON bodies alike.
- JSON nested too deeply to parse is a 400, not a RecursionError.
- Request bodies are bounded (MAX_CONTENT_LENGTH); a view that takes file uploads raises its own
  limit with `accepts_upload`, read before the body is.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, abort, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

DB_INT_MAX = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL)
MAX_PAGE = 1_000_000  # far past any real list; keeps OFFSET within range
UNSTORABLE_TEXT = ("The request contains a NUL character or invalid Unicode (an unpaired surrogate), "
                   "which SeatSync cannot store.")


class DbIntConverter(IntegerConverter):
    """`<int:…>` that matches only ids the database can hold (a larger one is simply not found)."""

    def __init__(self, url_map, fixed_digits=0, min=None, max=DB_INT_MAX, signed=False):  # noqa: A002
        super().__init__(url_map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


def db_int(value: str) -> int:
    """A non-negative whole number in ASCII digits that an id column can hold; ValueError otherwise (for `type=`)."""
    if not value.isascii() or not value.isdigit() or int(value) > DB_INT_MAX:
        raise ValueError(f"not a whole number up to {DB_INT_MAX}")
    return int(value)


def db_int_or_none(value: str | None) -> int | None:
    """`db_int` for a form field, None when it is empty or no such number."""
    try:
        return db_int(value or "")
    except ValueError:
        return None


def page_number(value: str) -> int:
    """A page number from 1 to MAX_PAGE; ValueError otherwise (for `request.args.get(..., type=)`)."""
    page = db_int(value.strip())
    if not 1 <= page <= MAX_PAGE:
        raise ValueError(f"not a page number from 1 to {MAX_PAGE}")
    return page


class SafeJSONProvider(DefaultJSONProvider):
    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:  # Flask turns ValueError into 400 (or None for silent=True)
            raise ValueError("JSON nested too deeply") from exc


def _unstorable(text: str) -> bool:
    return "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text)


def _texts(value):
    """Every string in a parsed JSON value (keys too), without recursion (depth is the attacker's)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _multidict_texts(values):
    for key, items in values.lists():
        yield key
        yield from items


def _request_texts():
    yield from _multidict_texts(request.args)
    yield from (value for value in (request.view_args or {}).values() if isinstance(value, str))
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        yield from _multidict_texts(request.form)
    if request.is_json:
        yield from _texts(request.get_json(silent=True))


def accepts_upload(max_bytes: Callable[[], int]):
    """Mark a view that takes a file upload of up to `max_bytes()` bytes (instead of MAX_CONTENT_LENGTH)."""

    def decorator(view):
        view._max_content_length = max_bytes
        return view

    return decorator


def guard_request():
    """before_request: the body size limit, then text no column can store."""
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    upload_limit = getattr(view, "_max_content_length", None)
    if upload_limit:
        request.max_content_length = upload_limit()
    maximum = request.max_content_length
    if maximum is not None and request.content_length and request.content_length > maximum:
        abort(413, f"The request body is {request.content_length:,} bytes; SeatSync accepts up to {maximum:,} "
                   "bytes here.")
    if any(_unstorable(text) for text in _request_texts()):
        abort(400, UNSTORABLE_TEXT)


def init_inputs(app: Flask) -> None:
    """Before the other extensions: CSRF and the sign-in limiter read the form, so the body limit
    (an upload view's own) must be set first."""
    app.url_map.converters["int"] = DbIntConverter
    app.json = SafeJSONProvider(app)
    app.before_request(guard_request)
