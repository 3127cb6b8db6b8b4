"""Sync schedules on a controllable clock: local times across DST, one run per slot however ticks race."""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest

from webapp.extensions import db
from webapp.models import Company, CompanyMapping, Integration, Organisation, Product, ProductMapping, SyncRun
from webapp.sync.schedule import latest_slot, next_slot, run_due_schedules

NY = ZoneInfo("America/New_York")
UTC = dt.UTC


def test_a_daily_slot_keeps_its_local_time_across_the_spring_dst_change():
    before = latest_slot("daily", dt.time(2, 0), 0, NY, dt.datetime(2026, 3, 7, 8, 0, tzinfo=UTC))
    after = latest_slot("daily", dt.time(6, 0), 0, NY, dt.datetime(2026, 3, 9, 11, 0, tzinfo=UTC))
    assert before == dt.datetime(2026, 3, 7, 7, 0, tzinfo=UTC)  # 02:00 EST
    assert after == dt.datetime(2026, 3, 9, 10, 0, tzinfo=UTC)  # 06:00 EDT
    # 02:30 does not exist on 8 March 2026 in New York: it runs once, an hour later on the wall clock.
    skipped = next_slot("daily", dt.time(2, 30), 0, NY, dt.datetime(2026, 3, 8, 5, 0, tzinfo=UTC))
    assert skipped == dt.datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_a_repeated_hour_in_autumn_gives_one_slot_not_two():
    # 01:30 happens twice on 1 November 2026 in New York; both ticks see the same (first) slot.
    first = latest_slot("daily", dt.time(1, 30), 0, NY, dt.datetime(2026, 11, 1, 5, 45, tzinfo=UTC))
    second = latest_slot("daily", dt.time(1, 30), 0, NY, dt.datetime(2026, 11, 1, 6, 45, tzinfo=UTC))
    assert first == second == dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_a_weekly_slot_falls_on_its_weekday_in_the_organisation_time_zone():
    # Monday 06:30 in New York is Monday 11:30 UTC in winter, 10:30 UTC in summer.
    winter = next_slot("weekly", dt.time(6, 30), 0, NY, dt.datetime(2026, 3, 4, tzinfo=UTC))
    summer = next_slot("weekly", dt.time(6, 30), 0, NY, dt.datetime(2026, 3, 10, tzinfo=UTC))
    assert winter == dt.datetime(2026, 3, 9, 10, 30, tzinfo=UTC)
    assert summer == dt.datetime(2026, 3, 16, 10, 30, tzinfo=UTC)
    assert latest_slot("off", dt.time(6, 30), 0, NY, winter) is None


@pytest.fixture
def scheduled(app):
    from webapp.crypto import encrypt_json

    org = Organisation.get()
    org.timezone = "America/New_York"
    integration = Integration(kind="connectwise", enabled=True, credentials_status="ok",
                              credentials_encrypted=encrypt_json({"site": "x"}),
                              schedule_kind="daily", schedule_time=dt.time(2, 0))
    company, product = Company(name="Acme"), Product(name="Backup")
    db.session.add_all([integration, company, product])
    db.session.flush()
    db.session.add(ProductMapping(integration_id=integration.id, product_id=product.id, psa_product_id="1"))
    db.session.add(CompanyMapping(integration_id=integration.id, company_id=company.id, psa_company_id="9",
                                  agreement_id="10"))
    db.session.commit()
    return integration


def test_a_due_slot_starts_one_scheduled_run_and_later_ticks_start_nothing(scheduled):
    slot_time = dt.datetime(2026, 3, 9, 6, 0, tzinfo=UTC)  # 02:00 EDT
    assert run_due_schedules(slot_time - dt.timedelta(minutes=1)) == []  # yesterday's slot is long past
    started = run_due_schedules(slot_time + dt.timedelta(seconds=30))
    assert len(started) == 1
    assert db.session.get(SyncRun, started[0]).trigger == "schedule"
    assert run_due_schedules(slot_time + dt.timedelta(minutes=1)) == []
    assert run_due_schedules(slot_time + dt.timedelta(hours=1)) == []  # a restarted clock: nothing twice
    assert db.session.scalar(db.select(db.func.count(SyncRun.id))) == 1


def test_two_racing_ticks_enqueue_one_run_per_slot(scheduled, app):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("racing transactions need PostgreSQL")
    now = dt.datetime(2026, 3, 9, 6, 1, tzinfo=UTC)
    barrier = threading.Barrier(2)
    results = []

    def tick():
        with app.app_context():
            barrier.wait()
            results.append(run_due_schedules(now))
            db.session.remove()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    db.session.rollback()
    assert sorted(len(r) for r in results) == [0, 1]
    assert db.session.scalar(db.select(db.func.count(SyncRun.id))) == 1


def test_a_disabled_integration_is_never_started_by_its_schedule(scheduled):
    scheduled.enabled = False
    db.session.commit()
    assert run_due_schedules(dt.datetime(2026, 3, 9, 6, 1, tzinfo=UTC)) == []
    assert db.session.scalar(db.select(db.func.count(SyncRun.id))) == 0


def test_a_slot_missed_for_hours_is_skipped_rather_than_run_late(scheduled):
    assert run_due_schedules(dt.datetime(2026, 3, 9, 11, 0, tzinfo=UTC)) == []
