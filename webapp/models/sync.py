"""Sync runs, the per-line results they record, and Autotask push intents (exactly-once deltas)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import UtcDateTime, utcnow

TRIGGERS = ("schedule", "sync_now", "row", "cli", "api", "revert")


class SyncRun(db.Model):
    """One execution of pushes, for a whole integration or one company mapping.

    Like microblog's Task rows: the RQ job id is stored here and the UI reads this row, never RQ.
    """

    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    company_mapping_id: Mapped[int | None] = mapped_column(ForeignKey("company_mappings.id", ondelete="SET NULL"))
    trigger: Mapped[str] = mapped_column(String(20))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(20))  # webapp/sync/state.py RunState
    month: Mapped[dt.date | None] = mapped_column(Date)  # the month whose counts are pushed
    dry_run: Mapped[bool] = mapped_column(default=False)  # review before push: plan only
    total: Mapped[int] = mapped_column(default=0)  # companies in the run
    done: Mapped[int] = mapped_column(default=0)
    in_sync: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)
    needs_attention: Mapped[int] = mapped_column(default=0)
    errors: Mapped[int] = mapped_column(default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    # Set by the job that must stop the run (rejected credentials); every job reads it at its next company.
    stop_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    job_id: Mapped[str | None] = mapped_column(String(64))  # the planning job (webapp/sync/state.py JobRef)
    # A revert run (trigger "revert"): the run whose written lines it puts back (webapp/sync/revert.py),
    # and whether the admin confirmed writing over lines changed in the PSA since that run.
    reverts_run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="SET NULL"))
    overwrite_changed: Mapped[bool] = mapped_column(default=False, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    integration = relationship("Integration")
    requested_by = relationship("User")
    reverts = relationship("SyncRun", remote_side=[id])

    __table_args__ = (Index("ix_sync_runs_integration_created", "integration_id", "created_at"),)


class LineResult(db.Model):
    """What a run did (or plans to do) for one product on one agreement."""

    __tablename__ = "line_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"))
    company_mapping_id: Mapped[int] = mapped_column(ForeignKey("company_mappings.id", ondelete="CASCADE"))
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    psa_product_id: Mapped[str] = mapped_column(String(64), default="")
    agreement_id: Mapped[str] = mapped_column(String(64), default="")
    line_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[float | None] = mapped_column(Float)
    target: Mapped[int | None]
    after: Mapped[float | None] = mapped_column(Float)
    # none | updated | created | replaced | adjusted | needs_attention | error | planned | approved | dismissed
    action: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    http_status: Mapped[int | None]
    hint: Mapped[str] = mapped_column(Text, default="")
    psa_response: Mapped[str] = mapped_column(Text, default="")
    changed_in_psa: Mapped[bool] = mapped_column(default=False)  # someone edited the line by hand
    # After a write the line is read back: verified | mismatch | not_verifiable (webapp/sync/state.py).
    verification: Mapped[str | None] = mapped_column(String(20))
    # The quantity rules applied: the summed seat count and the rule in words ("3 included").
    count: Mapped[int | None]
    rule: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # Money per unit per billing period as the PSA gives it, and the monthly change this line makes.
    unit_price: Mapped[float | None] = mapped_column(Float)
    unit_cost: Mapped[float | None] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(10), default="", server_default="")
    price_change: Mapped[float | None] = mapped_column(Float)
    margin_change: Mapped[float | None] = mapped_column(Float)
    effective_from: Mapped[dt.date | None] = mapped_column(Date)  # a decrease deferred to the next period
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)

    run = relationship("SyncRun")
    product = relationship("Product")

    __table_args__ = (
        Index("ix_line_results_mapping_created", "company_mapping_id", "created_at"),
        Index("ix_line_results_run", "run_id"),
    )


class PushIntent(db.Model):
    """A write recorded before it is sent, so a retry or a crash never double-counts a delta.

    One row per (integration, agreement, PSA product, billed month). A pending intent is completed
    by re-reading the PSA and writing only what is still missing.
    """

    __tablename__ = "push_intents"

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    agreement_id: Mapped[str] = mapped_column(String(64))
    psa_product_id: Mapped[str] = mapped_column(String(64))
    period: Mapped[dt.date] = mapped_column(Date)
    target: Mapped[int]
    delta: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending | done
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        UniqueConstraint("integration_id", "agreement_id", "psa_product_id", "period", name="uq_push_intents_line"),
    )
