"""JSON API /api/v1 for vendor platforms and scripts (PRODUCT.md §2): companies, products, seats, counts.

Authenticated by API tokens (`Authorization: Bearer <token>`), looked up by their SHA-256; revoked
tokens are refused; `read` tokens may only GET, `write` tokens may also upsert. The views are `public`
for the session-based access rules and exempt from CSRF (no cookies are involved); this module
checks the token itself before every request. Errors are JSON: {"error", "message", "fields"}.
The OpenAPI document is served at /api/v1/openapi.json.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from flask import Blueprint, g, jsonify, request, url_for
from sqlalchemy import func, or_, select
from werkzeug.exceptions import HTTPException

from .. import audit, counts, seats_import
from ..extensions import csrf, db
from ..inputs import MAX_PAGE, db_int, page_number
from ..models import ApiToken, Company, CountOverride, MonthlyCount, Product, Seat
from ..models._types import utcnow
from ..models.seats import COUNT_RULES
from ..security import public
from ..timezones import org_zone

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 100
MAX_BATCH = 1000
OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)  # don't write the token row on every request


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status, self.error, self.message, self.fields = status, error, message, fields or {}


@bp.errorhandler(ApiError)
def api_error(exc: ApiError):
    body = {"error": exc.error, "message": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    response = jsonify(body)
    response.status_code = exc.status
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="SeatSync API"'
    return response


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return api_error(ApiError(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name))


@bp.before_request
def authenticate():
    if request.endpoint == "api.openapi":
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "Send an API token: Authorization: Bearer <token> "
                                            "(create one under Settings > API tokens).")
    row = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == ApiToken.hash(token.strip())))
    if row is None or row.revoked_at is not None:
        raise ApiError(401, "unauthorized", "This API token is unknown or has been revoked.")
    needed = "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"
    if not row.allows(needed):
        raise ApiError(403, "forbidden", f"This token has the {row.scope} scope; this request needs {needed}.")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        db.session.commit()
    g.api_token = row
    return None


def _actor() -> str:
    return f"api token {g.api_token.name} ({g.api_token.prefix}…)"


def _body():
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "bad_request", "Send a JSON body with Content-Type: application/json.")
    return data


def _object_body(what: str) -> dict:
    data = _body()
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", f"Send one {what} as a JSON object.")
    return data


def _page_args() -> tuple[int, int]:
    fields = {}
    try:
        page = page_number(request.args.get("page", "1"))
    except ValueError:
        fields["page"] = f"a whole number from 1 to {MAX_PAGE}"
        page = 1
    try:
        per_page = db_int(request.args.get("per_page", str(DEFAULT_PER_PAGE)))
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError
    except ValueError:
        fields["per_page"] = f"a whole number from 1 to {MAX_PER_PAGE}"
        per_page = DEFAULT_PER_PAGE
    if fields:
        raise ApiError(422, "validation_failed", "Bad query parameters.", fields)
    return page, per_page


def _paged(query, serialize):
    page, per_page = _page_args()
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = db.session.scalars(query.limit(per_page).offset((page - 1) * per_page)).all()
    return _envelope([serialize(item) for item in items], page, per_page, total)


def _envelope(data: list, page: int, per_page: int, total: int):
    args = {k: v for k, v in request.args.items() if k != "page"}
    more = page * per_page < total
    return jsonify({
        "data": data, "page": page, "per_page": per_page, "total": total,
        "next": url_for(request.endpoint, page=page + 1, _external=True, **(request.view_args or {}), **args)
        if more else None,
    })


def _int_arg(name: str) -> int | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    try:
        return db_int(value)
    except ValueError:
        raise ApiError(422, "validation_failed", "Bad query parameters.", {name: "a whole number"}) from None


def _when(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


# --- serializers ----------------------------------------------------------------------------------


def company_json(c: Company) -> dict:
    return {"id": c.id, "name": c.name, "external_id": c.external_id, "active": c.active,
            "created_at": _when(c.created_at), "updated_at": _when(c.updated_at)}


def product_json(p: Product) -> dict:
    return {"id": p.id, "name": p.name, "count_rule": p.count_rule, "active": p.active}


def seat_json(s: Seat) -> dict:
    return {"id": s.id, "company_id": s.company_id, "product_id": s.product_id, "user_email": s.user_email,
            "active_from": _when(s.active_from), "active_to": _when(s.active_to), "billable": s.billable,
            "updated_at": _when(s.updated_at)}


# --- validation -----------------------------------------------------------------------------------


def _text(data: dict, name: str, fields: dict, required: bool = False, limit: int = 255) -> str | None:
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            fields[name] = "required"
        return None
    if not isinstance(value, str):
        fields[name] = "must be a string"
        return None
    if len(value.strip()) > limit:
        fields[name] = f"at most {limit} characters"
        return None
    return value.strip()


def _bool(data: dict, name: str, fields: dict, default=None):
    value = data.get(name, default)
    if value is not None and not isinstance(value, bool):
        fields[name] = "must be true or false"
        return default
    return value


def _datetime(data: dict, name: str, fields: dict, required: bool = False) -> dt.datetime | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            fields[name] = "required"
        return None
    if not isinstance(value, str):
        fields[name] = "must be a string"
        return None
    try:
        return seats_import.parse_when(value, org_zone())
    except ValueError:
        fields[name] = "an ISO 8601 date or date-time, e.g. 2025-01-31 or 2025-01-31T18:00:00Z"
        return None


def _invalid(fields: dict, message: str = "The request has invalid fields."):
    if fields:
        raise ApiError(422, "validation_failed", message, fields)


# --- companies ------------------------------------------------------------------------------------


@bp.get("/companies")
@public
def list_companies():
    query = select(Company).order_by(Company.id)
    search = request.args.get("q", "").strip()
    if search:
        query = query.where(or_(func.lower(Company.name).contains(search.lower(), autoescape=True),
                                Company.external_id == search))
    if request.args.get("external_id"):
        query = query.where(Company.external_id == request.args["external_id"])
    return _paged(query, company_json)


@bp.get("/companies/<int:company_id>")
@public
def get_company(company_id: int):
    company = db.session.get(Company, company_id)
    if company is None:
        raise ApiError(404, "not_found", f"No company with id {company_id}.")
    return jsonify(company_json(company))


@bp.post("/companies")
@public
def upsert_company():
    """Upsert by external_id when given, else create."""
    data = _object_body("company")
    fields: dict = {}
    name = _text(data, "name", fields, required=True)
    external_id = _text(data, "external_id", fields)
    active = _bool(data, "active", fields)
    _invalid(fields)
    company = db.session.scalar(select(Company).where(Company.external_id == external_id)) if external_id else None
    created = company is None
    if created:
        company = Company(name=name, external_id=external_id, active=True if active is None else active)
        db.session.add(company)
    before = None if created else company_json(company)
    company.name = name
    if active is not None:
        company.active = active
    db.session.flush()
    after = company_json(company)
    if created or {k: before[k] for k in ("name", "active")} != {k: after[k] for k in ("name", "active")}:
        audit.record("company.created" if created else "company.changed", company.name,
                     before=before and {"name": before["name"], "active": before["active"]},
                     after={"name": company.name, "external_id": company.external_id, "active": company.active},
                     actor=_actor())
    db.session.commit()
    return jsonify(company_json(company)), 201 if created else 200


# --- products -------------------------------------------------------------------------------------


@bp.get("/products")
@public
def list_products():
    return _paged(select(Product).order_by(Product.id), product_json)


@bp.post("/products")
@public
def upsert_product():
    """Upsert by name (case-insensitive)."""
    data = _object_body("product")
    fields: dict = {}
    name = _text(data, "name", fields, required=True)
    rule = _text(data, "count_rule", fields)
    if rule is not None and rule not in COUNT_RULES:
        fields["count_rule"] = "one of " + ", ".join(COUNT_RULES)
    active = _bool(data, "active", fields)
    _invalid(fields)
    # The exact name too: SQLite's lower() folds ASCII only, and the name is unique as typed.
    product = db.session.scalar(select(Product).where(
        or_(Product.name == name, func.lower(Product.name) == name.lower())).limit(1))
    created = product is None
    if created:
        product = Product(name=name, count_rule=rule or COUNT_RULES[0], active=True if active is None else active)
        db.session.add(product)
    before = None if created else product_json(product)
    if rule:
        product.count_rule = rule
    if active is not None:
        product.active = active
    db.session.flush()
    if created or before != product_json(product):
        audit.record("product.created" if created else "product.changed", product.name, before=before,
                     after=product_json(product), actor=_actor())
    db.session.commit()
    return jsonify(product_json(product)), 201 if created else 200


# --- seats ----------------------------------------------------------------------------------------


@bp.get("/seats")
@public
def list_seats():
    query = select(Seat).order_by(Seat.id)
    company_id, product_id = _int_arg("company_id"), _int_arg("product_id")
    if company_id is not None:
        query = query.where(Seat.company_id == company_id)
    if product_id is not None:
        query = query.where(Seat.product_id == product_id)
    if request.args.get("user_email"):
        query = query.where(Seat.user_email == request.args["user_email"].strip().lower())
    if request.args.get("active") in ("true", "false"):
        now = utcnow()
        is_active = (Seat.active_from <= now) & or_(Seat.active_to.is_(None), Seat.active_to > now)
        query = query.where(is_active if request.args["active"] == "true" else ~is_active)
    return _paged(query, seat_json)


def _resolve_seat(item, companies: dict, products: dict) -> tuple[dict | None, dict]:
    fields: dict = {}
    if not isinstance(item, dict):
        return None, {"": "each seat must be a JSON object"}
    company = None
    if item.get("company_id") is not None:
        company = companies.get(item["company_id"]) if isinstance(item["company_id"], int) else None
        if company is None:
            fields["company_id"] = "no such company"
    elif item.get("company_external_id"):
        company = companies.get(("ext", str(item["company_external_id"])))
        if company is None:
            fields["company_external_id"] = "no company has this external_id (create it with POST /companies)"
    else:
        fields["company_id"] = "required (or company_external_id)"
    product = None
    if item.get("product_id") is not None:
        product = products.get(item["product_id"]) if isinstance(item["product_id"], int) else None
        if product is None:
            fields["product_id"] = "no such product"
    elif item.get("product"):
        product = products.get(("name", str(item["product"]).strip().lower()))
        if product is None:
            fields["product"] = "no product has this name"
    else:
        fields["product_id"] = "required (or product)"
    email = None
    raw_email = _text(item, "user_email", fields, required=True, limit=320)
    if raw_email:
        try:
            email = seats_import.parse_email(raw_email)
        except Exception as error:
            fields["user_email"] = f"not a valid e-mail address: {error}"
    start = _datetime(item, "active_from", fields, required=True)
    end = _datetime(item, "active_to", fields)
    if start and end and end <= start:
        fields["active_to"] = "must be after active_from"
    billable = _bool(item, "billable", fields, default=True)
    if fields:
        return None, fields
    return {"company_id": company.id, "product_id": product.id, "user_email": email, "active_from": start,
            "active_to": end, "billable": billable}, {}


@bp.post("/seats")
@public
def upsert_seats():
    """Upsert one seat (a JSON object) or a batch ({"seats": [...]}, all or nothing), by company +
    product + user_email."""
    data = _body()
    batch = isinstance(data, dict) and "seats" in data
    items = data["seats"] if batch else [data]
    if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
        raise ApiError(422, "validation_failed", f"seats must be a list of 1 to {MAX_BATCH} seats.",
                       {"seats": f"1 to {MAX_BATCH} items"})
    companies: dict = {}
    for c in db.session.scalars(select(Company)):
        companies[c.id] = c
        if c.external_id:
            companies[("ext", c.external_id)] = c
    products: dict = {}
    for p in db.session.scalars(select(Product)):
        products[p.id] = p
        products[("name", p.name.strip().lower())] = p
    resolved, fields = [], {}
    for index, item in enumerate(items):
        values, problems = _resolve_seat(item, companies, products)
        for name, message in problems.items():
            fields[f"seats[{index}].{name}" if batch else name] = message
        resolved.append(values)
    _invalid(fields, "Nothing was saved: some seats have invalid fields." if batch else "The seat has invalid fields.")
    keys = [(v["company_id"], v["product_id"], v["user_email"]) for v in resolved]
    if len(set(keys)) != len(keys):
        seen, dupes = set(), {}
        for index, key in enumerate(keys):
            if key in seen:
                dupes[f"seats[{index}]"] = "the same company, product and user_email appear twice in the batch"
            seen.add(key)
        _invalid(dupes, "Nothing was saved: duplicate seats in the batch.")
    results, created_count, changed_count = [], 0, 0
    for values in resolved:
        seat = db.session.scalar(select(Seat).filter_by(company_id=values["company_id"],
                                                        product_id=values["product_id"],
                                                        user_email=values["user_email"]))
        created = seat is None
        if created:
            seat = Seat(**values)
            db.session.add(seat)
            created_count += 1
        else:
            changes = {k: v for k, v in values.items() if getattr(seat, k) != v}
            for name, value in changes.items():
                setattr(seat, name, value)
            changed_count += bool(changes)
        results.append((seat, created))
    db.session.flush()
    if created_count or changed_count:
        audit.record("seats.upserted", "API", f"{created_count} new seat(s), {changed_count} changed",
                     after={"new": created_count, "changed": changed_count}, actor=_actor())
    db.session.commit()
    closed = _closed_months_affected({s.company_id for s, _ in results}) if created_count or changed_count else []
    if batch:
        return jsonify({"data": [seat_json(s) for s, _ in results], "created": created_count,
                        "updated": changed_count, "closed_months_affected": closed}), 200, _closed_header(closed)
    seat, created = results[0]
    return jsonify(seat_json(seat)), 201 if created else 200, _closed_header(closed)


def _closed_months_affected(company_ids) -> list[str]:
    """Closed months ("YYYY-MM") whose frozen counts these companies' seats no longer match: an admin
    recomputes them (Monthly counts offers it) so that the next sync pushes the new numbers."""
    return [m.strftime("%Y-%m") for m in counts.drifted_closed_months(sorted(company_ids))]


def _closed_header(closed: list[str]) -> dict[str, str]:
    return {"SeatSync-Closed-Months-Affected": ",".join(closed)} if closed else {}


@bp.post("/seats/<int:seat_id>/deactivate")
@public
def deactivate_seat(seat_id: int):
    seat = db.session.get(Seat, seat_id)
    if seat is None:
        raise ApiError(404, "not_found", f"No seat with id {seat_id}.")
    data = request.get_json(silent=True) or {}
    fields: dict = {}
    end = _datetime(data, "active_to", fields) if isinstance(data, dict) else None
    end = end or utcnow()
    if not fields and end <= seat.active_from:
        fields["active_to"] = "must be after the seat's active_from"
    _invalid(fields)
    if seat.active_to != end:
        before = _when(seat.active_to)
        seat.active_to = end
        audit.record("seat.ended", f"{seat.company.name} / {seat.product.name} / {seat.user_email}",
                     before={"active_to": before}, after={"active_to": _when(end)}, actor=_actor())
        db.session.commit()
        return jsonify(seat_json(seat)), 200, _closed_header(_closed_months_affected([seat.company_id]))
    return jsonify(seat_json(seat))


# --- monthly counts -------------------------------------------------------------------------------


@bp.get("/counts")
@public
def list_counts():
    """The counts a sync would bill for a month (default: the current month to date)."""
    fields = {}
    month_arg = request.args.get("month", "")
    try:
        month = counts.month_start(dt.date.fromisoformat(month_arg + "-01")) if month_arg else counts.current_month()
    except ValueError:
        fields["month"] = "YYYY-MM"
        month = None
    company_id, product_id = _int_arg("company_id"), _int_arg("product_id")
    _invalid(fields, "Bad query parameters.")
    page, per_page = _page_args()
    company_ids = [company_id] if company_id is not None else None
    product_ids = [product_id] if product_id is not None else None
    if company_ids is None:
        targets = counts.stored_targets(month)
        if product_ids is not None:
            targets = {k: v for k, v in targets.items() if k[1] == product_id}
    else:
        targets = counts.target_counts(month, company_ids, product_ids)
    pairs = sorted(targets)
    chunk = pairs[(page - 1) * per_page: page * per_page]
    frozen = counts.month_is_frozen(month)
    overridden = {(o.company_id, o.product_id) for o in db.session.scalars(
        select(CountOverride).where(CountOverride.month == month))}
    externals = dict(db.session.execute(select(Company.id, Company.external_id).where(
        Company.id.in_({c for c, _ in chunk}))).all()) if chunk else {}
    names = dict(db.session.execute(select(Product.id, Product.name)).all())
    as_of = db.session.scalar(select(func.max(MonthlyCount.computed_at)).where(MonthlyCount.month == month))
    data = [{"company_id": c, "company_external_id": externals.get(c), "product_id": p, "product": names.get(p),
             "month": month.strftime("%Y-%m"), "count": targets[(c, p)], "frozen": frozen,
             "overridden": (c, p) in overridden} for c, p in chunk]
    response = _envelope(data, page, per_page, len(pairs))
    payload = response.get_json()
    payload["month"] = month.strftime("%Y-%m")
    payload["closed"] = counts.is_closed(month)
    payload["frozen"] = frozen
    payload["computed_at"] = _when(as_of) if company_ids is None else _when(utcnow())
    return jsonify(payload)


# --- the document ---------------------------------------------------------------------------------


@bp.get("/openapi.json")
@public
def openapi():
    document = json.loads(OPENAPI_PATH.read_text())
    document["servers"] = [{"url": url_for("api.openapi", _external=True).rsplit("/", 1)[0]}]
    return jsonify(document)
