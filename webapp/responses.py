"""The one way a view answers a request that HTMX or a plain browser may have sent.

HTMX gets the fragment (with its HX-Trigger events); a browser without JavaScript gets the flash
message and a redirect. Error answers carry a banner fragment: base.html's htmx-config swaps every
4xx/5xx answer into the page's banner region (#htmx-banners), so a refused action never fails silently.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, flash, make_response, redirect

from .extensions import htmx

Fragment = Callable[[], str] | str


def htmx_answer(fragment: Fragment, *, fallback: str | None = None, message: str | None = None,
                category: str = "success", trigger: str | None = None, status: int = 200,
                retarget: str | None = None) -> Response:
    """`fragment` (rendered lazily when callable) for HTMX; flash `message` and redirect to `fallback` otherwise.

    Without a `fallback` the fragment is the answer for both (e.g. a page or an error page).
    `retarget` (a CSS selector) puts the fragment inside that element instead of the request's target,
    e.g. a message next to a form that must keep what the user typed.
    """
    if not htmx and fallback is not None:
        if message:
            flash(message, category)
        return redirect(fallback)
    response = make_response(fragment() if callable(fragment) else fragment, status)
    if trigger and htmx:
        response.headers["HX-Trigger"] = trigger
    if retarget and htmx:
        response.headers["HX-Retarget"] = retarget
        response.headers["HX-Reswap"] = "innerHTML"
    return response
