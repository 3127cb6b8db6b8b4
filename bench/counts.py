"""Monthly counts at scale: 1,000,000 seats over 10,000 companies and 5 products on PostgreSQL.

Run: `.venv/bin/python -m bench.counts` (PostgreSQL at BENCH_PG_ADMIN_URL, default
postgresql://postgres@127.0.0.1:5432/postgres). It creates a throwaway database, builds it with the
migrations, generates the seats with generate_series (seconds, not minutes; spread over two years, a fifth
ended, a twentieth not billable), times the month-to-date
computation, the stored live counts and the month-end snapshot, and drops the database.
Target (PRODUCT.md §7): ≤ 2 s for the computation and the snapshot.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import migrated_app, run_sql, throwaway_database
from webapp.models._types import utcnow

TARGET_SECONDS = 2.0

GENERATE = """
INSERT INTO companies (name, external_id, active, created_at, updated_at)
SELECT 'Company ' || i, 'ext-' || i, true, now(), now() FROM generate_series(1, %(companies)s) AS i;
INSERT INTO products (name, count_rule, active, created_at)
SELECT 'Product ' || i, CASE WHEN i %% 2 = 0 THEN 'active_at_month_end' ELSE 'active_during_month' END, true, now()
FROM generate_series(1, %(products)s) AS i;
INSERT INTO seats (company_id, product_id, user_email, active_from, active_to, billable, updated_at)
SELECT 1 + (i %% %(companies)s),
       1 + ((i / %(companies)s) %% %(products)s),
       'user' || i || '@example.com',
       %(now)s - make_interval(days => ((i * 7919) %% 730)::int),
       CASE WHEN i %% 5 = 0 THEN %(now)s - make_interval(days => ((i * 104729) %% 60)::int) END,
       i %% 20 <> 0,
       now()
FROM generate_series(1::bigint, %(seats)s) AS i;
ANALYZE
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, default=1_000_000)
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--products", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (prints its URL)")
    args = parser.parse_args(argv)

    with throwaway_database(keep=args.keep) as url:
        return run(url, args)


def run(url: str, args) -> int:
    from webapp import counts
    from webapp.extensions import db
    from webapp.models import MonthlyCount

    app = migrated_app(url)
    with app.app_context():
        now = utcnow()
        started = time.perf_counter()
        run_sql(url, GENERATE, {"companies": args.companies, "products": args.products, "seats": args.seats,
                                "now": now})
        print(f"generated {args.seats:,} seats over {args.companies:,} companies and {args.products} products "
              f"in {time.perf_counter() - started:.1f} s")

        this_month = counts.current_month(now)
        last_month = counts.previous_month(this_month)
        db.session.execute(db.text("SELECT 1"))  # connect before timing

        timings = {}
        started = time.perf_counter()
        live = counts.compute_counts(this_month, now=now)
        timings["compute month to date (dict)"] = time.perf_counter() - started

        started = time.perf_counter()
        stored = counts.store_live_counts(this_month, now=now)
        timings["compute + store live counts"] = time.perf_counter() - started

        started = time.perf_counter()
        frozen = counts.freeze_month(last_month, now=now)
        timings["compute + snapshot closed month"] = time.perf_counter() - started

        started = time.perf_counter()
        again = counts.freeze_month(last_month, now=now)
        timings["freeze again (idempotent no-op)"] = time.perf_counter() - started

        some = list(range(1, 101))
        started = time.perf_counter()
        counts.target_counts(last_month, company_ids=some, now=now)
        timings["target counts, 100 companies"] = time.perf_counter() - started

        total = db.session.scalar(db.select(db.func.sum(MonthlyCount.count)).where(
            MonthlyCount.month == last_month, MonthlyCount.frozen))
        print(f"pairs: {len(live):,} live, {stored:,} stored, {frozen:,} frozen ({again} on the second freeze); "
              f"seats counted in {last_month:%B %Y}: {total:,}")
        for label, seconds in timings.items():
            print(f"  {label:<36} {seconds * 1000:8.0f} ms")
        # Steady state: every closed month of the counts page was frozen by the month-end job.
        for back in range(2, 12):
            counts.freeze_month(counts.add_months(this_month, -back), now=now)
        pages = time_pages(app, this_month)
        for label, seconds in pages.items():
            print(f"  {label:<36} {seconds * 1000:8.0f} ms")
        worst = max(timings["compute + store live counts"], timings["compute + snapshot closed month"])
        verdict = "OK" if worst <= TARGET_SECONDS else "OVER TARGET"
        print(f"monthly counts for {args.seats:,} seats: {worst:.2f} s (target ≤ {TARGET_SECONDS:.0f} s) {verdict}")
        db.session.remove()
        db.engine.dispose()
        return 0 if worst <= TARGET_SECONDS else 1


def time_pages(app, this_month) -> dict[str, float]:
    """Server time of the pages that read these counts, with 10,000 companies and the seats above."""
    from webapp.cli import create_user
    from webapp.extensions import db

    create_user("bench@msp.example", "viewer", "bench-password-123")
    db.session.commit()
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    client.post("/login", data={"email": "bench@msp.example", "password": "bench-password-123"})
    timings = {}
    for label, url in [("companies page 1", "/companies"), ("companies page 150", "/companies?page=150"),
                       ("companies search", "/companies?q=ompany 99"), ("company page (100 seats)", "/companies/77"),
                       ("counts page (12 months)", "/counts")]:
        client.get(url)  # warm
        started = time.perf_counter()
        status = client.get(url).status_code
        timings[f"{label} [{status}]"] = time.perf_counter() - started
    return timings


if __name__ == "__main__":
    sys.exit(main())
