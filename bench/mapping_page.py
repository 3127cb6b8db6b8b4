"""Company mapping page with 10,000 companies: server time per page and per search, on PostgreSQL.

Run: `.venv/bin/python -m bench.mapping_page` (PostgreSQL at BENCH_PG_ADMIN_URL, default
postgresql://postgres@127.0.0.1:5432/postgres). It creates a throwaway database, builds it with the
migrations, generates the companies and a ConnectWise integration with 7,000 company mappings in mixed
statuses, then times the page through Flask's test client (in process: server time only, no network),
both as the full page and as the HTMX table partial that search, filters and paging swap in. The
integration is disabled, so no PSA is contacted: the figure is SeatSync's own time.
Target (PRODUCT.md §7): ≤ 100 ms per page or search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench.common import migrated_app, run_sql, throwaway_database

TARGET_MS = 100.0

GENERATE = """
INSERT INTO companies (name, external_id, active, created_at, updated_at)
SELECT 'Customer ' || lpad(i::text, 5, '0'), 'ext-' || i, i %% 50 <> 0, now(), now()
FROM generate_series(1, %(companies)s) AS i;
INSERT INTO integrations (kind, enabled, credentials_status, credentials_message, options, scope, schedule_kind,
                          schedule_time, schedule_weekday, created_at, updated_at)
VALUES ('connectwise', false, 'ok', '', '{}', '{}', 'daily', '02:00', 0, now(), now());
INSERT INTO company_mappings (integration_id, company_id, psa_company_id, psa_company_name, agreement_id,
                              agreement_name, excluded, status, status_reason, last_sync_at)
SELECT 1, i, CASE WHEN i %% 10 = 0 THEN NULL ELSE (1000 + i)::text END, 'PSA Customer ' || i,
       CASE WHEN i %% 10 = 0 THEN NULL ELSE (5000 + i)::text END, 'Customer ' || i || ' — Managed Services',
       i %% 97 = 0,
       (ARRAY['in sync', 'updated', 'needs attention', 'error', 'never synced'])[1 + i %% 5], '',
       CASE WHEN i %% 5 = 4 THEN NULL ELSE now() - make_interval(hours => i %% 48) END
FROM generate_series(1, %(mapped)s) AS i;
ANALYZE
"""

REQUESTS = [
    ("page 1", "/integrations/connectwise/companies", False),
    ("page 1 (table partial)", "/integrations/connectwise/companies", True),
    ("page 100 (table partial)", "/integrations/connectwise/companies?page=100", True),
    ("last page (table partial)", "/integrations/connectwise/companies?page=196", True),
    ("search 'customer 07' (table partial)", "/integrations/connectwise/companies?q=customer+07", True),
    ("search, no match (table partial)", "/integrations/connectwise/companies?q=zzzz", True),
    ("filter unmapped (table partial)", "/integrations/connectwise/companies?filter=unmapped", True),
    ("filter error, page 3 (table partial)", "/integrations/connectwise/companies?filter=error&page=3", True),
    ("filter excluded + search", "/integrations/connectwise/companies?filter=excluded&q=customer+0", True),
    ("row poll (one company)", "/integrations/connectwise/companies/4242/row", True),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--companies", type=int, default=10_000)
    parser.add_argument("--mapped", type=int, default=7_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    with throwaway_database() as url:
        return run(url, args)


def run(url: str, args) -> int:
    from webapp.cli import create_user
    from webapp.extensions import db

    app = migrated_app(url)
    with app.app_context():
        run_sql(url, GENERATE, {"companies": args.companies, "mapped": min(args.mapped, args.companies)})
        create_user("bench@msp.example", "billing", "bench-password-123")
        db.session.commit()
        db.session.remove()
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    client.post("/login", data={"email": "bench@msp.example", "password": "bench-password-123"})
    print(f"{args.companies:,} companies, {min(args.mapped, args.companies):,} company mappings; "
          f"median and worst of {args.repeat} requests each (server time, test client, PostgreSQL)")
    worst_median = 0.0
    for label, path, partial in REQUESTS:
        headers = {"HX-Request": "true", "HX-Target": "company-table"} if partial else {}
        response = client.get(path, headers=headers)  # warm
        assert response.status_code == 200, (path, response.status_code)
        samples = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            client.get(path, headers=headers)
            samples.append((time.perf_counter() - started) * 1000)
        median = statistics.median(samples)
        worst_median = max(worst_median, median)
        print(f"  {label:<40} median {median:6.1f} ms   max {max(samples):6.1f} ms   {len(response.data) // 1024} KiB")
    verdict = "OK" if worst_median <= TARGET_MS else "OVER TARGET"
    print(f"company mapping page, slowest median: {worst_median:.1f} ms (target ≤ {TARGET_MS:.0f} ms) {verdict}")
    with app.app_context():
        db.engine.dispose()
    return 0 if worst_median <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
