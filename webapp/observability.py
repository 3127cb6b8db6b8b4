"""Metrics (`/metrics`, Prometheus text), readiness (`/readyz`) and optional Sentry error reports.

- HTTP metrics are prometheus_client counters in each process; under gunicorn set
  PROMETHEUS_MULTIPROC_DIR (an empty directory per deploy) so every worker process's samples are summed.
- Domain series are computed from the database and Redis at scrape time (`DomainCollector`), so
  they are right whichever process or machine did the work: runs by PSA and outcome, PSA requests
  by PSA and status (counted in Redis by every client), lines written/verified/mismatched, seconds
  since the last finished run, companies needing attention, queue depth and workers.
- `/metrics` answers 404 unless METRICS_TOKEN is set, then 401 without `Authorization: Bearer <token>`.
- Sentry (SENTRY_DSN) gets events with secrets masked: any value under a secret-looking key, and
  every secret this process decrypted (PSA credentials, channel addresses), in every form.
"""

from __future__ import annotations

import hmac
import os
import re
import time

from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from rq import Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import case, func, select

from .crypto import DECRYPTED
from .extensions import db
from .models import Channel, CompanyMapping, Integration, LineResult, SyncRun
from .models._types import utcnow
from .psa_clients.http import PSA_REQUESTS_KEY
from .psa_clients.scrub import MASK
from .queue import get_queue, get_redis, last_tick_key
from .security import public
from .sync import state

bp = Blueprint("observability", __name__)

HTTP_REGISTRY = CollectorRegistry()
HTTP_REQUESTS = Counter("seatsync_http_requests", "HTTP requests answered", ["method", "endpoint", "status"],
                        registry=HTTP_REGISTRY)
HTTP_SECONDS = Histogram("seatsync_http_request_duration_seconds", "Time to answer an HTTP request",
                         ["method", "endpoint"], registry=HTTP_REGISTRY)


def init_observability(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(_start_timer)
    app.after_request(_count_request)
    if app.config.get("SENTRY_DSN"):
        init_sentry(app.config["SENTRY_DSN"])


def _start_timer():
    g.request_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    started = g.pop("request_started", None)
    if started is not None:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"  # the route, never the raw path
        HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        HTTP_SECONDS.labels(request.method, endpoint).observe(time.perf_counter() - started)
    return response


# --------------------------------------------------------------------------------------------------
# /metrics
# --------------------------------------------------------------------------------------------------
def _authorised() -> None:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        abort(404)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        abort(401)


@bp.get("/metrics")
@public
def metrics():
    _authorised()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        http = CollectorRegistry()
        multiprocess.MultiProcessCollector(http)
    else:
        http = HTTP_REGISTRY
    domain = CollectorRegistry(auto_describe=False)
    domain.register(DomainCollector())
    return Response(generate_latest(http) + generate_latest(domain), mimetype=CONTENT_TYPE_LATEST)


# A run's outcome as a label: its state, a finished run split by what its companies came to.
RUN_OUTCOME = case((SyncRun.state != state.RunState.FINISHED, SyncRun.state), (SyncRun.errors > 0, "errors"),
                   (SyncRun.needs_attention > 0, str(state.LineAction.NEEDS_ATTENTION)), else_="ok")


class DomainCollector:
    """SeatSync's own series, read from the database and Redis at each scrape."""

    def describe(self):
        return []

    def collect(self):
        yield from self._runs()
        yield from self._lines()
        yield self._psa_requests()
        yield from self._integrations()
        yield from self._queue()

    def _runs(self):
        family = CounterMetricFamily("seatsync_sync_runs", "Sync runs by PSA and outcome", labels=["psa", "outcome"])
        rows = db.session.execute(select(Integration.kind, RUN_OUTCOME, func.count())
                                  .join(Integration, Integration.id == SyncRun.integration_id)
                                  .group_by(Integration.kind, RUN_OUTCOME).order_by(Integration.kind)).all()
        for kind, outcome, n in rows:
            family.add_metric([kind, outcome], n)
        yield family

    def _lines(self):
        family = CounterMetricFamily("seatsync_sync_lines", "PSA lines written by syncs, and what reading them back "
                                     "showed", labels=["psa", "result"])
        verified = func.sum(case((LineResult.verification == state.Verification.VERIFIED, 1), else_=0))
        mismatch = func.sum(case((LineResult.verification == state.Verification.MISMATCH, 1), else_=0))
        rows = db.session.execute(
            select(Integration.kind, func.count(), verified, mismatch)
            .join(SyncRun, SyncRun.id == LineResult.run_id).join(Integration, Integration.id == SyncRun.integration_id)
            .where(LineResult.action.in_(state.WRITTEN)).group_by(Integration.kind)).all()
        for kind, written, ok, differs in rows:
            family.add_metric([kind, "written"], written)
            family.add_metric([kind, str(state.Verification.VERIFIED)], ok or 0)
            family.add_metric([kind, str(state.Verification.MISMATCH)], differs or 0)
        yield family

    def _psa_requests(self):
        family = CounterMetricFamily("seatsync_psa_requests", "Requests sent to PSAs by answer status",
                                     labels=["psa", "status"])
        for field, n in sorted(get_redis().hgetall(PSA_REQUESTS_KEY).items()):
            psa, _, status = field.decode().partition(":")
            family.add_metric([psa, status], int(n))
        return family

    def _integrations(self):
        since = GaugeMetricFamily("seatsync_seconds_since_last_successful_sync",
                                  "Seconds since the integration's last finished (not stopped) run; since it was "
                                  "created if it never finished one", labels=["psa"])
        attention = GaugeMetricFamily("seatsync_companies_needing_attention",
                                      "Company mappings whose last sync needs attention or failed", labels=["psa"])
        last = select(func.max(SyncRun.finished_at)).where(SyncRun.integration_id == Integration.id,
                                                           SyncRun.state == state.RunState.FINISHED).scalar_subquery()
        needing = select(func.count(CompanyMapping.id)).where(
            CompanyMapping.integration_id == Integration.id,
            CompanyMapping.status.in_(state.NEEDING_ATTENTION)).scalar_subquery()
        now = utcnow()
        for integration, finished_at, n in db.session.execute(select(Integration, last, needing)
                                                              .where(Integration.enabled)).all():
            reference = finished_at or integration.created_at
            if reference.tzinfo is None:  # SQLite's max() gives the stored text back without its zone
                reference = reference.replace(tzinfo=now.tzinfo)
            since.add_metric([integration.kind], (now - reference).total_seconds())
            attention.add_metric([integration.kind], n)
        yield since
        yield attention

    def _queue(self):
        queue = get_queue()
        jobs = GaugeMetricFamily("seatsync_queue_jobs", "Jobs in the queue by state", labels=["state"])
        jobs.add_metric(["queued"], queue.count)
        for name, registry in (("started", StartedJobRegistry), ("scheduled", ScheduledJobRegistry),
                               ("failed", FailedJobRegistry)):
            jobs.add_metric([name], registry(queue=queue).count)
        yield jobs
        yield GaugeMetricFamily("seatsync_workers", "Workers seen on the queue", value=workers_seen())
        paused = db.session.scalar(select(func.count(Channel.id)).where(Channel.paused_at.is_not(None)))
        yield GaugeMetricFamily("seatsync_alert_channels_paused", "Alert channels paused after failing", value=paused)


def workers_seen() -> int:
    embedded = current_app.extensions.get("embedded_worker")
    if current_app.config["EMBEDDED_QUEUE"]:
        return int(embedded is not None and embedded.is_alive())
    return Worker.count(queue=get_queue())


# --------------------------------------------------------------------------------------------------
# /readyz
# --------------------------------------------------------------------------------------------------
def _database() -> dict:
    db.session.execute(db.text("SELECT 1"))
    return {"ok": True}


def _redis() -> dict:
    get_redis().ping()
    return {"ok": True}


def _clock() -> dict:
    value = get_redis().get(last_tick_key())
    age = None if value is None else round(time.time() - float(value), 1)
    return {"ok": age is not None and age <= current_app.config["READY_TICK_MAX_SECONDS"], "last_tick_age_seconds": age}


def _workers() -> dict:
    seen = workers_seen()
    return {"ok": seen > 0, "seen": seen}


@bp.get("/readyz")
@public
def readyz():
    """Ready when the database and Redis answer, a worker is seen and the clock ticked lately."""
    checks = {}
    for name, probe in (("database", _database), ("redis", _redis), ("clock", _clock), ("workers", _workers)):
        try:
            checks[name] = probe()
        except Exception as exc:  # report, don't crash: this endpoint exists to say what is down
            db.session.rollback()
            checks[name] = {"ok": False, "error": type(exc).__name__}
    ready = all(check["ok"] for check in checks.values())
    return jsonify(status="ready" if ready else "not ready", **checks), 200 if ready else 503


# --------------------------------------------------------------------------------------------------
# Sentry
# --------------------------------------------------------------------------------------------------
SECRET_KEY_NAMES = re.compile(r"secret|password|passwd|token|private|api[-_]?key|authorization|cookie|whsec|"
                              r"credential|webhook[-_]?url|dsn", re.IGNORECASE)
def scrub_event(value, key: str = ""):
    if isinstance(value, dict):
        return {k: scrub_event(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_event(v, key) for v in value]
    if isinstance(value, str):
        return MASK if SECRET_KEY_NAMES.search(key) else DECRYPTED(value)
    return value


def before_send(event, hint):
    return scrub_event(event)


def init_sentry(dsn: str) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    sentry_sdk.init(dsn=dsn, integrations=[FlaskIntegration(), RqIntegration()], send_default_pii=False,
                    before_send=before_send, environment=os.environ.get("SEATSYNC_ENV", "embedded"))
