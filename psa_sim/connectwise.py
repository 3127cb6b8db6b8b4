"""Simulated ConnectWise Manage REST API (v3.0), as described in `psa/connectwise.md`.

What it reproduces: the unauthenticated `/login/companyinfo/{companyId}` lookup and the codebase in
the path (`/v4_6_release/apis/3.0/...`); Basic `companyId+publicKey:privateKey` auth plus the
required `clientId` header; bare JSON arrays for lists with `page`/`pageSize` (default 25, max 1000)
and RFC 5988 `Link` headers; `conditions` / `childConditions` / `fields` / `orderBy`; JSON-Patch
PATCH; 201 on POST; the `{"code","message","errors":[...]}` error body, and the plain-text
"Cannot route. Codebase/company is invalid" for a key of another company.

Test hooks in the state: `codebase` (move it to simulate a hosted upgrade) and `denied` (endpoint
names answering 403, as when the API member's security role lacks a permission).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, request

from .seed import SIM_CREDENTIALS

CODEBASE = "v4_6_release/"
_API_RE = re.compile(r"^/([^/]+)/apis/3\.0(/.*)?$")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 25
BILL_CUSTOMER = ("Billable", "DoNotBill", "NoCharge")
_PATCHABLE = {
    "quantity", "cancelledDate", "effectiveDate", "unitPrice", "unitCost", "lessIncluded", "description",
    "invoiceDescription", "billCustomer", "taxableFlag", "sequenceNumber", "uom", "prorateCurrentPeriodFlag",
}
_ERROR_CODES = {400: "InvalidObject", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                405: "MethodNotAllowed", 409: "Conflict", 429: "TooManyRequests"}


# --------------------------------------------------------------------------------------------------
# Module interface used by psa_sim.server
# --------------------------------------------------------------------------------------------------
def empty_state() -> dict:
    creds = SIM_CREDENTIALS["connectwise"]
    return {
        "company_id": creds["company_id"],
        "public_key": creds["public_key"],
        "private_key": creds["private_key"],
        "company_name": "SeatSync Sim MSP",
        "codebase": CODEBASE,
        "denied": [],
        "next_id": 100,
        "company_types": {},
        "company_statuses": {},
        "companies": {},
        "catalog": {},
        "agreements": {},
        "additions": {},
    }


def owns_path(path: str) -> bool:
    return path.startswith("/login/companyinfo/") or bool(_API_RE.match(path))


def endpoint_of(path: str) -> str:
    """`/v4_6_release/apis/3.0/finance/agreements/12/additions/34` → `finance/agreements/additions`."""
    if path.startswith("/login/companyinfo/"):
        return "login/companyinfo"
    match = _API_RE.match(path)
    rest = (match.group(2) or "") if match else path
    return "/".join(s for s in rest.split("/") if s and not s.isdigit())


def error_response(status: int, message: str, kind: str | None = None, errors: list | None = None) -> Response:
    response = jsonify({"code": _ERROR_CODES.get(status, "ConnectWiseApi"), "message": message, "errors": errors})
    response.status_code = status
    return response


def _validation(resource: str, errors: list[tuple[str, str, str]]) -> Response:
    return error_response(400, f"{resource} object is invalid", errors=[
        {"code": code, "message": message, "resource": resource, "field": field} for code, message, field in errors
    ])


def _next_id(cw: dict) -> int:
    cw["next_id"] += 1
    return cw["next_id"]


def _iso(day: dt.date) -> str:
    return f"{day:%Y-%m-%d}T00:00:00Z"


def line_quantities(tables: dict, on: dt.date) -> dict[tuple[str, str], float]:
    """Test hook: (agreement id, catalog item id) -> quantity of the additions in effect on `on`, summed."""
    out: dict[tuple[str, str], float] = {}
    for addition in tables["additions"].values():
        effective, cancelled = addition.get("effectiveDate"), addition.get("cancelledDate")
        if (effective and effective[:10] > on.isoformat()) or (cancelled and cancelled[:10] <= on.isoformat()):
            continue
        key = (str(addition["agreementId"]), str(addition["product"]["id"]))
        out[key] = out.get(key, 0.0) + (addition.get("quantity") or 0.0)
    return out


def seed(tables: dict, dataset) -> None:
    types = {name: {"id": i, "name": name, "defaultFlag": name == "Client", "vendorFlag": name == "Vendor"}
             for i, name in enumerate(("Client", "Prospect", "Vendor"), start=1)}
    statuses = {"Active": {"id": 1, "name": "Active", "defaultFlag": True, "inactiveFlag": False},
                "Inactive": {"id": 2, "name": "Inactive", "defaultFlag": False, "inactiveFlag": True}}
    tables["company_types"] = {t["id"]: t for t in types.values()}
    tables["company_statuses"] = {s["id"]: s for s in statuses.values()}
    products = {}
    for name in dataset.products:
        item_id = _next_id(tables)
        products[name] = tables["catalog"][item_id] = {
            "id": item_id,
            "identifier": re.sub(r"[^A-Z0-9]+", "-", name.upper()).strip("-"),
            "description": name,
            "customerDescription": name,
            "inactiveFlag": False,
            "productClass": "Agreement",
            "price": 4.0,
            "cost": 2.0,
            "taxableFlag": False,
        }
    start = _iso(dt.date(2024, 1, 1))
    for company in dataset.companies:
        company_id = _next_id(tables)
        status = statuses["Active" if company.active else "Inactive"]
        identifier = re.sub(r"[^A-Za-z0-9]", "", company.name)[:25]
        record = {
            "id": company_id,
            "identifier": identifier,
            "name": company.name,
            "status": {"id": status["id"], "name": status["name"]},
            "types": [{"id": types[company.type]["id"], "name": company.type}],
            "deletedFlag": False,
        }
        tables["companies"][company_id] = record
        ref = {"id": company_id, "identifier": identifier, "name": company.name}
        for agreement in company.agreements:
            agreement_id = _next_id(tables)
            tables["agreements"][agreement_id] = {
                "id": agreement_id,
                "name": agreement.name,
                "type": {"id": 1, "name": "Managed Services"},
                "company": dict(ref),
                "agreementStatus": "Active" if agreement.active else "Cancelled",
                "cancelledFlag": not agreement.active,
                "dateCancelled": None if agreement.active else _iso(dt.date(2025, 1, 31)),
                "startDate": start,
                "endDate": None,
                "noEndingDateFlag": True,
                "billingCycle": {"id": 1, "name": "Monthly"},
                "prorateFlag": False,
            }
            for product_name, quantity in agreement.lines.items():
                item = products[product_name]
                addition_id = _next_id(tables)
                tables["additions"][addition_id] = {
                    "id": addition_id,
                    "agreementId": agreement_id,
                    "product": {"id": item["id"], "identifier": item["identifier"]},
                    "quantity": float(quantity),
                    "lessIncluded": 0.0,
                    "unitPrice": item["price"],
                    "unitCost": item["cost"],
                    "billCustomer": "Billable",
                    "effectiveDate": start,
                    "cancelledDate": None,
                    "taxableFlag": False,
                    "description": product_name,
                    "invoiceDescription": product_name,
                }


# --------------------------------------------------------------------------------------------------
# conditions: the query language (notes §3.1)
# --------------------------------------------------------------------------------------------------
class ConditionError(ValueError):
    pass


_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<date>\[[^\]]*\])
    | (?P<op>!=|<=|>=|=|<|>)
    | (?P<punct>[(),])
    | (?P<num>-?\d+(?:\.\d+)?(?![A-Za-z_/]))
    | (?P<word>[A-Za-z_][A-Za-z0-9_/.]*)
    )""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match or match.end() == pos:
            raise ConditionError(f"Unexpected character at position {pos} in conditions")
        pos = match.end()
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif kind == "date":
            try:
                value = dt.datetime.fromisoformat(value[1:-1].strip().replace("Z", "+00:00"))
            except ValueError:
                raise ConditionError(f"Invalid date {value} in conditions") from None
        elif kind == "num":
            value = float(value)
        out.append((kind, value))
        if text[pos:].strip() == "":
            break
    return out


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0):
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else (None, None)

    def word(self, offset: int = 0) -> str | None:
        kind, value = self.peek(offset)
        return value.lower() if kind == "word" else None

    def take(self):
        token = self.peek()
        if token[0] is None:
            raise ConditionError("Unexpected end of conditions")
        self.i += 1
        return token

    def parse(self):
        node = self.expr()
        if self.i != len(self.tokens):
            raise ConditionError(f"Unexpected {self.peek()[1]!r} in conditions")
        return node

    def expr(self):
        node = self.conjunction()
        while self.word() == "or":
            self.take()
            node = ("or", node, self.conjunction())
        return node

    def conjunction(self):
        node = self.unary()
        while self.word() == "and":
            self.take()
            node = ("and", node, self.unary())
        return node

    def unary(self):
        if self.word() == "not" and self.peek(1)[0] == "punct":
            self.take()
            return ("not", self.unary())
        if self.peek() == ("punct", "("):
            self.take()
            node = self.expr()
            if self.take() != ("punct", ")"):
                raise ConditionError("Missing ) in conditions")
            return node
        return self.comparison()

    def comparison(self):
        kind, field = self.take()
        if kind != "word":
            raise ConditionError(f"Expected a field name, got {field!r}")
        negate = False
        if self.word() == "not":
            self.take()
            negate = True
        kind, op = self.take()
        if kind == "word" and op.lower() in {"like", "contains", "in"}:
            op = op.lower()
        elif kind != "op" or negate:
            raise ConditionError(f"Unknown operator {op!r} in conditions")
        value = self.value_list() if op == "in" else self.value()
        node = ("cmp", field, op, value)
        return ("not", node) if negate else node

    def value(self):
        kind, value = self.take()
        if kind in {"str", "num", "date"}:
            return (kind, value)
        if kind == "word" and value.lower() in {"true", "false"}:
            return ("bool", value.lower() == "true")
        if kind == "word" and value.lower() == "null":
            return ("null", None)
        raise ConditionError(f"Expected a value, got {value!r}")

    def value_list(self):
        if self.take() != ("punct", "("):
            raise ConditionError("in must be followed by (")
        values = [self.value()]
        while self.peek() == ("punct", ","):
            self.take()
            values.append(self.value())
        if self.take() != ("punct", ")"):
            raise ConditionError("Missing ) after in list")
        return ("list", values)


def _resolve(record: Any, path: str) -> list[Any]:
    """Values at a `a/b/c` path; arrays fan out (childConditions on `types/id`)."""
    values = [record]
    for part in path.split("/"):
        nxt = []
        for value in values:
            if isinstance(value, list):
                value_items = value
            else:
                value_items = [value]
            for item in value_items:
                if isinstance(item, dict):
                    found = next((v for k, v in item.items() if k.lower() == part.lower()), None)
                    nxt.extend(found if isinstance(found, list) else [found])
                else:
                    nxt.append(None)
        values = nxt
    return values or [None]


def _as_datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _compare(actual: Any, op: str, literal: tuple[str, Any]) -> bool:
    kind, expected = literal
    if kind == "list":
        return any(_compare(actual, "=", item) for item in expected)
    if kind == "null":
        return (actual is None) if op == "=" else (actual is not None) if op == "!=" else False
    if actual is None:
        return False  # SQL semantics: NULL compares false with everything but null
    if kind == "bool":
        if not isinstance(actual, bool):
            return False
        return actual == expected if op == "=" else actual != expected if op == "!=" else False
    if kind == "date":
        left, right = _as_datetime(actual), expected if expected.tzinfo else expected.replace(tzinfo=dt.UTC)
        if left is None:
            return False
    elif kind == "num":
        try:
            left, right = float(actual), expected
        except (TypeError, ValueError):
            return False
    else:
        left, right = str(actual).casefold(), str(expected).casefold()
        if op == "contains":
            return right in left
        if op == "like":
            pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in right)
            return re.fullmatch(pattern, left, re.DOTALL) is not None
    if op in {"contains", "like"}:
        raise ConditionError(f"{op} needs a string value")
    return {"=": left == right, "!=": left != right, "<": left < right, "<=": left <= right,
            ">": left > right, ">=": left >= right}[op]


def _evaluate(node, record: dict) -> bool:
    tag = node[0]
    if tag == "and":
        return _evaluate(node[1], record) and _evaluate(node[2], record)
    if tag == "or":
        return _evaluate(node[1], record) or _evaluate(node[2], record)
    if tag == "not":
        return not _evaluate(node[1], record)
    _, field, op, literal = node
    values = _resolve(record, field)
    if op == "!=" and literal[0] != "null":
        return all(v is not None and _compare(v, "!=", literal) for v in values)
    return any(_compare(v, op, literal) for v in values)


def parse_conditions(text: str | None):
    return _Parser(text).parse() if text and text.strip() else None


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------
def _list_response(rows: list[dict]) -> Response:
    """Filters, sorting, fields and navigable paging of a list GET, with CW's Link header."""
    args = request.args
    try:
        conditions = parse_conditions(args.get("conditions"))
        child = parse_conditions(args.get("childConditions"))
        rows = [r for r in rows if (conditions is None or _evaluate(conditions, r))
                and (child is None or _evaluate(child, r))]
    except ConditionError as exc:
        return error_response(400, str(exc), errors=[{"code": "InvalidConditions", "message": str(exc),
                                                      "resource": "conditions", "field": "conditions"}])
    order = (args.get("orderBy") or "id asc").split()
    field, descending = order[0], len(order) > 1 and order[1].lower() == "desc"

    def sort_key(row):
        value = _resolve(row, field)[0]
        return (value is None, str(value).casefold() if isinstance(value, str) else value if value is not None else 0)

    rows = sorted(rows, key=sort_key, reverse=descending)
    try:
        page = int(args.get("page", 1))
        size = min(int(args.get("pageSize", DEFAULT_PAGE_SIZE)), MAX_PAGE_SIZE)
    except ValueError:
        return error_response(400, "page and pageSize must be numbers")
    if page < 1 or size < 1:
        return error_response(400, "page and pageSize must be positive")
    chunk = rows[(page - 1) * size: page * size]
    fields = [f.split("/")[0] for f in (args.get("fields") or "").split(",") if f.strip()]
    if fields:
        chunk = [{k: v for k, v in r.items() if k in fields} for r in chunk]
    response = jsonify(chunk)
    last = max(1, -(-len(rows) // size))
    links = []

    def link(number: int, rel: str) -> None:
        query = {k: v for k, v in args.items() if k != "page"}
        query.update(page=number, pageSize=size)
        links.append(f'<{request.base_url}?{urlencode(query)}>; rel="{rel}"')

    if page > 1:
        link(1, "first")
        link(page - 1, "prev")
    if page < last:
        link(page + 1, "next")
        link(last, "last")
    if links:
        response.headers["Link"] = ", ".join(links)
    return response


def _authenticate(cw: dict) -> Response | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return error_response(401, "Authorization has been denied for this request.")
    try:
        user, _, private = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return error_response(401, "Authorization has been denied for this request.")
    company, _, public = user.partition("+")
    if company.lower() != cw["company_id"].lower():
        return Response("Cannot route. Codebase/company is invalid", status=401, mimetype="text/plain")
    if public != cw["public_key"] or private != cw["private_key"]:
        return error_response(401, "The API key is invalid or has been deactivated.")
    if not request.headers.get("clientId"):
        return error_response(401, "A clientId header is required. See developer.connectwise.com/ClientID.")
    return None


def _get(table: dict, record_id: str, resource: str) -> dict | Response:
    record = table.get(int(record_id)) if record_id.isdigit() else None
    if record is None:
        return error_response(404, f"{resource} with id {record_id} was not found.")
    return record


def _date_error(value: Any) -> bool:
    return value is not None and _as_datetime(value) is None


def _with_totals(addition: dict) -> dict:
    quantity = addition.get("quantity") or 0.0
    price = addition.get("unitPrice") or 0.0
    return {**addition, "extPrice": round((quantity - (addition.get("lessIncluded") or 0.0)) * price, 2)}


def make_blueprint(state) -> Blueprint:
    bp = Blueprint("connectwise_sim", __name__)

    @bp.get("/login/companyinfo/<company>")
    def companyinfo(company: str):
        with state.lock:
            cw = state.data["connectwise"]
            if company.lower() != cw["company_id"].lower():
                return Response("null", mimetype="application/json")  # what CW answers for an unknown company
            return jsonify({
                "CompanyName": cw["company_name"], "CompanyID": cw["company_id"], "Codebase": cw["codebase"],
                "VersionCode": "v2025.1", "VersionNumber": "v4.6.2025", "IsCloud": "False",
                "SiteUrl": request.host,
            })

    @bp.route("/<codebase>/apis/3.0/<path:rest>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    def api(codebase: str, rest: str):
        with state.lock:
            cw = state.data["connectwise"]
            if f"{codebase}/" != cw["codebase"]:
                return error_response(404, "The resource cannot be found.")
            denied = _authenticate(cw)
            if denied is not None:
                return denied
            if endpoint_of(request.path) in cw["denied"]:
                return error_response(403, "You do not have permission to perform this action.")
            return _route(cw, [s for s in rest.split("/") if s])

    return bp


def _route(cw: dict, parts: list[str]) -> Response:
    method = request.method
    if parts == ["system", "info"] and method == "GET":
        return jsonify({"version": "v2025.1.12345", "isCloud": False, "serverTimeZone": "Eastern Standard Time",
                        "licenseBits": [], "cloudRegion": None, "maxWorkFlowRecordsAllowed": 10000})
    if parts[:2] == ["procurement", "catalog"]:
        if len(parts) == 2 and method == "GET":
            return _list_response(list(cw["catalog"].values()))
        if len(parts) == 3 and method == "GET":
            found = _get(cw["catalog"], parts[2], "CatalogItem")
            return found if isinstance(found, Response) else jsonify(found)
    if parts[:2] == ["company", "companies"]:
        return _companies(cw, parts[2:])
    if parts[:2] == ["finance", "agreements"]:
        return _agreements(cw, parts[2:])
    return error_response(404, "The resource cannot be found.")


def _companies(cw: dict, tail: list[str]) -> Response:
    if request.method != "GET":
        return error_response(405, "The requested resource does not support this method.")
    if not tail:
        return _list_response([c for c in cw["companies"].values()])
    if tail == ["types"]:
        return _list_response(list(cw["company_types"].values()))
    if tail == ["statuses"]:
        return _list_response(list(cw["company_statuses"].values()))
    if tail == ["count"]:
        conditions = parse_conditions(request.args.get("conditions"))
        rows = [c for c in cw["companies"].values() if conditions is None or _evaluate(conditions, c)]
        return jsonify({"count": len(rows)})
    if len(tail) == 1:
        found = _get(cw["companies"], tail[0], "Company")
        return found if isinstance(found, Response) else jsonify(found)
    return error_response(404, "The resource cannot be found.")


def _agreements(cw: dict, tail: list[str]) -> Response:
    if not tail:
        if request.method == "GET":
            return _list_response(list(cw["agreements"].values()))
        return error_response(404, "The resource cannot be found.")
    agreement = _get(cw["agreements"], tail[0], "Agreement")
    if isinstance(agreement, Response):
        return agreement
    if len(tail) == 1 and request.method == "GET":
        return jsonify(agreement)
    if len(tail) >= 2 and tail[1] == "additions":
        return _additions(cw, agreement, tail[2:])
    return error_response(404, "The resource cannot be found.")


def _additions(cw: dict, agreement: dict, tail: list[str]) -> Response:
    method = request.method
    mine = [a for a in cw["additions"].values() if a["agreementId"] == agreement["id"]]
    if not tail:
        if method == "GET":
            return _list_response([_with_totals(a) for a in mine])
        if method == "POST":
            return _create_addition(cw, agreement)
    elif tail == ["count"] and method == "GET":
        conditions = parse_conditions(request.args.get("conditions"))
        return jsonify({"count": sum(1 for a in mine if conditions is None or _evaluate(conditions, a))})
    elif len(tail) == 1:
        addition = _get({a["id"]: a for a in mine}, tail[0], "Addition")
        if isinstance(addition, Response):
            return addition
        if method == "GET":
            return jsonify(_with_totals(addition))
        if method == "PATCH":
            return _patch_addition(addition)
        if method == "DELETE":
            del cw["additions"][addition["id"]]
            return Response(status=204)
    return error_response(405, "The requested resource does not support this method.")


def _create_addition(cw: dict, agreement: dict) -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error_response(400, "The request body is not a valid addition.")
    errors = []
    ref = body.get("product")
    item = None
    if not isinstance(ref, dict) or not (ref.get("id") or ref.get("identifier")):
        errors.append(("NullObject", "The product field is required.", "product"))
    else:
        item = next((c for c in cw["catalog"].values()
                     if c["id"] == ref.get("id") or (ref.get("identifier") and c["identifier"] == ref["identifier"])),
                    None)
        if item is None:
            errors.append(("InvalidObject", "The product was not found in the product catalog.", "product"))
        elif item.get("productClass") == "Bundle":
            errors.append(("InvalidObject", "Bundles cannot be added to an agreement.", "product"))
    if body.get("billCustomer") is None:
        errors.append(("NullObject", "The billCustomer field is required.", "billCustomer"))
    elif body["billCustomer"] not in BILL_CUSTOMER:
        errors.append(("InvalidValue", f"billCustomer must be one of {', '.join(BILL_CUSTOMER)}.", "billCustomer"))
    quantity = body.get("quantity", 1)
    if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int | float)):
        errors.append(("InvalidValue", "The quantity must be a number.", "quantity"))
    for field in ("effectiveDate", "cancelledDate"):
        if _date_error(body.get(field)):
            errors.append(("InvalidValue", f"The {field} is not a valid date.", field))
    if errors:
        return _validation("addition", errors)
    addition_id = _next_id(cw)
    record = {
        "id": addition_id,
        "agreementId": agreement["id"],
        "product": {"id": item["id"], "identifier": item["identifier"]},
        "quantity": float(quantity) if quantity is not None else None,
        "lessIncluded": float(body.get("lessIncluded") or 0.0),
        # Whether CW defaults prices from the catalog is unverified (notes §2.4); the sim assumes it does.
        "unitPrice": body.get("unitPrice", item.get("price")),
        "unitCost": body.get("unitCost", item.get("cost")),
        "billCustomer": body["billCustomer"],
        "effectiveDate": body.get("effectiveDate"),
        "cancelledDate": body.get("cancelledDate"),
        "taxableFlag": bool(body.get("taxableFlag", item.get("taxableFlag", False))),
        "description": body.get("description") or item["description"],
        "invoiceDescription": body.get("invoiceDescription") or item["description"],
    }
    for extra in ("uom", "sequenceNumber", "prorateCurrentPeriodFlag"):
        if extra in body:
            record[extra] = body[extra]
    cw["additions"][addition_id] = record
    response = jsonify(_with_totals(record))
    response.status_code = 201
    return response


def _patch_addition(addition: dict) -> Response:
    operations = request.get_json(silent=True)
    if not isinstance(operations, list) or not operations:
        return error_response(400, "A PATCH body must be a JSON array of operations.")
    changes: dict[str, Any] = {}
    errors = []
    for operation in operations:
        if not isinstance(operation, dict) or operation.get("op") not in {"add", "replace", "remove"}:
            errors.append(("InvalidOperation", "Each operation needs op add, replace or remove.", "op"))
            continue
        field = str(operation.get("path") or "").lstrip("/")
        if field not in _PATCHABLE:
            errors.append(("InvalidField", f"The field {field or '(empty)'} cannot be changed.", field))
            continue
        value = None if operation["op"] == "remove" else operation.get("value")
        if field in {"quantity", "unitPrice", "unitCost", "lessIncluded"} and value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            errors.append(("InvalidValue", f"The {field} must be a number.", field))
        elif field in {"effectiveDate", "cancelledDate"} and _date_error(value):
            errors.append(("InvalidValue", f"The {field} is not a valid date.", field))
        elif field == "billCustomer" and value not in BILL_CUSTOMER:
            errors.append(("InvalidValue", f"billCustomer must be one of {', '.join(BILL_CUSTOMER)}.", field))
        else:
            changes[field] = float(value) if field == "quantity" and value is not None else value
    merged = {**addition, **changes}
    effective, cancelled = _as_datetime(merged.get("effectiveDate")), _as_datetime(merged.get("cancelledDate"))
    # Assumed validation (not in the notes): a line cannot end before it starts.
    if not errors and effective and cancelled and cancelled < effective:
        errors.append(("InvalidValue", "The cancelledDate cannot be before the effectiveDate.", "cancelledDate"))
    if errors:
        return _validation("addition", errors)
    addition.update(changes)
    return jsonify(_with_totals(addition))
