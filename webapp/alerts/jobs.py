"""RQ jobs of the alerts: events of a closed run, one delivery (retried with backoff), the daily digest."""

from __future__ import annotations

import datetime as dt
import logging

from flask import current_app
from sqlalchemy import select

from .. import crypto
from ..extensions import db
from ..jobs import on_cron_tick
from ..models import AlertEvent, Channel, Delivery, SyncRun
from ..models._types import utcnow
from ..queue import enqueue, get_queue
from ..sync.state import on_run_closed
from ..timezones import org_zone
from .events import events_of_run, raise_events
from .send import DeliveryError, Message, send

log = logging.getLogger(__name__)


@on_run_closed
def queue_run_events(run_id: int) -> None:
    """The engine closed a run: turn its records into events off the engine's path (a job)."""
    enqueue(run_closed, run_id)


def run_closed(run_id: int) -> int:
    run = db.session.get(SyncRun, run_id)
    if run is None:
        return 0
    ids = raise_events(events_of_run(run), integration_id=run.integration_id, run_id=run.id)
    db.session.commit()
    for delivery_id in ids:
        enqueue(deliver, delivery_id)
    return len(ids)


def message_of(delivery: Delivery) -> Message:
    if delivery.what == "test":
        return Message(f"msg_{delivery.id}", "test", "info", "SeatSync test message",
                       "This channel receives SeatSync alerts.")
    if delivery.what == "digest":
        events = db.session.scalars(select(AlertEvent).join(Delivery, Delivery.event_id == AlertEvent.id)
                                    .where(Delivery.digest_id == delivery.id).order_by(AlertEvent.id)).all()
        text = "\n".join(f"- [{e.severity}] {e.title}" for e in events)
        return Message(f"msg_{delivery.id}", "digest", max((e.severity for e in events), default="info",
                                                           key=lambda s: ("info", "warning", "error").index(s)),
                       f"SeatSync daily digest: {len(events)} event(s)", text,
                       {"events": [{"type": e.kind, "severity": e.severity, "title": e.title, **e.data}
                                   for e in events]})
    event = delivery.event
    return Message(f"msg_{delivery.id}", event.kind, event.severity, event.title, event.text, event.data)


def attempt(delivery: Delivery) -> bool:
    """One try: records the outcome on the delivery and its channel; True if sent. The caller commits."""
    channel = delivery.channel
    delivery.attempts += 1
    try:
        delivery.response_code = send(channel.kind, crypto.decrypt_json(channel.target_encrypted),
                                      message_of(delivery))
    except DeliveryError as error:
        delivery.response_code, delivery.error = error.status, error.message
        return False
    delivery.state, delivery.error, delivery.sent_at = "sent", "", utcnow()
    channel.failures_in_row = 0
    return True


def deliver(delivery_id: int) -> str:
    delivery = db.session.get(Delivery, delivery_id)
    if delivery is None or delivery.state not in ("pending", "retrying"):
        return "gone"
    channel = delivery.channel
    if channel.paused_at is not None:
        delivery.state, delivery.error = "failed", "Not sent: the channel is paused."
        db.session.commit()
        return delivery.state
    if not attempt(delivery):
        config = current_app.config
        if delivery.attempts < config["ALERT_ATTEMPTS"]:
            delivery.state = "retrying"
            wait = config["ALERT_RETRY_SECONDS"] * 2 ** (delivery.attempts - 1)
            db.session.commit()
            get_queue().enqueue_in(dt.timedelta(seconds=wait), deliver, delivery.id)
            return delivery.state
        delivery.state = "failed"
        channel.failures_in_row += 1
        if channel.failures_in_row >= config["ALERT_PAUSE_AFTER"] and channel.paused_at is None:
            channel.paused_at = utcnow()
            log.warning("alert channel %s paused after %d failed deliveries", channel.id, channel.failures_in_row)
    db.session.commit()
    return delivery.state


def send_test(channel: Channel) -> Delivery:
    """Send a test message now (in the request); success also un-pauses the channel. Commits."""
    delivery = Delivery(channel_id=channel.id, what="test", state="pending")
    db.session.add(delivery)
    db.session.flush()
    if attempt(delivery):
        channel.paused_at = None
    else:
        delivery.state = "failed"
    db.session.commit()
    return delivery


@on_cron_tick
def send_digests(now: dt.datetime) -> int:
    """Once a day from ALERT_DIGEST_HOUR (organisation time): each digest channel gets one message with its
    waiting events."""
    local = now.astimezone(org_zone())
    due_at = local.replace(hour=current_app.config["ALERT_DIGEST_HOUR"], minute=0, second=0, microsecond=0)
    if local < due_at:
        return 0
    sent = 0
    channels = db.session.scalars(select(Channel).where(Channel.digest, Channel.enabled, Channel.paused_at.is_(None),
                                                        (Channel.last_digest_at.is_(None))
                                                        | (Channel.last_digest_at < due_at))).all()
    for channel in channels:
        waiting = db.session.scalars(select(Delivery).where(Delivery.channel_id == channel.id,
                                                            Delivery.state == "digest")).all()
        channel.last_digest_at = now
        if not waiting:
            continue
        digest = Delivery(channel_id=channel.id, what="digest", state="pending")
        db.session.add(digest)
        db.session.flush()
        for delivery in waiting:
            delivery.state, delivery.digest_id = "digested", digest.id
        sent += 1
        db.session.commit()
        enqueue(deliver, digest.id)
    db.session.commit()
    return sent
