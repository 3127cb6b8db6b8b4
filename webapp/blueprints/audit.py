"""The audit log: every recorded change with who, when and what (before → after), filterable by user,
kind and date, paginated, exportable as CSV. Read-only: there is no route that edits or deletes a row,
and the ORM refuses to update or delete one.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from dataclasses import dataclass

from flask import Blueprint, Response, render_template, request, stream_with_context
from sqlalchemy import event

from ..extensions import db, htmx
from ..inputs import page_number
from ..models import AuditEvent
from ..models._types import utcnow
from ..timezones import org_zone

bp = Blueprint("audit", __name__, url_prefix="/audit")

PER_PAGE = 50
# Never expected in an event (record() callers leave secrets out), but a slip must not reach a page.
SECRET_KEY = re.compile(r"password|secret|private|token(?!_?name)|api_?key|credential_values", re.I)
REDACTED = "[hidden]"


class AuditRowsAreImmutable(RuntimeError):
    pass


@event.listens_for(AuditEvent, "before_update")
@event.listens_for(AuditEvent, "before_delete")
def _refuse_changes(_mapper, _connection, target):
    raise AuditRowsAreImmutable(f"audit event {target.id} cannot be changed or deleted")


def redact(value):
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def changes(event_row: AuditEvent) -> list[tuple[str, object, object]]:
    """(field, before, after) for every field in either side, secrets hidden."""
    before, after = redact(event_row.before or {}), redact(event_row.after or {})
    if not isinstance(before, dict) or not isinstance(after, dict):
        return [("value", before, after)]
    missing = object()
    rows = []
    for key in list(dict.fromkeys([*before, *after])):
        old, new = before.get(key, missing), after.get(key, missing)
        rows.append((key, None if old is missing else old, None if new is missing else new))
    return rows


@dataclass
class Filters:
    actor: str = ""
    kind: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    page: int = 1
    errors: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args) -> Filters:
        errors = []

        def day(name: str, label: str) -> dt.date | None:
            raw = (args.get(name) or "").strip()
            if not raw:
                return None
            try:
                return dt.date.fromisoformat(raw)
            except ValueError:
                errors.append(f"{label} must be a date like 2026-01-31.")
                return None

        filters = cls(actor=(args.get("actor") or "").strip(), kind=(args.get("kind") or "").strip(),
                      date_from=day("from", "From"), date_to=day("to", "To"))
        try:
            filters.page = page_number(args.get("page", "1"))
        except ValueError:
            filters.page = 1
        filters.errors = tuple(errors)
        return filters

    def query(self):
        zone = org_zone()
        stmt = db.select(AuditEvent)
        if self.actor:
            stmt = stmt.where(AuditEvent.actor == self.actor)
        if self.kind:
            stmt = stmt.where(AuditEvent.kind == self.kind)
        # Dates are days in the organisation's time zone, both ends included.
        if self.date_from:
            stmt = stmt.where(AuditEvent.at >= dt.datetime.combine(self.date_from, dt.time(), zone))
        if self.date_to:
            end = dt.datetime.combine(self.date_to + dt.timedelta(days=1), dt.time(), zone)
            stmt = stmt.where(AuditEvent.at < end)
        return stmt

    def args(self, **changes) -> dict:
        values = {"actor": self.actor, "kind": self.kind,
                  "from": self.date_from.isoformat() if self.date_from else "",
                  "to": self.date_to.isoformat() if self.date_to else "", "page": self.page}
        values.update(changes)
        return {k: v for k, v in values.items() if v and not (k == "page" and v == 1)}


@bp.get("")
def index():
    filters = Filters.from_args(request.args)
    stmt = filters.query()
    total = db.session.scalar(db.select(db.func.count()).select_from(stmt.subquery()))
    pages = max(1, -(-total // PER_PAGE))
    filters.page = min(filters.page, pages)
    rows = db.session.scalars(stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                              .limit(PER_PAGE).offset((filters.page - 1) * PER_PAGE)).all()
    context = {"rows": rows, "changes": changes, "filters": filters, "total": total, "pages": pages}
    if htmx and htmx.target == "audit-results":
        return render_template("audit/_results.html", **context)
    actors = db.session.scalars(db.select(AuditEvent.actor).distinct().order_by(AuditEvent.actor)).all()
    kinds = db.session.scalars(db.select(AuditEvent.kind).distinct().order_by(AuditEvent.kind)).all()
    return render_template("audit/index.html", actors=actors, kinds=kinds, **context)


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    # A spreadsheet would run a cell starting with these as a formula (names come from imports and PSAs).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@bp.get("/export.csv")
def export():
    filters = Filters.from_args(request.args)
    zone = org_zone()

    def generate():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["time", "user", "kind", "target", "summary", "before", "after"])
        stmt = filters.query().order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).execution_options(yield_per=500)
        for row in db.session.scalars(stmt):
            writer.writerow([row.at.astimezone(zone).isoformat(timespec="seconds"), _cell(row.actor),
                             _cell(row.kind), _cell(row.target), _cell(row.summary),
                             _cell(redact(row.before)) if row.before is not None else "",
                             _cell(redact(row.after)) if row.after is not None else ""])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        if buffer.getvalue():
            yield buffer.getvalue()

    today = utcnow().astimezone(zone).date().isoformat()
    return Response(stream_with_context(generate()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="seatsync-audit-{today}.csv"'})
