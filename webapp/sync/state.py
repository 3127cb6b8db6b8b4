"""The sync engine's states and every transition between them — the only writer of those columns.

Three enumerations name what a run, a company mapping and a line can be. They are `StrEnum`s whose
values are what the database stores, so a row read back compares equal to its member. Every change
of `SyncRun.state` and its counters, and of `CompanyMapping.status`/`status_reason`/`job_id`/
`sync_run_id`/`last_sync_at`, happens through a function of this module; pages and jobs call these
functions and never write the columns themselves (a test checks that no status literal appears
elsewhere).

`JobRef` is the reference to an RQ job that owns companies: a value with its run and role, so nothing
ever parses a job id string to learn what the job was.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import case, exists, func, select, update

from ..extensions import db
from ..models import CompanyMapping, LineResult, SyncRun
from ..models._types import utcnow

log = logging.getLogger(__name__)


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_REVIEW = "awaiting_review"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CompanyStatus(StrEnum):
    NEVER_SYNCED = "never synced"
    QUEUED = "queued"
    SYNCING = "syncing"
    IN_SYNC = "in sync"
    UPDATED = "updated"
    NEEDS_ATTENTION = "needs attention"
    ERROR = "error"
    EXCLUDED = "excluded"
    DISABLED = "disabled"


class LineAction(StrEnum):
    NONE = "none"
    UPDATED = "updated"
    CREATED = "created"
    REPLACED = "replaced"  # ConnectWise keep-history: cancelled and re-added
    ADJUSTED = "adjusted"  # Autotask: a delta posted
    NEEDS_ATTENTION = "needs_attention"
    ERROR = "error"
    PLANNED = "planned"  # review before push: waits for an admin
    APPROVED = "approved"  # approved, its push still to come
    DISMISSED = "dismissed"
    CHANGED_SINCE = "changed_since"  # a revert: the line changed in the PSA since the reverted run, not written


class Verification(StrEnum):
    """What reading the line back after the write showed."""

    VERIFIED = "verified"
    MISMATCH = "mismatch"
    NOT_VERIFIABLE = "not_verifiable"


BUSY = (CompanyStatus.QUEUED, CompanyStatus.SYNCING)
NEEDING_ATTENTION = (CompanyStatus.NEEDS_ATTENTION, CompanyStatus.ERROR)
ACTIVE_RUN = (RunState.QUEUED, RunState.RUNNING)
OPEN_RUN = (RunState.QUEUED, RunState.RUNNING, RunState.AWAITING_REVIEW)
WRITTEN = (LineAction.UPDATED, LineAction.CREATED, LineAction.REPLACED, LineAction.ADJUSTED)
UNDECIDED = (LineAction.PLANNED, LineAction.APPROVED)
# The run counter each company outcome adds to.
OUTCOME_COLUMN = {
    CompanyStatus.IN_SYNC: "in_sync",
    CompanyStatus.UPDATED: "updated",
    CompanyStatus.NEEDS_ATTENTION: "needs_attention",
    CompanyStatus.ERROR: "errors",
    CompanyStatus.DISABLED: "needs_attention",  # not pushed: the integration was switched off meanwhile
}

# --------------------------------------------------------------------------------------------------
# Words a billing admin reads (one place, used by every page through the `status` filter) and the tone
# (colour) of each. Values shared by two vocabularies (a run and a company are both "queued") mean the
# same to the admin, so one flat table serves all four.
# --------------------------------------------------------------------------------------------------
WORDS = {
    RunState.AWAITING_REVIEW: "waiting for approval",
    RunState.FAILED: "stopped",
    LineAction.NONE: "no change",
    LineAction.CREATED: "line created",
    LineAction.REPLACED: "replaced (history kept)",
    LineAction.NEEDS_ATTENTION: "needs attention",
    LineAction.PLANNED: "waiting for approval",
    LineAction.APPROVED: "approved, pushing",
    LineAction.CHANGED_SINCE: "changed since, not reverted",
    Verification.MISMATCH: "PSA differs",
    Verification.NOT_VERIFIABLE: "not verifiable",
}
TONES = {
    **dict.fromkeys((CompanyStatus.IN_SYNC, CompanyStatus.UPDATED, RunState.FINISHED, *WRITTEN, LineAction.NONE,
                     Verification.VERIFIED), "ok"),
    **dict.fromkeys((CompanyStatus.QUEUED, CompanyStatus.SYNCING, RunState.RUNNING, LineAction.APPROVED), "live"),
    **dict.fromkeys((CompanyStatus.NEEDS_ATTENTION, RunState.AWAITING_REVIEW, LineAction.NEEDS_ATTENTION,
                     LineAction.PLANNED, LineAction.CHANGED_SINCE), "attention"),
    **dict.fromkeys((CompanyStatus.ERROR, RunState.FAILED, Verification.MISMATCH), "error"),
    **dict.fromkeys((CompanyStatus.EXCLUDED, CompanyStatus.DISABLED, CompanyStatus.NEVER_SYNCED, RunState.CANCELLED,
                     LineAction.DISMISSED, Verification.NOT_VERIFIABLE), "muted"),
}
ENGINE_VALUES = frozenset(str(v) for v in (*RunState, *CompanyStatus, *LineAction, *Verification))


def is_engine_value(value) -> bool:
    return str(value or "") in ENGINE_VALUES


def word(value) -> str:
    """The admin's words for a run state, company status, line action or verification."""
    return WORDS.get(value, str(value or "").replace("_", " "))


def tone(value) -> str:
    return TONES.get(value, "muted")


# --------------------------------------------------------------------------------------------------
# Job references
# --------------------------------------------------------------------------------------------------
class JobRole(StrEnum):
    PLAN = "plan"  # splits a run's companies into push jobs
    PUSH = "push"  # pushes a batch of companies


@dataclass(frozen=True)
class JobRef:
    """An RQ job of a run: its id (stored on the rows it owns) and what it does."""

    run_id: int
    role: JobRole
    id: str

    @classmethod
    def new(cls, run_id: int, role: JobRole) -> JobRef:
        return cls(run_id, role, f"sync-{run_id}-{role}-{uuid.uuid4().hex[:12]}")

    @classmethod
    def of_owner(cls, run: SyncRun, job_id: str) -> JobRef:
        """The reference of a job owning a run's companies: the run's own job plans, any other pushes."""
        return cls(run.id, JobRole.PLAN if job_id == run.job_id else JobRole.PUSH, job_id)


# --------------------------------------------------------------------------------------------------
# Run transitions
# --------------------------------------------------------------------------------------------------
def new_run(**values) -> SyncRun:
    """A queued run with its planning job named (SyncRun.job_id), flushed to get its id."""
    run = SyncRun(state=RunState.QUEUED, **values)
    db.session.add(run)
    db.session.flush()
    run.job_id = JobRef.new(run.id, JobRole.PLAN).id
    return run


def plan_ref(run: SyncRun) -> JobRef:
    return JobRef(run.id, JobRole.PLAN, run.job_id)


def replan(run: SyncRun, job: JobRef) -> None:
    """The planning job died: another plans the run."""
    run.job_id = job.id


def run_started(run: SyncRun, month) -> None:
    if run.month is None:
        run.month = month
    run.state = RunState.RUNNING
    run.started_at = run.started_at or utcnow()


def run_is_open(run: SyncRun | None) -> bool:
    return run is not None and run.state in OPEN_RUN


# Called once per run that closed (finished or stopped), after the commit: the alerts register here,
# so the engine records and never imports what reads its records.
RUN_CLOSED_HANDLERS: list = []


def on_run_closed(func):
    RUN_CLOSED_HANDLERS.append(func)
    return func


def close_run_if_done(run_id: int) -> None:
    """Close the run once every company is done: awaiting review while changes wait for an admin,
    stopped when a job stopped it (its message says why), else finished. Commits; then, for the one
    caller whose UPDATE closed the run as finished or stopped, calls the RUN_CLOSED_HANDLERS."""
    waiting = exists().where(LineResult.run_id == run_id, LineResult.action.in_(UNDECIDED))
    stopped = SyncRun.stop_reason != ""
    closed = db.session.execute(
        update(SyncRun)
        .where(SyncRun.id == run_id, SyncRun.done >= SyncRun.total, SyncRun.state.in_(OPEN_RUN))
        .values(state=case((stopped, RunState.FAILED), (waiting, RunState.AWAITING_REVIEW),
                           else_=RunState.FINISHED),
                message=case((stopped, SyncRun.stop_reason), else_=SyncRun.message),
                finished_at=case((waiting & ~stopped, None), else_=utcnow()))
        .returning(SyncRun.state)
        .execution_options(synchronize_session=False)
    ).scalar()
    db.session.commit()
    if closed in (RunState.FINISHED, RunState.FAILED):  # the one caller whose UPDATE closed the run
        for handler in RUN_CLOSED_HANDLERS:
            try:
                handler(run_id)
            except Exception:  # an alert must never fail the sync that raised it
                db.session.rollback()
                log.exception("run-closed handler %s failed for run %s", handler.__name__, run_id)



def stop_run(run_id: int, reason: str) -> None:
    """Ask every job of the run to stop at its next company (they read `stop_reason`); commits.

    Only the run row is written: each job releases the companies it holds itself, so no job ever
    updates rows another job holds (which deadlocked before)."""
    db.session.execute(update(SyncRun).where(SyncRun.id == run_id, SyncRun.stop_reason == "")
                       .values(stop_reason=reason).execution_options(synchronize_session=False))
    db.session.commit()


def stop_reason(run_id: int) -> str:
    return db.session.scalar(select(SyncRun.stop_reason).where(SyncRun.id == run_id)) or ""


def _count(run_id: int, outcomes: Counter, sign: int = 1) -> None:
    """Add (or take back) finished companies to the run's counters, in SQL so workers never lose one."""
    values = {"done": SyncRun.done + sign * sum(outcomes.values())}
    for outcome, n in outcomes.items():
        column = OUTCOME_COLUMN.get(outcome)
        if column and n:
            values[column] = getattr(SyncRun, column) + sign * n
    db.session.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values)
                       .execution_options(synchronize_session=False))


# --------------------------------------------------------------------------------------------------
# Company transitions
# --------------------------------------------------------------------------------------------------
def claim_companies(run: SyncRun, candidates) -> list[int]:
    """Mark the candidate mappings queued for this run, unless another run holds them (one conditional
    UPDATE, so a concurrent start that committed first makes them not match)."""
    return list(db.session.execute(
        update(CompanyMapping)
        .where(CompanyMapping.id.in_(candidates.scalar_subquery()), CompanyMapping.status.not_in(BUSY))
        .values(status=CompanyStatus.QUEUED, status_reason="", job_id=run.job_id, sync_run_id=run.id)
        .returning(CompanyMapping.id)
        .execution_options(synchronize_session=False)
    ).scalars())


def hand_over(ids: Sequence[int], job: JobRef, *, from_job: str | None = None) -> None:
    """Give companies to another job of the same run (a batch, a takeover after a dead worker, a retry
    later), queued again; with `from_job`, only those that job still owns."""
    query = update(CompanyMapping).where(CompanyMapping.id.in_(list(ids)))
    if from_job is not None:
        query = query.where(CompanyMapping.job_id == from_job)
    db.session.execute(query.values(job_id=job.id, status=CompanyStatus.QUEUED)
                       .execution_options(synchronize_session=False))


def owned_by(job_id: str, ids: Sequence[int] | None = None):
    """A query of the companies a job still owns (busy, not handed to another job meanwhile), by id."""
    query = select(CompanyMapping.id).where(CompanyMapping.job_id == job_id, CompanyMapping.status.in_(BUSY))
    if ids is not None:
        query = query.where(CompanyMapping.id.in_(list(ids)))
    return query.order_by(CompanyMapping.id)


def start_pushing(ids: Sequence[int], run: SyncRun) -> None:
    db.session.execute(update(CompanyMapping).where(CompanyMapping.id.in_(list(ids)))
                       .values(status=CompanyStatus.SYNCING).execution_options(synchronize_session=False))
    if run.state == RunState.QUEUED:
        run_started(run, run.month)


def busy_of_run(run_id: int):
    """(mapping id, owning job id) of the companies a run still holds."""
    return db.session.execute(select(CompanyMapping.id, CompanyMapping.job_id).where(
        CompanyMapping.sync_run_id == run_id, CompanyMapping.status.in_(BUSY))).all()


@dataclass(frozen=True)
class Finished:
    """A company done in a run: its outcome and the reason shown beside it."""

    mapping_id: int
    outcome: CompanyStatus
    reason: str = ""
    synced: bool = True  # False: nothing was attempted (disabled), Last Sync stays as it was


def finish_companies(run_id: int, done: Iterable[Finished], *, job_id: str | None = None) -> int:
    """Record companies as done in the run: status, reason, Last Sync, released from their job, and the
    run's counters, in the caller's transaction. With `job_id`, only companies that job still owns
    (a company handed to another job meanwhile is that job's to finish). Returns how many were finished."""
    done = {item.mapping_id: item for item in done}
    if not done:
        return 0
    # Locked in id order, the one order every job uses: no lock-order deadlock between jobs.
    owned = select(CompanyMapping.id).where(CompanyMapping.id.in_(list(done)), CompanyMapping.sync_run_id == run_id)
    if job_id is not None:
        owned = owned.where(CompanyMapping.job_id == job_id)
    ids = list(db.session.scalars(owned.order_by(CompanyMapping.id).with_for_update()))
    now = utcnow()
    rows = [{"id": i, "status": done[i].outcome, "status_reason": done[i].reason[:2000], "job_id": None,
             "sync_run_id": None, **({"last_sync_at": now} if done[i].synced else {})} for i in ids]
    for same_columns in (True, False):  # by primary key, one statement per set of columns
        group = [r for r in rows if ("last_sync_at" in r) == same_columns]
        if group:
            db.session.execute(update(CompanyMapping), group)
    _count(run_id, Counter(done[i].outcome for i in ids))
    return len(ids)


def reopen_for_approval(run: SyncRun, mapping_ids: Sequence[int], job: JobRef) -> list[int]:
    """Approved changes of a reviewed run: their companies go back to queued for the push job, and
    the run takes back their earlier outcome from its counters. Companies another run holds now wait
    (the caller re-enqueues later). Returns the reopened ids."""
    reopened = list(db.session.execute(
        update(CompanyMapping)
        .where(CompanyMapping.id.in_(list(mapping_ids)), CompanyMapping.status.not_in(BUSY))
        .values(status=CompanyStatus.QUEUED, job_id=job.id, sync_run_id=run.id)
        .returning(CompanyMapping.id).execution_options(synchronize_session=False)
    ).scalars())
    if reopened:
        earlier = Counter(outcome_of_run_lines(run.id, mapping_id) for mapping_id in reopened)
        _count(run.id, earlier, sign=-1)
        run.state = RunState.RUNNING
        run.finished_at = None
    return reopened


def reclassify(run_id: int, mapping_id: int, old: CompanyStatus, new: CompanyStatus, reason: str) -> None:
    """A finished company's outcome changed after the fact (its lines read back differently): the run's
    counters move, and its status too unless another run holds it by now. The caller commits."""
    db.session.execute(update(CompanyMapping).where(CompanyMapping.id == mapping_id, CompanyMapping.status == old)
                       .values(status=new, status_reason=reason).execution_options(synchronize_session=False))
    old_column, new_column = OUTCOME_COLUMN[old], OUTCOME_COLUMN[new]
    db.session.execute(update(SyncRun).where(SyncRun.id == run_id).values(
        {old_column: getattr(SyncRun, old_column) - 1, new_column: getattr(SyncRun, new_column) + 1})
        .execution_options(synchronize_session=False))


def outcome_of_run_lines(run_id: int, mapping_id: int) -> CompanyStatus:
    actions = db.session.scalars(select(LineResult.action).where(
        LineResult.run_id == run_id, LineResult.company_mapping_id == mapping_id))
    return company_outcome(actions)


def decide_lines(lines: Iterable[LineResult], approve: bool) -> None:
    for line in lines:
        line.action = LineAction.APPROVED if approve else LineAction.DISMISSED


def settle_dismissed(run: SyncRun, mapping_ids: Iterable[int]) -> None:
    """After a dismissal: a company whose changes are all decided gets its final status in this run."""
    for mapping_id in mapping_ids:
        results = db.session.scalars(select(LineResult).where(
            LineResult.run_id == run.id, LineResult.company_mapping_id == mapping_id)).all()
        if any(r.action in UNDECIDED for r in results):
            continue
        outcome = company_outcome(r.action for r in results)
        db.session.execute(update(CompanyMapping).where(CompanyMapping.id == mapping_id,
                                                        CompanyMapping.status.not_in(BUSY))
                           .values(status=outcome, status_reason=status_reason(results, outcome))
                           .execution_options(synchronize_session=False))


def mapping_edited(mapping: CompanyMapping) -> None:
    """A mapping's company or agreement changed: its status starts over unless a push holds it."""
    if mapping.status not in BUSY:
        if mapping.last_sync_at is None:
            mapping.status = CompanyStatus.NEVER_SYNCED
        mapping.status_reason = ""


def shown_status(mapping: CompanyMapping | None, integration_enabled: bool = True) -> CompanyStatus:
    """The status a page shows for a company (its mapping may not exist yet): excluded wins, then a
    disabled integration (its rows must not look live), then the last outcome."""
    if mapping is not None and mapping.excluded:
        return CompanyStatus.EXCLUDED
    if not integration_enabled and (mapping is None or mapping.status not in BUSY):
        return CompanyStatus.DISABLED
    return CompanyStatus(mapping.status if mapping is not None and mapping.status else CompanyStatus.NEVER_SYNCED)


# --------------------------------------------------------------------------------------------------
# A company's outcome from its lines
# --------------------------------------------------------------------------------------------------
def company_outcome(actions: Iterable[str], verifications: Iterable[str | None] = ()) -> CompanyStatus:
    """A company mapping's status from its line actions (worst first)."""
    actions = set(actions)
    if LineAction.ERROR in actions:
        return CompanyStatus.ERROR
    if actions & {LineAction.NEEDS_ATTENTION, LineAction.PLANNED, LineAction.APPROVED, LineAction.DISMISSED,
                  LineAction.CHANGED_SINCE} \
            or Verification.MISMATCH in set(verifications):
        return CompanyStatus.NEEDS_ATTENTION
    if actions & set(WRITTEN):
        return CompanyStatus.UPDATED
    return CompanyStatus.IN_SYNC


def status_reason(results: Sequence[LineResult], outcome: CompanyStatus) -> str:
    """The sentence beside a company's status: what happened, partial outcomes said explicitly."""
    written = sum(1 for r in results if r.action in WRITTEN)
    if outcome == CompanyStatus.ERROR:
        first = next(r for r in results if r.action == LineAction.ERROR)
        return " — ".join(p for p in (first.message, first.hint) if p)
    if outcome != CompanyStatus.NEEDS_ATTENTION:
        return f"{written} line(s) updated." if written else ""
    parts = [f"updated {written} line(s)"] if written else []
    planned = sum(1 for r in results if r.action in UNDECIDED)
    if planned:
        parts.append(f"{planned} change(s) await approval on the sync run page")
    unmapped = sum(1 for r in results if r.action == LineAction.NEEDS_ATTENTION and not r.psa_product_id)
    if unmapped:
        parts.append(f"{unmapped} product(s) not mapped")
    other = [r.message for r in results if r.action == LineAction.NEEDS_ATTENTION and r.psa_product_id]
    mismatched = [r.message for r in results if r.verification == Verification.MISMATCH]
    parts += other[:1] + mismatched[:1]
    changed = sum(1 for r in results if r.action == LineAction.CHANGED_SINCE)
    if changed:
        parts.append(f"{changed} line(s) changed in the PSA since the reverted run: not reverted")
    dismissed = sum(1 for r in results if r.action == LineAction.DISMISSED)
    if dismissed:
        parts.append(f"{dismissed} change(s) dismissed on review; the PSA still differs")
    return " · ".join(parts) + "."


def verification_summary(run_id: int) -> dict[str, int]:
    """Written lines of a run and what reading them back showed, for "verified N of M"."""
    rows = db.session.execute(select(LineResult.verification, func.count(LineResult.id)).where(
        LineResult.run_id == run_id, LineResult.action.in_(WRITTEN)).group_by(LineResult.verification)).all()
    by = {value: n for value, n in rows}
    return {"written": sum(by.values()), "verified": by.get(Verification.VERIFIED, 0),
            "mismatch": by.get(Verification.MISMATCH, 0), "not_verifiable": by.get(Verification.NOT_VERIFIABLE, 0)}
