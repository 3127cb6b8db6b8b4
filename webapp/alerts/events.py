"""A closed run's records turned into events; each event handed to the channels that want it.

Nothing here writes engine state: it reads the run, its line results and the mappings, and writes
only alert rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import exists, select

from ..extensions import db
from ..models import AlertEvent, Channel, Company, CompanyMapping, Delivery, Integration, LineResult, Seat, SyncRun
from ..models._types import utcnow
from ..psa_clients import client_class
from ..sync import state
from ..sync.state import LineAction, RunState, Verification
from . import severity_rank

MAX_LINE_EVENTS = 20  # per kind and run: beyond, the run's own event says how many
DEBOUNCED_STATES = ("pending", "retrying", "sent", "digest", "digested")  # a failed delivery does not count


@dataclass
class Event:
    kind: str
    severity: str
    key: str
    title: str
    text: str = ""
    data: dict = field(default_factory=dict)


def events_of_run(run: SyncRun) -> list[Event]:
    integration = db.session.get(Integration, run.integration_id)
    psa = client_class(integration.kind).display_name
    events = [_run_event(run, integration, psa)]
    if run.state == RunState.FAILED and integration.credentials_status == "failing":
        events.append(Event("credentials.failing", "error", f"credentials:{integration.id}",
                            f"{psa}: the PSA rejected SeatSync's API credentials",
                            "Syncs stop until the credentials are re-entered and authenticated.",
                            {"psa": integration.kind}))
    lines = db.session.execute(
        select(LineResult, Company.name).join(CompanyMapping, CompanyMapping.id == LineResult.company_mapping_id)
        .join(Company, Company.id == CompanyMapping.company_id).where(LineResult.run_id == run.id)
        .order_by(LineResult.id)).all()
    if run.state != RunState.FAILED:  # a stopped run's lines all fail for the one reason its event gives
        events += _line_events(lines, integration, psa, "line.failed", lambda r: r.action == LineAction.ERROR)
    events += _line_events(lines, integration, psa, "quantity.drift", lambda r: r.changed_in_psa)
    events += _line_events(lines, integration, psa, "quantity.swing", lambda r: _is_swing(r, integration))
    events += _missing_mappings(lines, integration, psa)
    return events


def _run_event(run: SyncRun, integration: Integration, psa: str) -> Event:
    lines = state.verification_summary(run.id)
    verified, differing = lines[Verification.VERIFIED], lines[Verification.MISMATCH]
    data = {"psa": integration.kind, "run_id": run.id, "state": str(run.state), "companies": run.total,
            "in_sync": run.in_sync, "updated": run.updated, "attention": run.needs_attention,
            "errors": run.errors, "lines_written": lines["written"], "lines_verified": verified,
            "lines_differing": differing}
    counts = (f"{run.in_sync} in sync, {run.updated} updated, {run.needs_attention} need attention, "
              f"{run.errors} errors; verified {verified} of {lines['written']} written lines.")
    if run.state == RunState.FAILED:
        return Event("run.failed", "error", f"run.failed:{integration.id}", f"{psa} sync stopped",
                     f"{run.message} {counts}".strip(), data)
    severity = "error" if run.errors else "warning" if run.needs_attention or differing else "info"
    outcome = {"error": "finished with errors", "warning": "finished; some companies need attention",
               "info": "finished"}[severity]
    return Event("run.finished", severity, f"run.finished:{integration.id}:{severity}", f"{psa} sync {outcome}",
                 counts, data)


def _line_data(line: LineResult, company: str, integration: Integration) -> dict:
    return {"psa": integration.kind, "run_id": line.run_id, "company": company, "agreement_id": line.agreement_id,
            "psa_product_id": line.psa_product_id, "before": line.before, "target": line.target,
            "after": line.after, "action": str(line.action), "message": line.message}


LINE_WORDS = {
    "line.failed": ("error", "{psa}: a line of {company} could not be written", "{message}"),
    "quantity.drift": ("warning", "{psa}: the quantity of a line of {company} was changed by hand in the PSA",
                       "SeatSync last wrote a different quantity; the PSA held {before:g}."),
    "quantity.swing": ("warning", "{psa}: the quantity of a line of {company} swings from {before:g} to {target}",
                       "Above the integration's alert threshold."),
}


def _line_events(lines, integration: Integration, psa: str, kind: str, matches) -> list[Event]:
    severity, title, text = LINE_WORDS[kind]
    out = []
    for line, company in lines:
        if len(out) == MAX_LINE_EVENTS:
            break
        if matches(line):
            words = {"psa": psa, "company": company, "message": line.message, "before": line.before or 0,
                     "target": line.target}
            out.append(Event(kind, severity, f"{kind}:{integration.id}:{line.agreement_id}:{line.psa_product_id}",
                             title.format(**words), text.format(**words), _line_data(line, company, integration)))
    return out


def _is_swing(line: LineResult, integration: Integration) -> bool:
    """A written quantity moving by more than the integration's threshold (± percent or ± units)."""
    if line.action not in state.WRITTEN or not line.before or line.target is None:
        return False
    change = abs(line.target - line.before)
    percent, units = integration.option("alert_swing_percent"), integration.option("alert_swing_units")
    return bool((percent and change * 100 / abs(line.before) >= percent) or (units and change >= units))


def _missing_mappings(lines, integration: Integration, psa: str) -> list[Event]:
    """Products a run could not push (no product mapping), and companies with seats and no company mapping."""
    out = []
    for line, company in lines:
        if line.action == LineAction.NEEDS_ATTENTION and not line.psa_product_id and line.product_id:
            product = line.product.name if line.product else str(line.product_id)
            out.append(Event("mapping.missing", "warning", f"unmapped-product:{integration.id}:{line.product_id}",
                             f"{psa}: the product {product} has no mapping",
                             f"{company} uses it; map it on the integration's Products tab.",
                             {"psa": integration.kind, "product": product}))
    # Mapped, or excluded on purpose: not news.
    decided = exists().where(CompanyMapping.company_id == Company.id, CompanyMapping.integration_id == integration.id,
                             CompanyMapping.psa_company_id.is_not(None) | CompanyMapping.excluded)
    seated = exists().where(Seat.company_id == Company.id)
    for company_id, name in db.session.execute(select(Company.id, Company.name).where(
            Company.active, seated, ~decided).order_by(Company.id)):
        out.append(Event("mapping.missing", "warning", f"unmapped-company:{integration.id}:{company_id}",
                         f"{psa}: the company {name} has no mapping", "Map it on the integration's Companies tab.",
                         {"psa": integration.kind, "company": name}))
    return _first_time_only(out)[:MAX_LINE_EVENTS]


def _first_time_only(events: list[Event]) -> list[Event]:
    """A missing mapping is news once: a key raised before is not raised again."""
    seen = set(db.session.scalars(select(AlertEvent.key).where(AlertEvent.key.like("unmapped-%"))))
    unique = {e.key: e for e in events if e.key not in seen}
    return list(unique.values())


# --------------------------------------------------------------------------------------------------
# Events → deliveries
# --------------------------------------------------------------------------------------------------
def wants(channel: Channel, event: Event) -> bool:
    return event.kind in (channel.events or []) and severity_rank(event.severity) >= severity_rank(channel.min_severity)


def raise_events(events: list[Event], *, integration_id: int | None = None, run_id: int | None = None) -> list[int]:
    """Store the events and queue a delivery per channel that wants each, unless the channel had the same
    key within the debounce window. Returns the ids of deliveries to send now. The caller commits."""
    channels = db.session.scalars(select(Channel).where(Channel.enabled, Channel.paused_at.is_(None))).all()
    since = utcnow() - dt.timedelta(minutes=current_app.config["ALERT_DEBOUNCE_MINUTES"])
    now_ids = []
    for event in events:
        row = AlertEvent(kind=event.kind, severity=event.severity, key=event.key[:255], title=event.title,
                         text=event.text, data=event.data, integration_id=integration_id, run_id=run_id)
        db.session.add(row)
        db.session.flush()
        for channel in channels:
            if not wants(channel, event) or _recently_sent(channel.id, row.key, since):
                continue
            delivery = Delivery(channel_id=channel.id, event_id=row.id, event_key=row.key, what=event.kind,
                                state="digest" if channel.digest else "pending")
            db.session.add(delivery)
            db.session.flush()
            if not channel.digest:
                now_ids.append(delivery.id)
    return now_ids


def _recently_sent(channel_id: int, key: str, since: dt.datetime) -> bool:
    return bool(db.session.scalar(select(exists().where(
        Delivery.channel_id == channel_id, Delivery.event_key == key, Delivery.created_at >= since,
        Delivery.state.in_(DEBOUNCED_STATES)))))
