"""Simulated HaloPSA (psa/halopsa.md; spec psa/specs/halopsa-openapi-v2.json).

What it reproduces, because SeatSync's client must cope with it:
- `POST /auth/token[?tenant=…]` (form: grant_type=client_credentials, client_id, client_secret, scope)
  answers `{access_token, token_type, expires_in, scope}`; a wrong client or tenant answers 401
  `{"error": "invalid_client"}`. `settings.token_lifetime` is the knob for expiry tests; clearing
  `tokens` expires every token at once. A missing, unknown or expired token on `/api/…` answers 401.
- Lists page with `pageinate=true`, `page_size` (capped at `settings.max_page_size`), `page_no` from 1,
  and answer `{"record_count": N, "<clients|items|invoices>": [...]}`; without `pageinate` everything.
- Recurring invoices (`/api/RecurringInvoice`, `client_id`, `includelines`; `/{id}?includedetails`) with
  their lines (InvoiceDetail: id, ihid, _itemid, qty_order, unit_price, unit_cost, …).
- `POST /api/RecurringInvoice/updatelines`: a line with `id` gets the fields sent (absolute `qty_order`);
  a line without `id`, with `ihid` and `_itemid`, is added with the item's description and prices —
  SeatSync's assumption (halopsa.md §3), not known behaviour of the real API. The whole array is checked
  before anything is applied. A line whose quantity Halo computes (`recurring_invoice_quantity_type`
  set) refuses a new `qty_order` with 400, so a client that overwrote one would be seen.
- Errors are JSON `{"message": …}` (400/404/5xx), or text for `kind: "text"` faults.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .seed import SIM_CREDENTIALS
from .wire import arg, as_bool, as_int, bearer_is_live, contains, new_id

TOKEN_PATH = "/auth/token"
API = "/api/"
CUSTOMER_TYPE_LOOKUP = 33
TYPE_IDS = {"Client": 1, "Prospect": 2, "Vendor": 3}


def empty_state() -> dict:
    credentials = SIM_CREDENTIALS["halopsa"]
    return {
        "settings": {"tenant": credentials["tenant"], "token_lifetime": 3600.0, "max_page_size": 100},
        "applications": {credentials["client_id"]: credentials["client_secret"]},
        "tokens": {},  # access token -> expiry (epoch seconds)
        "customer_types": {},
        "clients": {},
        "items": {},
        "invoices": {},  # recurring invoices by id, each with its "lines"
        "next_id": 90000,
    }


def owns_path(path: str) -> bool:
    return path == TOKEN_PATH or path.startswith(API)


def endpoint_of(path: str) -> str:
    """The route template, e.g. `api/recurringinvoice/{id}`."""
    return re.sub(r"/\d+(?=/|$)", "/{id}", path.lstrip("/").rstrip("/").lower())


def error_response(status: int, message: str, kind: str | None = None) -> Response:
    if kind == "text":
        return Response(message, status=status, mimetype="text/plain")
    response = jsonify(message=message)
    response.status_code = status
    return response


def _page(rows: list, tables: dict, key: str) -> Response:
    if not as_bool(arg("pageinate")):
        return jsonify({"record_count": len(rows), key: rows})
    size = max(1, min(as_int(arg("page_size")) or 50, tables["settings"]["max_page_size"]))
    number = max(1, as_int(arg("page_no")) or 1)
    return jsonify({"record_count": len(rows), key: rows[(number - 1) * size:number * size]})


def _header_out(header: dict, with_lines: bool) -> dict:
    out = {k: v for k, v in header.items() if k != "lines"}
    if with_lines:
        out["lines"] = [dict(line) for line in header["lines"]]
    return out


def _auth_routes(bp: Blueprint, state) -> None:
    @bp.before_request
    def require_token():
        if request.path.startswith(API) and not bearer_is_live(state, "halopsa"):
            return error_response(401, "Unauthorized")
        return None

    @bp.post(TOKEN_PATH)
    def token():
        form = request.form
        with state.lock:
            t = state.data["halopsa"]
            if form.get("grant_type") != "client_credentials":
                return jsonify(error="unsupported_grant_type"), 400
            tenant = request.args.get("tenant")
            known = t["applications"].get(form.get("client_id", ""))
            if known is None or known != form.get("client_secret") or (
                    tenant is not None and tenant.lower() != t["settings"]["tenant"].lower()):
                return jsonify(error="invalid_client", error_description="The client or its secret is wrong."), 401
            access = secrets.token_urlsafe(32)
            lifetime = float(t["settings"]["token_lifetime"])
            t["tokens"][access] = time.time() + lifetime
            return jsonify(access_token=access, token_type="Bearer",  # noqa: S106 - the token type, not a secret
                           expires_in=int(lifetime), scope=form.get("scope") or "all")


def _list_routes(bp: Blueprint, state) -> None:
    def searched(table: str) -> Response:
        """Customers or items: active ones unless `includeinactive`, by name, paged as `{table: [...]}`."""
        with state.lock:
            t = state.data["halopsa"]
            with_inactive = as_bool(arg("includeinactive")) or False
            rows = sorted((r for r in t[table].values()
                           if contains(r["name"], arg("search")) and (with_inactive or not r["inactive"])),
                          key=lambda r: (r["name"].lower(), r["id"]))
            return _page(rows, t, table)

    bp.add_url_rule("/api/Client", "clients", lambda: searched("clients"))
    bp.add_url_rule("/api/Item", "items", lambda: searched("items"))

    @bp.get("/api/Lookup")
    def lookup():
        with state.lock:
            if as_int(arg("lookupid")) != CUSTOMER_TYPE_LOOKUP:
                return jsonify([])
            return jsonify(list(state.data["halopsa"]["customer_types"].values()))


def _invoice_routes(bp: Blueprint, state) -> None:
    def tables() -> dict:
        return state.data["halopsa"]

    @bp.get("/api/RecurringInvoice")
    def recurring_invoices():
        with state.lock:
            t = tables()
            client_id = as_int(arg("client_id"))
            with_lines = as_bool(arg("includelines")) or False
            rows = [_header_out(h, with_lines) for h in t["invoices"].values()
                    if client_id is None or h["client_id"] == client_id]
            rows.sort(key=lambda h: h["id"])
            return _page(rows, t, "invoices")

    @bp.get("/api/RecurringInvoice/<int:invoice_id>")
    def recurring_invoice(invoice_id: int):
        with state.lock:
            header = tables()["invoices"].get(str(invoice_id))
            if header is None:
                return error_response(404, f"Recurring invoice {invoice_id} not found.")
            return jsonify(_header_out(header, as_bool(arg("includedetails")) or False))

    @bp.post("/api/RecurringInvoice/updatelines")
    def update_lines():
        details = request.get_json(silent=True)
        if not isinstance(details, list) or not details:
            return error_response(400, "The request body must be a list of lines.")
        with state.lock:
            t = tables()
            checked = _checked_lines(t, details)
            if isinstance(checked, Response):
                return checked
            return jsonify([dict(_apply(t, detail, line)) for detail, line in checked])


def _checked_lines(t: dict, details: list) -> list[tuple[dict, dict | None]] | Response:
    """(detail, the existing line or None to add) per posted line, or the answer the first bad one earns."""
    checked = []
    for detail in details:
        quantity = detail.get("qty_order") if isinstance(detail, dict) else None
        if not isinstance(detail, dict) or (quantity is not None and (
                not isinstance(quantity, int | float) or isinstance(quantity, bool) or quantity < 0)):
            return error_response(400, "qty_order must be a number of 0 or more.")
        if detail.get("id"):
            line = _find_line(t, detail["id"])
            if line is None:
                return error_response(404, f"Invoice line {detail['id']} not found.")
            if quantity is not None and line.get("recurring_invoice_quantity_type"):
                return error_response(400, f"Line {line['id']} has a calculated quantity.")
            checked.append((detail, line))
            continue
        if str(detail.get("ihid")) not in t["invoices"]:
            return error_response(404, f"Recurring invoice {detail.get('ihid')} not found.")
        if str(detail.get("_itemid")) not in t["items"]:
            return error_response(400, f"Item {detail.get('_itemid')} not found.")
        checked.append((detail, None))
    return checked


def _find_line(t: dict, line_id: Any) -> dict | None:
    for header in t["invoices"].values():
        for line in header["lines"]:
            if line["id"] == line_id:
                return line
    return None


def _apply(t: dict, detail: dict, line: dict | None) -> dict:
    if line is None:  # SeatSync's assumption: a line without id is added to `ihid`, from the item
        item = t["items"][str(detail["_itemid"])]
        line = _new_line(new_id(t), int(detail["ihid"]), item, 0, str(detail.get("startdate") or ""))
        t["invoices"][str(detail["ihid"])]["lines"].append(line)
    for key, value in detail.items():
        if key in line and key not in ("id", "ihid"):
            line[key] = value
    line.setdefault("history", []).append({"qty_order": line["qty_order"], "at": time.time()})
    return {k: v for k, v in line.items() if k != "history"}


def _new_line(line_id: int, ihid: int, item: dict, quantity: float, start: str) -> dict:
    return {"id": line_id, "ihid": ihid, "_itemid": item["id"], "item_code": item["name"],
            "item_shortdescription": item["description"], "qty_order": float(quantity),
            "unit_price": item["recurringprice"], "unit_cost": item["costprice"], "startdate": start,
            "enddate": None, "isinactive": False, "recurring_invoice_quantity_type": None}


def make_blueprint(state) -> Blueprint:
    bp = Blueprint("halopsa_sim", __name__)
    for routes in (_auth_routes, _list_routes, _invoice_routes):
        routes(bp, state)
    return bp


# Test hooks and seed --------------------------------------------------------------------------------
def line_quantities(tables: dict, on: dt.date) -> dict[tuple[str, str], float]:
    """Test hook: (recurring invoice id, item id) -> the summed qty_order of its active lines on `on`."""
    held: dict[tuple[str, str], float] = {}
    for header in tables["invoices"].values():
        for line in header["lines"]:
            ended = line.get("enddate")
            if line.get("isinactive") or (ended and ended[:10] < on.isoformat()):
                continue
            key = (str(header["id"]), str(line["_itemid"]))
            held[key] = held.get(key, 0.0) + float(line["qty_order"] or 0)
    return held


def seed(tables: dict, dataset) -> None:
    tables["customer_types"] = {
        str(i): {"id": i, "name": name, "lookupid": CUSTOMER_TYPE_LOOKUP} for name, i in TYPE_IDS.items()
    }
    start = f"{dt.date.today().year - 1}-01-01T00:00:00"
    item_ids = {}
    for index, name in enumerate([*dataset.products, "Retired Backup Plan"]):
        item_id = 301 + index
        item_ids[name] = item_id
        tables["items"][str(item_id)] = {
            "id": item_id, "name": name, "description": f"{name} — per user, monthly", "baseprice": 4.0 + 2 * index,
            "recurringprice": 4.0 + 2 * index, "costprice": 2.0 + index, "inactive": index == len(dataset.products),
        }
    invoice_id, line_id = 4001, 70001
    for index, company in enumerate(dataset.companies):
        client_id = 101 + index
        type_id = TYPE_IDS.get(company.type, 1)
        tables["clients"][str(client_id)] = {
            "id": client_id, "name": company.name, "inactive": not company.active, "customertype": type_id,
            "customertype_new": company.type, "toplevel_id": 1, "toplevel_name": "SeatSync Sim",
        }
        for agreement in company.agreements:
            lines = []
            for product, quantity in agreement.lines.items():
                item = tables["items"][str(item_ids[product])]
                lines.append(_new_line(line_id, invoice_id, item, quantity, start))
                line_id += 1
            tables["invoices"][str(invoice_id)] = {
                "id": invoice_id, "client_id": client_id, "client_name": company.name, "name": agreement.name,
                "disabled": not agreement.active, "invoice_date": start, "nextcreationdate": None,
                "currency_code": 1, "currency_code_name": "USD", "lines": lines,
            }
            invoice_id += 1
    tables["next_id"] = max(line_id, 90000)
