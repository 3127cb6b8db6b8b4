"""Error pages. HTMX requests get a small banner fragment instead of a whole page."""

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.http import HTTP_STATUS_CODES

from ..extensions import htmx
from ..responses import htmx_answer

MESSAGES = {
    400: "The request could not be understood.",
    401: "Please sign in.",
    403: "Your role does not allow this. Ask an admin if you need it.",
    404: "There is nothing here.",
    405: "That action is not available here.",
    413: "The request is too large.",
    429: "Too many requests. Wait a minute and try again.",
    500: "Something went wrong on our side. The error was logged.",
}


DESCRIBED = (400, 413, 429)  # statuses whose own description (not the generic message) is shown


def render_error(status: int, message: str | None = None):
    message = message or MESSAGES.get(status, "Error")
    if request.path.startswith("/api/"):  # API clients get JSON even for paths no API route matched
        # The same error names as the API's own handler: "not_found", "request_entity_too_large", …
        error = HTTP_STATUS_CODES.get(status, f"http {status}").lower().replace(" ", "_")
        return jsonify(error=error, message=message), status
    # HTMX: a banner fragment, swapped into #htmx-banners by base.html's htmx-config (responseHandling).
    template = "errors/_banner.html" if htmx else "errors/page.html"
    return htmx_answer(lambda: render_template(template, status=status, message=message,
                                                       dismissible=bool(htmx)), status=status)


def register(app: Flask) -> None:
    for status in MESSAGES:
        app.register_error_handler(status, lambda exc, status=status: render_error(
            status, getattr(exc, "description", None) if status in DESCRIBED else None))

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return render_error(400, "The form expired or was sent from elsewhere (missing security token). "
                            "Reload the page and try again.")
