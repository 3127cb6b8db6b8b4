"""Status polling under load: 50 browsers polling every 2 s during a sync, against the real web server.

Run: `.venv/bin/python -m bench.polling` (PostgreSQL as in bench/common.py, Redis at BENCH_REDIS_URL,
default redis://127.0.0.1:6379/10). It builds 10,000 companies and 7,000 ConnectWise mappings (as
bench.mapping_page), marks a run as live with 50 companies queued, and starts the `web` process of the
Procfile (gunicorn, its default workers and threads) on loopback. Then 50 simulated browsers, each signed
in, poll what the company mapping page polls while a run is live — the progress bar and their queued row —
every 2 s for the given duration. Latency is measured at the client (server time plus loopback).
Target (PRODUCT.md §7): p95 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from bench.common import bench_environ, migrated_app, run_sql, throwaway_database
from bench.mapping_page import GENERATE

ROOT = Path(__file__).resolve().parents[1]
TARGET_P95_MS = 50.0
LIVE_RUN = """
INSERT INTO sync_runs (integration_id, trigger, state, total, done, in_sync, updated, needs_attention, errors,
                       message, dry_run, created_at, started_at)
VALUES (1, 'sync_now', 'running', %(browsers)s, 0, 0, 0, 0, 0, '', false, now(), now());
UPDATE company_mappings SET status = 'queued' WHERE company_id <= %(browsers)s
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signed_in_session(base: str) -> requests.Session:
    session = requests.Session()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', session.get(f"{base}/login").text).group(1)
    response = session.post(f"{base}/login", data={"csrf_token": token, "email": "bench@msp.example",
                                                    "password": "bench-password-123"})
    response.raise_for_status()
    return session


def browser(base: str, session: requests.Session, company_id: int, until: float, samples: list[float],
            errors: list[str]) -> None:
    headers = {"HX-Request": "true"}
    paths = ["/integrations/connectwise/progress", f"/integrations/connectwise/companies/{company_id}/row"]
    next_tick = time.monotonic()
    while next_tick < until:
        for path in paths:
            started = time.perf_counter()
            response = session.get(base + path, headers=headers, timeout=10)
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code}")
        next_tick += 2.0
        time.sleep(max(0.0, next_tick - time.monotonic()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browsers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
    with throwaway_database() as url:
        app = migrated_app(url)
        run_sql(url, GENERATE, {"companies": 10_000, "mapped": 7_000})
        run_sql(url, LIVE_RUN, {"browsers": args.browsers})
        with app.app_context():
            from webapp.cli import create_user
            from webapp.extensions import db

            create_user("bench@msp.example", "viewer", "bench-password-123")
            db.session.commit()
            db.engine.dispose()

        port = _free_port()
        env = {**os.environ, **bench_environ(url, REDIS_URL=redis_url, PORT=str(port), SEATSYNC_ENV="production",
                                             # plain http on loopback: the cookie can't be Secure here
                                             SESSION_COOKIE_SECURE="0", LOGIN_RATE_LIMIT="1000 per minute")}
        procfile_web = next(line.split(":", 1)[1] for line in (ROOT / "Procfile").read_text().splitlines()
                            if line.startswith("web:"))
        command = procfile_web.replace("$PORT", str(port)).replace("${WEB_CONCURRENCY:-2}", "2").split()
        command[0] = str(ROOT / ".venv" / "bin" / command[0]) if (ROOT / ".venv" / "bin" / command[0]).exists() \
            else command[0]
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            sessions = [_signed_in_session(base) for _ in range(args.browsers)]
            samples: list[float] = []
            errors: list[str] = []
            until = time.monotonic() + args.seconds
            threads = [threading.Thread(target=browser, args=(base, sessions[i], i + 1, until, samples, errors))
                       for i in range(args.browsers)]
            for thread in threads:
                thread.start()
                time.sleep(2.0 / args.browsers)  # browsers poll out of step, as real ones do
            for thread in threads:
                thread.join()
        finally:
            server.terminate()
            server.wait(timeout=30)
    samples.sort()
    p95 = samples[int(len(samples) * 0.95) - 1]
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"{args.browsers} browsers polling every 2 s for {args.seconds:.0f} s against the Procfile's web process: "
          f"{len(samples):,} requests, {len(errors)} errors")
    print(f"  latency p50 {statistics.median(samples):.1f} ms   p95 {p95:.1f} ms   p99 {p99:.1f} ms   "
          f"max {samples[-1]:.1f} ms")
    verdict = "OK" if p95 <= TARGET_P95_MS and not errors else "OVER TARGET"
    print(f"status polling p95: {p95:.1f} ms (target ≤ {TARGET_P95_MS:.0f} ms) {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
