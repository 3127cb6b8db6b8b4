"""Targets vs PSA lines → changes (PRODUCT.md §4 step 3), without HTTP or a database."""

from __future__ import annotations

import datetime as dt

from webapp.psa_clients.base import ComputedLine, Line
from webapp.sync.plan import (
    ProductTarget,
    billed_month_start,
    needs_approval,
    plan_agreement,
    product_targets,
)


def line(product, quantity, line_id="1"):
    return Line("A1", product, line_id, quantity)


def kinds(changes):
    return [(c.psa_product_id, c.kind) for c in changes]


def test_a_line_at_its_target_is_left_alone_and_one_that_differs_is_updated():
    changes = plan_agreement([ProductTarget("p1", 5), ProductTarget("p2", 3)], [line("p1", 5), line("p2", 4, "2")],
                             create_missing_lines=True)
    assert kinds(changes) == [("p1", "none"), ("p2", "update")]
    assert changes[1].before == 4 and changes[1].is_decrease


def test_a_missing_line_is_created_only_when_the_option_is_on_and_the_target_is_not_zero():
    targets = [ProductTarget("p1", 2), ProductTarget("p2", 0)]
    assert kinds(plan_agreement(targets, [], create_missing_lines=True)) == [("p1", "create"), ("p2", "none")]
    off = plan_agreement(targets, [], create_missing_lines=False)
    assert kinds(off) == [("p1", "attention"), ("p2", "none")]
    assert "create missing lines" in off[0].message


def test_a_line_whose_quantity_the_psa_computes_needs_attention_and_is_never_written():
    computed = ComputedLine("A1", "p1", "1", 12, reason="quantity managed by HaloPSA", hint="Set it to fixed.")
    (change,) = plan_agreement([ProductTarget("p1", 5)], [computed], create_missing_lines=True)
    assert (change.kind, change.writes, change.before) == ("attention", False, 12)
    assert change.message == "needs attention: quantity managed by HaloPSA"
    assert change.extra["hint"] == "Set it to fixed."


def test_duplicate_lines_need_attention_and_nothing_is_written():
    (change,) = plan_agreement([ProductTarget("p1", 2)], [line("p1", 1, "1"), line("p1", 1, "2")],
                               create_missing_lines=True)
    assert change.kind == "attention" and "duplicate lines" in change.message and not change.writes


def test_an_unmapped_product_with_seats_needs_attention_and_lines_of_other_products_are_ignored():
    changes = plan_agreement([ProductTarget("p1", 1)], [line("p1", 1), line("other", 9, "9")],
                             create_missing_lines=True, unmapped=[(7, "Email Security", 4), (8, "Old", 0)])
    assert kinds(changes) == [("p1", "none"), ("", "attention")]
    assert "Email Security" in changes[1].message


def test_a_hand_edit_in_the_psa_is_flagged():
    (change,) = plan_agreement([ProductTarget("p1", 5)], [line("p1", 6)], create_missing_lines=True,
                               last_written={"p1": 5})
    assert change.changed_in_psa and change.kind == "update"
    (same,) = plan_agreement([ProductTarget("p1", 5)], [line("p1", 5)], create_missing_lines=True,
                             last_written={"p1": 5})
    assert not same.changed_in_psa


def test_an_unreadable_quantity_is_written_unless_seatsync_last_wrote_the_same_target():
    unreadable = Line("A1", "p1", "1", None)
    (first,) = plan_agreement([ProductTarget("p1", 5)], [unreadable], create_missing_lines=True)
    (again,) = plan_agreement([ProductTarget("p1", 5)], [unreadable], create_missing_lines=True,
                              last_written={"p1": 5})
    assert first.kind == "update" and again.kind == "none"


def test_products_mapped_to_one_psa_product_are_summed():
    targets = product_targets({1: 3, 2: 4, 3: 9}, [(1, "p1", "A"), (2, "p1", "B"), (3, "p3", "C")])
    assert [(t.psa_product_id, t.target) for t in targets] == [("p1", 7), ("p3", 9)]


def test_review_and_decreases_need_approval():
    (up,) = plan_agreement([ProductTarget("p1", 5)], [line("p1", 4)], create_missing_lines=True)
    (down,) = plan_agreement([ProductTarget("p1", 3)], [line("p1", 4)], create_missing_lines=True)
    assert not needs_approval(up, review_before_push=False, decreases_need_approval=True)
    assert needs_approval(down, review_before_push=False, decreases_need_approval=True)
    assert needs_approval(up, review_before_push=True, decreases_need_approval=False)




def test_changes_take_effect_from_the_first_day_of_the_month_in_the_organisation_time_zone():
    late_on_the_31st = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)  # still 31 October in New York
    assert billed_month_start(late_on_the_31st, "America/New_York") == dt.date(2026, 10, 1)
    assert billed_month_start(late_on_the_31st, "UTC") == dt.date(2026, 11, 1)
