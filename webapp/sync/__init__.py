"""The sync engine's public API: start a run, ask why one cannot start.

A run is claimed in the database (company mappings move to `queued` by a conditional UPDATE, so two
"Sync now" clicks or a schedule firing during a manual run never claim one company twice), then
fanned out into RQ jobs (webapp/sync/jobs.py). Progress lives on the rows — SyncRun counters,
CompanyMapping.status — which the UI polls; RQ internals are never read by pages.
"""

from __future__ import annotations

from ..extensions import db
from ..models import CompanyMapping, Integration, ProductMapping, SyncRun
from ..models.users import User

BUSY = ("queued", "syncing")
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
    from .jobs import enqueue_run

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

    run = SyncRun(
        integration_id=integration.id,
        company_mapping_id=company_mapping.id if company_mapping is not None else None,
        trigger=trigger,
        requested_by_id=user.id if user is not None else None,
        state="queued",
        dry_run=bool(integration.option("review_before_push")),
    )
    db.session.add(run)
    db.session.flush()
    # The claim: one conditional UPDATE, so a concurrent start (another click, the schedule, another
    # web process) that committed first makes these rows not match, and they are not claimed twice.
    claimed = db.session.execute(
        db.update(CompanyMapping)
        .where(CompanyMapping.id.in_(candidates.scalar_subquery()), CompanyMapping.status.not_in(BUSY))
        .values(status="queued", status_reason="", job_id=f"sync-{run.id}")
        .returning(CompanyMapping.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    if not claimed:
        db.session.rollback()
        if company_mapping is not None:
            raise SyncUnavailable("This company is already syncing; its status updates when the push ends.")
        raise SyncUnavailable("A sync is already running for every mapped company; wait for it to finish.")
    run.total = len(claimed)
    db.session.commit()
    enqueue_run(run)
    return run


__all__ = ["SyncUnavailable", "start_sync", "unavailable_reason", "syncable_mappings_query", "BUSY"]

# Registers the cron-tick handlers (schedules, the stale-run sweeper) wherever the engine is loaded.
from . import jobs as _jobs  # noqa: E402,F401
from . import schedule as _schedule  # noqa: E402,F401
