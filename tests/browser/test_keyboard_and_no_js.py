"""The company mapping works from the keyboard, and the settings work with JavaScript off."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from webapp.connections import get_integration
from webapp.extensions import db

pytestmark = pytest.mark.browser



def test_a_keyboard_user_opens_the_inline_editor_and_lands_in_it(connected, page):
    connected.login(page, "billing")
    page.goto(f"{connected.url}/integrations/connectwise/companies")
    target = page.get_by_label("Edit mapping of Acme Dental")
    for _ in range(80):  # Tab through the page as a keyboard user does, until the pencil has the focus
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            break
    else:
        pytest.fail("the pencil of Acme Dental cannot be reached with Tab")
    page.keyboard.press("Enter")
    editor_field = page.get_by_role("searchbox").or_(page.get_by_role("combobox")).first
    expect(editor_field).to_be_visible()
    focused_is_in_the_editor = page.evaluate(
        "() => !!document.activeElement.closest('tr') && document.activeElement.closest('tr').innerText"
        ".includes('Acme Dental')")
    assert focused_is_in_the_editor


def test_with_javascript_off_the_schedule_and_filters_still_work(connected, browser):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        connected.login(page, "billing")
        page.goto(f"{connected.url}/integrations/connectwise/")
        schedule = page.locator("#schedule")
        schedule.locator("select[name=schedule_kind]").select_option("daily")
        schedule.locator("input[name=schedule_time]").fill("04:45")
        schedule.get_by_role("button", name="Save schedule").click()
        expect(page.get_by_text("Sync schedule saved")).to_be_visible()
        with connected.app.app_context():
            integration = get_integration("connectwise")
            assert (integration.schedule_kind, integration.schedule_time.strftime("%H:%M")) == ("daily", "04:45")
            db.session.remove()
        page.goto(f"{connected.url}/integrations/connectwise/companies")
        page.get_by_label("Show").select_option("unmapped")
        page.get_by_role("button", name="Apply").click()
        assert "filter=unmapped" in page.url
        expect(page.get_by_role("row", name="Acme Dental")).to_be_visible()
    finally:
        context.close()
