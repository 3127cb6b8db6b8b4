"""Monthly counts: the count rules at month edges in the organisation's time zone, snapshots, overrides."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from webapp import counts
from webapp.extensions import db
from webapp.models import AuditEvent, Company, CountOverride, MonthlyCount, Organisation, Product, Seat

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC
JAN, FEB, MAR = dt.date(2025, 1, 1), dt.date(2025, 2, 1), dt.date(2025, 3, 1)
LATER = dt.datetime(2030, 1, 1, tzinfo=UTC)  # "now" far after the months under test: they are closed


def local(tz, *args):
    return dt.datetime(*args, tzinfo=tz).astimezone(UTC)


@pytest.fixture
def org(app):
    organisation = Organisation.get()
    organisation.timezone = "Europe/Berlin"
    db.session.commit()
    return organisation


@pytest.fixture
def acme(app):
    company = Company(name="Acme Dental", external_id="acme")
    db.session.add(company)
    db.session.commit()
    return company


def product(name="Password Manager", rule="active_during_month"):
    row = Product(name=name, count_rule=rule)
    db.session.add(row)
    db.session.commit()
    return row


def seat(company, prod, start, end=None, billable=True, email=None):
    row = Seat(company=company, product=prod, user_email=email or f"u{db.session.query(Seat).count()}@x.example",
               active_from=start, active_to=end, billable=billable)
    db.session.add(row)
    db.session.commit()
    return row


def count(month, company, prod, now=LATER):
    return counts.compute_counts(month, now=now).get((company.id, prod.id))


def test_month_bounds_are_local_midnights_in_utc(org):
    assert counts.month_bounds_utc(JAN, BERLIN) == (dt.datetime(2024, 12, 31, 23, tzinfo=UTC),
                                                    dt.datetime(2025, 1, 31, 23, tzinfo=UTC))
    # leap-year February ends at the midnight after the 29th
    assert counts.month_bounds_utc(dt.date(2024, 2, 17), BERLIN) == (dt.datetime(2024, 1, 31, 23, tzinfo=UTC),
                                                                     dt.datetime(2024, 2, 29, 23, tzinfo=UTC))
    # March ends in summer time (UTC+2), October in winter time (UTC+1)
    assert counts.month_bounds_utc(dt.date(2025, 3, 1), BERLIN)[1] == dt.datetime(2025, 3, 31, 22, tzinfo=UTC)
    assert counts.month_bounds_utc(dt.date(2025, 10, 1), BERLIN)[1] == dt.datetime(2025, 10, 31, 23, tzinfo=UTC)
    assert counts.month_bounds_utc(dt.date(2025, 12, 1), BERLIN)[1] == dt.datetime(2025, 12, 31, 23, tzinfo=UTC)


def test_a_seat_starting_on_the_last_evening_of_a_month_counts_in_that_month_in_the_org_zone(app, acme):
    org = Organisation.get()
    org.timezone = "America/New_York"
    db.session.commit()
    pm = product()
    # 20:00 in New York on 31 January is already 1 February in UTC
    seat(acme, pm, local(NEW_YORK, 2025, 1, 31, 20, 0))
    assert count(JAN, acme, pm) == 1
    org.timezone = "UTC"
    db.session.commit()
    assert count(JAN, acme, pm) is None  # not even history yet in January in UTC
    assert count(FEB, acme, pm) == 1


def test_a_seat_starting_just_after_local_midnight_belongs_to_the_next_month(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2025, 2, 1, 0, 30))  # 31 January 23:30 UTC
    assert count(JAN, acme, pm) is None
    assert count(FEB, acme, pm) == 1


def test_a_seat_ending_at_midnight_counts_in_its_last_month_only(org, acme):
    during, at_end = product("During"), product("At end", "active_at_month_end")
    for prod in (during, at_end):
        seat(acme, prod, local(BERLIN, 2024, 11, 5), end=local(BERLIN, 2025, 2, 1))
    assert count(JAN, acme, during) == 1
    assert count(JAN, acme, at_end) == 1  # active through the last instant of January
    assert count(FEB, acme, during) == 0
    assert count(FEB, acme, at_end) == 0


def test_a_seat_ending_at_the_midnight_that_starts_a_month_is_not_in_that_month(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1), end=local(BERLIN, 2025, 1, 1))
    assert count(JAN, acme, pm) == 0


def test_active_at_month_end_ignores_seats_that_ended_during_the_month(org, acme):
    during, at_end = product("During"), product("At end", "active_at_month_end")
    for prod in (during, at_end):
        seat(acme, prod, local(BERLIN, 2025, 1, 1), end=local(BERLIN, 2025, 1, 31, 23, 59))
        seat(acme, prod, local(BERLIN, 2025, 1, 31, 23, 59))
    assert count(JAN, acme, during) == 2
    assert count(JAN, acme, at_end) == 1


def test_leap_year_february_counts_a_seat_starting_on_the_29th(org, acme):
    at_end = product("At end", "active_at_month_end")
    seat(acme, at_end, local(BERLIN, 2024, 2, 29, 23, 30))
    seat(acme, at_end, local(BERLIN, 2024, 3, 1, 0, 0))
    assert count(dt.date(2024, 2, 1), acme, at_end) == 1
    assert count(dt.date(2024, 3, 1), acme, at_end) == 2


def test_daylight_saving_change_moves_the_utc_end_of_march(org, acme):
    during = product()
    # 22:30 UTC on 31 March is already 1 April 00:30 in Berlin (summer time, UTC+2)
    seat(acme, during, dt.datetime(2025, 3, 31, 22, 30, tzinfo=UTC))
    # 21:30 UTC on 31 March is 23:30 in Berlin: still March
    seat(acme, during, dt.datetime(2025, 3, 31, 21, 30, tzinfo=UTC))
    assert count(MAR, acme, during) == 1
    assert count(dt.date(2025, 4, 1), acme, during) == 2


def test_daylight_saving_end_in_october_moves_the_utc_end_back(org, acme):
    at_end = product("At end", "active_at_month_end")
    # ends 31 October 23:30 Berlin (winter time, UTC+1) = 22:30 UTC: not active at the last instant
    seat(acme, at_end, local(BERLIN, 2025, 10, 1), end=dt.datetime(2025, 10, 31, 22, 30, tzinfo=UTC))
    assert count(dt.date(2025, 10, 1), acme, at_end) == 0
    seat(acme, at_end, local(BERLIN, 2025, 10, 1), end=dt.datetime(2025, 10, 31, 23, 0, tzinfo=UTC))
    assert count(dt.date(2025, 10, 1), acme, at_end) == 1


def test_non_billable_seats_are_not_counted_but_keep_the_pair(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1), billable=False)
    assert count(JAN, acme, pm) == 0


def test_month_to_date_counts_up_to_now(org, acme):
    during, at_end = product("During"), product("At end", "active_at_month_end")
    now = local(BERLIN, 2025, 1, 15, 12)
    for prod in (during, at_end):
        seat(acme, prod, local(BERLIN, 2025, 1, 2), end=local(BERLIN, 2025, 1, 10))  # ended already
        seat(acme, prod, local(BERLIN, 2025, 1, 3))  # active now
        seat(acme, prod, local(BERLIN, 2025, 1, 20))  # starts later this month
    assert count(JAN, acme, during, now=now) == 2
    assert count(JAN, acme, at_end, now=now) == 1
    assert counts.compute_counts(FEB, now=now) == {}  # a month that has not started counts nothing


def test_counts_can_be_limited_to_companies_and_products(org, acme):
    other = Company(name="Other")
    db.session.add(other)
    pm, eb = product("PM"), product("EB")
    for company in (acme, other):
        for prod in (pm, eb):
            seat(company, prod, local(BERLIN, 2024, 12, 1))
    assert counts.compute_counts(JAN, company_ids=[acme.id], product_ids=[eb.id], now=LATER) == {(acme.id, eb.id): 1}


def test_push_month_is_the_previous_or_current_month_in_the_org_zone(org):
    just_after_new_year_berlin = dt.datetime(2024, 12, 31, 23, 30, tzinfo=UTC)
    assert counts.push_month("last_closed_month", just_after_new_year_berlin) == dt.date(2024, 12, 1)
    assert counts.push_month("month_to_date", just_after_new_year_berlin) == JAN
    assert counts.push_month("last_closed_month", dt.datetime(2025, 3, 10, tzinfo=UTC)) == FEB
    with pytest.raises(ValueError):
        counts.push_month("yesterday", LATER)


def test_override_replaces_the_computed_count(org, acme, login_as):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1))
    db.session.add(CountOverride(company_id=acme.id, product_id=pm.id, month=JAN, count=7, note="kiosk users"))
    db.session.commit()
    assert counts.target_counts(JAN, now=LATER) == {(acme.id, pm.id): 7}
    assert counts.target_counts(FEB, now=LATER) == {(acme.id, pm.id): 1}


def test_a_frozen_month_keeps_its_snapshot_when_seats_change_later(org, acme):
    pm = product()
    first = seat(acme, pm, local(BERLIN, 2024, 12, 1))
    seat(acme, pm, local(BERLIN, 2024, 12, 2))
    assert counts.freeze_month(JAN, now=LATER) == 1
    first.active_to = local(BERLIN, 2024, 12, 15)  # back-dated end after the freeze
    db.session.commit()
    assert counts.compute_counts(JAN, now=LATER) == {(acme.id, pm.id): 1}
    assert counts.target_counts(JAN, now=LATER) == {(acme.id, pm.id): 2}


def test_a_drop_to_zero_is_a_target_so_it_gets_pushed(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 11, 1), end=local(BERLIN, 2024, 12, 20))
    assert counts.target_counts(JAN, now=LATER) == {(acme.id, pm.id): 0}
    counts.freeze_month(JAN, now=LATER)
    assert counts.target_counts(JAN, now=LATER) == {(acme.id, pm.id): 0}


def test_freezing_a_month_twice_changes_nothing(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1))
    assert counts.freeze_month(JAN, now=LATER) == 1
    before = [(r.company_id, r.product_id, r.count, r.frozen, r.computed_at) for r in db.session.query(MonthlyCount)]
    seat(acme, pm, local(BERLIN, 2024, 12, 5))
    assert counts.freeze_month(JAN, now=LATER + dt.timedelta(days=1)) == 0
    db.session.expire_all()
    after = [(r.company_id, r.product_id, r.count, r.frozen, r.computed_at) for r in db.session.query(MonthlyCount)]
    assert after == before


def test_recomputing_a_closed_month_writes_old_and_new_counts_to_the_audit_log(org, acme, login_as):
    admin = login_as("admin")
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1))
    counts.freeze_month(JAN, now=LATER)
    seat(acme, pm, local(BERLIN, 2025, 1, 20))
    seat(acme, pm, local(BERLIN, 2025, 1, 21))
    changes = counts.recompute_month(JAN, admin, now=LATER)
    assert changes == {(acme.id, pm.id): (1, 3)}
    assert counts.target_counts(JAN, now=LATER) == {(acme.id, pm.id): 3}
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="counts.recomputed"))
    assert event.actor == "admin@msp.example"
    assert event.before == {f"Acme Dental (#{acme.id}) / Password Manager": 1}
    assert event.after == {f"Acme Dental (#{acme.id}) / Password Manager": 3}
    assert "1 → 3" in event.summary


def test_the_current_month_cannot_be_recomputed(org):
    with pytest.raises(ValueError):
        counts.recompute_month(JAN, None, now=local(BERLIN, 2025, 1, 20))


def test_the_cron_tick_freezes_the_month_once_its_last_day_is_over(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1))
    counts.counts_tick(local(BERLIN, 2025, 1, 31, 23, 58))
    assert not counts.month_is_frozen(JAN)
    seat(acme, pm, local(BERLIN, 2025, 1, 31, 23, 59))  # a change on the last minute still counts
    counts.counts_tick(local(BERLIN, 2025, 2, 1, 0, 0))
    assert counts.month_is_frozen(JAN)
    frozen = db.session.scalar(db.select(MonthlyCount).filter_by(month=JAN, frozen=True))
    assert frozen.count == 2
    counts.counts_tick(local(BERLIN, 2025, 2, 1, 0, 1))  # the next tick changes nothing
    assert db.session.query(MonthlyCount).filter_by(month=JAN).count() == 1


def test_live_counts_are_stored_without_touching_the_snapshot(org, acme):
    pm = product()
    seat(acme, pm, local(BERLIN, 2024, 12, 1))
    now = local(BERLIN, 2025, 1, 10)
    assert counts.store_live_counts(now=now) == 1
    row = db.session.scalar(db.select(MonthlyCount).filter_by(month=JAN))
    assert (row.count, row.frozen) == (1, False)
    seat(acme, pm, local(BERLIN, 2025, 1, 5))
    counts.store_live_counts(JAN, now=now)
    db.session.expire_all()
    assert db.session.scalar(db.select(MonthlyCount).filter_by(month=JAN)).count == 2
    counts.freeze_month(dt.date(2024, 12, 1), now=now)
    counts.store_live_counts(dt.date(2024, 12, 1), now=now)
    rows = db.session.query(MonthlyCount).filter_by(month=dt.date(2024, 12, 1)).all()
    assert [(r.count, r.frozen) for r in rows] == [(1, True)]


def test_late_changes_to_closed_months_are_found_once_and_remembered_until_something_changes(org, acme, login_as,
                                                                                             monkeypatch):
    admin = login_as("admin")
    pm = product()
    last_month = counts.add_months(counts.current_month(), -1)
    start, _ = counts.month_bounds_utc(last_month)
    seat(acme, pm, start + dt.timedelta(days=2))
    counts.freeze_month(last_month)
    recounts = []
    real = counts._drifted_closed_months
    monkeypatch.setattr(counts, "_drifted_closed_months", lambda *a: recounts.append(a) or real(*a))

    assert counts.drifted_closed_months() == []
    assert counts.drifted_closed_months() == []  # nothing changed: no second recount of every seat
    assert len(recounts) == 1
    seat(acme, pm, start + dt.timedelta(days=3))  # a late import adds a seat to the closed month
    assert counts.drifted_closed_months() == [last_month]
    assert counts.renew_closed_month_drift(counts.utcnow()) == [last_month] and len(recounts) == 2
    counts.recompute_month(last_month, admin)
    assert counts.drifted_closed_months() == [] and len(recounts) == 3
