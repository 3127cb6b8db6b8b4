"""The sync engine's public API: start a run, ask why one cannot start, review a run's changes.

A run is claimed in the database (company mappings move to `queued` by a conditional UPDATE, so two
"Sync now" clicks or a schedule firing during a manual run never claim one company twice), then
fanned out into RQ jobs (jobs.py). Progress lives on the rows — SyncRun counters,
CompanyMapping.status — which the UI polls; RQ internals are never read by pages.

The package by concern: state.py (states, words, every transition), leases.py, plan.py (pure),
push.py (the one write path), record.py (results, intents, proof), jobs.py (RQ entry points and the
sweeper), review.py (approve / dismiss), schedule.py (cron tick). Blueprints import from here only.
"""

from __future__ import annotations

from ..extensions import db
from ..models import CompanyMapping, Integration, ProductMapping, SyncRun
from ..models.users import User
from . import state
from .state import (
    ACTIVE_RUN,
    BUSY,
    NEEDING_ATTENTION,
    CompanyStatus,
    LineAction,
    RunState,
    Verification,
    mapping_edited,
    shown_status,
)

TRIGGERS = ("schedule", "sync_now", "row", "cli", "api")


class SyncUnavailable(Exception):
    """A sync cannot start; the message is a sentence for the person who asked."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def unavailable_reason(integration: Integration) -> str | None:
    """Why "Sync now" is unavailable for this integration, or None when it is available."""
    if not integration.enabled:
        return "The integration is disabled: enable it to sync (nothing is sent to the PSA while it is off)."
    if not integration.has_credentials:
        return "Save and authenticate the PSA credentials before syncing."
    if integration.credentials_status == "failing":
        detail = f" ({integration.credentials_message})" if integration.credentials_message else ""
        return f"The PSA rejected the saved credentials{detail}: re-enter them and click Authenticate."
    has_products = db.session.scalar(
        db.select(db.func.count(ProductMapping.id)).filter_by(integration_id=integration.id)
    )
    if not has_products:
        return "Map at least one product before syncing."
    return None


def syncable_mappings_query(integration: Integration):
    """Company mappings a full sync pushes: mapped to a PSA company and agreement, not excluded."""
    return db.select(CompanyMapping.id).where(
        CompanyMapping.integration_id == integration.id,
        CompanyMapping.excluded.is_(False),
        CompanyMapping.psa_company_id.is_not(None),
        CompanyMapping.agreement_id.is_not(None),
        CompanyMapping.agreement_id != "",
    )


def start_sync(
    integration: Integration,
    *,
    trigger: str,
    user: User | None = None,
    company_mapping: CompanyMapping | None = None,
) -> SyncRun:
    """Create a run (state "queued"), mark its companies "queued", commit, and enqueue its job.

    Raises SyncUnavailable when the integration cannot sync or every company is already being synced.
    """
    from .jobs import enqueue_job

    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}")
    reason = unavailable_reason(integration)
    if reason:
        raise SyncUnavailable(reason)
    candidates = syncable_mappings_query(integration)
    if company_mapping is not None:
        if company_mapping.integration_id != integration.id:
            raise ValueError("the company mapping belongs to another integration")
        if company_mapping.excluded:
            raise SyncUnavailable("This company is excluded from syncing: include it again to sync it.")
        if not company_mapping.is_mapped:
            raise SyncUnavailable("Pick the PSA company and its agreement before syncing this company.")
        candidates = candidates.where(CompanyMapping.id == company_mapping.id)
    if not db.session.execute(candidates.limit(1)).first():
        raise SyncUnavailable("No company is mapped yet: map at least one company to a PSA company and agreement.")

    run = state.new_run(
        integration_id=integration.id,
        company_mapping_id=company_mapping.id if company_mapping is not None else None,
        trigger=trigger,
        requested_by_id=user.id if user is not None else None,
        dry_run=bool(integration.option("review_before_push")),
    )
    claimed = state.claim_companies(run, candidates)
    if not claimed:
        db.session.rollback()
        if company_mapping is not None:
            raise SyncUnavailable("This company is already syncing; its status updates when the push ends.")
        raise SyncUnavailable("A sync is already running for every mapped company; wait for it to finish.")
    run.total = len(claimed)
    db.session.commit()
    enqueue_job(state.plan_ref(run))
    return run


from .money import run_money  # noqa: E402
from .plan import QuantityRule  # noqa: E402
from .review import review_changes  # noqa: E402
from .state import WRITTEN, verification_summary  # noqa: E402

__all__ = ["SyncUnavailable", "start_sync", "unavailable_reason", "syncable_mappings_query", "review_changes",
           "verification_summary", "run_money", "QuantityRule", "WRITTEN",
           "BUSY", "ACTIVE_RUN", "NEEDING_ATTENTION", "CompanyStatus", "LineAction", "RunState", "Verification",
           "mapping_edited", "shown_status"]

# Registers the cron-tick handlers (schedules, the stale-run sweeper) wherever the engine is loaded.
from . import jobs as _jobs  # noqa: E402,F401
from . import schedule as _schedule  # noqa: E402,F401
