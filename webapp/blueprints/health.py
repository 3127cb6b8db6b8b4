"""/healthz: is the database reachable, and the queue?"""

from flask import Blueprint, jsonify

from ..extensions import db
from ..jobs import ping
from ..queue import enqueue, get_redis, wait_for_job
from ..security import admin_only, public

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz():
    checks = {}
    try:
        db.session.execute(db.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # report, don't crash: this endpoint exists to say what is down
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["queue"] = "ok"
    except Exception as exc:
        checks["queue"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "error", **checks), 200 if healthy else 503


@bp.post("/healthz/job")
@admin_only
def run_test_job():
    """Run a trivial job through the queue and wait for it: proves that jobs are being worked."""
    job = enqueue(ping)
    status = str(getattr(wait_for_job(job, timeout=15), "value", ""))
    return jsonify(job=status, result=job.return_value()), 200 if status == "finished" else 503
