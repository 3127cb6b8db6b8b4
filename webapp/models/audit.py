"""The audit log: who changed what, when. Rows are only ever inserted."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import UtcDateTime, utcnow


class AuditEvent(db.Model):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    actor: Mapped[str] = mapped_column(String(320))  # e-mail, "system", or "api token <name>"
    kind: Mapped[str] = mapped_column(String(50))  # e.g. credentials.changed, mapping.saved
    target: Mapped[str] = mapped_column(String(255), default="")  # what was changed, in words
    summary: Mapped[str] = mapped_column(Text, default="")
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)

    user = relationship("User")

    __table_args__ = (Index("ix_audit_events_at", "at"), Index("ix_audit_events_kind", "kind"))
