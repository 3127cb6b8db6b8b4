"""The simulator's time-weighted count of requests in flight, on a hand-driven clock."""

from __future__ import annotations

from psa_sim.inflight import InFlight


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_average_in_flight_weighs_each_count_by_how_long_it_lasted():
    clock = Clock()
    tracker = InFlight(clock=clock)
    clock.now += 1  # idle second: counts for the wall average only
    tracker.enter(["x"])
    tracker.enter(["x"])
    clock.now += 2  # two in flight for 2 s
    tracker.leave(["x"])
    clock.now += 1  # one in flight for 1 s
    tracker.leave(["x"])
    clock.now += 1  # idle again

    figures = tracker.report()["x"]
    assert figures == {"max": 2, "average_while_busy": round(5 / 3, 3), "average_over_wall": 1.0,
                       "busy_seconds": 3.0}


def test_a_restart_forgets_the_past_but_keeps_counting_requests_still_in_flight():
    clock = Clock()
    tracker = InFlight(clock=clock)
    tracker.enter(["a", "b"])
    tracker.enter(["a"])
    clock.now += 10
    tracker.leave(["a"])
    tracker.leave(["b"])
    tracker.restart()
    clock.now += 4  # "a" still has one request in flight; "b" had none left
    tracker.leave(["a"])

    assert tracker.report() == {"a": {"max": 1, "average_while_busy": 1.0, "average_over_wall": 1.0,
                                      "busy_seconds": 4.0}}
    assert tracker.current("a") == 0 and tracker.current("never seen") == 0
