"""What a run does to the invoice: the monthly change in price and margin, per company and per run.

Each line result records its own change (record.py, from plan.Change.money): (target − quantity
before) × the line's unit price (and × (price − cost) for the margin). Here they are added up for the
pages — per company, and for the run as "+1,240.00/month across 37 companies, −85.00 on 3". Only
changes that were written or wait for (or got) approval count; amounts are kept per currency as
the PSA gives it ("" when it names none: no symbol is invented).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from ..extensions import db
from ..models import LineResult
from .record import COSTED


@dataclass
class Money:
    """A sum of monthly changes in one currency."""

    currency: str = ""
    price: float = 0.0
    margin: float = 0.0
    margin_known: bool = True  # every priced line had a cost
    priced: int = 0  # lines with a known price
    unpriced: int = 0  # lines that change a quantity at an unknown price

    def add(self, price: float | None, margin: float | None) -> None:
        if price is None:
            self.unpriced += 1
            return
        self.priced += 1
        self.price += price
        if margin is None:
            self.margin_known = False
        else:
            self.margin += margin


@dataclass
class RunMoney:
    """Per company (mapping id) and per currency, and the run's totals per currency."""

    companies: dict[int, dict[str, Money]] = field(default_factory=lambda: defaultdict(dict))
    up: dict[str, tuple[float, int]] = field(default_factory=dict)  # currency → (sum, companies) of increases
    down: dict[str, tuple[float, int]] = field(default_factory=dict)  # … of decreases
    totals: dict[str, Money] = field(default_factory=dict)

    @property
    def unpriced(self) -> int:
        return sum(m.unpriced for m in self.totals.values())

    def of(self, mapping_id: int) -> list[Money]:
        return list(self.companies.get(mapping_id, {}).values())


def add_up(rows: Iterable[tuple[int, float | None, float | None, str]]) -> RunMoney:
    """(company mapping id, price change, margin change, currency) per line → the sums a page shows."""
    out = RunMoney()
    for mapping_id, price, margin, currency in rows:
        for bucket in (out.companies[mapping_id], out.totals):
            bucket.setdefault(currency or "", Money(currency or "")).add(price, margin)
    for by_currency in out.companies.values():
        for currency, money in by_currency.items():
            side = out.up if money.price > 0 else out.down if money.price < 0 else None
            if side is not None:
                total, companies = side.get(currency, (0.0, 0))
                side[currency] = (total + money.price, companies + 1)
    return out


def run_money(run_id: int, actions: Iterable[str] = COSTED) -> RunMoney:
    """The money of a run's lines with these actions (default: written or awaiting/after approval)."""
    return add_up(db.session.execute(
        select(LineResult.company_mapping_id, LineResult.price_change, LineResult.margin_change,
               LineResult.currency)
        .where(LineResult.run_id == run_id, LineResult.action.in_([str(a) for a in actions]))).all())


def amount(value: float | None, currency: str = "", *, signed: bool = True) -> str:
    """1240.5 → "+1,240.50" (with the PSA's currency code after it when it gives one); None → "unknown"."""
    if value is None:
        return "unknown"
    sign = ("+" if value > 0 else "\u2212" if value < 0 else "") if signed else ("\u2212" if value < 0 else "")
    text = f"{sign}{abs(value):,.2f}"
    return f"{text} {currency}" if currency else text
