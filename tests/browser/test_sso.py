"""Single sign-on in a real browser, against the local OpenID provider."""

import pytest

from tests.fixtures.browser import screenshot
from tests.fixtures.oidc_provider import oidc_environ

pytestmark = pytest.mark.browser


@pytest.fixture
def live_server_env(oidc_provider):
    return oidc_environ(oidc_provider)


def test_a_colleague_signs_in_with_the_sso_button(live_server, page):
    page.goto(f"{live_server.url}/login")
    screenshot(page, "sign-in-with-sso-button")
    page.get_by_role("button", name="Sign in with SSO").click()
    page.get_by_label("E-mail address").fill("new.colleague@msp.example")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{live_server.url}/")
    assert page.get_by_role("heading", name="Dashboard").is_visible()
    assert page.get_by_text("new.colleague@msp.example · viewer").is_visible()
    screenshot(page, "signed-in-with-sso")


def test_an_account_from_another_domain_is_sent_back_with_the_reason(live_server, page):
    page.goto(f"{live_server.url}/login")
    page.get_by_role("button", name="Sign in with SSO").click()
    page.get_by_label("E-mail address").fill("stranger@gmail.com")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{live_server.url}/login")
    assert "Accounts from gmail.com may not sign in to SeatSync" in page.get_by_role("alert").inner_text()
    screenshot(page, "sso-refused-domain")


def test_an_admin_keeps_a_break_glass_account_and_limits_password_sign_in(live_server, page):
    live_server.login(page, "admin")
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("link", name="Users").click()
    page.get_by_role("button", name="Make break-glass").click()
    assert page.get_by_role("button", name="Break-glass ✓").is_visible()
    screenshot(page, "users-page")
    page.goto(f"{live_server.url}/settings")
    page.get_by_role("button", name="Limit password sign-in to break-glass admins").click()
    assert page.get_by_text("Password sign-in: break-glass admins only").is_visible()
    screenshot(page, "settings-page")
    page.get_by_role("link", name="Audit log").click()
    results = page.locator("#audit-results")
    assert results.get_by_text("user.break_glass_changed").is_visible()
    assert results.get_by_text("local_login_disabled").is_visible()
    page.get_by_label("Kind").select_option("settings.changed")
    page.wait_for_url("**kind=settings.changed**")
    assert results.get_by_text("1 event").is_visible()
    assert not results.get_by_text("user.break_glass_changed").is_visible()
    screenshot(page, "audit-log")
    page.goto(f"{live_server.url}/system/queue")
    assert page.get_by_role("heading", name="Queue and workers").is_visible()
    screenshot(page, "queue-view")
