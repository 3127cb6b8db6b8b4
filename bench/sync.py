"""A full sync of 1,000 company mappings × 3 products per PSA, against the simulator at 50 ms per call.

Run: `.venv/bin/python -m bench.sync [--companies 1000] [--latency-ms 50] [--workers 3] [--psa autotask ...]`
(PostgreSQL at BENCH_PG_ADMIN_URL, Redis at BENCH_REDIS_URL, default db 12). It starts the simulator
in this process, builds a throwaway database with the migrations, maps every simulated customer,
sets the targets by count overrides, runs `python worker.py` processes and one sync per PSA, and prints:
- PSA calls made vs the minimum needed: the fewest reads the API allows (ConnectWise: one per agreement;
  Autotask: two queries per 500 contracts; Kaseya BMS: one contracts lookup per 100 contracts, the services
  catalog, and the related-services pages of each mapped service), plus the fewest writes (ConnectWise and
  Autotask: one per line whose quantity differs, a missing Autotask line included; Kaseya BMS: one per
  contract with any line to write, because its write takes every line of a contract at once);
- wall time vs the bound: minimum calls × latency ÷ the PSA's allowed concurrency (Kaseya BMS documents
  none: the bound uses the 3 writes in flight SeatSync allows it, webapp/sync/push.UNDOCUMENTED_CONCURRENCY);
- the workers' peak RSS (VmHWM).
Targets (PRODUCT.md §7): calls ≤ 1.1 × minimum, wall ≤ 1.25 × bound, RSS ≤ 150 MB.

Hourly budgets: the simulator would accept any rate, so the run sets PSA_DEV_HOSTS_NO_HOURLY_LIMIT=1, which
lifts the PSAs' hourly budgets for PSA_DEV_HOSTS only (never for a real host). The measured wall is
therefore without them; for the PSAs that document one, the bench also prints the wall projected under the
real budget (Kaseya BMS: 1,500 calls per hour per endpoint; Autotask: 10,000 per hour per database),
assuming the sync starts with the hour's budget unused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import redis as redis_lib
from werkzeug.serving import make_server

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
ROOT = Path(__file__).resolve().parents[1]
HOST_FIELD = {"connectwise": "site", "kaseya_bms": "hostname", "autotask": None}
KEY = "bWFkZS11cC1rZXktZm9yLXRlc3RzLW9ubHktMzJieXQ="


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def projected_wall(kind: str, sent: list[dict], wall: float) -> str:
    """The wall time under the PSA's real hourly budget, which the bench lifts for the simulator.

    A moving one-hour window: with N calls on the busiest budget and a limit L, the calls after the
    first L wait for the window to move, so the run needs about ceil(N / L) - 1 extra hours.
    """
    if kind == "kaseya_bms":
        from psa_sim.kaseya_bms import endpoint_of

        per_budget = Counter(endpoint_of(r["path"]) for r in sent)
        limit, what = 1500, "1,500 calls per hour per endpoint"
    elif kind == "autotask":
        per_budget = Counter({"the database": len(sent)})
        limit, what = 10_000, "10,000 calls per hour per database"
    else:
        return ""
    busiest, count = per_budget.most_common(1)[0] if per_budget else ("-", 0)
    hours = max(0, math.ceil(count / limit) - 1)
    if not hours:
        return (f"projected under the real budget ({what}; measured with it lifted): {wall:.1f} s, the same — "
                f"the busiest budget ({busiest}) needs {count} calls, within one hour's {limit:,}")
    return (f"projected under the real budget ({what}; measured with it lifted): about {hours} h more than "
            f"{wall:.1f} s — the busiest budget ({busiest}) needs {count} calls")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--companies", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--psa", action="append", choices=["connectwise", "autotask", "kaseya_bms"])
    args = parser.parse_args()
    kinds = args.psa or ["connectwise", "autotask", "kaseya_bms"]

    import logging

    from psa_sim.seed import SIM_CREDENTIALS
    from psa_sim.server import create_sim_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per simulated call drowns the figures
    sim_app = create_sim_app(seed=None)
    server = make_server("127.0.0.1", 0, sim_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_port}"
    state = sim_app.extensions["psa_sim"]
    import psa_sim.seed as seeding

    seeding.seed_all(state, args.companies)

    name = f"seatsync_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    redis = redis_lib.Redis.from_url(REDIS_URL)
    redis.flushdb()
    instance = tempfile.mkdtemp(prefix="seatsync-bench-")
    environ = {
        "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "QUEUE_NAME": f"bench-{uuid.uuid4().hex[:6]}",
        "SECRET_KEY": "bench", "ENCRYPTION_KEY": KEY, "SEATSYNC_INSTANCE": instance, "PSA_DEV_HOSTS": host,
        "AUTOTASK_ZONE_URL": f"http://{host}/atservicesrest/v1.0/zoneInformation", "CW_CLIENT_ID": "bench",
        "SEATSYNC_EMBEDDED_WORKER": "0", "PSA_DEV_HOSTS_NO_HOURLY_LIMIT": "1",
    }
    workers: list[subprocess.Popen] = []
    try:
        from flask_migrate import upgrade

        from webapp import create_app
        from webapp.connections import client_for, get_integration, save_credentials
        from webapp.counts import push_month
        from webapp.extensions import db
        from webapp.models import Company, CompanyMapping, CountOverride, Product, ProductMapping, SyncRun
        from webapp.sync import start_sync
        from webapp.sync.plan import billed_month_start
        from webapp.sync.push import UNDOCUMENTED_CONCURRENCY

        app = create_app(environ=environ)
        with app.app_context():
            upgrade()
            rng = random.Random(11)
            products = [Product(name=n) for n in seeding.DEMO_PRODUCTS[:3]]
            companies = [Company(name=f"Customer {i:05d}", external_id=f"c{i}") for i in range(args.companies)]
            db.session.add_all(products + companies)
            db.session.flush()
            month = push_month("last_closed_month", dt.datetime.now(dt.UTC))
            db.session.add_all(CountOverride(company_id=c.id, product_id=p.id, month=month, count=rng.randint(0, 60),
                                             note="bench") for c in companies for p in products)
            db.session.commit()
            print(f"{args.companies} companies × 3 products, simulator latency {args.latency_ms:g} ms, "
                  f"{args.workers} worker processes")
            for kind in kinds:
                integration = get_integration(kind)
                values = dict(SIM_CREDENTIALS[kind])
                if HOST_FIELD[kind]:
                    values[HOST_FIELD[kind]] = host
                save_credentials(integration, values)
                integration.enabled, integration.credentials_status = True, "ok"
                db.session.commit()
                client = client_for(integration)
                psa_products = {p.name: p.id for p in client.list_products()}
                for product in products:
                    db.session.add(ProductMapping(integration_id=integration.id, product_id=product.id,
                                                  psa_product_id=psa_products[product.name]))
                psa_companies = {c.name: c.id for c in client.list_companies()}
                for company in companies:
                    agreement = client.list_agreements(psa_companies[company.name])[0]
                    db.session.add(CompanyMapping(integration_id=integration.id, company_id=company.id,
                                                  psa_company_id=psa_companies[company.name],
                                                  agreement_id=agreement.id))
                db.session.commit()
                # The minimum: what a perfect engine must write, from the lines as they are now.
                mappings = db.session.scalars(db.select(CompanyMapping).filter_by(integration_id=integration.id)).all()
                on = billed_month_start(dt.datetime.now(dt.UTC), "UTC")
                lines = client.read_lines([m.agreement_id for m in mappings], on)
                targets = {(o.company_id, o.product_id): o.count for o in db.session.scalars(db.select(CountOverride))}
                by_psa = {psa_products[p.name]: p.id for p in products}
                writes = 0
                for m in mappings:
                    held = {line.product_id: line.quantity for line in lines[m.agreement_id]}
                    differing = 0
                    for psa_id, pid in by_psa.items():
                        target = targets.get((m.company_id, pid), 0)
                        if psa_id in held:
                            differing += held[psa_id] is None or held[psa_id] != target
                        else:
                            differing += target > 0
                    # Kaseya BMS writes every line of a contract in one request.
                    writes += min(differing, 1) if kind == "kaseya_bms" else differing
                concurrency = client.concurrency_per_endpoint or UNDOCUMENTED_CONCURRENCY
                if kind == "connectwise":
                    reads = len(mappings)
                elif kind == "autotask":
                    reads = 2 * math.ceil(len(mappings) / 500)
                else:
                    services = state.data["kaseya_bms"]["services"].values()
                    used = Counter(line["serviceId"] for line in state.data["kaseya_bms"]["contract_services"].values())
                    mapped = {str(psa_id) for psa_id in psa_products.values()}
                    reads = (math.ceil(len(mappings) / 100) + 1
                             + sum(max(1, math.ceil(used[s["id"]] / 100)) for s in services
                                   if s.get("isActive") and str(s["id"]) in mapped))
                minimum = reads + writes

                state.log.clear()
                state.latency_ms = args.latency_ms
                env = {**os.environ, **environ}
                # Each worker in a session of its own, so its RQ scheduler child goes with it at the end.
                workers = [subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
                           for _ in range(args.workers)]
                time.sleep(2)  # workers up before the clock starts
                started = time.monotonic()
                run = start_sync(integration, trigger="cli")
                while True:
                    db.session.rollback()
                    current = db.session.get(SyncRun, run.id)
                    if current.state not in ("queued", "running"):
                        break
                    time.sleep(0.2)
                wall = time.monotonic() - started
                rss = max(peak_rss_mb(w.pid) for w in workers)
                for w in workers:
                    w.send_signal(signal.SIGKILL)
                    w.wait()
                state.latency_ms = 0
                sent = [r for r in state.log if r["psa"] == kind]
                calls = len(sent)
                bound = minimum * args.latency_ms / 1000 / concurrency
                print(f"\n{kind}: run {current.state}: {current.in_sync} in sync, {current.updated} updated, "
                      f"{current.needs_attention} need attention, {current.errors} errors")
                print(f"  PSA calls {calls} vs minimum {minimum} ({reads} reads + {writes} writes): "
                      f"{calls / minimum:.2f}× (target ≤ 1.1×)")
                print(f"  wall {wall:.1f} s vs bound {bound:.1f} s ({minimum} × {args.latency_ms:g} ms ÷ "
                      f"{concurrency}): {wall / bound:.2f}× (target ≤ 1.25×)")
                if kind == "kaseya_bms":
                    print(f"    (Kaseya BMS documents no concurrency limit: the bound uses the {concurrency} writes "
                          "in flight SeatSync allows a PSA without one)")
                projected = projected_wall(kind, sent, wall)
                if projected:
                    print(f"  {projected}")
                print(f"  worker peak RSS {rss:.0f} MB (target ≤ 150 MB)")
            db.session.remove()
            db.engine.dispose()
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGKILL)
            w.wait(10)
        server.shutdown()
        redis.flushdb()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
