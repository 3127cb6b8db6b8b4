"""Writing audit events. Every auditable action calls `record` once, in the same transaction."""

from __future__ import annotations

from flask import has_request_context
from flask_login import current_user

from .extensions import db
from .models import AuditEvent


def record(kind: str, target: str = "", summary: str = "", *, before=None, after=None, actor: str | None = None):
    user = current_user if has_request_context() and current_user.is_authenticated else None
    # Cut to the columns' sizes: a long name (255-character company + product + e-mail) must not
    # make the audited change itself fail.
    event = AuditEvent(
        kind=kind[:50],
        target=target[:255],
        summary=summary,
        before=before,
        after=after,
        user_id=user.id if user else None,
        actor=(actor or (user.email if user else "system"))[:320],
    )
    db.session.add(event)
    return event
