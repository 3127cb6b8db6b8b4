"""The README's run command, as a newcomer types it: `make run` brings up SeatSync on the embedded
default (SQLite, in-process queue, demo data, PSA simulator); we sign in and run a job through it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"`make run` exited with {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not come up within {timeout}s")


@pytest.fixture
def make_run(tmp_path):
    port, sim_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SEATSYNC_ENV"}}
    env.update(SEATSYNC_INSTANCE=str(tmp_path / "instance"))
    log = open(tmp_path / "make-run.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(["make", "run", f"PORT={port}", f"SIM_PORT={sim_port}"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}", tmp_path / "make-run.log"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_make_run_serves_seatsync_with_demo_data_and_a_working_queue(make_run):
    url, log_path = make_run
    assert "sign in as admin@seatsync.local / demo-admin-password" in log_path.read_text()
    assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok", "database": "ok", "queue": "ok"}
    session = requests.Session()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', session.get(f"{url}/login").text).group(1)
    signed_in = session.post(f"{url}/login", data={"csrf_token": token, "email": "admin@seatsync.local",
                                                    "password": "demo-admin-password"}, timeout=10)
    assert signed_in.status_code == 200 and "Dashboard" in signed_in.text
    assert "Active companies" in signed_in.text
    page_token = re.search(r'"X-CSRFToken": "([^"]+)"', signed_in.text).group(1)
    job = session.post(f"{url}/healthz/job", headers={"X-CSRFToken": page_token}, timeout=30)
    assert job.status_code == 200 and job.json() == {"job": "finished", "result": "pong"}
