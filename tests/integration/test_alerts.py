"""Alerts end to end: real RQ workers sync against the simulator, and the alerts reach a real SMTP server and
a real HTTP receiver that checks the Standard Webhooks signature with the reference library."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.fixtures.alerts import wait_until
from tests.fixtures.app import CsrfClient
from tests.fixtures.workers import EB, PM, build_world, wait_for_run
from webapp import crypto
from webapp.alerts import EVENTS
from webapp.extensions import db
from webapp.models import AlertEvent, Channel, Delivery

pytestmark = pytest.mark.integration

SEATS = {("Acme Dental", EB): 2, ("Bluebird Logistics", PM): 4, ("Cedar Law Group", PM): 3}
SECRET = "whsec_" + "c2VhdHN5bmMtdGVzdC1zaWduaW5nLXNlY3JldC0zMmJ5dGVzIQ=="
ADDITIONS_REFUSED = [{"psa": "connectwise", "method": "POST", "path_contains": "additions", "status": 400,
                      "times": -1}]
FINAL = ("sent", "failed", "digest")


@pytest.fixture
def sync_environ(sync_environ, psa_sim, webhook_receiver, smtp_server):
    webhook_receiver.clear()
    smtp_server.messages.clear()
    return {**sync_environ, "PSA_DEV_HOSTS": f"{psa_sim.host},{webhook_receiver.host}", "SMTP_URL": smtp_server.url,
            "MAIL_FROM": "seatsync@msp.example", "ALERT_ATTEMPTS": "2", "ALERT_RETRY_SECONDS": "0.5",
            "ALERT_PAUSE_AFTER": "1"}


@pytest.fixture
def app(sync_app):
    sync_app.test_client_class = CsrfClient
    return sync_app


def channel(kind: str, name: str, target: dict, events=tuple(EVENTS), severity="info") -> Channel:
    row = Channel(name=name, kind=kind, target_encrypted=crypto.encrypt_json(target), target_hint=name,
                  events=list(events), min_severity=severity)
    db.session.add(row)
    db.session.commit()
    return row


def settled(run_id: int) -> bool:
    """The run's events are raised and every delivery is sent or has given up."""
    db.session.rollback()
    raised = db.session.scalar(db.select(db.func.count(AlertEvent.id)).where(AlertEvent.run_id == run_id))
    busy = db.session.scalar(db.select(db.func.count(Delivery.id)).where(Delivery.state.not_in(FINAL)))
    return bool(raised) and busy == 0


def run_failing_sync(world, rq_workers=None):
    run = wait_for_run(world.start().id, timeout=60)
    assert run.state == "finished" and run.errors > 0, (run.state, run.errors)
    wait_until(lambda: settled(run.id), message="alerts delivered")
    return run


def finished_with_errors(receiver, smtp, paths):
    """Messages saying "sync finished with errors", per channel."""
    counts = {path: sum("finished with errors" in r.body for r in receiver.at(path)) for path in paths}
    counts["email"] = sum("finished with errors" in str(m["Subject"]) for _, m in smtp.messages)
    return counts


def test_a_failing_sync_alerts_each_channel_exactly_once_and_a_repeat_within_the_window_is_not_resent(
        psa_sim, rq_workers, webhook_receiver, smtp_server):
    world = build_world("connectwise", psa_sim, SEATS)
    channel("email", "Billing team", {"to": ["billing@msp.example"]})
    channel("webhook", "Ops webhook", {"url": webhook_receiver.url("/hook"), "secret": SECRET})
    channel("slack", "Slack", {"url": webhook_receiver.url("/slack")})
    channel("teams", "Teams", {"url": webhook_receiver.url("/teams")}, severity="error")
    psa_sim.faults(rules=ADDITIONS_REFUSED)  # every new line is refused: the run finishes with errors
    rq_workers.start(1)

    run = run_failing_sync(world)
    paths = ("/hook", "/slack", "/teams")
    assert finished_with_errors(webhook_receiver, smtp_server, paths) == {
        "/hook": 1, "/slack": 1, "/teams": 1, "email": 1}, rq_workers.output()[-3000:]

    # The signed webhook: verified with the reference library, the counts in its data, no secret in it.
    (finished,) = [r for r in webhook_receiver.at("/hook") if r.json()["type"] == "run.finished"]
    payload = Webhook(SECRET).verify(finished.body, finished.headers)
    assert payload["data"]["errors"] == run.errors and payload["data"]["severity"] == "error"
    assert payload["data"]["updated"] == run.updated and payload["data"]["in_sync"] == run.in_sync
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0zMmJ5dGVzIQ==").verify(finished.body, finished.headers)
    line_failed = [r.json() for r in webhook_receiver.at("/hook") if r.json()["type"] == "line.failed"]
    assert line_failed and {e["data"]["company"] for e in line_failed} <= {"Acme Dental", "Bluebird Logistics"}
    everything = "".join(r.body for r in webhook_receiver.received) + "".join(
        str(m) for _, m in smtp_server.messages)
    assert not any(s in everything for s in ("sim-private", "sim-public", SECRET, SECRET[6:]))
    (rcpts, mail) = smtp_server.messages[0]
    assert rcpts == ["billing@msp.example"] and mail["From"] == "seatsync@msp.example"
    assert f"{run.errors} errors" in mail.get_content()
    # Teams wants errors only: every error event of the run reached it, and nothing of lower severity.
    severities = list(db.session.scalars(db.select(AlertEvent.severity).filter_by(run_id=run.id)))
    assert "warning" in severities or "info" in severities
    assert len(webhook_receiver.at("/teams")) == severities.count("error") < len(webhook_receiver.at("/slack"))

    second = run_failing_sync(world)
    assert finished_with_errors(webhook_receiver, smtp_server, paths) == {
        "/hook": 1, "/slack": 1, "/teams": 1, "email": 1}
    assert db.session.scalar(db.select(db.func.count(Delivery.id)).join(AlertEvent).where(
        AlertEvent.run_id == second.id)) == 0  # raised, and debounced for every channel


def test_a_channel_that_keeps_failing_is_paused_and_send_test_brings_it_back(
        psa_sim, rq_workers, webhook_receiver, smtp_server, client, login_as):
    world = build_world("connectwise", psa_sim, SEATS)
    hook = channel("webhook", "Ops webhook", {"url": webhook_receiver.url("/down"), "secret": SECRET},
                   events=["run.finished"])
    webhook_receiver.statuses["/down"] = 500
    psa_sim.faults(rules=ADDITIONS_REFUSED)
    rq_workers.start(1)

    run_failing_sync(world)
    attempts = webhook_receiver.at("/down")
    assert len(attempts) == 2  # ALERT_ATTEMPTS: retried once, with the same message id
    assert attempts[0].headers["webhook-id"] == attempts[1].headers["webhook-id"]
    db.session.refresh(hook)
    assert hook.paused_at is not None and hook.failures_in_row == 1
    (failed,) = db.session.scalars(db.select(Delivery).filter_by(channel_id=hook.id)).all()
    assert (failed.state, failed.attempts, failed.response_code) == ("failed", 2, 500)
    login_as("admin")
    page = client.get(f"/settings/notifications/{hook.id}")
    assert "This channel is paused" in page.text

    # While paused nothing is sent; the receiver is fixed; Send test gets through and un-pauses.
    run_failing_sync(world)
    assert len(webhook_receiver.at("/down")) == 2
    webhook_receiver.statuses["/down"] = 200
    answer = client.post(f"/settings/notifications/{hook.id}/test", headers={"HX-Request": "true"})
    assert answer.status_code == 200 and "Test message sent." in answer.text
    assert "This channel is paused" not in answer.text
    test_message = webhook_receiver.at("/down")[-1]
    assert Webhook(SECRET).verify(test_message.body, test_message.headers)["type"] == "test"
    db.session.refresh(hook)
    assert hook.paused_at is None and hook.failures_in_row == 0

    # The next failing run reaches it again (a failed delivery never debounces its repeat).
    run_failing_sync(world)
    bodies = [r.json() for r in webhook_receiver.at("/down")[3:]]
    assert [b["type"] for b in bodies] == ["run.finished"] and bodies[0]["data"]["severity"] == "error"
