"""The simulator's server: one Flask app on loopback serving all three PSA APIs, plus `/_sim/` controls.

The three APIs live on disjoint paths (ConnectWise `/login/companyinfo/…` and `/<codebase>/apis/3.0/…`,
Autotask `/atservicesrest/…`, Kaseya BMS `/v2/…`), so one port serves them all.

Controls (JSON):
- POST /_sim/reset                      empty every PSA, clear the log and the faults
- POST /_sim/seed     {"companies": N | "demo", "products": [...]}   seed all three PSAs alike
- GET  /_sim/requests[?psa=autotask]    the request log: [{psa, method, path, query, status, body}]
- DELETE /_sim/requests                 clear the log
- POST /_sim/faults   {"latency_ms": 50, "rules": [{"psa", "method", "path_contains", "status",
                       "times", "retry_after", "kind"}]}  inject latency and errors
- GET  /_sim/state/<psa>                the PSA's records, for assertions
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, jsonify, request

from . import autotask, connectwise, kaseya_bms
from . import seed as seeding

PSA_MODULES = {"connectwise": connectwise, "autotask": autotask, "kaseya_bms": kaseya_bms}


@dataclass
class FaultRule:
    psa: str | None = None
    method: str | None = None
    path_contains: str | None = None
    status: int = 500
    times: int = 1  # how many matching requests fail; -1 = all
    retry_after: float | None = None
    kind: str | None = None  # PSA-specific error kind, e.g. "thread_limit" (Autotask)

    def matches(self, psa: str, method: str, path: str) -> bool:
        return (
            self.times != 0
            and (self.psa is None or self.psa == psa)
            and (self.method is None or self.method.upper() == method)
            and (self.path_contains is None or self.path_contains.lower() in path.lower())
        )


@dataclass
class SimState:
    """All simulator state. Handlers hold `lock` while they read or change `data`."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # psa -> that PSA's tables
    log: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float = 0.0
    rules: list[FaultRule] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)  # "psa endpoint" -> concurrent requests
    max_in_flight: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        with self.lock:
            self.data = {kind: module.empty_state() for kind, module in PSA_MODULES.items()}
            self.log.clear()
            self.rules.clear()
            self.latency_ms = 0.0
            self.in_flight.clear()
            self.max_in_flight.clear()


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
            state.in_flight[g.endpoint_key] = state.in_flight.get(g.endpoint_key, 0) + 1
            g.counted = True
            now_in_flight = state.in_flight[g.endpoint_key]
            state.max_in_flight[g.endpoint_key] = max(state.max_in_flight.get(g.endpoint_key, 0), now_in_flight)
            latency = state.latency_ms
            rule = next((r for r in state.rules if r.matches(g.psa, request.method, path)), None)
            if rule is not None and rule.times > 0:
                rule.times -= 1
        if latency:
            time.sleep(latency / 1000.0)
        if rule is not None:
            response = PSA_MODULES[g.psa].error_response(rule.status, "Simulated failure", kind=rule.kind)
            if rule.retry_after is not None:
                response.headers["Retry-After"] = str(rule.retry_after)
            return response
        return None

    @app.after_request
    def after(response: Response):
        if not getattr(g, "counted", False):  # not ours, or the caller went away before sending it whole
            return response
        with state.lock:
            state.in_flight[g.endpoint_key] -= 1
            body = request.get_data(as_text=True)
            state.log.append({
                "psa": g.psa,
                "method": request.method,
                "path": request.path,
                "query": request.query_string.decode(),
                "status": response.status_code,
                "body": body[:2000],
                "at": time.time(),
            })
        return response

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
        with state.lock:
            state.log.clear()
            state.max_in_flight.clear()
        return jsonify(ok=True)

    @app.get("/_sim/concurrency")
    def concurrency():
        with state.lock:
            return jsonify(dict(state.max_in_flight))

    @app.post("/_sim/faults")
    def faults():
        payload = request.get_json(silent=True) or {}
        with state.lock:
            state.latency_ms = float(payload.get("latency_ms", state.latency_ms))
            if "rules" in payload:
                state.rules = [FaultRule(**rule) for rule in payload["rules"]]
        return jsonify(ok=True)

    @app.get("/_sim/state/<psa>")
    def dump(psa: str):
        with state.lock:
            return Response(json.dumps(state.data[psa], default=str), mimetype="application/json")

    return app


def serve(host: str = "127.0.0.1", port: int = 8099, seed: str | int | None = "demo") -> None:
    from werkzeug.serving import make_server

    server = make_server(host, port, create_sim_app(seed), threaded=True)
    print(f"PSA simulator on http://{host}:{port}", flush=True)
    server.serve_forever()
