"""Full syncs of 1,000 company mappings × 3 products per PSA against the simulator (50 ms a call): calm, then a storm.

Run: `.venv/bin/python -m bench.sync [--psa connectwise] [--companies 1000] [--latency-ms 50] [--workers 3]
[--storm-rate 0.2] [--seed 1] [--no-storm]` (PostgreSQL at BENCH_PG_ADMIN_URL, Redis at BENCH_REDIS_URL,
default db 12). Try it small first (`--psa connectwise --companies 50`). It starts the simulator in this
process, builds a throwaway database with the migrations, maps every simulated customer, sets the targets
by count overrides, runs `python worker.py` processes and, per PSA, two runs of ONE Sync now each:

1. calm: prints
- PSA calls made vs the minimum needed: the fewest reads the API allows (ConnectWise: one per agreement;
  Autotask: two queries per 500 contracts; Kaseya BMS: one contracts lookup per 100 contracts, the services
  catalog, and the related-services pages of each mapped service; HaloPSA: the list of every recurring
  invoice with its lines, one page per 100), plus the fewest writes (ConnectWise and Autotask: one per line
  whose quantity differs, a missing Autotask line included; Kaseya BMS and HaloPSA: one per contract /
  recurring invoice with any line to write, because their write takes every line of one at once), plus the
  read-back of the written lines (ConnectWise: one per written agreement; Autotask: two queries per 500
  written contracts; Kaseya BMS: none, Units cannot be read back; HaloPSA: the list again, or the written
  recurring invoices one by one if fewer);
- wall time vs the bound: minimum calls × latency ÷ the PSA's allowed concurrency (Kaseya BMS and HaloPSA
  document none: the bound uses the 3 requests in flight per endpoint SeatSync allows them, their clients'
  concurrency_per_endpoint, which is also webapp/sync/push.UNDOCUMENTED_CONCURRENCY writes per job);
- requests in flight, time-weighted (psa_sim/inflight.py): the average over the time at least one was in
  flight, for the PSA and its busiest endpoints, and over the whole wall time;
- the workers' peak RSS (VmHWM);
- whether every line holds its target afterwards, read from the simulator's records (/_sim/lines), not
  through SeatSync's client.
Targets (PRODUCT.md §7, issue 17): calls ≤ 1.1 × minimum, wall ≤ 1.25 × bound, in flight ≥ 2.8 of 3,
RSS ≤ 150 MB.

2. revert (issue 14): "Revert this run" of the calm run, with fresh workers. Prints its PSA calls vs the
minimum (reads of the agreements the calm run wrote, one write per written line — Kaseya BMS: per contract —
and their read-back, as for a sync) and wall vs the same bound (PRODUCT.md §7: ≤ 1.1× calls, ≤ 1.25× the
bound), and whether every line holds what it held before the calm run again (a line the calm run created:
0). Kaseya BMS cannot read Units, so the quantities it held before SeatSync's first write are unknown: its
revert writes only the lines the calm run created, and says so.

3. storm: every target gets a new count, then one Sync now while the simulator fails requests (seeded, so
reproducible): `--storm-rate` (20 %) of all requests fail transiently, as PRODUCT.md §7 puts it: every 10th
is a 429 + Retry-After: 1, and of the rest enough get a 5xx — 503 and 500 (Autotask: 502, as its 500 means a
validation error; and its thread-limit answer, Itgenatr005) in equal parts — on reads and writes alike.
Prints the run's outcome, whether every line is right afterwards, calls vs 1.5 × the minimum (PRODUCT.md §7)
and vs the floor any client needs when that share of answers fails (minimum ÷ (1 − share)). The bench exits 1
when a run left a line wrong or a company in error, or did not finish, or a storm cost over 1.5 × the minimum.

Hourly budgets: the simulator would accept any rate, so the run sets PSA_DEV_HOSTS_NO_HOURLY_LIMIT=1, which
lifts the PSAs' hourly budgets for PSA_DEV_HOSTS only (never for a real host). The measured wall is
therefore without them; for the PSAs that document one, the bench also prints the wall projected under the
real budget (Kaseya BMS: 1,500 calls per hour per endpoint; Autotask: 10,000 per hour per database;
HaloPSA: 60 per minute per instance), assuming the sync starts with the budget unused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_lib
from werkzeug.serving import make_server

from bench.common import bench_environ, migrated_app, throwaway_database
from webapp.models._types import utcnow

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
ROOT = Path(__file__).resolve().parents[1]
HOST_FIELD = {"connectwise": "site", "kaseya_bms": "hostname", "autotask": None, "halopsa": "instance"}
PSAS = ["connectwise", "autotask", "kaseya_bms", "halopsa"]
WHOLE_AGREEMENT_WRITES = ("kaseya_bms", "halopsa")  # one request writes every line of a contract / recurring invoice
BUSY_RUN_STATES = {"queued", "running"}


def value_of(state) -> str:
    """A state as its string, whether a plain string or an enumeration member."""
    return str(getattr(state, "value", state))


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    elif kind == "halopsa":
        # A minute's window: the calls take at least calls / 60 minutes, whatever the concurrency.
        minutes = len(sent) / 60
        return (f"projected under the real budget (60 calls per minute per instance; measured with it lifted): "
                f"at least {max(wall, minutes * 60) / 60:.0f} min for {len(sent)} calls")
    else:
        return ""
    busiest, count = per_budget.most_common(1)[0] if per_budget else ("-", 0)
    hours = max(0, math.ceil(count / limit) - 1)
    if not hours:
        return (f"projected under the real budget ({what}; measured with it lifted): {wall:.1f} s, the same — "
                f"the busiest budget ({busiest}) needs {count} calls, within one hour's {limit:,}")
    return (f"projected under the real budget ({what}; measured with it lifted): about {hours} h more than "
            f"{wall:.1f} s — the busiest budget ({busiest}) needs {count} calls")


THROTTLED_EVERY = 10  # every 10th request of the storm is a 429 with Retry-After: 1


def storm_rules(kind: str, rate: float) -> list[dict]:
    """`rate` of all requests fail transiently (PRODUCT.md §7: "≥ 20 % of PSA requests failing transiently
    (5xx, 429 + Retry-After)"): every THROTTLED_EVERY-th is throttled, and of the rest enough get a 5xx —
    503, 500 (Autotask: 502) and for Autotask its thread-limit answer — that the failing share is `rate`.

    Autotask answers validation and business-rule failures as HTTP 500 with the same `errors` body
    (shared/psa/autotask.md §4), which a client must not retry; its storm uses 502 instead of 500.
    """
    rules = [{"psa": kind, "every": THROTTLED_EVERY, "status": 429, "retry_after": 1}]
    server_errors = [{"status": 503}, {"status": 502 if kind == "autotask" else 500}]
    if kind == "autotask":
        server_errors.insert(0, {"status": 500, "kind": "thread_limit"})
    # Of the requests the 429s spare; the first rule that fires answers, so each later rule's rate is
    # taken of what the earlier ones spared.
    share = max(0.0, rate - 1 / THROTTLED_EVERY) / (1 - 1 / THROTTLED_EVERY)
    spared = 1.0
    for error in server_errors:
        part = share / len(server_errors)
        rules.append({"psa": kind, "rate": part / spared, **error})
        spared -= part
    return rules


@dataclass
class Sim:
    state: object
    host: str
    on: dt.date  # the day whose quantities a sync writes


@dataclass
class Mapped:
    """One PSA with every simulated customer mapped."""

    kind: str
    integration: object
    client: object
    mappings: list
    products: list  # SeatSync products
    psa_products: dict[str, str]  # product name -> PSA product id
    concurrency: int


@dataclass
class Outcome:
    run: object
    finished: bool
    wall: float
    rss: float
    sent: list[dict]
    in_flight: dict
    statuses: Counter = field(default_factory=Counter)
    error_reasons: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    lines: int = 0
    cpu: float = 0.0  # the workers' CPU seconds during the run


def start_simulator(companies: int) -> tuple[object, object, str]:
    import psa_sim.seed as seeding
    from psa_sim.server import create_sim_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per simulated call drowns the figures
    sim_app = create_sim_app(seed=None)
    server = make_server("127.0.0.1", 0, sim_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state = sim_app.extensions["psa_sim"]
    seeding.seed_all(state, companies)
    return server, state, f"127.0.0.1:{server.server_port}"


def add_companies_and_targets(count: int, month: dt.date) -> list:
    import psa_sim.seed as seeding
    from webapp.extensions import db
    from webapp.models import Company, CountOverride, Product

    rng = random.Random(11)
    products = [Product(name=n) for n in seeding.DEMO_PRODUCTS[:3]]
    companies = [Company(name=f"Customer {i:05d}", external_id=f"c{i}") for i in range(count)]
    db.session.add_all(products + companies)
    db.session.flush()
    db.session.add_all(CountOverride(company_id=c.id, product_id=p.id, month=month, count=rng.randint(0, 60),
                                     note="bench") for c in companies for p in products)
    db.session.commit()
    return products


def change_targets(seed: str) -> None:
    """Give every target a new count, so the storm run has writes to make."""
    from webapp.extensions import db
    from webapp.models import CountOverride

    rng = random.Random(seed)
    for override in db.session.scalars(db.select(CountOverride)):
        override.count = rng.randint(0, 60)
    db.session.commit()


def map_everything(kind: str, host: str, products: list) -> Mapped:
    from psa_sim.seed import SIM_CREDENTIALS
    from webapp.connections import client_for, get_integration, save_credentials
    from webapp.extensions import db
    from webapp.models import Company, CompanyMapping, ProductMapping
    from webapp.sync.push import UNDOCUMENTED_CONCURRENCY

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
    for company in db.session.scalars(db.select(Company)):
        agreement = client.list_agreements(psa_companies[company.name])[0]
        db.session.add(CompanyMapping(integration_id=integration.id, company_id=company.id,
                                      psa_company_id=psa_companies[company.name], agreement_id=agreement.id))
    db.session.commit()
    mappings = db.session.scalars(db.select(CompanyMapping).filter_by(integration_id=integration.id)).all()
    return Mapped(kind, integration, client, mappings, products, psa_products,
                  client.concurrency_per_endpoint or UNDOCUMENTED_CONCURRENCY)


def targets_by_line(mapped: Mapped) -> dict[tuple[str, str], int]:
    """(agreement id, PSA product id) -> the count SeatSync should push."""
    from webapp.extensions import db
    from webapp.models import CountOverride

    targets = {(o.company_id, o.product_id): o.count for o in db.session.scalars(db.select(CountOverride))}
    return {(m.agreement_id, mapped.psa_products[p.name]): targets.get((m.company_id, p.id), 0)
            for m in mapped.mappings for p in mapped.products}


def minimum_calls(mapped: Mapped, sim: Sim) -> tuple[int, int]:
    """(reads, writes) a perfect engine needs from the lines as they are now. Reads include reading the
    written lines back (PRODUCT.md §4: proof after writing) as cheaply as the API allows — ConnectWise one
    read per written agreement, Autotask two queries per 500 written contracts; Kaseya BMS cannot read
    Units back, so nothing."""
    lines = mapped.client.read_lines([m.agreement_id for m in mapped.mappings], sim.on)
    differing: Counter = Counter()
    for (agreement, psa_product), target in targets_by_line(mapped).items():
        held = {line.product_id: line.quantity for line in lines[agreement]}
        if psa_product in held:
            differing[agreement] += held[psa_product] is None or held[psa_product] != target
        else:
            differing[agreement] += target > 0
    # Kaseya BMS and HaloPSA write every line of a contract / recurring invoice in one request.
    writes = sum(min(n, 1) if mapped.kind in WHOLE_AGREEMENT_WRITES else n for n in differing.values())
    count, written = len(mapped.mappings), sum(1 for n in differing.values() if n)
    if mapped.kind == "connectwise":
        return count + written, writes
    if mapped.kind == "autotask":
        return 2 * math.ceil(count / 500) + 2 * math.ceil(written / 500), writes
    if mapped.kind == "halopsa":
        # The list of every recurring invoice (one page per 100) is the only batched read; the read-back
        # reads it again, or the written invoices one by one when that is fewer calls (the client's rule).
        pages = math.ceil(len(sim.state.data["halopsa"]["invoices"]) / 100)
        return pages + min(pages, written), writes
    tables = sim.state.data["kaseya_bms"]
    used = Counter(line["serviceId"] for line in tables["contract_services"].values())
    wanted = {str(psa_id) for psa_id in mapped.psa_products.values()}
    related = sum(max(1, math.ceil(used[s["id"]] / 100)) for s in tables["services"].values()
                  if s.get("isActive") and str(s["id"]) in wanted)
    return math.ceil(count / 100) + 1 + related, writes


def wrong_lines(mapped: Mapped, sim: Sim) -> tuple[list[str], int]:
    """Every line whose quantity in the simulator's records differs from its target, and how many lines there are."""
    from psa_sim.server import PSA_MODULES

    with sim.state.lock:
        held = PSA_MODULES[mapped.kind].line_quantities(sim.state.data[mapped.kind], sim.on)
    targets = targets_by_line(mapped)
    wrong = [f"agreement {agreement} product {product}: holds {held.get((agreement, product), 'no line')}, "
             f"target {target}"
             for (agreement, product), target in targets.items() if held.get((agreement, product), 0) != target]
    return wrong, len(targets)


def start_workers(count: int, environ: dict) -> list[subprocess.Popen]:
    env = {**os.environ, **environ}
    # Each worker in a session of its own, so its RQ scheduler child goes with it at the end.
    return [subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            for _ in range(count)]


def wait_until_listening(workers: list[subprocess.Popen], environ: dict, timeout: float = 60) -> None:
    """Until these worker processes listen on the bench's queue: a production fleet is up before a sync
    starts, so the clock starts then, not while they still import the app. By pid: the registrations of
    the previous run's killed workers linger in Redis."""
    from rq import Queue, Worker

    queue = Queue(environ["QUEUE_NAME"], connection=redis_lib.Redis.from_url(REDIS_URL))
    wanted = {w.pid for w in workers}
    deadline = time.monotonic() + timeout
    while not wanted <= {w.pid for w in Worker.all(queue=queue)} and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_workers(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def run_one_sync(mapped: Mapped, sim: Sim, args, environ: dict, start=None) -> Outcome:
    """ONE Sync now (or `start()`: another run) with fresh workers, until the run ends (or `--run-timeout`)."""
    from webapp.extensions import db
    from webapp.models import CompanyMapping, SyncRun
    from webapp.sync import start_sync

    workers = start_workers(args.workers, environ)
    try:
        wait_until_listening(workers, environ)
        cpu_before = sum(cpu_seconds(w.pid) for w in workers)
        sim.state.clear_log()
        started = time.monotonic()
        run = start() if start else start_sync(mapped.integration, trigger="cli")
        while True:
            db.session.rollback()
            current = db.session.get(SyncRun, run.id)
            finished = value_of(current.state) not in BUSY_RUN_STATES
            if finished or time.monotonic() - started > args.run_timeout:
                break
            time.sleep(0.2)
        wall = time.monotonic() - started
        with sim.state.lock:
            in_flight = sim.state.in_flight.report()
            sent = [r for r in sim.state.log if r["psa"] == mapped.kind]
        rss = max(peak_rss_mb(w.pid) for w in workers)
        cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
    finally:
        stop_workers(workers)
    companies = db.session.scalars(db.select(CompanyMapping).filter_by(integration_id=mapped.integration.id)).all()
    statuses = Counter(value_of(m.status) for m in companies)
    reasons = Counter(m.status_reason[:160] for m in companies if value_of(m.status) == "error")
    return Outcome(current, finished, wall, rss, sent, in_flight, statuses, reasons, cpu=cpu)


def describe_run(outcome: Outcome) -> str:
    run = outcome.run
    counts = ", ".join(f"{getattr(run, name, '?')} {words}" for name, words in (
        ("in_sync", "in sync"), ("updated", "updated"), ("needs_attention", "need attention"), ("errors", "errors")))
    ended = "" if outcome.finished else " — DID NOT FINISH within --run-timeout"
    companies = ", ".join(f"{n} {status}" for status, n in outcome.statuses.most_common())
    reasons = "".join(f"\n    {n} × error: {reason}" for reason, n in outcome.error_reasons.most_common(3))
    return f"run {value_of(run.state)}{ended}: {counts}; companies now: {companies}{reasons}"


def describe_in_flight(mapped: Mapped, outcome: Outcome, ceiling: Ceiling | None = None) -> list[str]:
    psa = outcome.in_flight.get(mapped.kind)
    if psa is None:
        return ["  no request in flight"]
    lines = [f"  in flight (time-weighted): {psa['average_while_busy']:.2f} of {mapped.concurrency} on average "
             f"while any was ({psa['busy_seconds']:.1f} s), {psa['average_over_wall']:.2f} over the wall time, "
             f"at most {psa['max']} (target ≥ 2.8 of 3)"]
    if ceiling is not None and ceiling.in_flight:
        lines.append(f"    = {psa['average_while_busy'] / ceiling.in_flight:.0%} of the bare client's "
                     f"{ceiling.in_flight:.2f}")
    endpoints = sorted(((key, f) for key, f in outcome.in_flight.items() if key.startswith(f"{mapped.kind} ")),
                       key=lambda item: -item[1]["busy_seconds"])
    for key, figures in endpoints[:3]:
        lines.append(f"    {key.split(' ', 1)[1]}: {figures['average_while_busy']:.2f} over "
                     f"{figures['busy_seconds']:.1f} s, at most {figures['max']}")
    return lines


def describe_lines(outcome: Outcome) -> list[str]:
    if not outcome.wrong:
        return [f"  every line right afterwards: yes, all {outcome.lines} (read from the simulator's records)"]
    return [f"  every line right afterwards: NO — {len(outcome.wrong)} of {outcome.lines} wrong, e.g.",
            *(f"    {line}" for line in outcome.wrong[:5])]


def problems_of(label: str, outcome: Outcome) -> list[str]:
    problems = []
    if not outcome.finished:
        problems.append(f"{label}: the run did not finish")
    if outcome.wrong:
        problems.append(f"{label}: {len(outcome.wrong)} of {outcome.lines} lines wrong after one Sync now")
    if outcome.statuses.get("error"):
        problems.append(f"{label}: {outcome.statuses['error']} companies in error")
    return problems


@dataclass
class Ceiling:
    """What a bare client gets from this simulator on this machine: the most any client could."""

    in_flight: float  # time-weighted, while any was in flight
    call_seconds: float  # mean time of one call as the client sees it (latency + HTTP on both sides)


def bare_client_ceiling(sim: Sim, latency_ms: float, threads: int = 3, seconds: float = 6.0) -> Ceiling:
    """`threads` threads that only send requests back to back (keep-alive sessions, no limiter, no database)
    to a cheap simulated endpoint. The simulator's HTTP stack (werkzeug, pure Python) adds a few ms to every
    call outside its latency, more on a loaded machine; no client can keep more in flight than this."""
    import requests

    url = f"http://{sim.host}/login/companyinfo/bench-ceiling"
    sim.state.latency_ms = latency_ms
    sim.state.clear_log()
    durations: list[float] = []

    def send() -> None:
        with requests.Session() as session:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.monotonic()
                session.get(url, timeout=10)
                durations.append(time.monotonic() - started)

    senders = [threading.Thread(target=send) for _ in range(threads)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    with sim.state.lock:
        figures = sim.state.in_flight.report().get("connectwise", {})
    sim.state.latency_ms = 0
    sim.state.clear_log()
    return Ceiling(figures.get("average_while_busy", 0.0), sum(durations) / max(1, len(durations)))


def describe_cost(mapped: Mapped, outcome: Outcome, reads: int, writes: int, args, ceiling: Ceiling) -> list[str]:
    """Calls vs the minimum, wall vs the bound (at the simulator's latency and at the bare client's call
    time), and requests in flight."""
    minimum = max(1, reads + writes)
    calls = len(outcome.sent)
    bound = minimum * args.latency_ms / 1000 / mapped.concurrency
    reachable = minimum * ceiling.call_seconds / mapped.concurrency
    lines = [f"  PSA calls {calls} vs minimum {minimum} ({reads} reads + {writes} writes): "
             f"{calls / minimum:.2f}× (target ≤ 1.1×)",
             f"  wall {outcome.wall:.1f} s vs bound {bound:.1f} s ({minimum} × {args.latency_ms:g} ms ÷ "
             f"{mapped.concurrency}): {outcome.wall / bound:.2f}× (target ≤ 1.25×)",
             f"    with calls as long as the bare client's ({1000 * ceiling.call_seconds:.1f} ms) the bound is "
             f"{reachable:.1f} s: {outcome.wall / reachable:.2f}×"]
    if mapped.kind in ("kaseya_bms", "halopsa"):
        lines.append(f"    ({mapped.client.display_name} documents no concurrency limit: the bound uses the "
                     f"{mapped.concurrency} requests in flight SeatSync allows a PSA without one)")
    return lines + describe_in_flight(mapped, outcome, ceiling)


def calm_run(mapped: Mapped, sim: Sim, args, environ: dict, ceiling: Ceiling) -> list[str]:
    reads, writes = minimum_calls(mapped, sim)
    sim.state.latency_ms = args.latency_ms
    outcome = run_one_sync(mapped, sim, args, environ)
    sim.state.latency_ms = 0
    outcome.wrong, outcome.lines = wrong_lines(mapped, sim)
    calls = len(outcome.sent)
    print(f"\n{mapped.kind}, calm: {describe_run(outcome)}")
    print("\n".join(describe_cost(mapped, outcome, reads, writes, args, ceiling)))
    projected = projected_wall(mapped.kind, outcome.sent, outcome.wall)
    if projected:
        print(f"  {projected}")
    print(f"  worker peak RSS {outcome.rss:.0f} MB (target ≤ 150 MB); workers' CPU {outcome.cpu:.1f} s "
          f"({1000 * outcome.cpu / max(1, calls):.1f} ms per PSA call)")
    print("\n".join(describe_lines(outcome)))
    return problems_of(f"{mapped.kind} calm", outcome)


def held_lines(mapped: Mapped, sim: Sim) -> dict[tuple[str, str], float]:
    """(agreement id, PSA product id) -> quantity, from the simulator's records."""
    from psa_sim.server import PSA_MODULES

    with sim.state.lock:
        return dict(PSA_MODULES[mapped.kind].line_quantities(sim.state.data[mapped.kind], sim.on))


def revert_minimum(mapped: Mapped, run_id: int) -> tuple[int, int]:
    """(reads, writes) a perfect revert of the run needs: read the agreements it wrote, write each written line
    back (Kaseya BMS: one write per contract), read the written agreements back as a sync does."""
    from webapp.extensions import db
    from webapp.models import LineResult
    from webapp.sync.state import WRITTEN

    rows = db.session.execute(db.select(LineResult.agreement_id, LineResult.before, LineResult.action).where(
        LineResult.run_id == run_id, LineResult.action.in_(WRITTEN))).all()
    if mapped.kind == "kaseya_bms":  # only created lines have a known before (0)
        rows = [r for r in rows if value_of(r.action) == "created"]
    agreements = {r.agreement_id for r in rows}
    if mapped.kind == "connectwise":
        return 2 * len(agreements), len(rows)
    if mapped.kind == "autotask":
        return 4 * math.ceil(len(agreements) / 500), len(rows)
    related = len(mapped.psa_products)  # one related-services page per mapped service at least
    return math.ceil(len(agreements) / 100) + 1 + related, len(agreements)


def revert_phase(mapped: Mapped, sim: Sim, args, environ: dict, before: dict, ceiling: Ceiling) -> list[str]:
    """Revert the calm run: calls vs the minimum, wall vs the bound, every line back where it was."""
    from webapp.extensions import db
    from webapp.models import SyncRun
    from webapp.sync.revert import start_revert

    calm = db.session.scalars(db.select(SyncRun).filter_by(integration_id=mapped.integration.id)
                              .order_by(SyncRun.id.desc())).first()
    reads, writes = revert_minimum(mapped, calm.id)
    sim.state.latency_ms = args.latency_ms
    outcome = run_one_sync(mapped, sim, args, environ, start=lambda: start_revert(calm, user=None))
    sim.state.latency_ms = 0
    held = held_lines(mapped, sim)
    targets = targets_by_line(mapped)
    outcome.lines = len(targets)
    if mapped.kind != "kaseya_bms":
        outcome.wrong = [f"agreement {a} product {p}: holds {held.get((a, p), 'no line')}, held "
                         f"{before.get((a, p), 'no line')} before the calm run"
                         for a, p in targets if held.get((a, p), 0) != before.get((a, p), 0)]
    print(f"\n{mapped.kind}, revert of the calm run {calm.id}: {describe_run(outcome)}")
    print("\n".join(describe_cost(mapped, outcome, reads, writes, args, ceiling)))
    if mapped.kind == "kaseya_bms":
        print("  Kaseya BMS: quantities before SeatSync's first write are unknown (Units cannot be read); "
              "only lines the calm run created were set to 0, the others are reported, not guessed")
    else:
        print("\n".join(describe_lines(outcome)).replace("right afterwards", "back as before the calm run"))
    return problems_of(f"{mapped.kind} revert", outcome)


def storm_run(mapped: Mapped, sim: Sim, args, environ: dict) -> list[str]:
    from psa_sim.faults import Faults

    change_targets(f"{args.seed} {mapped.kind}")  # new counts for each PSA's storm
    reads, writes = minimum_calls(mapped, sim)
    minimum = reads + writes
    with sim.state.lock:
        sim.state.latency_ms = args.latency_ms
        sim.state.faults = Faults.from_payload(storm_rules(mapped.kind, args.storm_rate), args.seed)
    outcome = run_one_sync(mapped, sim, args, environ)
    with sim.state.lock:
        sim.state.latency_ms = 0
        sim.state.faults = Faults()
    outcome.wrong, outcome.lines = wrong_lines(mapped, sim)
    calls = len(outcome.sent)
    injected = Counter(str(r["fault"]) for r in outcome.sent if r["fault"] is not None)
    verdict = "within" if calls <= 1.5 * minimum else "OVER"
    caveat = "; the run gave up on companies, so its calls prove little" if (
        outcome.statuses.get("error") or not outcome.finished) else ""
    print(f"\n{mapped.kind}, storm of {args.storm_rate:.0%} failing (seed {args.seed}; new targets): "
          f"{describe_run(outcome)}")
    print(f"  faults answered: {sum(injected.values())} of {calls} calls "
          f"({', '.join(f'{n} × {what}' for what, n in injected.most_common())})")
    print(f"  PSA calls {calls} vs minimum {minimum} ({reads} reads + {writes} writes): {calls / minimum:.2f}× — "
          f"{verdict} the 1.5 × minimum ({1.5 * minimum:.0f}) a storm may cost{caveat}")
    failed_share = sum(injected.values()) / max(1, calls)
    floor = minimum / (1 - failed_share) if failed_share < 1 else math.inf
    print(f"    any client needs at least {floor:.0f} calls when {failed_share:.0%} of answers fail: "
          f"{calls / floor:.2f}× that floor")
    print(f"  wall {outcome.wall:.1f} s (every {THROTTLED_EVERY}th call waits Retry-After: 1 s)")
    print("\n".join(describe_in_flight(mapped, outcome)))
    print("\n".join(describe_lines(outcome)))
    problems = problems_of(f"{mapped.kind} storm", outcome)
    if calls > 1.5 * minimum:
        problems.append(f"{mapped.kind} storm: {calls} calls, over 1.5 × the minimum {minimum}")
    return problems


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--companies", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--psa", action="append", choices=PSAS, help="repeat for several; default all four")
    parser.add_argument("--storm-rate", type=float, default=0.2, help="share of requests failing (429 + 5xx)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the storm's faults and its new targets")
    parser.add_argument("--no-storm", action="store_true", help="no storm run")
    parser.add_argument("--no-revert", action="store_true", help="no revert of the calm run")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds to wait for one run to end")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    server, state, host = start_simulator(args.companies)
    redis = redis_lib.Redis.from_url(REDIS_URL)
    redis.flushdb()
    problems: list[str] = []
    try:
        with throwaway_database() as url:
            environ = bench_environ(
                url, REDIS_URL=REDIS_URL, QUEUE_NAME=f"bench-{uuid.uuid4().hex[:6]}", PSA_DEV_HOSTS=host,
                AUTOTASK_ZONE_URL=f"http://{host}/atservicesrest/v1.0/zoneInformation", CW_CLIENT_ID="bench",
                PSA_DEV_HOSTS_NO_HOURLY_LIMIT="1")
            app = migrated_app(url, environ=environ)
            with app.app_context():
                problems = bench_every_psa(args, state, host, environ)
                from webapp.extensions import db

                db.session.remove()
                db.engine.dispose()
    finally:
        server.shutdown()
        redis.flushdb()
    print("\n" + ("\n".join(["Problems:", *problems]) if problems else "Every run ended with every line right."))
    sys.exit(1 if problems else 0)


def bench_every_psa(args, state, host: str, environ: dict) -> list[str]:
    from webapp.counts import push_month
    from webapp.sync.plan import billed_month_start

    now = utcnow()
    products = add_companies_and_targets(args.companies, push_month("last_closed_month", now))
    sim = Sim(state, host, billed_month_start(now, "UTC"))
    print(f"{args.companies} companies × 3 products, simulator latency {args.latency_ms:g} ms, "
          f"{args.workers} worker processes")
    ceiling = bare_client_ceiling(sim, args.latency_ms)
    print(f"A bare client (3 threads sending back to back, nothing else) keeps {ceiling.in_flight:.2f} of 3 in "
          f"flight; its calls take {1000 * ceiling.call_seconds:.1f} ms at the simulator's {args.latency_ms:g} ms: "
          "the most any client gets from this simulator on this machine.")
    problems = []
    for kind in args.psa or PSAS:
        mapped = map_everything(kind, host, products)
        before = held_lines(mapped, sim)
        problems += calm_run(mapped, sim, args, environ, ceiling)
        if not args.no_revert:
            problems += revert_phase(mapped, sim, args, environ, before, ceiling)
        if not args.no_storm:
            problems += storm_run(mapped, sim, args, environ)
    return problems


if __name__ == "__main__":
    main()
