"""/healthz: is the database reachable, and the queue?"""

from flask import Blueprint, jsonify

from ..extensions import db
from ..queue import get_redis
from ..security import public

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
