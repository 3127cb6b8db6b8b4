"""Recording what a push did: line results, push intents, finished companies and read-back proof.

Exactly once rests on the intent: every write is recorded as a pending PushIntent (committed) before
it is sent. After a crash or a lost answer the intent is still pending; the next push re-reads the
line, writes only what is missing, and reports the earlier write as completed.

A company is recorded whole — its line results, its status and the run's counters — in one
transaction, so a killed worker leaves companies done or not done, never half-recorded.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import delete, func, inspect, select, update

from ..extensions import db
from ..models import LineResult, PushIntent
from ..models._types import utcnow
from ..psa_clients.base import Line, PsaError, WriteResult
from . import state
from .plan import Change
from .state import CompanyStatus, LineAction, Verification

# Line actions whose money change is recorded: what was written, or waits for (or got) approval.
COSTED = frozenset((*state.WRITTEN, *state.UNDECIDED))
Written = tuple[int, str, str, int]  # a written line to read back: (line result id, agreement, PSA product, target)


@dataclass(frozen=True)
class MappingRef:
    """The columns of a company mapping a push needs, read once (ORM rows expire at every commit)."""

    id: int
    integration_id: int
    company_id: int
    agreement_id: str


@dataclass
class CompanyRecord:
    """A company's results in a run, ready to be recorded."""

    mapping: MappingRef
    results: list[LineResult]
    kept: list[LineResult] = field(default_factory=list)  # earlier rows of this run that stay (review)
    replaced: list[int] = field(default_factory=list)  # earlier rows these results replace (approved)

    @property
    def outcome(self) -> CompanyStatus:
        rows = self.kept + self.results
        return state.company_outcome((r.action for r in rows), (r.verification for r in rows))

    @property
    def reason(self) -> str:
        return state.status_reason(self.kept + self.results, self.outcome)


class Recorder:
    """Builds and stores the line results and intents of one run's push."""

    def __init__(self, run_id: int, integration_id: int, period, *, quantity_readable: bool):
        self.run_id, self.integration_id, self.period = run_id, integration_id, period
        self.quantity_readable = quantity_readable
        self.known_intents: dict[tuple[str, str], PushIntent] = {}
        self.written_intents: list[PushIntent] = []

    # -- intents -----------------------------------------------------------------------------------
    def pending_intents(self, agreement_ids: list[str]) -> dict[tuple[str, str], PushIntent]:
        """Pending intents of these agreements; all their intents of the period are kept for reuse."""
        rows = db.session.scalars(select(PushIntent).where(
            PushIntent.integration_id == self.integration_id, PushIntent.period == self.period,
            PushIntent.agreement_id.in_(agreement_ids)))
        self.known_intents = {(i.agreement_id, i.psa_product_id): i for i in rows}
        return {key: i for key, i in self.known_intents.items() if i.state == "pending"}

    def prepare_intent(self, agreement_id: str, change: Change, intents: dict) -> PushIntent:
        """The pending PushIntent of a write (the caller commits it before sending)."""
        key = (agreement_id, change.psa_product_id)
        intent = intents.pop(key, None) or self.known_intents.get(key)
        if intent is None:
            intent = PushIntent(integration_id=self.integration_id, agreement_id=key[0], psa_product_id=key[1],
                                period=self.period)
            db.session.add(intent)
            self.known_intents[key] = intent
        intent.target = int(change.target)
        intent.delta = (change.target - change.basis) if change.basis is not None else None
        intent.state, intent.run_id, intent.completed_at = "pending", self.run_id, None
        return intent

    def intent_done(self, intent: PushIntent) -> None:
        """Marked done in the transaction that records its company (a rollback never loses a mark)."""
        self.written_intents.append(intent)

    # -- line results ------------------------------------------------------------------------------
    def result(self, mapping: MappingRef, change: Change, **values) -> LineResult:
        line = change.line
        message = values.pop("message", change.message)
        before = values.pop("before", change.before)
        changed_in_psa = values.pop("changed_in_psa", change.changed_in_psa)
        if changed_in_psa:
            note = (f"changed in the PSA since the last sync: SeatSync left {change.last_written:g}, "
                    f"the PSA had {change.before:g}")
            message = f"{note}; {message}" if message else note
        values.setdefault("hint", "")
        priced = values.pop("priced", None) or line or change.catalog
        price_change, margin_change = change.money(priced) if values.get("action") in COSTED else (None, None)
        return LineResult(
            run_id=self.run_id, company_mapping_id=mapping.id, product_id=change.product_id,
            psa_product_id=change.psa_product_id, agreement_id=change.agreement_id or mapping.agreement_id,
            line_id=values.pop("line_id", line.line_id if line is not None else None),
            before=before, target=change.target, changed_in_psa=changed_in_psa,
            message=message, psa_response=values.pop("psa_response", ""),
            count=change.count, rule=change.rule, effective_from=change.effective_from,
            unit_price=priced.unit_price if priced else None, unit_cost=priced.unit_cost if priced else None,
            currency=priced.currency if priced else "", price_change=price_change, margin_change=margin_change,
            **values,
        )

    def error_result(self, mapping: MappingRef, change: Change | None, error: PsaError) -> LineResult:
        if change is None:
            return LineResult(run_id=self.run_id, company_mapping_id=mapping.id, agreement_id=mapping.agreement_id,
                              action=LineAction.ERROR, message=error.psa_message, http_status=error.status,
                              hint=error.hint or "", psa_response="")
        return self.result(mapping, change, action=LineAction.ERROR, message=error.psa_message,
                           http_status=error.status, hint=error.hint or "")

    def company_error(self, mapping: MappingRef, message: str, hint: str) -> LineResult:
        return LineResult(run_id=self.run_id, company_mapping_id=mapping.id, agreement_id=mapping.agreement_id,
                          action=LineAction.ERROR, message=message, hint=hint, psa_response="")

    def written(self, mapping: MappingRef, change: Change, intent: PushIntent, written: WriteResult) -> LineResult:
        self.intent_done(intent)
        action = LineAction.NONE if written.action == "unchanged" else LineAction(written.action)
        return self.result(mapping, change, action=action, after=written.line.quantity,
                           line_id=written.line.line_id or None, psa_response=written.response[:2000],
                           priced=change.line or (written.line if written.line.unit_price is not None
                                                  else change.catalog),
                           verification=None if self.quantity_readable else Verification.NOT_VERIFIABLE)

    def completed(self, mapping: MappingRef, change: Change, intent: PushIntent) -> LineResult:
        """The write sent before an interruption did reach the PSA: report it, once, with the quantity
        the PSA held before that write (the line read now already shows the target)."""
        self.intent_done(intent)
        before = intent.target - intent.delta if intent.delta is not None else None  # None: it created the line
        return self.result(mapping, change, action=LineAction.UPDATED, before=before, after=intent.target,
                           changed_in_psa=False,
                           message="completed: the write sent before an interruption had reached the PSA",
                           verification=Verification.VERIFIED if self.quantity_readable else None)

    # -- companies ---------------------------------------------------------------------------------
    def finish(self, records: list[CompanyRecord], *, job_id: str | None) -> None:
        """Record finished companies in one transaction — each whole, with its status and the run's
        counters. The caller commits."""
        if self.written_intents:  # by key: the objects are expired since their commit, loading them is waste
            ids = [inspect(intent).identity[0] for intent in self.written_intents]
            db.session.execute(update(PushIntent).where(PushIntent.id.in_(ids))
                               .values(state="done", completed_at=utcnow())
                               .execution_options(synchronize_session=False))
        self.written_intents.clear()
        replaced = [i for record in records for i in record.replaced]
        if replaced:
            db.session.execute(delete(LineResult).where(LineResult.id.in_(replaced))
                               .execution_options(synchronize_session=False))
        for record in records:
            db.session.add_all(record.results)
        state.finish_companies(self.run_id, [state.Finished(r.mapping.id, r.outcome, r.reason) for r in records],
                               job_id=job_id)

    # -- proof -------------------------------------------------------------------------------------
    def verify(self, written: dict[MappingRef, list[Written]], lines: dict[str, list[Line]]) -> None:
        """Compare each written line with what the PSA holds now; a mismatch makes its company need
        attention. The caller commits."""
        for mapping, results in written.items():
            verified, mismatched = [], []
            for result_id, agreement_id, psa_product_id, target in results:
                held = [ln.quantity for ln in lines.get(agreement_id, []) if ln.product_id == psa_product_id]
                if len(held) == 1 and held[0] is not None and float(held[0]) == float(target):
                    verified.append({"id": result_id, "verification": Verification.VERIFIED})
                    continue
                shown = ", ".join("?" if q is None else f"{q:g}" for q in held) or "no line"
                message = f"read back after the write: the PSA holds {shown}, SeatSync wrote {target}"
                mismatched.append({"id": result_id, "verification": Verification.MISMATCH, "message": message})
            for rows in (verified, mismatched):  # by primary key, one statement per kind
                if rows:
                    db.session.execute(update(LineResult), rows)
            if mismatched:
                state.reclassify(self.run_id, mapping.id, CompanyStatus.UPDATED, CompanyStatus.NEEDS_ATTENTION,
                                 f"{len(mismatched)} line(s) differ from what was written when read back.")


def last_written(mapping_ids: list[int]) -> dict[int, dict[str, dict[str, float]]]:
    """Per mapping, per agreement, per PSA product: the quantity SeatSync last left on the line."""
    latest = (
        select(func.max(LineResult.id))
        .where(LineResult.company_mapping_id.in_(mapping_ids), LineResult.after.is_not(None),
               LineResult.action.in_((LineAction.NONE, *state.WRITTEN)), LineResult.psa_product_id != "")
        .group_by(LineResult.company_mapping_id, LineResult.agreement_id, LineResult.psa_product_id)
    )
    rows = db.session.execute(
        select(LineResult.company_mapping_id, LineResult.agreement_id, LineResult.psa_product_id, LineResult.after)
        .where(LineResult.id.in_(latest))
    )
    out: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for mapping_id, agreement_id, psa_product_id, after in rows:
        out[mapping_id][agreement_id][psa_product_id] = after
    return out


def approved_lines(run_id: int, mapping_ids: list[int]) -> dict[int, list[LineResult]]:
    """Per company, the lines of this run an admin approved and that are still to be pushed."""
    out: dict[int, list[LineResult]] = defaultdict(list)
    for row in db.session.scalars(select(LineResult).where(
            LineResult.run_id == run_id, LineResult.company_mapping_id.in_(mapping_ids),
            LineResult.action == LineAction.APPROVED)):
        out[row.company_mapping_id].append(row)
    return out


def written_lines(run_id: int, mapping_ids: list[int]) -> dict[int, list[tuple[LineResult, float | None]]]:
    """Per company, the lines a run wrote to the PSA, each with the quantity it held before (0 for a line the
    run created; None when nobody knows: see `left_before`) — what a revert of the run puts back."""
    out: dict[int, list[tuple[LineResult, float | None]]] = defaultdict(list)
    for row in db.session.scalars(select(LineResult).where(
            LineResult.run_id == run_id, LineResult.company_mapping_id.in_(mapping_ids),
            LineResult.action.in_(state.WRITTEN), LineResult.psa_product_id != "").order_by(LineResult.id)):
        before = 0.0 if row.action == LineAction.CREATED else row.before
        out[row.company_mapping_id].append((row, before if before is not None else left_before(row)))
    return out


def left_before(row: LineResult) -> float | None:
    """Where the PSA cannot read a quantity back (Kaseya BMS Units): what SeatSync had left on the line before
    this row's write, if it ever wrote there."""
    return db.session.scalar(select(LineResult.after).where(
        LineResult.company_mapping_id == row.company_mapping_id, LineResult.agreement_id == row.agreement_id,
        LineResult.psa_product_id == row.psa_product_id, LineResult.id < row.id, LineResult.after.is_not(None),
        LineResult.action.in_((LineAction.NONE, *state.WRITTEN))).order_by(LineResult.id.desc()).limit(1))


def kept_lines(run_id: int, mapping_id: int, replaced: list[int]) -> list[LineResult]:
    """This run's earlier rows of a company that an approval pass leaves as they are."""
    return list(db.session.scalars(select(LineResult).where(
        LineResult.run_id == run_id, LineResult.company_mapping_id == mapping_id, LineResult.id.not_in(replaced))))
