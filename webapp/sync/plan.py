"""Targets vs PSA lines → changes (PRODUCT.md §4, steps 3 and 5). Pure: no HTTP, no database.

One agreement at a time: for each mapped PSA product, the one line that carries it is compared
with the target. The caller (push.py) reads the lines, applies the changes and records them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..psa_clients.base import ComputedLine, Line
from ..timezones import zone_named

# What a change asks the PSA to do.
NONE, UPDATE, CREATE, ATTENTION = "none", "update", "create", "attention"


@dataclass(frozen=True)
class ProductTarget:
    """The count to bill for one mapped PSA product (SeatSync products mapped to it are summed)."""

    psa_product_id: str
    target: int
    product_ids: tuple[int, ...] = ()
    name: str = ""


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

    @property
    def before(self) -> float | None:
        return self.line.quantity if self.line is not None else None

    @property
    def writes(self) -> bool:
        return self.kind in (UPDATE, CREATE)

    @property
    def is_decrease(self) -> bool:
        before = self.before if self.before is not None else self.last_written
        return self.kind == UPDATE and self.target is not None and before is not None and self.target < before


def product_targets(
    counts: Mapping[int, int],
    product_mappings: Iterable[tuple[int, str, str]],
) -> list[ProductTarget]:
    """Per PSA product, the target: the sum of the counts of the SeatSync products mapped to it.

    `counts` is {product_id: count} for one company; `product_mappings` is (product_id, psa_product_id, name).
    """
    grouped: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for product_id, psa_product_id, name in product_mappings:
        grouped[str(psa_product_id)].append((product_id, name))
    return [
        ProductTarget(
            psa_product_id=psa_id,
            target=sum(int(counts.get(pid, 0)) for pid, _ in members),
            product_ids=tuple(pid for pid, _ in members),
            name=", ".join(name for _, name in members),
        )
        for psa_id, members in sorted(grouped.items())
    ]


def plan_agreement(
    targets: Iterable[ProductTarget],
    lines: Iterable[Line],
    *,
    create_missing_lines: bool,
    last_written: Mapping[str, float] | None = None,
    unmapped: Iterable[tuple[int, str, int]] = (),
) -> list[Change]:
    """The changes that make one agreement bill its targets.

    `last_written` is {psa_product_id: quantity SeatSync last left on the line} (to flag hand edits);
    `unmapped` lists (product_id, name, count) of SeatSync products with seats but no product mapping.
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
                        last_written=last_written.get(item.psa_product_id))
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
            if found[0].quantity is None:
                # Unreadable (Kaseya BMS): write the absolute target unless SeatSync last wrote it.
                if change.last_written is None or float(change.last_written) != float(item.target):
                    change.kind = UPDATE
            elif float(found[0].quantity) != float(item.target):
                change.kind = UPDATE
        elif item.target == 0:
            change.message = "no line and nothing to bill"
        elif create_missing_lines:
            change.kind = CREATE
        else:
            change.kind = ATTENTION
            change.message = ("needs attention: the agreement has no line for this product and "
                              "\u201ccreate missing lines\u201d is off")
        if change.line is not None and change.line.quantity is not None and change.last_written is not None:
            change.changed_in_psa = float(change.line.quantity) != float(change.last_written)
        changes.append(change)
    for product_id, name, count in unmapped:
        if count:
            message = f"needs attention: product \u201c{name}\u201d is not mapped to a PSA product"
            changes.append(Change("", product_id, int(count), ATTENTION, message=message))
    return changes


def needs_approval(change: Change, *, review_before_push: bool, decreases_need_approval: bool) -> bool:
    """Whether a change waits for an admin instead of being written now."""
    if not change.writes:
        return False
    return review_before_push or (decreases_need_approval and change.is_decrease)


def billed_month_start(now: dt.datetime, timezone: str) -> dt.date:
    """First day of the month being billed now, in the organisation's time zone.

    Both push options bill the month in progress (the invoice generated at its start); they differ
    only in which month's counts they carry. New lines and changes take effect from this day, and
    Autotask units are read for the period that holds it.
    """
    local = now.astimezone(zone_named(timezone))
    return local.date().replace(day=1)
