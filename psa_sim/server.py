"""The simulator's server: one Flask app on loopback serving all four PSA APIs, plus `/_sim/` controls.

The four APIs live on disjoint paths (ConnectWise `/login/companyinfo/…` and `/<codebase>/apis/3.0/…`,
Autotask `/atservicesrest/…`, Kaseya BMS `/v2/…`, HaloPSA `/auth/token` and `/api/…`), so one port serves them all.

Controls (JSON):
- POST /_sim/reset                      empty every PSA, clear the log and the faults
- POST /_sim/seed     {"companies": N | "demo", "products": [...]}   seed all four PSAs alike
- GET  /_sim/requests[?psa=autotask]    the request log: [{psa, method, path, query, status, body, at, fault}]
                                        (`fault`: the kind or status of the injected fault, else null)
- DELETE /_sim/requests                 clear the log
- POST /_sim/faults   {"latency_ms": 50, "seed": 7, "rules": [...]}   inject latency and errors
- GET  /_sim/concurrency                requests in flight since the last reset or log clear, per PSA and per
                                        "psa endpoint": {"seconds": window, "psas": {psa: figures},
                                        "endpoints": {"autotask ContractServiceUnits": figures}} where figures =
                                        {max, average_while_busy, average_over_wall, busy_seconds}: the most at
                                        once, and the time-weighted average in flight over the time at least one
                                        was in flight and over the whole window (psa_sim/inflight.py)
- GET  /_sim/state/<psa>                the PSA's records, for assertions
- GET  /_sim/lines/<psa>[?on=2026-06-01] every line's quantity in effect on that day (default today), read from
                                        the records, not through the API: [{agreement, product, quantity}]
                                        (Kaseya BMS: its one upserted row per contract and service)

Fault rules (psa_sim/faults.py). A rule matches by `psa`, `method` and `path_contains` (all optional) and fails
- the next `times` matching requests (default 1; -1 = all), or
- `"every": N`: every N-th matching request, and/or `"rate": 0.2`: each with that probability, from an RNG
  seeded by the payload's `seed` (default 0), so a run is reproducible; `times` then caps the failures
  (default unlimited).
Each rule counts every request it matches; the first rule that fires answers. How it fails:
- `"status": 503` (default 500): answered with the PSA's own error body for that status, not processed;
- `"status": 429, "retry_after": 1`: the same, with a Retry-After header (any status may carry one);
- `"kind": "thread_limit"` (Autotask, with status 500 or 429): Autotask's thread-threshold error text
  (Itgenatr005); other PSA-specific body kinds: Autotask "permission"/"empty", Kaseya BMS "envelope",
  HaloPSA "text" (a plain-text body);
- `"kind": "timeout", "delay_ms": 65000`: processed, but the answer is held `delay_ms` (default 65 s,
  past SeatSync's 60 s read timeout), so the client gives up on a request that did land;
- `"kind": "applied"`: processed, then answered `status` (500) instead of the real success: the lost
  answer of a write that happened (a request the PSA refused keeps its own answer).
Posting `rules` replaces every rule and restarts their counters and the RNG.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, jsonify, request

from . import autotask, connectwise, halopsa, kaseya_bms
from . import seed as seeding
from .faults import APPLIED, SERVER_ACTED, TIMEOUT, FaultRule, Faults, InvalidRule
from .inflight import InFlight

PSA_MODULES = {"connectwise": connectwise, "autotask": autotask, "kaseya_bms": kaseya_bms, "halopsa": halopsa}


@dataclass
class SimState:
    """All simulator state. Handlers hold `lock` while they read or change `data`."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # psa -> that PSA's tables
    log: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0
    faults: Faults = field(default_factory=Faults)
    in_flight: InFlight = field(default_factory=InFlight)  # per "psa endpoint" and per "psa"

    def reset(self) -> None:
        with self.lock:
            self.data = {kind: module.empty_state() for kind, module in PSA_MODULES.items()}
            self.faults = Faults()
            self.latency_ms = 0.0
            self.clear_log()

    def clear_log(self) -> None:
        """Empty the request log and open a new in-flight window (requests still in flight stay counted)."""
        with self.lock:
            self.log.clear()
            self.in_flight.restart()


def fault_response(psa: str, rule: FaultRule) -> Response:
    body_kind = None if rule.kind in SERVER_ACTED else rule.kind
    response = PSA_MODULES[psa].error_response(rule.status, "Simulated failure", kind=body_kind)
    if rule.retry_after is not None:
        seconds = rule.retry_after
        response.headers["Retry-After"] = str(int(seconds) if float(seconds).is_integer() else seconds)
    return response


def psa_of(path: str) -> str | None:
    for kind, module in PSA_MODULES.items():
        if module.owns_path(path):
            return kind
    return None


def create_sim_app(seed: str | int | None = None) -> Flask:
    app = Flask("psa_sim")
    state = SimState()
    state.reset()
    app.extensions["psa_sim"] = state
    for module in PSA_MODULES.values():
        app.register_blueprint(module.make_blueprint(state))
    if seed is not None:
        seeding.seed_all(state, seed)
    install_request_hooks(app, state)
    install_controls(app, state)
    return app


def log_entry(psa: str, response: Response, fault: FaultRule | None) -> dict[str, Any]:
    return {
        "psa": psa,
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode(),
        "status": response.status_code,
        "body": request.get_data(as_text=True)[:2000],
        "at": time.time(),
        "fault": None if fault is None else (fault.kind or fault.status),
    }


def install_request_hooks(app: Flask, state: SimState) -> None:
    """Around every PSA request: count it in flight, add the latency, act out the fault rules, log it."""

    @app.before_request
    def before():
        path = request.path
        g.psa = psa_of(path)
        if g.psa is None:
            return None
        g.endpoint_key = f"{g.psa} {PSA_MODULES[g.psa].endpoint_of(path)}"
        # Received whole before it counts as in flight: a caller killed while a request is in flight
        # (as tests do) has sent all of it, and the PSA applies it as a real one would.
        request.get_data(cache=True)
        with state.lock:
            state.in_flight.enter((g.endpoint_key, g.psa))
            g.counted = True
            latency = state.latency_ms
            g.fault = state.faults.pick(g.psa, request.method, path)
        if latency:
            time.sleep(latency / 1000.0)
        if g.fault is not None and g.fault.kind not in SERVER_ACTED:
            return fault_response(g.psa, g.fault)
        return None

    @app.after_request
    def after(response: Response):
        if not getattr(g, "counted", False):  # not ours, or the caller went away before sending it whole
            return response
        fault = g.get("fault")
        if fault is not None and fault.kind == APPLIED:
            if response.status_code >= 300:
                fault = None  # refused by the PSA itself: nothing was applied, its own answer stands
            else:
                response = fault_response(g.psa, fault)
        entry = log_entry(g.psa, response, fault)
        with state.lock:
            state.log.append(entry)
        if fault is not None and fault.kind == TIMEOUT:
            time.sleep(fault.delay_ms / 1000.0)  # the client has given up by now; the request did land
        return response

    @app.teardown_request
    def leave(_error):
        if getattr(g, "psa", None) is not None:
            with state.lock:
                state.in_flight.leave((g.endpoint_key, g.psa))


def install_controls(app: Flask, state: SimState) -> None:
    """The `/_sim/` routes documented at the top of this module."""

    @app.post("/_sim/reset")
    def reset():
        state.reset()
        return jsonify(ok=True)

    @app.post("/_sim/seed")
    def seed_route():
        payload = request.get_json(silent=True) or {}
        summary = seeding.seed_all(state, payload.get("companies", "demo"), products=payload.get("products"))
        return jsonify(summary)

    @app.get("/_sim/requests")
    def requests_log():
        psa = request.args.get("psa")
        with state.lock:
            rows = [r for r in state.log if psa is None or r["psa"] == psa]
        return jsonify(rows)

    @app.delete("/_sim/requests")
    def clear_log():
        state.clear_log()
        return jsonify(ok=True)

    @app.get("/_sim/concurrency")
    def concurrency():
        with state.lock:
            report = state.in_flight.report()
            return jsonify(seconds=round(state.in_flight.clock() - state.in_flight.since, 3),
                           psas={k: v for k, v in report.items() if " " not in k},
                           endpoints={k: v for k, v in report.items() if " " in k})

    @app.post("/_sim/faults")
    def faults():
        payload = request.get_json(silent=True) or {}
        try:
            new_faults = Faults.from_payload(payload["rules"], payload.get("seed")) if "rules" in payload else None
        except (InvalidRule, TypeError) as error:
            return jsonify(error=str(error)), 400
        with state.lock:
            state.latency_ms = float(payload.get("latency_ms", state.latency_ms))
            if new_faults is not None:
                state.faults = new_faults
        return jsonify(ok=True)

    @app.get("/_sim/lines/<psa>")
    def lines(psa: str):
        on = dt.date.fromisoformat(request.args["on"]) if "on" in request.args else dt.date.today()
        with state.lock:
            held = PSA_MODULES[psa].line_quantities(state.data[psa], on)
        return jsonify([{"agreement": agreement, "product": product, "quantity": quantity}
                        for (agreement, product), quantity in sorted(held.items())])

    @app.get("/_sim/state/<psa>")
    def dump(psa: str):
        with state.lock:
            return Response(json.dumps(state.data[psa], default=str), mimetype="application/json")


def serve(host: str = "127.0.0.1", port: int = 8099, seed: str | int | None = "demo") -> None:
    from werkzeug.serving import make_server

    server = make_server(host, port, create_sim_app(seed), threaded=True)
    print(f"PSA simulator on http://{host}:{port}", flush=True)
    server.serve_forever()
