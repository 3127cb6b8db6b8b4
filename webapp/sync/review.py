"""Review before push: an admin approves or dismisses a run's planned changes.

An approval never writes here: the approved lines' companies go back to the run's queue and a push
job writes them through the one write path (push.py), with intents, recording and read-back.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from .. import audit
from ..extensions import db
from ..models import LineResult, SyncRun
from . import state
from .state import JobRef, JobRole, LineAction


def review_changes(run: SyncRun, *, approve: bool, line_ids: Sequence[int] | None = None) -> int:
    """Approve or dismiss planned changes (`line_ids`, or all of the run's); returns how many. Commits."""
    query = select(LineResult).where(LineResult.run_id == run.id, LineResult.action == LineAction.PLANNED)
    if line_ids is not None:
        query = query.where(LineResult.id.in_(list(line_ids)))
    lines = db.session.scalars(query).all()
    if not lines:
        return 0
    decision = "approve" if approve else "dismiss"
    state.decide_lines(lines, approve)
    audit.record(f"sync.review.{decision}", f"run {run.id}",
                 f"{decision.title()}d {len(lines)} planned change(s) of sync run {run.id}",
                 after={"lines": [line.id for line in lines]})
    mapping_ids = sorted({line.company_mapping_id for line in lines})
    if not approve:
        state.settle_dismissed(run, mapping_ids)
        db.session.commit()
        state.close_run_if_done(run.id)
        return len(lines)
    push_approved(run, mapping_ids)
    return len(lines)


def push_approved(run: SyncRun, mapping_ids: Sequence[int] | None = None) -> int:
    """Queue the companies with approved lines (`mapping_ids`, or all of the run's) for a push job.
    Those another run holds right now stay approved: the sweeper queues them once they are free.
    Commits; returns how many companies were queued."""
    from .jobs import enqueue_job

    if mapping_ids is None:
        mapping_ids = db.session.scalars(select(LineResult.company_mapping_id).distinct().where(
            LineResult.run_id == run.id, LineResult.action == LineAction.APPROVED)).all()
    job = JobRef.new(run.id, JobRole.PUSH)
    reopened = state.reopen_for_approval(run, mapping_ids, job)
    db.session.commit()
    if reopened:
        enqueue_job(job, reopened)
    return len(reopened)
