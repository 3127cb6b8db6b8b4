"""Monthly counts: count rules, month boundaries in the organisation's time zone, the set-based SQL pass.

Knows nothing about PSAs. Everything a push needs is `target_counts(month, ...)`.

Definitions (PRODUCT.md §2), with a seat active on the half-open interval [active_from, active_to):
- a month is the calendar month in the organisation's time zone, [start, end) in UTC;
- `active_during_month`: billable and active at any instant of the month:
  active_from < end and (active_to is null or active_to > start);
- `active_at_month_end`: billable and active at the last instant before `end`:
  active_from < end and (active_to is null or active_to >= end). A seat ending exactly at the
  midnight that ends the month was active through its last instant, so it counts.
- month to date (the current month, or any month when `now` falls inside it): the month is cut at
  `now`, so `end` above becomes `now` — "during" counts seats active at some point so far this month
  (seats starting later this month are not counted yet), "at month end" counts seats active right now.
- A month that has not started yet counts nothing.

Counts include zeros for every (company, product) pair with seat history (a seat that started
before the cut), so a drop to zero reaches the PSA.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, delete, func, insert, literal, or_, select

from .extensions import db
from .jobs import on_cron_tick
from .models import Company, CountOverride, MonthlyCount, Product, Seat
from .models._types import utcnow
from .timezones import org_zone

log = logging.getLogger(__name__)

PUSH_MONTH_OPTIONS = ("last_closed_month", "month_to_date")
LIVE_REFRESH_MINUTES = 15  # how often the cron tick refreshes the stored month-to-date counts

Pair = tuple[int, int]


# --- months ---------------------------------------------------------------------------------------


def month_start(d: dt.date) -> dt.date:
    if isinstance(d, dt.datetime):
        d = d.date()
    return d.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    month = month_start(month)
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month: dt.date) -> dt.date:
    month = month_start(month)
    return dt.date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def add_months(month: dt.date, n: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + n
    return dt.date(index // 12, index % 12 + 1, 1)


def _local_midnight_utc(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    # Midnight exists in every IANA zone on the 1st of a month in practice; zoneinfo resolves any gap.
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(dt.UTC)


def month_bounds_utc(month: dt.date, tz: ZoneInfo | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the calendar month in `tz` (default: the organisation's), as UTC datetimes."""
    tz = tz or org_zone()
    month = month_start(month)
    return _local_midnight_utc(month, tz), _local_midnight_utc(next_month(month), tz)


def current_month(now: dt.datetime | None = None, tz: ZoneInfo | None = None) -> dt.date:
    tz = tz or org_zone()
    now = now or utcnow()
    return month_start(now.astimezone(tz).date())


def push_month(option: str, now: dt.datetime | None = None) -> dt.date:
    """The month a sync bills: the last closed month (default) or the current month to date."""
    this_month = current_month(now)
    if option == "month_to_date":
        return this_month
    if option == "last_closed_month":
        return previous_month(this_month)
    raise ValueError(f"unknown push month option {option!r}; expected one of {PUSH_MONTH_OPTIONS}")


def is_closed(month: dt.date, now: dt.datetime | None = None) -> bool:
    return month_start(month) < current_month(now)


# --- the set-based pass ---------------------------------------------------------------------------


def _counts_select(month: dt.date, company_ids=None, product_ids=None, now: dt.datetime | None = None):
    """SELECT company_id, product_id, count — one GROUP BY over the seats; None if nothing to count."""
    now = now or utcnow()
    start, end = month_bounds_utc(month)
    cut = min(end, now)
    if cut <= start:
        return None
    s, p = Seat.__table__.c, Product.__table__.c
    ended_after = or_(s.active_to.is_(None), s.active_to > start)
    active_at_cut = or_(s.active_to.is_(None), s.active_to >= cut)
    counted = case(
        (and_(s.billable, p.count_rule == "active_at_month_end", active_at_cut), 1),
        (and_(s.billable, p.count_rule != "active_at_month_end", ended_after), 1),
        else_=0,
    )
    # Every seat that started before the cut makes its pair appear (with 0 if nothing counts).
    query = (
        select(s.company_id, s.product_id, func.sum(counted).label("count"))
        .select_from(Seat.__table__.join(Product.__table__, p.id == s.product_id))
        .where(s.active_from < cut)
        .group_by(s.company_id, s.product_id)
    )
    if company_ids is not None:
        query = query.where(s.company_id.in_(list(company_ids)))
    if product_ids is not None:
        query = query.where(s.product_id.in_(list(product_ids)))
    return query


def compute_counts(month: dt.date, company_ids=None, product_ids=None, now: dt.datetime | None = None
                   ) -> dict[Pair, int]:
    """Live counts of a month by each product's count rule (zeros included for pairs with seat history)."""
    query = _counts_select(month, company_ids, product_ids, now)
    if query is None:
        return {}
    return {(c, p): int(n or 0) for c, p, n in db.session.execute(query)}


def month_is_frozen(month: dt.date) -> bool:
    return db.session.scalar(
        select(literal(1)).where(MonthlyCount.month == month_start(month), MonthlyCount.frozen).limit(1)
    ) is not None


def _pair_filter(query, model, company_ids, product_ids):
    if company_ids is not None:
        query = query.where(model.company_id.in_(list(company_ids)))
    if product_ids is not None:
        query = query.where(model.product_id.in_(list(product_ids)))
    return query


def overrides_for(month: dt.date, company_ids=None, product_ids=None) -> dict[Pair, CountOverride]:
    query = _pair_filter(select(CountOverride).where(CountOverride.month == month_start(month)),
                         CountOverride, company_ids, product_ids)
    return {(o.company_id, o.product_id): o for o in db.session.scalars(query)}


def target_counts(month: dt.date, company_ids=None, product_ids=None, now: dt.datetime | None = None
                  ) -> dict[Pair, int]:
    """What a sync must bill for a month: the snapshot if the month is frozen, else the live count;
    an override replaces either. Pairs with a snapshot row, an override or seat history are all
    present, with 0 where nothing counts, so a drop to zero is pushed too."""
    month = month_start(month)
    live = compute_counts(month, company_ids, product_ids, now)
    if month_is_frozen(month):
        # The snapshot never changes by itself: seat history only contributes zeros for pairs that
        # appeared after the freeze (seats back-dated into the closed month).
        targets = dict.fromkeys(live, 0)
        query = _pair_filter(select(MonthlyCount.company_id, MonthlyCount.product_id, MonthlyCount.count)
                             .where(MonthlyCount.month == month, MonthlyCount.frozen),
                             MonthlyCount, company_ids, product_ids)
        targets.update({(c, p): n for c, p, n in db.session.execute(query)})
    else:
        targets = live
    for pair, override in overrides_for(month, company_ids, product_ids).items():
        targets[pair] = override.count
    return targets


def stored_targets(month: dt.date) -> dict[Pair, int]:
    """Targets of every company for a month, read from the stored counts (snapshot or the live rows
    the job keeps) when there are any, else computed. For whole-organisation tables and exports."""
    month = month_start(month)
    rows = {(c, p): n for c, p, n in db.session.execute(
        select(MonthlyCount.company_id, MonthlyCount.product_id, MonthlyCount.count)
        .where(MonthlyCount.month == month))}
    if not rows:
        return target_counts(month)
    for pair, override in overrides_for(month).items():
        rows[pair] = override.count
    return rows


def month_table(months: list[dt.date], company_ids=None) -> dict[Pair, dict[dt.date, int]]:
    """{(company, product): {month: target}} — exact for a list of companies, stored for all of them."""
    table: dict[Pair, dict[dt.date, int]] = {}
    for month in months:
        values = target_counts(month, company_ids) if company_ids is not None else stored_targets(month)
        for pair, n in values.items():
            table.setdefault(pair, {})[month] = n
    return table


def month_totals(months: list[dt.date]) -> dict[int, dict[dt.date, int]]:
    """{product: {month: total over all companies}}, summed in SQL from the stored counts; a month with
    nothing stored (history from before SeatSync froze months) is computed."""
    months = [month_start(m) for m in months]
    totals: dict[int, dict[dt.date, int]] = {}
    stored_months = set()
    for month, product, total in db.session.execute(
            select(MonthlyCount.month, MonthlyCount.product_id, func.sum(MonthlyCount.count))
            .where(MonthlyCount.month.in_(months)).group_by(MonthlyCount.month, MonthlyCount.product_id)):
        totals.setdefault(product, {})[month] = int(total or 0)
        stored_months.add(month)
    overrides = db.session.scalars(select(CountOverride).where(CountOverride.month.in_(stored_months))).all() \
        if stored_months else []
    for override in overrides:
        stored = db.session.scalar(select(MonthlyCount.count).where(
            MonthlyCount.company_id == override.company_id, MonthlyCount.product_id == override.product_id,
            MonthlyCount.month == override.month)) or 0
        bucket = totals.setdefault(override.product_id, {})
        bucket[override.month] = bucket.get(override.month, 0) + override.count - stored
    for month in months:
        if month in stored_months:
            continue
        for (_company, product), n in target_counts(month).items():
            bucket = totals.setdefault(product, {})
            bucket[month] = bucket.get(month, 0) + n
    return totals


# --- storing: live counts and snapshots -----------------------------------------------------------


def _store(month: dt.date, frozen: bool, company_ids=None, now: dt.datetime | None = None) -> int:
    """Replace the month's non-frozen rows with a fresh computation, in one INSERT ... SELECT."""
    month = month_start(month)
    now = now or utcnow()
    # A closed month is computed over its whole span, even if `now` is a little before its end
    # (callers decide when a month may be frozen).
    query = _counts_select(month, company_ids, None, now if not frozen else max(now, month_bounds_utc(month)[1]))
    stale = delete(MonthlyCount).where(MonthlyCount.month == month, MonthlyCount.frozen.is_(False))
    if company_ids is not None:
        stale = stale.where(MonthlyCount.company_id.in_(list(company_ids)))
    db.session.execute(stale)
    if query is None:
        return 0
    rows = query.add_columns(literal(month).label("month"), literal(frozen).label("frozen"),
                             literal(now, MonthlyCount.__table__.c.computed_at.type).label("computed_at"))
    if not frozen and month_is_frozen(month):
        # Frozen pairs keep their snapshot: only pairs without a frozen row get a live row.
        s = Seat.__table__.c
        rows = rows.where(~select(literal(1)).where(
            MonthlyCount.month == month, MonthlyCount.frozen,
            MonthlyCount.company_id == s.company_id, MonthlyCount.product_id == s.product_id).exists())
    db.session.execute(
        insert(MonthlyCount).from_select(["company_id", "product_id", "count", "month", "frozen", "computed_at"], rows)
    )
    # Rows this pass wrote (the driver's rowcount is not reliable for INSERT ... SELECT).
    written = select(func.count()).select_from(MonthlyCount).where(
        MonthlyCount.month == month, MonthlyCount.frozen.is_(frozen), MonthlyCount.computed_at == now)
    if company_ids is not None:
        written = written.where(MonthlyCount.company_id.in_(list(company_ids)))
    return db.session.scalar(written) or 0


def store_live_counts(month: dt.date | None = None, company_ids=None, now: dt.datetime | None = None) -> int:
    """Compute a month (default: the current one) and keep it in MonthlyCount (frozen=False) so pages
    read fast. Frozen rows are never touched. Commits."""
    now = now or utcnow()
    month = month_start(month or current_month(now))
    stored = _store(month, frozen=False, company_ids=company_ids, now=now)
    db.session.commit()
    return stored


def freeze_month(month: dt.date, now: dt.datetime | None = None) -> int:
    """Freeze a month into its snapshot. Idempotent: a month already frozen is left exactly as it is.
    Returns the number of snapshot rows written (0 when it was already frozen). Commits."""
    month = month_start(month)
    if month_is_frozen(month):
        return 0
    written = _store(month, frozen=True, now=now)
    db.session.commit()
    return written


CLOSED_MONTHS_WATCHED = 12  # how far back a late change is looked for (the months the counts page shows)


DRIFT_CACHE_KEY = "seatsync:closed-month-drift"


def drifted_closed_months(company_ids=None, now: dt.datetime | None = None) -> list[dt.date]:
    """Frozen months (of the last CLOSED_MONTHS_WATCHED) whose snapshot no longer matches the seats: a
    late import, API call or manual edit changed them. Only an explicit recompute_month() moves the
    snapshot (and so what the next sync pushes); these are the months to offer it for. Newest first.

    Recounting a month reads every seat (about 0.7 s each at 1,000,000 seats), so the answer for all
    companies is kept in Redis with a fingerprint of the seats and snapshots, and the cron tick renews it
    after a change: a page asks again only when something changed since."""
    if company_ids is not None or now is not None:
        return _drifted_closed_months(company_ids, now)
    from .queue import get_redis

    version = _counts_fingerprint()
    cached = get_redis().get(DRIFT_CACHE_KEY)
    if cached:
        stored = json.loads(cached)
        if stored["version"] == version:
            return [dt.date.fromisoformat(m) for m in stored["months"]]
    drifted = _drifted_closed_months(None, None)
    get_redis().set(DRIFT_CACHE_KEY, json.dumps({"version": version, "months": [m.isoformat() for m in drifted]}))
    return drifted


@on_cron_tick
def renew_closed_month_drift(now: dt.datetime) -> list[dt.date]:
    """Recount after a change in the clock process, so pages find the answer ready."""
    return drifted_closed_months()


def _counts_fingerprint() -> str:
    """Changes whenever a seat is added or changed (seats are never deleted, only ended; a deleted
    company takes its snapshot rows with it), a snapshot row changes, the month turns or the zone does."""
    seats = db.session.execute(select(func.count(), func.max(Seat.updated_at)).select_from(Seat)).one()
    frozen = db.session.execute(
        select(func.count(), func.sum(MonthlyCount.count * (MonthlyCount.company_id * 7919 + MonthlyCount.product_id)))
        .select_from(MonthlyCount).where(MonthlyCount.frozen)).one()
    updated = seats[1].isoformat() if seats[1] else ""
    return f"{current_month()}|{org_zone().key}|{seats[0]}|{updated}|{frozen[0]}|{frozen[1] or 0}"


def _drifted_closed_months(company_ids, now: dt.datetime | None) -> list[dt.date]:
    this_month = current_month(now)
    drifted = []
    for back in range(1, CLOSED_MONTHS_WATCHED + 1):
        month = add_months(this_month, -back)
        if not month_is_frozen(month):
            continue
        live = {pair: n for pair, n in compute_counts(month, company_ids, now=now).items() if n}
        frozen = {(c, p): n for c, p, n in db.session.execute(_pair_filter(
            select(MonthlyCount.company_id, MonthlyCount.product_id, MonthlyCount.count)
            .where(MonthlyCount.month == month, MonthlyCount.frozen, MonthlyCount.count != 0),
            MonthlyCount, company_ids, None))}
        if live != frozen:
            drifted.append(month)
    return drifted


def _labels(pairs) -> dict[Pair, str]:
    company_ids = {c for c, _ in pairs}
    product_ids = {p for _, p in pairs}
    companies = {i: n for i, n in db.session.execute(select(Company.id, Company.name).where(
        Company.id.in_(company_ids)))} if company_ids else {}
    products = {i: n for i, n in db.session.execute(select(Product.id, Product.name).where(
        Product.id.in_(product_ids)))} if product_ids else {}
    return {(c, p): f"{companies.get(c, c)} (#{c}) / {products.get(p, p)}" for c, p in pairs}


def recompute_month(month: dt.date, user=None, now: dt.datetime | None = None) -> dict[Pair, tuple[int, int]]:
    """An admin's explicit recomputation of a closed month: the snapshot is rebuilt from the seats as
    they are now; every changed count goes to the audit log (old → new). Returns {pair: (old, new)}.
    Commits."""
    from . import audit

    month = month_start(month)
    now = now or utcnow()
    if not is_closed(month, now):
        raise ValueError(f"{month:%B %Y} is not closed yet; only closed months can be recomputed")
    old = {(c, p): n for c, p, n in db.session.execute(
        select(MonthlyCount.company_id, MonthlyCount.product_id, MonthlyCount.count)
        .where(MonthlyCount.month == month, MonthlyCount.frozen))}
    db.session.execute(delete(MonthlyCount).where(MonthlyCount.month == month))
    _store(month, frozen=True, now=now)
    new = {(c, p): n for c, p, n in db.session.execute(
        select(MonthlyCount.company_id, MonthlyCount.product_id, MonthlyCount.count)
        .where(MonthlyCount.month == month, MonthlyCount.frozen))}
    changes = {pair: (old.get(pair, 0), new.get(pair, 0)) for pair in set(old) | set(new)
               if old.get(pair, 0) != new.get(pair, 0)}
    labels = _labels(changes)
    actor = getattr(user, "email", None)
    audit.record(
        "counts.recomputed",
        target=f"{month:%B %Y}",
        summary=(f"Recomputed {month:%B %Y}: {len(changes)} count(s) changed"
                 + ("" if not changes else ": " + "; ".join(
                     f"{labels[pair]} {a} → {b}" for pair, (a, b) in sorted(changes.items())[:20]))
                 + (" …" if len(changes) > 20 else "")),
        before={labels[pair]: a for pair, (a, _b) in changes.items()},
        after={labels[pair]: b for pair, (_a, b) in changes.items()},
        actor=actor,
    )
    db.session.commit()
    return changes


# --- the schedule ---------------------------------------------------------------------------------


@on_cron_tick
def counts_tick(now: dt.datetime) -> None:
    """Freeze a month as soon as its last day is over (the first tick at or after the midnight that
    ends it, so no change made on the last day is missed; a tick missed while the clock was down
    catches up), and keep the stored month-to-date counts fresh."""
    this_month = current_month(now)
    closed = previous_month(this_month)
    if not month_is_frozen(closed):
        written = freeze_month(closed, now=now)
        log.info("froze %s: %d snapshot rows", closed, written)
    if now.minute % LIVE_REFRESH_MINUTES == 0:
        store_live_counts(this_month, now=now)


def compute_counts_job(month_iso: str | None = None, company_ids: list[int] | None = None) -> int:
    """RQ entry point: refresh the stored live counts (after an import or an edit)."""
    month = dt.date.fromisoformat(month_iso) if month_iso else None
    return store_live_counts(month, company_ids=company_ids)
