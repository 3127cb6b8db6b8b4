"""Targets vs PSA lines → changes (PRODUCT.md §4 steps 3 and 5, §4b). Pure: no HTTP, no database.

One agreement at a time: for each mapped PSA product, the one line that carries it is compared
with the target. The caller (push.py) reads the lines, applies the changes and records them.

Quantity rules (§4b), in this order — `QuantityRule.apply`:
    pushed = clamp(count − included + extra, minimum, maximum), and never below 0
i.e. the free seats are taken off first, the fixed extra (e.g. the admin account) added, then the
contractual minimum raises and the maximum (when set) caps the result; the maximum wins over a
minimum above it.

A bundle (several SeatSync products mapped to one PSA product) bills one line: the members' counts are
summed first, then one rule applies to the sum. That rule is the members' rules combined
(`QuantityRule.combine`): included and extra add up (each product brings its own free seats and
fixed extras), the minimum is the largest and the maximum the smallest set among the members.

Effective dates (§4b): with `defer_decreases`, a decrease bills from the first day of the next
billing period (`next_period_start`); increases still bill now. A deferred decrease is compared
with the quantity the PSA bills from that day (`later`), so a decrease already scheduled is not
written twice.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..psa_clients.base import ComputedLine, Line
from ..timezones import zone_named

# What a change asks the PSA to do.
NONE, UPDATE, CREATE, ATTENTION = "none", "update", "create", "attention"


@dataclass(frozen=True)
class QuantityRule:
    """How a seat count becomes the quantity pushed to the PSA (see the module doc for the order)."""

    included: int = 0
    minimum: int = 0
    maximum: int | None = None
    extra: int = 0

    def apply(self, count: int) -> int:
        pushed = max(int(count) - self.included + self.extra, self.minimum)
        if self.maximum is not None:
            pushed = min(pushed, self.maximum)
        return max(pushed, 0)

    def describe(self) -> str:
        """The rule in words for Details ("3 included, +1 extra, minimum 5"); "" when it changes nothing."""
        parts = [f"{self.included} included" if self.included else "",
                 f"{self.extra:+d} extra" if self.extra else "",
                 f"minimum {self.minimum}" if self.minimum else "",
                 f"maximum {self.maximum}" if self.maximum is not None else ""]
        return ", ".join(p for p in parts if p)

    @classmethod
    def of(cls, row) -> QuantityRule:
        """The rule of a product mapping (any row with its included, minimum, maximum and extra columns)."""
        return cls(row.included or 0, row.minimum or 0, row.maximum, row.extra or 0)

    @classmethod
    def combine(cls, rules: Iterable[QuantityRule]) -> QuantityRule:
        """One rule for a bundle's line: included and extra add up, the strictest minimum and maximum hold."""
        rules = list(rules)
        maxima = [r.maximum for r in rules if r.maximum is not None]
        return cls(included=sum(r.included for r in rules), minimum=max((r.minimum for r in rules), default=0),
                   maximum=min(maxima) if maxima else None, extra=sum(r.extra for r in rules))


NO_RULE = QuantityRule()


@dataclass(frozen=True)
class ProductTarget:
    """The quantity to bill for one mapped PSA product: the counts of the SeatSync products mapped to
    it, summed (`count`), with the line's rule applied (`target`)."""

    psa_product_id: str
    target: int
    product_ids: tuple[int, ...] = ()
    name: str = ""
    count: int | None = None
    rule: str = ""  # the rule in words, when it changed something


@dataclass
class Change:
    psa_product_id: str
    product_id: int | None
    target: int | None
    kind: str  # none | update | create | needs_attention
    line: Line | None = None
    message: str = ""
    changed_in_psa: bool = False
    last_written: float | None = None
    extra: dict = field(default_factory=dict)
    agreement_id: str = ""  # the agreement the line is on (set by the caller: a company may span several)
    count: int | None = None
    rule: str = ""
    effective_from: dt.date | None = None  # set: a decrease written to bill from this later day
    later: float | None = None  # the quantity the PSA bills from the next period, when it differs
    catalog: Line | None = None  # the product's catalog price, for a line still to be created

    @property
    def before(self) -> float | None:
        return self.line.quantity if self.line is not None else None

    @property
    def basis(self) -> float | None:
        """The quantity the write starts from: what the PSA bills from the day the write takes effect."""
        return self.later if self.effective_from is not None and self.later is not None else self.before

    @property
    def write_line(self) -> Line | None:
        """The line handed to the client: its quantity is the basis (a delta is computed from it)."""
        if self.line is None or self.basis == self.before:
            return self.line
        return replace(self.line, quantity=self.basis)

    @property
    def billed_before(self) -> float | None:
        """What the line billed before this change, for money: read, else what SeatSync last left
        there (a quantity the PSA cannot report), else nothing when the line is created."""
        if self.before is not None:
            return self.before
        return self.last_written if self.line is not None else 0.0

    def money(self, priced: Line | None = None) -> tuple[float | None, float | None]:
        """(monthly change in price, in margin) this change makes, at the unit price and cost of
        `priced` (default: the line read; a created line: the line the PSA answered with). None when
        the PSA gives no price or the quantity before is unknown; the margin needs the unit cost too."""
        priced = priced or self.line or self.catalog
        price = priced.unit_price if priced is not None else None
        base = self.billed_before
        if not self.writes or price is None or base is None or self.target is None:
            return None, None
        units = self.target - base
        cost = priced.unit_cost
        return round(units * price, 2), (round(units * (price - cost), 2) if cost is not None else None)

    @property
    def writes(self) -> bool:
        return self.kind in (UPDATE, CREATE)

    @property
    def is_decrease(self) -> bool:
        before = self.before if self.before is not None else self.last_written
        return self.kind == UPDATE and self.target is not None and before is not None and self.target < before


def product_targets(
    counts: Mapping[int, int],
    product_mappings: Iterable[tuple],
) -> list[ProductTarget]:
    """Per PSA product, the target: the counts of the SeatSync products mapped to it summed, then the
    line's rule applied (a bundle's members' rules combined, see the module doc).

    `counts` is {product_id: count} for one company; `product_mappings` is (product_id, psa_product_id,
    name[, QuantityRule]).
    """
    grouped: dict[str, list[tuple]] = defaultdict(list)
    for product_id, psa_product_id, name, *rule in product_mappings:
        grouped[str(psa_product_id)].append((product_id, name, rule[0] if rule and rule[0] else NO_RULE))
    targets = []
    for psa_id, members in sorted(grouped.items()):
        count = sum(int(counts.get(pid, 0)) for pid, _, _ in members)
        rule = QuantityRule.combine(r for _, _, r in members) if len(members) > 1 else members[0][2]
        target = rule.apply(count)
        targets.append(ProductTarget(
            psa_product_id=psa_id, target=target, product_ids=tuple(pid for pid, _, _ in members),
            name=", ".join(name for _, name, _ in members), count=count,
            rule=rule.describe() if target != count or rule != NO_RULE else "",
        ))
    return targets


def plan_agreement(
    targets: Iterable[ProductTarget],
    lines: Iterable[Line],
    *,
    create_missing_lines: bool,
    last_written: Mapping[str, float] | None = None,
    unmapped: Iterable[tuple[int, str, int]] = (),
    later: Mapping[str, float] | None = None,
    next_period_start: dt.date | None = None,
) -> list[Change]:
    """The changes that make one agreement bill its targets.

    `last_written` is {psa_product_id: quantity SeatSync last left on the line} (to flag hand edits);
    `unmapped` lists (product_id, name, count) of SeatSync products with seats but no product mapping.
    With `next_period_start`, decreases are deferred to that day; `later` is {psa_product_id: quantity
    billed from that day} where the PSA reads it per date (else the line's quantity holds for both).
    Lines of PSA products SeatSync does not manage are left alone.
    """
    by_product: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        by_product[str(line.product_id)].append(line)
    last_written = last_written or {}
    changes: list[Change] = []
    for item in targets:
        found = by_product.get(item.psa_product_id, [])
        product_id = item.product_ids[0] if len(item.product_ids) == 1 else None
        change = Change(item.psa_product_id, product_id, item.target, NONE,
                        last_written=last_written.get(item.psa_product_id), count=item.count, rule=item.rule)
        if len(found) > 1:
            change.kind = ATTENTION
            change.message = (f"needs attention: duplicate lines — {len(found)} lines bill this product on the "
                              "agreement; remove all but one in the PSA")
        elif len(found) == 1 and isinstance(found[0], ComputedLine):
            change.line = found[0]  # the PSA computes this quantity: never written
            change.kind = ATTENTION
            change.message = f"needs attention: {found[0].reason}"
            change.extra["hint"] = found[0].hint
        elif len(found) == 1:
            change.line = found[0]
            _plan_line(change, (later or {}).get(item.psa_product_id), next_period_start)
        elif item.target == 0:
            change.message = "no line and nothing to bill"
        elif create_missing_lines:
            change.kind = CREATE
        else:
            change.kind = ATTENTION
            change.message = ("needs attention: the agreement has no line for this product and "
                              "\u201ccreate missing lines\u201d is off")
        changes.append(change)
    for product_id, name, count in unmapped:
        if count:
            message = f"needs attention: product \u201c{name}\u201d is not mapped to a PSA product"
            changes.append(Change("", product_id, int(count), ATTENTION, message=message))
    return changes


def _plan_line(change: Change, later: float | None, next_period_start: dt.date | None) -> None:
    """Decide the change of the one line that bills a product (PRODUCT.md §4 step 3, §4b dates)."""
    target, now = float(change.target), change.line.quantity
    if now is None:
        # Unreadable (Kaseya BMS): write the absolute target unless SeatSync last wrote it.
        if change.last_written is None or float(change.last_written) != target:
            change.kind = UPDATE
            if next_period_start is not None and change.is_decrease:
                change.effective_from = next_period_start
        return
    scheduled = float(now) if later is None else float(later)  # what the PSA bills from the next period
    if next_period_start is not None and (target < now or (target == now and scheduled != target)):
        change.effective_from, change.later = next_period_start, scheduled
        if scheduled != target:
            change.kind = UPDATE
        elif target < now:
            change.message = (f"decrease to {change.target} already scheduled from "
                              f"{next_period_start:%Y-%m-%d}; {now:g} billed until then")
    elif now != target:
        change.kind = UPDATE
    if change.last_written is not None:
        change.changed_in_psa = scheduled != float(change.last_written)


def needs_approval(change: Change, *, review_before_push: bool, decreases_need_approval: bool) -> bool:
    """Whether a change waits for an admin instead of being written now."""
    if not change.writes:
        return False
    return review_before_push or (decreases_need_approval and change.is_decrease)


def next_period_start(billed: dt.date) -> dt.date:
    """First day of the billing period after the billed month (periods are calendar months)."""
    return (billed.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def billed_month_start(now: dt.datetime, timezone: str) -> dt.date:
    """First day of the month being billed now, in the organisation's time zone.

    Both push options bill the month in progress (the invoice generated at its start); they differ
    only in which month's counts they carry. New lines and changes take effect from this day, and
    Autotask units are read for the period that holds it.
    """
    local = now.astimezone(zone_named(timezone))
    return local.date().replace(day=1)
