"""Writing audit events. Every auditable action calls `record` once, in the same transaction."""

from __future__ import annotations

from flask import has_request_context
from flask_login import current_user

from .extensions import db
from .models import AuditEvent


def record(kind: str, target: str = "", summary: str = "", *, before=None, after=None, actor: str | None = None):
    user = current_user if has_request_context() and current_user.is_authenticated else None
    event = AuditEvent(
        kind=kind,
        target=target,
        summary=summary,
        before=before,
        after=after,
        user_id=user.id if user else None,
        actor=actor or (user.email if user else "system"),
    )
    db.session.add(event)
    return event
