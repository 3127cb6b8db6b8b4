"""Access rules applied to every view, plus security headers.

The rule is structural, so no view can forget it: every page needs a signed-in user; a request that
changes state (anything but GET/HEAD/OPTIONS) needs the `billing` role unless the view says otherwise;
views marked `admin_only` need `admin`. Views opt out with `public` (sign-in page, health check,
token-authenticated API) or lower the bar for writes with `any_signed_in_user` (sign out).
"""

from __future__ import annotations

import hashlib
from functools import wraps
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, request, url_for
from flask_login import current_user

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


def _mark(attribute: str, value):
    def decorator(view):
        setattr(view, attribute, value)
        return view

    return decorator


public = _mark("_access", "public")
any_signed_in_user = _mark("_access", "signed_in")


def admin_only(view):
    view._access = "admin"
    return view


def role_for(view, method: str) -> str | None:
    """The role a request needs (None: public)."""
    access = getattr(view, "_access", None)
    if access == "public":
        return None
    if access == "admin":
        return "admin"
    if method in SAFE_METHODS or access == "signed_in":
        return "viewer"
    return "billing"


def enforce_access():
    """before_request: sign-in and role checks for the matched view."""
    if request.endpoint is None or request.endpoint == "static":
        return None
    view = current_app.view_functions.get(request.endpoint)
    view = getattr(view, "view_class", view)
    needed = role_for(view, request.method)
    if needed is None:
        return None
    if not current_user.is_authenticated:
        if request.method in SAFE_METHODS and not request.headers.get("HX-Request"):
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        abort(401)
    if not current_user.has_role(needed):
        abort(403)
    return None


def safe_next(target: str | None, fallback: str) -> str:
    """`target` when it is a path on this site, else `fallback`: the one check for every `next`.

    Browsers read a backslash as a slash and drop tabs and newlines, so a path like "/<backslash>evil.example"
    or "/<tab>/evil.example" leads off-site although it starts with one slash: refuse both.
    """
    if not target or any(ch == "\\" or ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return fallback
    return target


def session_identifier() -> str:
    """What Flask-Login's "strong" protection binds a session to: the client address as the proxy
    setting (TRUSTED_PROXIES) resolved it and the browser. Flask-Login's own reads X-Forwarded-For,
    which any client can send."""
    agent = request.headers.get("User-Agent", "")
    return hashlib.sha512(f"{request.remote_addr}|{agent}".encode()).hexdigest()


def _is_authenticated_response() -> bool:
    if request.endpoint == "static":
        return False
    return bool(g.get("api_token")) or current_user.is_authenticated


def security_headers(response):
    # Pages of a signed-in user (a new API token, a reset password shown once) must not be kept by
    # the browser or a proxy, where the next person at the machine could read them.
    if _is_authenticated_response():
        response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if current_app.config.get("PRODUCTION"):
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    return response


def requires(role: str):
    """For helpers called outside views (e.g. HTMX partials shared by several views)."""

    def decorator(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            if not current_user.is_authenticated or not current_user.has_role(role):
                abort(403)
            return func(*args, **kwargs)

        return wrapper

    return decorator
