"""Sync runs: history, a run's companies and lines, review before push, CSV export.

Pages read only the database (SyncRun, LineResult, CompanyMapping); a running run's progress is a
partial that polls itself and stops once the run has ended.
"""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from ..extensions import db, htmx
from ..inputs import db_int, page_number
from ..models import Company, CompanyMapping, Integration, LineResult, Product, SyncRun
from ..psa_clients import PSA_KINDS
from ..sync import ACTIVE_RUN, WRITTEN, LineAction, SyncUnavailable, review_changes, run_money, verification_summary
from ..sync.revert import changed_since_lines, revertible_mapping_ids, start_revert

bp = Blueprint("runs", __name__, url_prefix="/runs")

PER_PAGE = 50
CSV_COLUMNS = ("company", "agreement", "product", "psa_product_id", "line_id", "before", "target", "after",
               "action", "changed_in_psa", "message", "http_status", "hint", "psa_response", "at", "count", "rule",
               "unit_price", "unit_cost", "currency", "price_change", "margin_change", "effective_from")


PUSHED = (*WRITTEN, LineAction.APPROVED)  # the run's money line: what was written or is being pushed


def _run_or_404(run_id: int) -> SyncRun:
    run = db.session.get(SyncRun, run_id)
    if run is None:
        abort(404)
    return run


@bp.get("/")
def index():
    """Every run, newest first; `psa` narrows it to one integration's runs (its "Sync runs" tab)."""
    page = request.args.get("page", 1, type=page_number)
    psa = request.args.get("psa", "")
    psa = psa if psa in PSA_KINDS else ""
    query = select(SyncRun).order_by(SyncRun.created_at.desc(), SyncRun.id.desc())
    if psa:
        query = query.join(Integration, Integration.id == SyncRun.integration_id).where(Integration.kind == psa)
    runs = db.session.scalars(query.offset((page - 1) * PER_PAGE).limit(PER_PAGE + 1)).all()
    return render_template("runs/index.html", runs=runs[:PER_PAGE], page=page, has_next=len(runs) > PER_PAGE,
                           psa=psa, psa_kinds=PSA_KINDS)


def _companies(run: SyncRun, status: str = ""):
    """Per company of the run: its mapping, and its line results in this run."""
    rows = db.session.execute(
        select(LineResult, Company.name, Product.name)
        .join(CompanyMapping, CompanyMapping.id == LineResult.company_mapping_id)
        .join(Company, Company.id == CompanyMapping.company_id)
        .outerjoin(Product, Product.id == LineResult.product_id)
        .where(LineResult.run_id == run.id)
        .order_by(Company.name, LineResult.id)
    ).all()
    companies: dict[int, dict] = {}
    for line, company_name, product_name in rows:
        entry = companies.setdefault(line.company_mapping_id, {"name": company_name, "lines": [], "mapping_id":
                                                               line.company_mapping_id})
        entry["lines"].append((line, product_name))
    return list(companies.values())


@bp.get("/<int:run_id>")
def detail(run_id: int):
    run = _run_or_404(run_id)
    if htmx and request.args.get("part") == "progress":
        response = make_response(render_template("runs/_progress.html", run=run,
                                                 verification=verification_summary(run.id)))
        if run.state not in ACTIVE_RUN:
            # The run ended while the page watched it: reload once, so its lines show what was written.
            response.headers["HX-Refresh"] = "true"
        return response
    company = request.args.get("company", type=db_int)
    companies = _companies(run)
    if company:
        companies = [c for c in companies if c["mapping_id"] == company]
    planned = sum(1 for c in companies for line, _ in c["lines"] if line.action == LineAction.PLANNED)
    reverted_by = db.session.scalars(select(SyncRun).where(SyncRun.reverts_run_id == run.id)
                                     .order_by(SyncRun.id)).all()
    return render_template("runs/detail.html", run=run, companies=companies, planned=planned, company=company,
                           verification=verification_summary(run.id), reverted_by=reverted_by,
                           revertible=set(revertible_mapping_ids(run)) if run.state not in ACTIVE_RUN else set(),
                           changed_since=changed_since_lines(run) if run.reverts_run_id else [],
                           money=run_money(run.id), pushed_money=run_money(run.id, PUSHED),
                           planned_money=run_money(run.id, (LineAction.PLANNED,)) if planned else None)


@bp.post("/<int:run_id>/revert")
def revert(run_id: int):
    """Revert the run, or the companies ticked (`company`); `overwrite=1` confirms writing over lines that
    changed in the PSA since the run."""
    run = _run_or_404(run_id)
    ids = None
    if "company" in request.form:
        ids = request.form.getlist("company", type=db_int)
        if not ids:
            abort(400)
    try:
        revert_run = start_revert(run, user=current_user, mapping_ids=ids,
                                  overwrite_changed=request.form.get("overwrite") == "1")
    except SyncUnavailable as error:
        flash(error.reason, "warning")
        return redirect(url_for(".detail", run_id=run.id))
    flash(f"Revert of run {run.id} started as run {revert_run.id}.", "success")
    return redirect(url_for(".detail", run_id=revert_run.id))


@bp.post("/<int:run_id>/review")
def review(run_id: int):
    """Approve or dismiss planned changes: the ticked ones, or all of them."""
    run = _run_or_404(run_id)
    decision = request.form.get("decision")
    if decision not in ("approve", "dismiss"):
        abort(400)
    ids = None
    if request.values.get("scope") != "all":
        ids = request.form.getlist("line", type=db_int)
    count = review_changes(run, approve=decision == "approve", line_ids=ids)
    if not count:
        flash("Nothing to review: tick at least one planned change.", "warning")
    elif decision == "approve":
        flash(f"{count} change(s) approved; they are being pushed now.", "success")
    else:
        flash(f"{count} change(s) dismissed; nothing was sent for them.", "success")
    return redirect(url_for(".detail", run_id=run.id))


@bp.get("/<int:run_id>.csv")
def export(run_id: int):
    run = _run_or_404(run_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for company in _companies(run):
        for line, product_name in company["lines"]:
            writer.writerow([_cell(v) for v in (
                company["name"], line.agreement_id, product_name or "", line.psa_product_id, line.line_id or "",
                _num(line.before), line.target if line.target is not None else "", _num(line.after), line.action,
                "yes" if line.changed_in_psa else "", line.message, line.http_status or "", line.hint,
                line.psa_response, line.created_at.isoformat() if line.created_at else "",
                "" if line.count is None else line.count, line.rule, _num(line.unit_price), _num(line.unit_cost),
                line.currency, _num(line.price_change), _num(line.margin_change),
                line.effective_from.isoformat() if line.effective_from else "",
            )])
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f"attachment; filename=sync-run-{run.id}.csv"})


def _num(value) -> str:
    return "" if value is None else f"{value:g}"


def _cell(value) -> str:
    """Neutralise spreadsheet formulas in PSA- or user-supplied text (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def run_stats() -> dict:
    return {"active": db.session.scalar(select(func.count(SyncRun.id)).where(SyncRun.state.in_(ACTIVE_RUN)))}
