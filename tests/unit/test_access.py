"""Roles are enforced on every view: found by walking the URL map, not from a hand-kept list."""

import pytest
from werkzeug.routing import Rule
from werkzeug.routing.converters import NumberConverter

from webapp.security import SAFE_METHODS


def _url_for_rule(rule: Rule) -> str:
    values = {}
    for name in rule.arguments:
        converter = rule._converters[name]
        values[name] = 1 if isinstance(converter, NumberConverter) else "x"
    return rule.build(values, append_unknown=False)[1]


def _routes(app, want_unsafe: bool):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        if getattr(view, "_access", None) == "public":
            continue
        methods = (rule.methods or set()) - SAFE_METHODS if want_unsafe else {"GET"} & (rule.methods or set())
        for method in sorted(methods):
            yield method, _url_for_rule(rule), rule.endpoint


def test_a_viewer_gets_403_on_every_state_changing_route(app, client, login_as):
    login_as("viewer")
    routes = list(_routes(app, want_unsafe=True))
    assert any(endpoint == "auth.logout" for _m, _u, endpoint in routes)
    for method, url, endpoint in routes:
        if endpoint == "auth.logout":  # signing out is for everyone
            continue
        response = client.open(url, method=method)
        assert response.status_code == 403, f"{method} {url} ({endpoint}) gave {response.status_code}"


def test_signed_out_visitors_reach_no_protected_route(app, client):
    for method, url, endpoint in _routes(app, want_unsafe=True):
        response = client.open(url, method=method)
        assert response.status_code in (401, 403), f"{method} {url} ({endpoint}) gave {response.status_code}"
    for method, url, endpoint in _routes(app, want_unsafe=False):
        response = client.open(url, method=method)
        assert response.status_code in (302, 401), f"{method} {url} ({endpoint}) gave {response.status_code}"


def test_admin_only_pages_refuse_billing_users(app, client, login_as):
    login_as("billing")
    admin_rules = [rule for rule in app.url_map.iter_rules()
                   if getattr(app.view_functions[rule.endpoint], "_access", None) == "admin"]
    for rule in admin_rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            assert client.open(_url_for_rule(rule), method=method).status_code == 403, rule.rule


@pytest.mark.parametrize("role", ["viewer", "billing", "admin"])
def test_every_role_can_read_the_dashboard(client, login_as, role):
    login_as(role)
    assert client.get("/").status_code == 200
