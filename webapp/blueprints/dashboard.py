"""The dashboard: what needs attention across integrations, and the latest runs."""

from flask import Blueprint, render_template
from sqlalchemy import func

from ..extensions import db
from ..models import Company, CompanyMapping, Integration, Seat, SyncRun
from ..sync import NEEDING_ATTENTION

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    stats = {
        "companies": db.session.scalar(db.select(func.count(Company.id)).where(Company.active)),
        "seats": db.session.scalar(db.select(func.count(Seat.id))),
        "attention": db.session.scalar(
            db.select(func.count(CompanyMapping.id)).where(CompanyMapping.status.in_(NEEDING_ATTENTION))
        ),
    }
    integrations = db.session.scalars(db.select(Integration).order_by(Integration.kind)).all()
    runs = db.session.scalars(db.select(SyncRun).order_by(SyncRun.created_at.desc()).limit(10)).all()
    return render_template("dashboard/index.html", stats=stats, integrations=integrations, runs=runs)
