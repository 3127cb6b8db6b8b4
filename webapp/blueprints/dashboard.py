"""The dashboard: what needs attention across integrations, and the latest runs."""

from flask import Blueprint, render_template, url_for
from sqlalchemy import func

from ..extensions import db
from ..models import Company, CompanyMapping, Integration, Seat, SyncRun
from ..sync import NEEDING_ATTENTION, CompanyStatus
from .integrations import latest_run

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    stats = {
        "companies": db.session.scalar(db.select(func.count(Company.id)).where(Company.active)),
        "seats": db.session.scalar(db.select(func.count(Seat.id))),
        "attention": db.session.scalar(
            db.select(func.count(CompanyMapping.id)).where(CompanyMapping.status.in_(NEEDING_ATTENTION),
                                                            CompanyMapping.excluded.is_(False))
        ),
    }
    integrations = db.session.scalars(db.select(Integration).order_by(Integration.kind)).all()
    runs = db.session.scalars(db.select(SyncRun).order_by(SyncRun.created_at.desc()).limit(10)).all()
    return render_template("dashboard/index.html", stats=stats, integrations=integrations, runs=runs,
                           last_runs={i.id: latest_run(i) for i in integrations},
                           attention_url=attention_url(integrations))


def attention_url(integrations: list[Integration]) -> str:
    """Where the "needing attention" tile leads: the one integration's filtered company list, or the
    dashboard's per-integration outcomes when several integrations have some."""
    statuses: dict[int, set[str]] = {}
    for integration_id, status in db.session.execute(
            db.select(CompanyMapping.integration_id, CompanyMapping.status).distinct()
            .where(CompanyMapping.status.in_(NEEDING_ATTENTION), CompanyMapping.excluded.is_(False))):
        statuses.setdefault(integration_id, set()).add(status)
    with_problems = [i for i in integrations if i.id in statuses]
    if len(with_problems) == 1:
        only = with_problems[0]
        return url_for(f"{only.kind}.companies",
                       filter="attention" if CompanyStatus.NEEDS_ATTENTION in statuses[only.id] else "error")
    return "#integrations"
