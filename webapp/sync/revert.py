"""Revert a run, or one company of a run (PRODUCT.md §4b).

A revert is a run of its own (trigger "revert", `reverts_run_id` naming the run it puts back) that the
ordinary jobs push through the one write path (push.py): each line the reverted run wrote gets the
quantity it held before that run, a line it created goes to zero (never deleted), with intents
(Autotask: a compensating adjustment reconciled against ContractServiceUnits), recording and read-back
like any run. A line that holds something else now than the reverted run left there is not written
(`changed_since`) unless the admin confirmed writing over such lines (`overwrite_changed`).

Reverting a revert re-applies the run it reverted; reverting twice writes nothing the second time
(every line already holds its target).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from .. import audit
from ..extensions import db
from ..models import Company, CompanyMapping, Integration, LineResult, SyncRun
from ..models.users import User
from . import SyncUnavailable, state, unavailable_reason
from .state import ACTIVE_RUN, WRITTEN, LineAction


def revertible_mapping_ids(run: SyncRun, mapping_ids: Sequence[int] | None = None) -> list[int]:
    """The companies of a run that have lines written to the PSA (within `mapping_ids` when given)."""
    query = select(LineResult.company_mapping_id).distinct().where(
        LineResult.run_id == run.id, LineResult.action.in_(WRITTEN), LineResult.psa_product_id != "")
    if mapping_ids is not None:
        query = query.where(LineResult.company_mapping_id.in_(list(mapping_ids)))
    return sorted(db.session.scalars(query))


def changed_since_lines(run: SyncRun) -> list[tuple[LineResult, str]]:
    """The lines a revert run did not write because they changed in the PSA since the reverted run, with the
    name of their company."""
    return list(db.session.execute(
        select(LineResult, Company.name)
        .join(CompanyMapping, CompanyMapping.id == LineResult.company_mapping_id)
        .join(Company, Company.id == CompanyMapping.company_id)
        .where(LineResult.run_id == run.id, LineResult.action == LineAction.CHANGED_SINCE)
        .order_by(Company.name, LineResult.id)).tuples())


def start_revert(run: SyncRun, *, user: User | None, mapping_ids: Sequence[int] | None = None,
                 overwrite_changed: bool = False) -> SyncRun:
    """Queue a run that reverts `run` (its companies in `mapping_ids`, or all of them); commits and enqueues.

    Raises SyncUnavailable with a sentence for the admin when it cannot start."""
    from .jobs import enqueue_job

    integration = db.session.get(Integration, run.integration_id)
    if run.state in ACTIVE_RUN:
        raise SyncUnavailable(f"Run {run.id} is still running: revert it once it has finished.")
    ids = revertible_mapping_ids(run, mapping_ids)
    if not ids:
        what = "this company" if mapping_ids is not None else "the PSA"
        raise SyncUnavailable(f"Run {run.id} wrote nothing to {what}: there is nothing to revert.")
    reason = unavailable_reason(integration)
    if reason:
        raise SyncUnavailable(reason)
    revert = state.new_run(
        integration_id=integration.id, company_mapping_id=ids[0] if mapping_ids is not None and len(ids) == 1
        else None, trigger="revert", requested_by_id=user.id if user is not None else None,
        month=run.month, reverts_run_id=run.id, overwrite_changed=overwrite_changed)
    claimed = state.claim_companies(revert, select(CompanyMapping.id).where(CompanyMapping.id.in_(ids)))
    if not claimed:
        db.session.rollback()
        raise SyncUnavailable("A sync is pushing these companies right now: revert once it has finished.")
    revert.total = len(claimed)
    scope = "every company" if mapping_ids is None else f"{len(claimed)} company(ies)"
    audit.record("sync.revert", f"run {run.id}",
                 f"Revert of sync run {run.id} ({scope}) queued as run {revert.id}"
                 + (", writing over lines changed in the PSA since" if overwrite_changed else ""),
                 after={"revert_run": revert.id, "companies": claimed, "overwrite_changed": overwrite_changed})
    db.session.commit()
    enqueue_job(state.plan_ref(revert))
    return revert
