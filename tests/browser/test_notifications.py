"""An admin adds a signed webhook channel, presses Send test and sees the delivery in the channel's log."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.fixtures.browser import screenshot

pytestmark = pytest.mark.browser


def test_an_admin_adds_a_webhook_channel_sends_a_test_and_sees_it_in_the_log(live_server, page, psa_sim,
                                                                              webhook_receiver):
    webhook_receiver.clear()
    live_server.app.config["PSA_DEV_HOSTS"] = f"{psa_sim.host},{webhook_receiver.host}"
    live_server.login(page, "admin")
    page.goto(f"{live_server.url}/settings")
    page.get_by_role("link", name="Notifications").click()
    page.get_by_label("Kind").select_option("webhook")
    page.get_by_label("Webhook URL").fill(webhook_receiver.url("/seatsync-events"))
    page.get_by_label("Name").fill("Ops events")
    page.get_by_role("button", name="Add channel").click()

    screenshot(page, "notifications-added")
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("whsec_")
    page.get_by_role("link", name="Open the channel").click()
    assert secret not in page.content() and "/seatsync-events" not in page.content()  # shown once, URL never
    assert "Nothing sent yet." in page.content()

    page.get_by_role("button", name="Send test").click()
    row = page.locator("#delivery-log tbody tr").first
    row.wait_for()
    assert "Test message sent." in page.locator("#delivery-log").inner_text()
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    assert cells[1] == "test" and cells[2] == "sent" and cells[3] == "200" and cells[4] == "1", cells

    screenshot(page, "notifications-channel")
    (received,) = webhook_receiver.at("/seatsync-events")
    assert Webhook(secret).verify(received.body, received.headers)["type"] == "test"
