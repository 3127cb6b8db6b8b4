"""Targets vs PSA lines → changes (PRODUCT.md §4 step 3), without HTTP or a database."""

from __future__ import annotations

import datetime as dt

from webapp.psa_clients.base import ComputedLine, Line
from webapp.sync.plan import (
    ProductTarget,
    QuantityRule,
    billed_month_start,
    needs_approval,
    next_period_start,
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


# --------------------------------------------------------------------------------------------------
# Billing rules (PRODUCT.md §4b): pushed = clamp(count − included + extra, minimum, maximum), never < 0
# --------------------------------------------------------------------------------------------------
def test_rules_take_off_the_included_seats_then_add_the_extra_then_apply_the_minimum_and_maximum():
    assert QuantityRule(included=3).apply(23) == 20
    assert QuantityRule(included=3, extra=1).apply(23) == 21  # the extra is added after the free seats
    assert QuantityRule(included=3, extra=1, minimum=25).apply(23) == 25  # the minimum raises the result
    assert QuantityRule(included=3, extra=1, maximum=15).apply(23) == 15  # the maximum caps it
    assert QuantityRule(minimum=10, maximum=5).apply(23) == 5  # a maximum below the minimum wins
    assert QuantityRule(included=30).apply(23) == 0  # never negative
    assert QuantityRule().apply(23) == 23


def test_a_rule_is_described_in_words_for_details():
    assert QuantityRule(included=3).describe() == "3 included"
    assert QuantityRule(included=3, extra=1, minimum=5, maximum=40).describe() == \
        "3 included, +1 extra, minimum 5, maximum 40"
    assert QuantityRule().describe() == ""


def test_a_mapped_products_rule_gives_the_target_and_the_line_keeps_the_raw_count():
    (target,) = product_targets({1: 23}, [(1, "p1", "A", QuantityRule(included=3))])
    assert (target.count, target.target, target.rule) == (23, 20, "3 included")
    (plain,) = product_targets({1: 23}, [(1, "p1", "A")])
    assert (plain.count, plain.target, plain.rule) == (23, 23, "")


def test_a_bundle_sums_the_counts_first_then_applies_the_members_rules_combined():
    rules = [(1, "p1", "A", QuantityRule(included=2, minimum=5)),
             (2, "p1", "B", QuantityRule(included=1, extra=1, minimum=8, maximum=30)),
             (3, "p3", "C", QuantityRule(maximum=4))]
    bundle, other = product_targets({1: 10, 2: 4, 3: 9}, rules)
    # (10 + 4) − (2 + 1) + 1 = 12, minimum max(5, 8) = 8, maximum 30
    assert (bundle.psa_product_id, bundle.count, bundle.target, bundle.product_ids) == ("p1", 14, 12, (1, 2))
    assert bundle.rule == "3 included, +1 extra, minimum 8, maximum 30"
    assert (other.count, other.target) == (9, 4)
    # Rules apply to the sum, not to each member: a bundle of 1 + 1 with 2 included (1 each) bills 0.
    (small,) = product_targets({1: 1, 2: 1}, [(1, "p1", "A", QuantityRule(included=1)),
                                                (2, "p1", "B", QuantityRule(included=1))])
    assert small.target == 0


def test_the_planned_change_carries_the_count_and_rule_and_compares_the_pushed_quantity():
    targets = product_targets({1: 23}, [(1, "p1", "A", QuantityRule(included=3))])
    (change,) = plan_agreement(targets, [line("p1", 20)], create_missing_lines=True)
    assert change.kind == "none" and change.count == 23 and change.rule == "3 included"


# --------------------------------------------------------------------------------------------------
# Effective dates: decreases from the next billing period
# --------------------------------------------------------------------------------------------------
NEXT = dt.date(2026, 12, 1)


def test_next_period_starts_on_the_first_of_the_following_month():
    assert next_period_start(dt.date(2026, 11, 1)) == NEXT
    assert next_period_start(dt.date(2026, 12, 1)) == dt.date(2027, 1, 1)
    assert next_period_start(dt.date(2027, 2, 1)) == dt.date(2027, 3, 1)


def test_with_deferred_decreases_an_increase_is_written_now_and_a_decrease_from_the_next_period():
    up, down = plan_agreement([ProductTarget("p1", 9), ProductTarget("p2", 3)],
                              [line("p1", 7), line("p2", 7, "2")], create_missing_lines=True,
                              next_period_start=NEXT)
    assert up.kind == "update" and up.effective_from is None
    assert down.kind == "update" and down.effective_from == NEXT and down.basis == 7 and down.is_decrease
    (off,) = plan_agreement([ProductTarget("p2", 3)], [line("p2", 7, "2")], create_missing_lines=True)
    assert off.effective_from is None


def test_a_decrease_already_scheduled_for_the_next_period_is_not_written_again():
    # The PSA bills 7 now and 3 from the next period (Autotask units per period, read on both dates).
    (change,) = plan_agreement([ProductTarget("p1", 3)], [line("p1", 7)], create_missing_lines=True,
                               later={"p1": 3}, next_period_start=NEXT, last_written={"p1": 3})
    assert change.kind == "none" and change.basis == 3 and not change.changed_in_psa
    assert "already scheduled from 2026-12-01" in change.message
    # A different decrease is written from the quantity the next period bills (a delta from 3, not 7).
    (other,) = plan_agreement([ProductTarget("p1", 2)], [line("p1", 7)], create_missing_lines=True,
                              later={"p1": 3}, next_period_start=NEXT)
    assert other.kind == "update" and other.basis == 3 and other.write_line.quantity == 3
    assert other.before == 7  # what the PSA bills now, for Details


def test_a_count_back_at_the_billed_quantity_cancels_a_scheduled_decrease():
    (change,) = plan_agreement([ProductTarget("p1", 7)], [line("p1", 7)], create_missing_lines=True,
                               later={"p1": 3}, next_period_start=NEXT)
    assert change.kind == "update" and change.effective_from == NEXT and change.basis == 3


def test_an_unreadable_line_defers_a_decrease_from_what_seatsync_last_wrote():
    unreadable = Line("A1", "p1", "1", None)
    (change,) = plan_agreement([ProductTarget("p1", 4)], [unreadable], create_missing_lines=True,
                               last_written={"p1": 6}, next_period_start=NEXT)
    assert change.kind == "update" and change.effective_from == NEXT


# --------------------------------------------------------------------------------------------------
# Money: the monthly change in price and margin of each line
# --------------------------------------------------------------------------------------------------
def priced(quantity, price=10.0, cost=6.0):
    return Line("A1", "p1", "1", quantity, unit_price=price, unit_cost=cost)


def test_a_change_knows_its_monthly_change_in_price_and_margin():
    (up,) = plan_agreement([ProductTarget("p1", 8)], [priced(5)], create_missing_lines=True)
    assert up.money() == (30.0, 12.0)
    (down,) = plan_agreement([ProductTarget("p1", 3)], [priced(5, cost=None)], create_missing_lines=True)
    assert down.money() == (-20.0, None)  # no cost: the margin is unknown
    (same,) = plan_agreement([ProductTarget("p1", 5)], [priced(5)], create_missing_lines=True)
    assert same.money() == (None, None)  # nothing written, nothing changes


def test_a_created_line_is_priced_at_what_the_psa_answered_and_an_unknown_price_stays_unknown():
    (create,) = plan_agreement([ProductTarget("p1", 4)], [], create_missing_lines=True)
    assert create.money() == (None, None)
    assert create.money(priced(4, price=2.5, cost=1.0)) == (10.0, 6.0)
    (unpriced,) = plan_agreement([ProductTarget("p1", 8)], [line("p1", 5)], create_missing_lines=True)
    assert unpriced.money() == (None, None)


def test_an_unreadable_line_is_priced_from_what_seatsync_last_wrote():
    unreadable = Line("A1", "p1", "1", None, unit_price=4.0, unit_cost=1.0)
    (change,) = plan_agreement([ProductTarget("p1", 6)], [unreadable], create_missing_lines=True,
                               last_written={"p1": 4})
    assert change.money() == (8.0, 6.0)
    (first,) = plan_agreement([ProductTarget("p1", 6)], [unreadable], create_missing_lines=True)
    assert first.money() == (None, None)  # never written and unreadable: the quantity before is unknown
