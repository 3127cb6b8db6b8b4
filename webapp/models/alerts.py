"""Alerts: notification channels, the events SeatSync raised, and each delivery of an event to a channel."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import UtcDateTime, utcnow


class Channel(db.Model):
    """Where alerts go: an e-mail list, a Teams or Slack incoming webhook, or a signed generic webhook.

    The address (webhook URL, recipients) and the signing secret are Fernet-encrypted JSON
    (webapp/crypto.py); `target_hint` is what pages show instead (host and the last characters).
    """

    __tablename__ = "alert_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))  # email | teams | slack | webhook
    target_encrypted: Mapped[str] = mapped_column(Text)  # {"url": …, "secret": …} or {"to": [...]}
    target_hint: Mapped[str] = mapped_column(String(255), default="")
    events: Mapped[list] = mapped_column(JSON, default=list)  # event kinds (webapp/alerts/events.py)
    min_severity: Mapped[str] = mapped_column(String(10), default="warning")  # info | warning | error
    digest: Mapped[bool] = mapped_column(default=False)  # one message a day instead of one per event
    enabled: Mapped[bool] = mapped_column(default=True)
    failures_in_row: Mapped[int] = mapped_column(default=0)  # deliveries failed after every retry
    paused_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_digest_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class AlertEvent(db.Model):
    """Something an admin should hear about, raised once (from a closed run's records)."""

    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(10))
    key: Mapped[str] = mapped_column(String(255))  # repeats of one key within the debounce window are not resent
    title: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSON, default=dict)  # the webhook payload's `data`; never a secret
    integration_id: Mapped[int | None] = mapped_column(ForeignKey("integrations.id", ondelete="SET NULL"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = (Index("ix_alert_events_created", "created_at"),)


class Delivery(db.Model):
    """One event (or a test, or a digest of events) sent to one channel, with its retries."""

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel_id: Mapped[int] = mapped_column(ForeignKey("alert_channels.id", ondelete="CASCADE"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("alert_events.id", ondelete="CASCADE"))
    event_key: Mapped[str] = mapped_column(String(255), default="")  # the event's key, for debouncing
    what: Mapped[str] = mapped_column(String(40))  # the event kind, "test" or "digest"
    # pending (to send now) | digest (waits for the daily digest) | retrying | sent | failed | digested
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    response_code: Mapped[int | None]
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    # A delivery held for the daily digest names the digest delivery that carried it.
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("alert_deliveries.id", ondelete="SET NULL"))

    channel = relationship("Channel")
    event = relationship("AlertEvent")

    __table_args__ = (
        Index("ix_alert_deliveries_channel_created", "channel_id", "created_at"),
        Index("ix_alert_deliveries_channel_key", "channel_id", "event_key"),
    )
