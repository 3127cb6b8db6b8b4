"""SeatSync: keeps an MSP's PSA billing in step with real license usage."""

from __future__ import annotations

import logging
import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .extensions import csrf, db, htmx, limiter, login_manager, migrate
from .settings import load_settings


def create_app(overrides: dict | None = None, environ: dict | None = None) -> Flask:
    """The app factory: settings, extensions, blueprints, CLI — nothing else.

    `environ` replaces os.environ as the source of settings (tests); `overrides` is applied last.
    """
    source = os.environ if environ is None else environ
    app = Flask(__name__, instance_path=source.get("SEATSYNC_INSTANCE") or None, instance_relative_config=True)
    app.config.update(load_settings(app.instance_path, environ))
    if overrides:
        app.config.update(overrides)
    hops = app.config.get("TRUSTED_PROXIES", 0)
    if hops:
        # The client address (sign-in limits, session binding) and scheme come from the proxies'
        # headers only when that many proxies are configured; without, a client could forge them.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_port=hops)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from . import models  # noqa: F401  (register the tables with SQLAlchemy and migrations)
    from .inputs import init_inputs

    init_inputs(app)  # first: its body limit must apply before CSRF and the limiter read the form
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
    csrf.init_app(app)
    htmx.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)

    from .queue import init_queue

    init_queue(app)

    from . import security
    from .blueprints import register_blueprints

    app.before_request(security.enforce_access)
    app.after_request(security.security_headers)
    register_blueprints(app)

    from .alerts import init_alerts
    from .observability import init_observability

    init_alerts(app)
    init_observability(app)

    from .cli import register_cli

    register_cli(app)

    from .templating import init_templating

    init_templating(app)
    return app
