"""Alerts without workers: the notifications pages, events from a closed run's records, debounce, digest,
the metrics token and Sentry's scrubbing."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.fixtures.integrations import connect
from webapp import crypto
from webapp.alerts import EVENTS
from webapp.alerts.events import events_of_run, raise_events
from webapp.alerts.jobs import send_digests
from webapp.extensions import db
from webapp.models import AlertEvent, AuditEvent, Channel, Company, CompanyMapping, Delivery, LineResult, Product, Seat
from webapp.observability import scrub_event
from webapp.settings import load_settings
from webapp.sync import state


def add_channel(kind="slack", events=tuple(EVENTS), severity="info", digest=False, url="https://hooks.example/x"):
    channel = Channel(name=kind, kind=kind, target_encrypted=crypto.encrypt_json({"url": url}), target_hint="x",
                      events=list(events), min_severity=severity, digest=digest)
    db.session.add(channel)
    db.session.commit()
    return channel


# --------------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------------
def test_only_admins_see_notifications(client, login_as):
    login_as("billing")
    assert client.get("/settings/notifications").status_code == 403
    assert client.post("/settings/notifications", data={"kind": "slack"}).status_code == 403


@pytest.mark.parametrize("url, words", [
    ("https://10.0.0.8/hook", "private or local address"),
    ("https://127.0.0.1:8443/hook", "private or local address"),
    ("http://hooks.slack.com/services/x", "only over HTTPS"),
    ("https://user:pw@hooks.slack.com/x", "refused"),
    ("", "Paste the webhook URL"),
])
def test_a_webhook_url_must_pass_the_psa_host_rules(client, login_as, url, words):
    login_as("admin")
    answer = client.post("/settings/notifications", data={"kind": "slack", "name": "Slack", "url": url,
                                                          "events": ["run.failed"], "min_severity": "warning"})
    assert answer.status_code == 422 and words in answer.text
    assert db.session.scalar(db.select(db.func.count(Channel.id))) == 0


def test_a_signed_webhook_secret_is_shown_once_and_neither_it_nor_the_url_is_stored_in_clear_or_audited(
        app, client, login_as):
    app.config["PSA_DEV_HOSTS"] = "127.0.0.1:9"
    login_as("admin")
    url = "http://127.0.0.1:9/hooks/secret-path-0123"
    answer = client.post("/settings/notifications", data={"kind": "webhook", "name": "Ops", "url": url,
                                                          "events": ["run.finished"], "min_severity": "error"})
    assert answer.status_code == 200
    secret = answer.text.split('id="new-secret">')[1].split("<")[0]
    assert secret.startswith("whsec_") and url not in answer.text
    channel = db.session.scalar(db.select(Channel))
    assert url not in channel.target_encrypted and secret not in channel.target_encrypted
    assert crypto.decrypt_json(channel.target_encrypted) == {"url": url, "secret": secret}
    page = client.get(f"/settings/notifications/{channel.id}").text
    assert secret not in page and "secret-path" not in page and "…0123" in page
    (audit,) = db.session.scalars(db.select(AuditEvent).filter_by(kind="alert_channel.created")).all()
    dumped = json.dumps([audit.summary, audit.target, audit.before, audit.after])
    assert secret not in dumped and "secret-path" not in dumped

    changed = client.post(f"/settings/notifications/{channel.id}", data={
        "name": "Ops", "events": ["run.finished", "run.failed"], "min_severity": "warning", "enabled": "on"})
    assert changed.status_code == 302
    (audit,) = db.session.scalars(db.select(AuditEvent).filter_by(kind="alert_channel.changed")).all()
    assert audit.after["events"] == ["run.finished", "run.failed"] and "secret" not in json.dumps(audit.after)
    assert crypto.decrypt_json(channel.target_encrypted)["secret"] == secret  # kept when nothing new is typed

    client.post(f"/settings/notifications/{channel.id}/test")  # refused: nothing listens on port 9
    (failed,) = db.session.scalars(db.select(Delivery)).all()
    assert failed.state == "failed" and "could not be reached" in failed.error and "secret-path" not in failed.error
    assert client.post(f"/settings/notifications/{channel.id}/delete").status_code == 302
    assert db.session.scalar(db.select(db.func.count(Channel.id))) == 0
    assert db.session.scalar(db.select(db.func.count(Delivery.id))) == 0
    assert db.session.scalar(db.select(db.func.count(AuditEvent.id)).filter_by(kind="alert_channel.deleted")) == 1


# --------------------------------------------------------------------------------------------------
# Events from a closed run
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def closed_run(psa_app, psa_sim):
    integration = connect("connectwise", psa_sim)
    integration.options = {**integration.options, "alert_swing_percent": 50, "alert_swing_units": 0}
    product = db.session.scalar(db.select(Product).filter_by(name="Endpoint Backup"))
    acme = db.session.scalar(db.select(Company).filter_by(name="Acme Dental"))
    mapping = CompanyMapping(integration=integration, company=acme, psa_company_id="1", agreement_id="10")
    db.session.add(mapping)
    bluebird = db.session.scalar(db.select(Company).filter_by(name="Bluebird Logistics"))
    db.session.add(CompanyMapping(integration=integration, company=bluebird, excluded=True))  # excluded on purpose
    run = state.new_run(integration_id=integration.id, trigger="cli", total=1, done=1, updated=1)
    run.state = state.RunState.FINISHED
    db.session.flush()

    def line(**values):
        db.session.add(LineResult(run_id=run.id, company_mapping_id=mapping.id, product_id=product.id,
                                  agreement_id="10", **values))

    line(psa_product_id="p1", before=10, target=16, after=16, action=state.LineAction.UPDATED)  # +60 %: a swing
    line(psa_product_id="p2", before=10, target=12, after=12, action=state.LineAction.UPDATED)  # +20 %: none
    line(psa_product_id="p3", before=4, target=5, after=5, action=state.LineAction.UPDATED, changed_in_psa=True)
    line(psa_product_id="", target=3, action=state.LineAction.NEEDS_ATTENTION)  # product not mapped
    db.session.commit()
    return run


def test_a_closed_run_raises_swing_drift_and_missing_mapping_events(closed_run):
    events = {(e.kind, e.key) for e in events_of_run(closed_run)}
    integration_id = closed_run.integration_id
    assert ("run.finished", f"run.finished:{integration_id}:info") in events
    assert ("quantity.swing", f"quantity.swing:{integration_id}:10:p1") in events
    assert ("quantity.drift", f"quantity.drift:{integration_id}:10:p3") in events
    assert not any(key.endswith(":p2") for _, key in events)
    missing = sorted(key for kind, key in events if kind == "mapping.missing")
    # The unmapped product, and the companies with seats but no company mapping (not Acme Dental, mapped, nor
    # Bluebird Logistics, excluded).
    assert any(key.startswith(f"unmapped-product:{integration_id}:") for key in missing)
    seated = set(db.session.scalars(db.select(Seat.company_id).join(Company).where(
        Company.name.not_in(["Acme Dental", "Bluebird Logistics"]))))
    assert {int(key.rsplit(":", 1)[1]) for key in missing if key.startswith("unmapped-company:")} == seated
    assert len(seated) >= 3

    raise_events(events_of_run(closed_run), run_id=closed_run.id)
    db.session.commit()
    again = {e.kind for e in events_of_run(closed_run)}
    assert "mapping.missing" not in again  # news once


def test_channels_get_the_events_they_chose_at_their_severity_and_repeats_are_debounced(closed_run):
    everything = add_channel("slack")
    drift_only = add_channel("teams", events=["quantity.drift"], severity="warning")
    errors_only = add_channel("webhook", events=list(EVENTS), severity="error")
    first = raise_events(events_of_run(closed_run), run_id=closed_run.id)
    db.session.commit()
    by_channel = {c.id: sorted(d.what for d in db.session.scalars(db.select(Delivery).filter_by(channel_id=c.id)))
                  for c in (everything, drift_only, errors_only)}
    assert by_channel[drift_only.id] == ["quantity.drift"]
    assert by_channel[errors_only.id] == []  # nothing of this run is an error
    assert {"run.finished", "quantity.swing", "quantity.drift", "mapping.missing"} <= set(by_channel[everything.id])
    assert len(first) == len(by_channel[everything.id]) + 1

    assert raise_events(events_of_run(closed_run), run_id=closed_run.id) == []  # same keys within the window
    db.session.query(Delivery).update({"state": "failed"})
    # A failed delivery never debounces its repeat: run finished, swing and drift again (missing mappings are
    # news once), and the drift for the drift-only channel.
    assert len(raise_events(events_of_run(closed_run), run_id=closed_run.id)) == 4


def test_a_digest_channel_gets_one_message_a_day_with_its_events(closed_run, app):
    digest = add_channel("slack", digest=True)
    assert raise_events(events_of_run(closed_run), run_id=closed_run.id) == []  # nothing sent at once
    db.session.commit()
    waiting = db.session.scalar(db.select(db.func.count(Delivery.id)).filter_by(state="digest"))
    assert waiting >= 3
    hour = app.config["ALERT_DIGEST_HOUR"]
    today = dt.datetime.now(dt.UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    assert send_digests(today - dt.timedelta(minutes=1)) == 0  # before the digest hour
    assert send_digests(today + dt.timedelta(minutes=1)) == 1
    (sent,) = db.session.scalars(db.select(Delivery).filter_by(channel_id=digest.id, what="digest")).all()
    assert db.session.scalar(db.select(db.func.count(Delivery.id)).filter_by(digest_id=sent.id)) == waiting
    assert send_digests(today + dt.timedelta(minutes=2)) == 0  # once a day
    assert db.session.scalar(db.select(db.func.count(AlertEvent.id))) >= waiting


# --------------------------------------------------------------------------------------------------
# Metrics token, Sentry, SMTP settings
# --------------------------------------------------------------------------------------------------
def test_metrics_are_not_found_without_a_configured_token(client):
    assert client.get("/metrics").status_code == 404


def test_sentry_events_lose_every_decrypted_secret_and_secret_looking_values(app):
    token = crypto.encrypt_json({"private_key": "pk-9f8e7d6c5b4a", "url": "https://hooks.example/T0/B1/abcdef"})
    crypto.decrypt_json(token)
    event = {"exception": {"values": [{"value": "401 for pk-9f8e7d6c5b4a at https://hooks.example/T0/B1/abcdef"}]},
             "request": {"headers": {"Authorization": "Basic Zm9vOmJhcg==", "Accept": "text/html"}},
             "extra": {"webhook_url": "anything", "count": 3}}
    scrubbed = json.dumps(scrub_event(event))
    assert "pk-9f8e7d6c5b4a" not in scrubbed and "abcdef" not in scrubbed and "Zm9vOmJhcg" not in scrubbed
    assert "anything" not in scrubbed and "text/html" in scrubbed and '"count": 3' in scrubbed


def test_smtp_settings_from_separate_variables_make_one_url(tmp_path):
    settings = load_settings(str(tmp_path), {"SMTP_HOST": "smtp.example.com", "SMTP_PORT": "2525",
                                             "SMTP_USER": "alerts@msp.example", "SMTP_PASSWORD": "p@ss:word"})
    assert settings["SMTP_URL"] == "smtp://alerts%40msp.example:p%40ss%3Aword@smtp.example.com:2525"
    implicit = load_settings(str(tmp_path), {"SMTP_HOST": "smtp.example.com", "SMTP_TLS": "ssl"})
    assert implicit["SMTP_URL"] == "smtps://smtp.example.com"


def test_the_swing_threshold_is_an_integration_option_and_nonsense_keeps_the_last_value(psa_app, psa_sim, client,
                                                                                       login_as):
    login_as("admin")
    integration = connect("connectwise", psa_sim)
    form = {"push_month": "last_closed_month", "create_missing_lines": "on"}
    client.post("/integrations/connectwise/options", headers={"HX-Request": "true"},
                data={**form, "alert_swing_percent": "15", "alert_swing_units": "4"})
    db.session.refresh(integration)
    assert (integration.option("alert_swing_percent"), integration.option("alert_swing_units")) == (15, 4)
    answer = client.post("/integrations/connectwise/options", headers={"HX-Request": "true"},
                         data={**form, "alert_swing_percent": "lots", "alert_swing_units": "-3"})
    assert answer.status_code == 200 and 'name="alert_swing_percent"' in answer.text
    db.session.refresh(integration)
    assert (integration.option("alert_swing_percent"), integration.option("alert_swing_units")) == (15, 0)
