"""Which lines a revert refuses to write: those that changed in the PSA since the reverted run."""

from __future__ import annotations

from webapp.psa_clients.base import Line
from webapp.sync.plan import CREATE, NONE, UPDATE, Change
from webapp.sync.push import changed_since


def change(kind: str, quantity: float | None, *, last_written: float | None = None) -> Change:
    line = None if kind == CREATE else Line("10", "p1", "7", quantity)
    return Change("p1", 1, 5, kind, line=line, last_written=last_written)


def test_a_line_still_holding_what_the_run_left_is_reverted():
    assert changed_since(3.0, change(UPDATE, 3.0), 41) == ""


def test_a_line_edited_by_hand_since_the_run_is_refused_with_both_figures():
    reason = changed_since(3.0, change(UPDATE, 6.0), 41)
    assert reason == ("changed in the PSA since run 41: that run left 3, the line holds 6 now; not reverted")


def test_a_line_removed_since_the_run_is_not_recreated():
    assert changed_since(3.0, change(CREATE, None), 41).startswith("removed from the PSA since run 41")


def test_where_the_psa_cannot_read_quantities_what_seatsync_last_wrote_stands_in():
    assert changed_since(3.0, change(UPDATE, None, last_written=3.0), 41) == ""
    assert "holds 4 now" in changed_since(3.0, change(UPDATE, None, last_written=4.0), 41)
    assert changed_since(3.0, change(UPDATE, None), 41) == ""  # nothing known: nothing to compare


def test_a_line_already_back_at_its_earlier_quantity_needs_no_write_and_is_no_drift():
    assert changed_since(3.0, change(NONE, 5.0), 41) == ""
