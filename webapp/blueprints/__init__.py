"""Blueprints: shared areas, plus one thin blueprint per PSA for its credential form and words."""

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from . import auth, dashboard, errors, health

    app.register_blueprint(auth.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(dashboard.bp)
    from . import audit, notifications, oidc, settings, system, users

    app.register_blueprint(audit.bp)
    app.register_blueprint(oidc.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(settings.bp)
    app.register_blueprint(notifications.bp)
    app.register_blueprint(system.bp)
    from . import autotask, connectwise, halopsa, integrations, kaseya_bms

    app.register_blueprint(integrations.bp)
    for psa in (connectwise, autotask, kaseya_bms, halopsa):
        app.register_blueprint(psa.bp)
    from . import api, seats

    app.register_blueprint(seats.bp)
    app.register_blueprint(api.bp)
    from . import runs

    app.register_blueprint(runs.bp)
    errors.register(app)
