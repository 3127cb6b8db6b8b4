"""Companies, products, seats and the monthly counts computed from them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, ForeignKey, Index, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from ._types import UtcDateTime, utcnow

COUNT_RULES = ("active_during_month", "active_at_month_end")


class Company(db.Model):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_companies_lower_name", func.lower(name)),)

    def __repr__(self) -> str:
        return f"<Company {self.id} {self.name!r}>"


class Product(db.Model):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    count_rule: Mapped[str] = mapped_column(String(32), default="active_during_month")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Seat(db.Model):
    """One user of one product at one company. Upserted by (company, product, user_email)."""

    __tablename__ = "seats"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    user_email: Mapped[str] = mapped_column(String(320))
    active_from: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    active_to: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    billable: Mapped[bool] = mapped_column(default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    company: Mapped[Company] = relationship()
    product: Mapped[Product] = relationship()

    __table_args__ = (
        UniqueConstraint("company_id", "product_id", "user_email", name="uq_seats_company_product_user"),
        Index("ix_seats_product_window", "product_id", "active_from", "active_to"),
    )


class MonthlyCount(db.Model):
    """The count of a product at a company for a month. `frozen` rows are the month's snapshot."""

    __tablename__ = "monthly_counts"

    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)  # first day of the month
    count: Mapped[int] = mapped_column(default=0)
    frozen: Mapped[bool] = mapped_column(default=False)
    computed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = (Index("ix_monthly_counts_month", "month"),)


class CountOverride(db.Model):
    """An admin's count for a company, product and month, with the mandatory reason."""

    __tablename__ = "count_overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    month: Mapped[dt.date] = mapped_column(Date)
    count: Mapped[int]
    note: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("company_id", "product_id", "month", name="uq_count_overrides_cpm"),)
