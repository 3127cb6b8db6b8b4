"""Integrations (one per PSA kind) and their product and company mappings."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, Time, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import UtcDateTime, utcnow

DEFAULT_OPTIONS: dict[str, Any] = {
    "push_month": "last_closed_month",  # or "month_to_date"
    "create_missing_lines": True,
    "keep_history": False,  # ConnectWise: cancel + re-add instead of editing in place
    "review_before_push": False,
    "decreases_need_approval": False,
    # Alert "quantity swing" when a written quantity moves by at least this many percent or units (0: off).
    "alert_swing_percent": 30,
    "alert_swing_units": 0,
    "decreases_from": "now",  # or "next_period": decreases bill from the next billing period
}

class Integration(db.Model):
    __tablename__ = "integrations"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), unique=True)  # connectwise | autotask | kaseya_bms | halopsa
    enabled: Mapped[bool] = mapped_column(default=False)
    # Fernet token of the JSON credentials (webapp/crypto.py); never rendered, never logged.
    credentials_encrypted: Mapped[str | None] = mapped_column(Text)
    credentials_status: Mapped[str] = mapped_column(String(20), default="unverified")  # ok | failing
    credentials_message: Mapped[str] = mapped_column(Text, default="")
    credentials_checked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    options: Mapped[dict] = mapped_column(JSON, default=lambda: dict(DEFAULT_OPTIONS))
    scope: Mapped[dict] = mapped_column(JSON, default=dict)  # {"type_ids": [...], "status_ids": [...]}
    schedule_kind: Mapped[str] = mapped_column(String(10), default="off")  # off | daily | weekly
    schedule_time: Mapped[dt.time] = mapped_column(Time, default=lambda: dt.time(2, 0))
    schedule_weekday: Mapped[int] = mapped_column(default=0)  # 0 = Monday
    last_scheduled_slot: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)  # dedupes cron ticks
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    product_mappings: Mapped[list[ProductMapping]] = relationship(back_populates="integration")

    def option(self, name: str) -> Any:
        return (self.options or {}).get(name, DEFAULT_OPTIONS[name])

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_encrypted)


class ProductMapping(db.Model):
    __tablename__ = "product_mappings"

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    psa_product_id: Mapped[str] = mapped_column(String(64))
    psa_product_name: Mapped[str] = mapped_column(String(255), default="")
    # Quantity rules (webapp/sync/plan.py QuantityRule): pushed = clamp(count − included + extra, minimum, maximum).
    included: Mapped[int] = mapped_column(default=0, server_default="0")
    minimum: Mapped[int] = mapped_column(default=0, server_default="0")
    maximum: Mapped[int | None]
    extra: Mapped[int] = mapped_column(default=0, server_default="0")

    integration: Mapped[Integration] = relationship(back_populates="product_mappings")

    __table_args__ = (UniqueConstraint("integration_id", "product_id", name="uq_product_mappings_ip"),)


class CompanyMapping(db.Model):
    __tablename__ = "company_mappings"

    id: Mapped[int] = mapped_column(primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("integrations.id", ondelete="CASCADE"))
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    psa_company_id: Mapped[str | None] = mapped_column(String(64))
    psa_company_name: Mapped[str] = mapped_column(String(255), default="")
    agreement_id: Mapped[str | None] = mapped_column(String(64))
    agreement_name: Mapped[str] = mapped_column(String(255), default="")
    excluded: Mapped[bool] = mapped_column(default=False)
    # webapp/sync/state.py CompanyStatus, written only there
    status: Mapped[str] = mapped_column(String(20), default="never synced")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    job_id: Mapped[str | None] = mapped_column(String(64))  # the RQ job pushing it now, if any
    sync_run_id: Mapped[int | None] = mapped_column(  # …of this run
        ForeignKey("sync_runs.id", ondelete="SET NULL", use_alter=True, name="fk_company_mappings_sync_run_id"))

    integration: Mapped[Integration] = relationship()
    company = relationship("Company")
    overrides: Mapped[list[AgreementOverride]] = relationship(
        back_populates="mapping", cascade="all, delete-orphan", order_by="AgreementOverride.product_id")

    __table_args__ = (
        UniqueConstraint("integration_id", "company_id", name="uq_company_mappings_ic"),
        Index("ix_company_mappings_status", "integration_id", "status"),
    )

    @property
    def is_mapped(self) -> bool:
        return bool(self.psa_company_id and self.agreement_id)


class AgreementOverride(db.Model):
    """One product of one company billed on another agreement/contract of the same PSA company than the
    mapping's default (PRODUCT.md §4b), e.g. backup seats on a separate agreement."""

    __tablename__ = "agreement_overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_mapping_id: Mapped[int] = mapped_column(ForeignKey("company_mappings.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    agreement_id: Mapped[str] = mapped_column(String(64))
    agreement_name: Mapped[str] = mapped_column(String(255), default="")

    mapping: Mapped[CompanyMapping] = relationship(back_populates="overrides")
    product = relationship("Product")

    __table_args__ = (UniqueConstraint("company_mapping_id", "product_id", name="uq_agreement_overrides_mp"),)
