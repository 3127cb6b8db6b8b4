import pytest

from tests.fixtures.browser import screenshot

pytestmark = pytest.mark.browser


def test_admin_signs_in_and_sees_the_dashboard_with_navigation(live_server, page):
    live_server.login(page, "admin")
    assert page.get_by_role("heading", name="Dashboard").is_visible()
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Dashboard").is_visible()
    screenshot(page, "dashboard")


def test_wrong_password_shows_a_generic_message(live_server, page):
    page.goto(f"{live_server.url}/login")
    page.get_by_label("E-mail").fill("nobody@msp.example")
    page.get_by_label("Password", exact=True).fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong e-mail or password."
    screenshot(page, "sign-in-failed")
