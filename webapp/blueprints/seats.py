"""Companies, products, seats, count overrides, monthly counts and the CSV import (PRODUCT.md §2).

Lists are searched and paginated in SQL (10,000 companies stay fast: one page of rows plus one
aggregate for that page). Count tables read `counts.month_table`, which is exact for a page of
companies and uses the stored counts for whole-organisation totals.

The operator's CLI commands for seats and counts live here too (`flask import-seats`,
`compute-counts`, `freeze-month`), registered at the top level through the blueprint's CLI group.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys

import click
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, or_, select

from .. import audit, counts, seats_import
from ..extensions import db, htmx
from ..inputs import accepts_upload, db_int_or_none, page_number
from ..models import Company, CountOverride, MonthlyCount, Product, Seat
from ..models._types import utcnow
from ..models.seats import COUNT_RULES
from ..security import admin_only, safe_next
from ..timezones import org_zone
from .errors import render_error

bp = Blueprint("seats", __name__, cli_group=None)

PAGE_SIZE = 50
SEAT_PAGE_SIZE = 100
MONTHS_SHOWN = 12
RULE_LABELS = {"active_during_month": "Active at any time in the month",
               "active_at_month_end": "Active at the end of the month"}


# --- helpers ----------------------------------------------------------------------------------------


def _page_number() -> int:
    try:
        return page_number(request.args.get("page", "1"))
    except ValueError:
        return 1


def _paginate(query, page: int, size: int):
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    pages = max(1, -(-total // size))
    page = min(page, pages)
    items = db.session.execute(query.limit(size).offset((page - 1) * size)).all()
    return {"items": items, "page": page, "pages": pages, "total": total}


def _product(product_id: str) -> Product | None:
    number = db_int_or_none(product_id)
    return db.session.get(Product, number) if number is not None else None


def _company(company_id: int) -> Company:
    return db.session.get(Company, company_id) or abort(404)


def _form(*names) -> dict[str, str]:
    return {name: request.form.get(name, "").strip() for name in names}


def _parse_local(value: str, field: str, required: bool = True) -> dt.datetime | None:
    if not value:
        if required:
            raise ValueError(f"{field} is required")
        return None
    try:
        return seats_import.parse_when(value, org_zone())
    except ValueError:
        raise ValueError(f"{field}: use YYYY-MM-DD or YYYY-MM-DD HH:MM") from None


def _override_notes(company_ids, months) -> dict[tuple[int, int, dt.date], str]:
    """{(company, product, month): note} of the overrides in these tables, so their cells are marked."""
    if not company_ids:
        return {}
    return {(o.company_id, o.product_id, o.month): o.note for o in db.session.scalars(
        select(CountOverride).where(CountOverride.company_id.in_(list(company_ids)), CountOverride.month.in_(months)))}


def _month_columns(months: list[dt.date]) -> dict:
    """Count tables show the newest month first, so the billed month and the month to date are in view."""
    current = counts.current_month()
    return {"columns": months[::-1], "current_month": current, "billed_month": counts.previous_month(current)}


def _months(end: dt.date | None = None) -> list[dt.date]:
    end = end or counts.current_month()
    return [counts.add_months(end, -i) for i in range(MONTHS_SHOWN - 1, -1, -1)]


def _chart(series: dict, months: list[dt.date], width: int = 360, height: int = 80) -> dict:
    """Coordinates for a small SVG line chart (one polyline per series), drawn without JavaScript."""
    top = max([1] + [v for values in series.values() for v in values])
    step = width / max(len(months) - 1, 1)
    lines = []
    for index, (label, values) in enumerate(series.items()):
        points = " ".join(f"{i * step:.1f},{height - 4 - (v / top) * (height - 8):.1f}" for i, v in enumerate(values))
        lines.append({"label": label, "points": points, "css": f"series-{index % 6}", "last": values[-1]})
    return {"width": width, "height": height, "lines": lines, "top": top}


def _sparkline(values: list[int], width: int = 120, height: int = 28) -> str:
    top = max([1] + values)
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))


# --- companies --------------------------------------------------------------------------------------


def _company_list():
    search = request.args.get("q", "").strip()
    status = request.args.get("status", "active")
    query = select(Company.id, Company.name, Company.external_id, Company.active)
    if search:
        query = query.where(or_(func.lower(Company.name).contains(search.lower(), autoescape=True),
                                Company.external_id == search))
    if status in ("active", "inactive"):
        query = query.where(Company.active.is_(status == "active"))
    page = _paginate(query.order_by(func.lower(Company.name), Company.id), _page_number(), PAGE_SIZE)
    ids = [row.id for row in page["items"]]
    now = utcnow()
    seats_now = {}
    if ids:
        seats_now = dict(db.session.execute(
            select(Seat.company_id, func.count()).where(
                Seat.company_id.in_(ids), Seat.billable, Seat.active_from <= now,
                or_(Seat.active_to.is_(None), Seat.active_to > now)).group_by(Seat.company_id)).all())
    return {"page": page, "search": search, "status": status, "seats_now": seats_now}


@bp.get("/companies")
def companies():
    context = _company_list()
    if htmx and htmx.target == "companies-table":
        return render_template("seats/_companies_table.html", **context)
    return render_template("seats/companies.html", **context, form={})


@bp.post("/companies")
def create_company():
    form = _form("name", "external_id")
    error = _company_problem(form)
    if error:
        flash(error, "error")
        return render_template("seats/companies.html", **_company_list(), form=form), 422
    company = Company(name=form["name"], external_id=form["external_id"] or None)
    db.session.add(company)
    audit.record("company.created", form["name"], after={"name": form["name"], "external_id": company.external_id})
    db.session.commit()
    flash(f"Company {company.name} created.", "success")
    return redirect(url_for("seats.company", company_id=company.id))


def _company_problem(form: dict, company: Company | None = None) -> str | None:
    if not form["name"]:
        return "Name: a company needs a name."
    if len(form["name"]) > 255 or len(form["external_id"]) > 255:
        return "Name and external ID are at most 255 characters."
    if form["external_id"]:
        other = db.session.scalar(select(Company).where(Company.external_id == form["external_id"]))
        if other is not None and other is not company:
            return f"External ID: {form['external_id']} already belongs to {other.name}."
    return None


def _company_context(company: Company) -> dict:
    search = request.args.get("q", "").strip()
    query = select(Seat.id, Seat.user_email, Seat.active_from, Seat.active_to, Seat.billable,
                   Product.name.label("product")).join(Product).where(Seat.company_id == company.id)
    if search:
        query = query.where(func.lower(Seat.user_email).contains(search.lower(), autoescape=True))
    seats = _paginate(query.order_by(Product.name, Seat.user_email), _page_number(), SEAT_PAGE_SIZE)
    products = db.session.scalars(select(Product).order_by(Product.name)).all()
    months = _months()
    table = counts.month_table(months, company_ids=[company.id])
    used = sorted({p for (_c, p) in table}, key=lambda pid: next((p.name for p in products if p.id == pid), ""))
    by_id = {p.id: p for p in products}
    rows = [{"product": by_id[pid], "values": [table[(company.id, pid)].get(m, 0) for m in months]}
            for pid in used if pid in by_id]
    columns = _month_columns(months)
    for row in rows:  # the table's cells, newest month first
        row["cells"] = list(zip(columns["columns"], row["values"][::-1], strict=True))
    overrides = db.session.scalars(select(CountOverride).where(CountOverride.company_id == company.id)
                                   .order_by(CountOverride.month.desc())).all()
    return {
        "company": company, "seats": seats, "search": search, "products": products, "months": months,
        "count_rows": rows, "overrides": overrides, "rule_labels": RULE_LABELS,
        "chart": _chart({r["product"].name: r["values"] for r in rows}, months),
        "now": utcnow(), **columns,
        "overridden": _override_notes([company.id], months),
        "closed_months": counts.drifted_closed_months([company.id]),
        "frozen": {m for m in months if counts.month_is_frozen(m)},
    }


@bp.get("/companies/<int:company_id>")
def company(company_id: int):
    context = _company_context(_company(company_id))
    if htmx and htmx.target == "seats-table":
        return render_template("seats/_seats_table.html", **context)
    return render_template("seats/company.html", **context)


@bp.post("/companies/<int:company_id>")
def edit_company(company_id: int):
    company = _company(company_id)
    form = _form("name", "external_id")
    error = _company_problem(form, company)
    if error:
        flash(error, "error")
        return render_template("seats/company.html", **_company_context(company)), 422
    before = {"name": company.name, "external_id": company.external_id}
    company.name, company.external_id = form["name"], form["external_id"] or None
    after = {"name": company.name, "external_id": company.external_id}
    if before != after:
        audit.record("company.changed", company.name, before=before, after=after)
    db.session.commit()
    flash("Company saved.", "success")
    return redirect(url_for("seats.company", company_id=company.id))


@bp.post("/companies/<int:company_id>/active")
def set_company_active(company_id: int):
    """Deactivating a company ends its open seats now (they stop counting from this moment)."""
    company = _company(company_id)
    active = request.form.get("active") == "1"
    ended = 0
    if not active and company.active:
        now = utcnow()
        open_seats = db.session.scalars(select(Seat).where(Seat.company_id == company.id, or_(
            Seat.active_to.is_(None), Seat.active_to > now))).all()
        for seat in open_seats:
            seat.active_to = max(now, seat.active_from + dt.timedelta(seconds=1))
        ended = len(open_seats)
    if company.active != active:
        company.active = active
        audit.record("company.activated" if active else "company.deactivated", company.name,
                     f"{ended} open seat(s) ended" if not active else "")
    db.session.commit()
    flash(f"{company.name} is {'active' if active else 'deactivated'}"
          + (f"; {ended} open seat(s) ended today." if ended else "."), "success")
    return redirect(url_for("seats.company", company_id=company.id))


# --- seats ------------------------------------------------------------------------------------------


def _seat_values(company: Company) -> dict:
    form = _form("product_id", "user_email", "active_from", "active_to")
    product = _product(form["product_id"])
    if product is None:
        raise ValueError("Product: pick a product.")
    try:
        email = seats_import.parse_email(form["user_email"])
    except Exception as error:
        raise ValueError(f"User e-mail: {error}") from None
    start = _parse_local(form["active_from"], "Active from")
    end = _parse_local(form["active_to"], "Active to", required=False)
    if end is not None and end <= start:
        raise ValueError("Active to must be after active from.")
    return {"product": product, "user_email": email, "active_from": start, "active_to": end,
            "billable": request.form.get("billable") == "1"}


@bp.post("/companies/<int:company_id>/seats")
def add_seat(company_id: int):
    company = _company(company_id)
    try:
        values = _seat_values(company)
    except ValueError as error:
        flash(str(error), "error")
        return render_template("seats/company.html", **_company_context(company)), 422
    seat = db.session.scalar(select(Seat).filter_by(company_id=company.id, product_id=values["product"].id,
                                                    user_email=values["user_email"]))
    if seat is None:
        seat = Seat(company=company, **values)
        db.session.add(seat)
    else:
        for name, value in values.items():
            setattr(seat, name, value)
    audit.record("seat.saved", f"{company.name} / {values['product'].name} / {values['user_email']}",
                 after={"active_from": str(values["active_from"]), "active_to": str(values["active_to"]),
                        "billable": values["billable"]})
    db.session.commit()
    flash(f"Seat for {seat.user_email} saved.", "success")
    return redirect(url_for("seats.company", company_id=company.id))


@bp.post("/seats/<int:seat_id>/end")
def end_seat(seat_id: int):
    seat = db.session.get(Seat, seat_id) or abort(404)
    now = utcnow()
    if seat.active_to is None or seat.active_to > now:
        before = str(seat.active_to)
        seat.active_to = max(now, seat.active_from + dt.timedelta(seconds=1))
        audit.record("seat.ended", f"{seat.company.name} / {seat.product.name} / {seat.user_email}",
                     before={"active_to": before}, after={"active_to": str(seat.active_to)})
        db.session.commit()
        flash(f"Seat for {seat.user_email} ended.", "success")
    return redirect(url_for("seats.company", company_id=seat.company_id))


# --- count overrides --------------------------------------------------------------------------------


@bp.post("/companies/<int:company_id>/overrides")
def save_override(company_id: int):
    company = _company(company_id)
    form = _form("product_id", "month", "count", "note")
    product = _product(form["product_id"])
    count = db_int_or_none(form["count"])
    problems = []
    if product is None:
        problems.append("Product: pick a product.")
    try:
        month = counts.month_start(dt.date.fromisoformat(form["month"] + "-01" if len(form["month"]) == 7
                                                         else form["month"]))
    except ValueError:
        problems.append("Month: use YYYY-MM.")
    if count is None:
        problems.append("Count: a whole number, 0 or more.")
    if not form["note"]:
        problems.append("Note: say why the count is overridden (it goes to the audit log).")
    if problems:
        for problem in problems:
            flash(problem, "error")
        return render_template("seats/company.html", **_company_context(company)), 422
    override = db.session.scalar(select(CountOverride).filter_by(company_id=company.id, product_id=product.id,
                                                                 month=month))
    before = {"count": override.count, "note": override.note} if override else None
    if override is None:
        override = CountOverride(company_id=company.id, product_id=product.id, month=month, count=0, note="")
        db.session.add(override)
    override.count, override.note = count, form["note"][:2000]
    override.created_by_id = current_user.id
    computed = counts.compute_counts(month, company_ids=[company.id], product_ids=[product.id]).get(
        (company.id, product.id), 0)
    audit.record("count.overridden", f"{company.name} / {product.name} / {month:%B %Y}",
                 f"Count set to {override.count} (computed {computed}): {override.note}",
                 before=before, after={"count": override.count, "note": override.note, "computed": computed})
    db.session.commit()
    flash(f"{product.name} for {month:%B %Y} is now {override.count}."
          + (" That month is closed: the override replaces its frozen count, so the next sync of that month "
             "pushes it." if counts.is_closed(month) else ""), "success")
    return redirect(url_for("seats.company", company_id=company.id))


@bp.post("/overrides/<int:override_id>/delete")
def delete_override(override_id: int):
    override = db.session.get(CountOverride, override_id) or abort(404)
    company, product = db.session.get(Company, override.company_id), db.session.get(Product, override.product_id)
    audit.record("count.override_removed", f"{company.name} / {product.name} / {override.month:%B %Y}",
                 "The computed count applies again", before={"count": override.count, "note": override.note})
    db.session.delete(override)
    db.session.commit()
    flash("Override removed; the computed count applies again.", "success")
    return redirect(url_for("seats.company", company_id=company.id))


# --- products ---------------------------------------------------------------------------------------


@bp.get("/products")
def products():
    rows = db.session.scalars(select(Product).order_by(func.lower(Product.name))).all()
    return render_template("seats/products.html", products=rows, rules=COUNT_RULES, rule_labels=RULE_LABELS)


@bp.post("/products")
def create_product():
    form = _form("name", "count_rule")
    problem = _product_problem(form)
    if problem:
        flash(problem, "error")
        return redirect(url_for("seats.products"))
    product = Product(name=form["name"], count_rule=form["count_rule"] or COUNT_RULES[0])
    db.session.add(product)
    audit.record("product.created", product.name, after={"count_rule": product.count_rule})
    db.session.commit()
    flash(f"Product {product.name} created.", "success")
    return redirect(url_for("seats.products"))


def _product_problem(form: dict, product: Product | None = None) -> str | None:
    if not form["name"] or len(form["name"]) > 255:
        return "Name: 1 to 255 characters."
    if form["count_rule"] and form["count_rule"] not in COUNT_RULES:
        return "Count rule: pick one of the rules."
    other = db.session.scalar(select(Product).where(func.lower(Product.name) == form["name"].lower()))
    if other is not None and other is not product:
        return f"A product named {other.name} already exists."
    return None


@bp.post("/products/<int:product_id>")
def edit_product(product_id: int):
    product = db.session.get(Product, product_id) or abort(404)
    form = _form("name", "count_rule")
    problem = _product_problem(form, product)
    if problem:
        flash(problem, "error")
        return redirect(url_for("seats.products"))
    before = {"name": product.name, "count_rule": product.count_rule, "active": product.active}
    product.name = form["name"]
    product.count_rule = form["count_rule"] or product.count_rule
    product.active = request.form.get("active", "1") == "1"
    after = {"name": product.name, "count_rule": product.count_rule, "active": product.active}
    if before != after:
        audit.record("product.changed", product.name, before=before, after=after)
    db.session.commit()
    flash(f"Product {product.name} saved." + (" Counts of open months follow the new rule; closed months keep "
                                             "their snapshot." if before["count_rule"] != product.count_rule
                                             else ""), "success")
    return redirect(url_for("seats.products"))


# --- monthly counts ---------------------------------------------------------------------------------


def _counts_context():
    months = _months()
    listing = _company_list()
    ids = [row.id for row in listing["page"]["items"]]
    table = counts.month_table(months, company_ids=ids) if ids else {}
    products = {p.id: p for p in db.session.scalars(select(Product))}
    rows = []
    columns = _month_columns(months)["columns"]
    for row in listing["page"]["items"]:
        pairs = sorted((pid for (cid, pid) in table if cid == row.id), key=lambda pid: products[pid].name)
        per_product = [{"product": products[pid], "values": [table[(row.id, pid)].get(m, 0) for m in months],
                        "cells": [(m, table[(row.id, pid)].get(m, 0)) for m in columns]} for pid in pairs]
        totals = [sum(p["values"][i] for p in per_product) for i in range(len(months))]
        rows.append({"company": row, "products": per_product, "spark": _sparkline(totals)})
    totals = counts.month_totals(months)
    return {**listing, "months": months, **_month_columns(months), "overridden": _override_notes(ids, months),
            "rows": rows, "totals": totals, "products": products,
            "closed": [m for m in months if m < counts.current_month()][::-1],
            "closed_months": counts.drifted_closed_months(),
            "frozen": {m for m in months if counts.month_is_frozen(m)},
            "live_as_of": db.session.scalar(select(func.max(MonthlyCount.computed_at)).where(
                MonthlyCount.month == months[-1], MonthlyCount.frozen.is_(False)))}


@bp.get("/counts")
def counts_page():
    context = _counts_context()
    if htmx and htmx.target == "counts-table":
        return render_template("seats/_counts_table.html", **context)
    return render_template("seats/counts.html", **context)


@bp.get("/counts.csv")
def counts_csv():
    months = _months()
    table = counts.month_table(months)
    companies = {c.id: c for c in db.session.scalars(select(Company))}
    products = {p.id: p for p in db.session.scalars(select(Product))}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["company", "company_external_id", "product"] + [m.strftime("%Y-%m") for m in months])
    for cid, pid in sorted(table, key=lambda pair: (companies[pair[0]].name.lower(), products[pair[1]].name)):
        writer.writerow([_csv_safe(companies[cid].name), _csv_safe(companies[cid].external_id or ""),
                         _csv_safe(products[pid].name)] + [table[(cid, pid)].get(m, 0) for m in months])
    return Response(buffer.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f"attachment; filename=seatsync-counts-{months[-1]:%Y-%m}.csv"})


def _csv_safe(value: str) -> str:
    # Spreadsheets run cells starting with these as formulas; a company name must stay a name.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@bp.post("/counts/refresh")
def refresh_counts():
    from ..queue import enqueue

    enqueue(counts.compute_counts_job)
    flash("Month-to-date counts are being recomputed; reload in a moment.", "info")
    return redirect(url_for("seats.counts_page"))


@bp.post("/counts/recompute")
@admin_only
def recompute():
    try:
        month = counts.month_start(dt.date.fromisoformat(request.form.get("month", "")))
        changes = counts.recompute_month(month, current_user)
    except ValueError as error:
        flash(str(error), "error")
        return redirect(url_for("seats.counts_page"))
    flash(f"{month:%B %Y} recomputed: {len(changes)} count(s) changed (see the audit log). The next sync "
          "pushes the new numbers.", "success")
    back = request.form.get("next")
    return redirect(safe_next(back, url_for("seats.counts_page")))


# --- CSV import -------------------------------------------------------------------------------------


@bp.get("/seats/import")
def import_form():
    return render_template("seats/import.html", columns=seats_import.COLUMNS, max_mb=seats_import.MAX_BYTES >> 20)


def _upload_limit() -> int:
    return seats_import.MAX_BYTES + 64 * 1024


@bp.errorhandler(413)
def upload_too_large(exc):
    # An oversized body is refused before it is read (webapp/inputs.py); say so on the import page.
    if request.endpoint != "seats.upload":
        return render_error(413)
    size = seats_import.human_size(request.content_length or 0)
    flash(f"The file is {size}; the limit is 50 MB. Split it into smaller files.", "error")
    return render_template("seats/import.html", columns=seats_import.COLUMNS, max_mb=50), 413


@bp.post("/seats/import")
@accepts_upload(_upload_limit)
def upload():
    limit = _upload_limit()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("Choose a CSV file to upload.", "error")
        return render_template("seats/import.html", columns=seats_import.COLUMNS, max_mb=50), 422
    data = upload.read(limit + 1)
    import_id = seats_import.start_upload(data, upload.filename[:200], current_user.id)
    return redirect(url_for("seats.import_status", import_id=import_id))


def _import_state(import_id: str) -> dict:
    if not import_id.isalnum():
        abort(404)
    state = seats_import.read_state(import_id)
    if state is None:
        abort(404)
    return state


@bp.get("/seats/import/<import_id>")
def import_status(import_id: str):
    state = _import_state(import_id)
    closed_months = [dt.date.fromisoformat(m) for m in state.get("closed_months", [])]
    if htmx and htmx.target == "import-progress":
        return render_template("seats/_import_progress.html", state=state, closed_months=closed_months)
    return render_template("seats/import_status.html", state=state, closed_months=closed_months)


@bp.post("/seats/import/<import_id>/commit")
def commit_import(import_id: str):
    state = _import_state(import_id)
    if state.get("status") != "previewed":
        flash("This file cannot be imported: check it again.", "error")
        return redirect(url_for("seats.import_status", import_id=import_id))
    seats_import.start_commit(import_id, current_user.email)
    return redirect(url_for("seats.import_status", import_id=import_id))


# --- CLI --------------------------------------------------------------------------------------------


def _month_option(value: str | None) -> dt.date | None:
    return counts.month_start(dt.date.fromisoformat(value + "-01" if len(value) == 7 else value)) if value else None


@bp.cli.command("import-seats")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and show what would change; write nothing.")
def import_seats_command(file: str, dry_run: bool):
    """Import seats from a CSV file (all or nothing; re-importing the same file changes nothing)."""
    with open(file, "rb") as handle:
        data = handle.read(seats_import.MAX_BYTES + 1)

    def progress(done, total):
        click.echo(f"\r{min(100, 100 * done // max(total, 1))}%", nl=False, err=True)

    plan = seats_import.import_file(data, file, actor="cli", dry_run=dry_run, progress=progress)
    click.echo("", err=True)
    if not plan.ok:
        click.echo(f"Nothing imported: {len(plan.errors)} problem(s).", err=True)
        for error in plan.errors:
            click.echo(f"  line {error.line}: {error.reason}" if error.line else f"  {error.reason}", err=True)
        sys.exit(1)
    summary = plan.summary()
    click.echo(("Would import" if dry_run else "Imported") + (
        ": {rows} rows, {new_seats} new seats, {updated_seats} changed, {unchanged} unchanged, "
        "{new_companies} new companies, {new_products} new products, {updated_companies} companies updated."
    ).format(**summary))
    for line in plan.samples:
        click.echo(f"  {line}")
    if not dry_run and plan.changes:
        counts.store_live_counts()


@bp.cli.command("compute-counts")
@click.option("--month", help="YYYY-MM (default: the current month, to date).")
def compute_counts_command(month: str | None):
    """Compute and store the live counts of a month (frozen snapshots are never touched)."""
    stored = counts.store_live_counts(_month_option(month))
    click.echo(f"Stored {stored} live count(s).")


@bp.cli.command("freeze-month")
@click.option("--month", help="YYYY-MM (default: the last closed month).")
@click.option("--recompute", is_flag=True, help="Rebuild an already frozen month; changes go to the audit log.")
def freeze_month_command(month: str | None, recompute: bool):
    """Freeze a closed month into its snapshot (running it twice changes nothing)."""
    target = _month_option(month) or counts.push_month("last_closed_month")
    if not counts.is_closed(target):
        click.echo(f"{target:%B %Y} is not closed yet.", err=True)
        sys.exit(1)
    if recompute:
        changes = counts.recompute_month(target)
        click.echo(f"Recomputed {target:%B %Y}: {len(changes)} count(s) changed.")
        return
    written = counts.freeze_month(target)
    click.echo(f"Froze {target:%B %Y}: {written} count(s)." if written else f"{target:%B %Y} was already frozen.")
