"""Simulated Autotask PSA REST API v1.0 (see psa/autotask.md), stateful and strict where the real one is.

- `GET /atservicesrest/v1.0/zoneInformation?user=` (no auth) answers a `url` pointing back at this
  server (`http://<host>/ATServicesRest/`); an unknown user gets a 500 with an errors list.
- Every other call needs the ApiIntegrationCode, UserName and Secret headers; anything wrong gets the
  real API's empty-body 401 with `www-authenticate`.
- `{Entity}/query` (POST body, or GET `?search=`) with the documented operators, a mandatory filter,
  `maxRecords` 1..500 (more is a validation error), `includeFields`, and `pageDetails.nextPageUrl`.
- Companies, Services, Contracts, ContractServices (child create under Contracts/{id}/Services),
  ContractServiceUnits (monthly periods split at each adjustment's effective date, generated on read),
  ContractServiceAdjustments (create only: any read fails like the real API).
- Validation errors are HTTP 500 `{"errors": [...]}`; more than 3 requests at once on one endpoint
  (one tracking identifier: the simulator accepts only one) are refused with Itgenatr005.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, g, request

from .seed import SIM_CREDENTIALS

PREFIXES = ("/atservicesrest/", "/ATServicesRest/")
THREAD_LIMIT = 3
THREAD_LIMIT_MESSAGE = (
    "Thread Threshold Exceeded — The Autotask API thread threshold of 3 threads has been exceeded. (Itgenatr005)"
)
PERMISSION_MESSAGE = "The logged in Resource does not have the adequate permissions to create this entity type."
ZONE = {"zoneName": "Simulated Zone", "webUrl": "http://localhost/", "ci": 424242}
CONTRACT_START = dt.date(2024, 1, 1)
CONTRACT_END = dt.date(2035, 12, 31)

COMPANY_TYPES = [(1, "Customer"), (2, "Lead"), (3, "Prospect"), (4, "Dead"), (6, "Cancellation"), (7, "Vendor"),
                 (8, "Partner")]
SEED_COMPANY_TYPE = {"Client": 1, "Prospect": 3, "Vendor": 7}
CONTRACT_TYPES = [(1, "Time and Materials"), (3, "Fixed Price"), (4, "Block Hours"), (6, "Retainer"),
                  (7, "Recurring Service"), (8, "Incident")]
CONTRACT_STATUSES = [(0, "Inactive"), (1, "Active")]
PERIOD_TYPES = [(1, "Monthly"), (2, "Quarterly"), (3, "Semi-Annual"), (4, "Yearly")]

# Canonical entity names (paths are case-insensitive in the real API).
ENTITIES = {
    name.lower(): name
    for name in ("Companies", "Services", "Contracts", "ContractServices", "ContractServiceUnits",
                 "ContractServiceAdjustments", "Currencies", "ZoneInformation", "VersionInformation", "Version")
}
CHILDREN = {"services": "ContractServices", "serviceunits": "ContractServiceUnits",
            "serviceadjustments": "ContractServiceAdjustments"}
TABLES = {"Companies": "companies", "Services": "services", "Contracts": "contracts",
          "ContractServices": "contract_services", "Currencies": "currencies"}
FIELDS = {
    "Currencies": ["id", "name", "description", "displaySymbol", "isActive", "isInternalCurrency", "exchangeRate"],
    "Companies": ["id", "companyName", "companyNumber", "companyType", "isActive", "parentCompanyID",
                  "ownerResourceID", "phone", "webAddress", "createDate", "lastActivityDate",
                  "lastTrackedModifiedDateTime", "userDefinedFields"],
    "Services": ["id", "name", "description", "invoiceDescription", "isActive", "unitPrice", "unitCost",
                 "markupRate", "periodType", "billingCodeID", "vendorCompanyID", "sku", "externalID", "internalID",
                 "manufacturerServiceProviderProductNumber", "catalogNumberPartNumber", "url", "createDate",
                 "lastModifiedDate", "userDefinedFields"],
    "Contracts": ["id", "companyID", "contractName", "contractNumber", "contractType", "status", "startDate",
                  "endDate", "contractPeriodType", "contractCategory", "billingPreference", "isDefaultContract",
                  "setupFee", "description", "lastModifiedDateTime", "userDefinedFields"],
    "ContractServices": ["id", "contractID", "serviceID", "unitPrice", "unitCost", "internalCurrencyUnitPrice",
                         "internalCurrencyAdjustedPrice", "invoiceDescription", "internalDescription", "quoteItemID"],
    "ContractServiceUnits": ["id", "contractID", "contractServiceID", "serviceID", "startDate", "endDate", "units",
                             "price", "cost", "internalCurrencyPrice", "approveAndPostDate",
                             "organizationalLevelAssociationID", "vendorCompanyID"],
}
ADJUSTMENT_FIELDS = {"id", "contractID", "serviceID", "contractServiceID", "effectiveDate", "unitChange",
                     "adjustedUnitPrice", "adjustedUnitCost", "quoteItemID", "allowRepeatService"}
OPS = {"eq", "noteq", "gt", "gte", "lt", "lte", "beginswith", "endswith", "contains", "exist", "notexist", "in",
       "notin", "and", "or"}


class ApiError(Exception):
    def __init__(self, status: int, message: str = "", kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# --------------------------------------------------------------------------------------------------
# The module interface the server uses
# --------------------------------------------------------------------------------------------------
def empty_state() -> dict:
    return {
        "companies": {}, "services": {}, "contracts": {}, "contract_services": {}, "currencies": {},
        "unit_events": {},  # contract service id -> [[effective date ISO, unit change], ...]
        "adjustments": [],  # every adjustment posted, for assertions (the API itself cannot read them)
        "next_id": 1000,
    }


def owns_path(path: str) -> bool:
    return path.lower().startswith("/atservicesrest/")


def _segments(path: str) -> list[str]:
    """Path segments after /atservicesrest/v1.0/ (empty for version-less metadata)."""
    parts = [p for p in path.split("/") if p][1:]
    if parts and parts[0].lower() == "v1.0":
        parts = parts[1:]
    return parts


def endpoint_of(path: str) -> str:
    parts = _segments(path)
    if not parts:
        return "root"
    entity = ENTITIES.get(parts[0].lower(), parts[0])
    if entity == "Contracts" and len(parts) >= 3 and parts[2].lower() in CHILDREN:
        return CHILDREN[parts[2].lower()]
    return entity


def error_response(status: int, message: str, kind: str | None = None) -> Response:
    if kind == "thread_limit":
        return _json({"errors": [THREAD_LIMIT_MESSAGE]}, status)
    if kind == "permission":
        return _json({"errors": [PERMISSION_MESSAGE]}, status)
    if status == 401:
        # The real API's 401 has no body, whatever was wrong (user, secret or tracking identifier).
        return Response("", status=401, headers={"WWW-Authenticate": 'Basic realm="webservices-sim"'})
    if kind == "empty":
        return Response("", status=status)
    if status == 405:
        return _json({"Message": message}, status)
    return _json({"errors": [message]}, status)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


# --------------------------------------------------------------------------------------------------
# Seed
# --------------------------------------------------------------------------------------------------
def _new_id(tables: dict) -> int:
    tables["next_id"] += 1
    return tables["next_id"]


def _stamp(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00"


def line_quantities(tables: dict, on: dt.date) -> dict[tuple[str, str], float]:
    """Test hook: (contract id, service id) -> units in effect on `on` (every change effective by then), summed."""
    out: dict[tuple[str, str], float] = {}
    for cs in tables["contract_services"].values():
        units = sum(change for day, change in tables["unit_events"].get(cs["id"], []) if day <= on.isoformat())
        key = (str(cs["contractID"]), str(cs["serviceID"]))
        out[key] = out.get(key, 0.0) + units
    return out


def seed(tables: dict, dataset) -> None:
    for code, name, symbol, internal in (("USD", "US Dollar", "$", True), ("EUR", "Euro", "\u20ac", False)):
        currency_id = _new_id(tables)
        tables["currencies"][currency_id] = {"id": currency_id, "name": code, "description": name,
                                             "displaySymbol": symbol, "isActive": True, "isInternalCurrency": internal,
                                             "exchangeRate": 1.0 if internal else 0.92}
    service_ids = {}
    for index, product in enumerate(dataset.products):
        sid = _new_id(tables)
        service_ids[product] = sid
        tables["services"][sid] = {
            "id": sid, "name": product, "description": f"{product} (per user, monthly)",
            "invoiceDescription": product, "isActive": True, "unitPrice": 3.0 + index, "unitCost": 1.0 + index / 2,
            "markupRate": None, "periodType": 1, "billingCodeID": 29682801, "vendorCompanyID": None,
            "sku": f"SKU-{index + 1:03d}", "externalID": None, "internalID": None,
            "manufacturerServiceProviderProductNumber": None, "catalogNumberPartNumber": None, "url": None,
            "createDate": "2024-01-01T00:00:00", "lastModifiedDate": "2024-01-01T00:00:00", "userDefinedFields": [],
        }
    if service_ids:
        retired = _new_id(tables)
        template = tables["services"][next(iter(service_ids.values()))]
        tables["services"][retired] = {
            **template, "id": retired, "name": "Retired Service", "description": "No longer sold",
            "invoiceDescription": "Retired Service", "isActive": False, "sku": "SKU-OLD",
        }
    for index, company in enumerate(dataset.companies):
        cid = _new_id(tables)
        tables["companies"][cid] = {
            "id": cid, "companyName": company.name, "companyNumber": f"C{index + 1:05d}",
            "companyType": SEED_COMPANY_TYPE.get(company.type, 1), "isActive": company.active,
            "parentCompanyID": None, "ownerResourceID": 29682885, "phone": "555-0100", "webAddress": None,
            "createDate": "2024-01-01T00:00:00", "lastActivityDate": None,
            "lastTrackedModifiedDateTime": "2024-01-01T00:00:00", "userDefinedFields": [],
        }
        for agreement in company.agreements:
            contract = _add_contract(tables, cid, agreement.name, 7, 1 if agreement.active else 0)
            for product, quantity in agreement.lines.items():
                csid = _add_contract_service(tables, contract["id"], tables["services"][service_ids[product]])
                tables["unit_events"][csid] = [[CONTRACT_START.isoformat(), int(quantity)]]
        if company.agreements and index % 3 == 0:
            # Not every active contract bills recurring services: pickers must leave these out.
            _add_contract(tables, cid, f"{company.name} — Block Hours", 4, 1)


def _add_contract(tables: dict, company_id: int, name: str, contract_type: int, status: int) -> dict:
    contract_id = _new_id(tables)
    contract = {
        "id": contract_id, "companyID": company_id, "contractName": name, "contractNumber": f"K{contract_id}",
        "contractType": contract_type, "status": status, "startDate": _stamp(CONTRACT_START),
        "endDate": _stamp(CONTRACT_END), "contractPeriodType": 1 if contract_type == 7 else None,
        "contractCategory": None, "billingPreference": 2, "isDefaultContract": False, "setupFee": None,
        "description": None, "lastModifiedDateTime": "2024-01-01T00:00:00", "userDefinedFields": [],
    }
    tables["contracts"][contract_id] = contract
    return contract


def _add_contract_service(tables: dict, contract_id: int, service: dict, **values) -> int:
    csid = _new_id(tables)
    tables["contract_services"][csid] = {
        "id": csid, "contractID": contract_id, "serviceID": service["id"],
        "unitPrice": values.get("unitPrice", service.get("unitPrice")),
        "unitCost": values.get("unitCost", service.get("unitCost")),
        "internalCurrencyUnitPrice": values.get("unitPrice", service.get("unitPrice")),
        "internalCurrencyAdjustedPrice": None,
        "invoiceDescription": values.get("invoiceDescription") or service.get("invoiceDescription"),
        "internalDescription": values.get("internalDescription"), "quoteItemID": values.get("quoteItemID"),
    }
    tables["unit_events"].setdefault(csid, [])
    return csid


# --------------------------------------------------------------------------------------------------
# ContractServiceUnits: periods split at adjustments, generated when read
# --------------------------------------------------------------------------------------------------
def _month_end(day: dt.date) -> dt.date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _unit_rows(tables: dict, cs: dict, low: dt.date, high: dt.date) -> list[dict]:
    """The unit rows of one contract service for the monthly periods overlapping [low, high].

    Per the ContractServiceUnits doc: one row per billing period, and an adjustment effective inside
    a period starts a new row from its effective date to the period end, the previous row ending on
    that date. Units of a row = every change effective on or before the row's start.
    """
    contract = tables["contracts"].get(cs["contractID"])
    if contract is None:
        return []
    start = max(dt.date.fromisoformat(contract["startDate"][:10]), low.replace(day=1))
    end = min(dt.date.fromisoformat(contract["endDate"][:10]), high)
    events = sorted((dt.date.fromisoformat(d), change) for d, change in tables["unit_events"].get(cs["id"], []))
    rows = []
    period = start.replace(day=1)
    while period <= end:
        period_end = _month_end(period)
        splits = sorted({d for d, _ in events if period < d <= period_end})
        starts = [period, *splits]
        for index, row_start in enumerate(starts):
            row_end = starts[index + 1] if index + 1 < len(starts) else period_end
            units = sum(change for d, change in events if d <= row_start)
            price = cs.get("unitPrice") or 0
            rows.append({
                "id": cs["id"] * 100_000_000 + (period.year * 100 + period.month) * 100 + index,
                "contractID": cs["contractID"], "contractServiceID": cs["id"], "serviceID": cs["serviceID"],
                "startDate": _stamp(row_start), "endDate": _stamp(row_end), "units": units,
                "price": round(units * price, 2), "cost": round(units * (cs.get("unitCost") or 0), 2),
                "internalCurrencyPrice": round(units * price, 2), "approveAndPostDate": None,
                "organizationalLevelAssociationID": None, "vendorCompanyID": None,
            })
        period = period_end + dt.timedelta(days=1)
    return rows


def _window(filters: list[dict]) -> tuple[dt.date, dt.date]:
    """Narrow the periods to generate from top-level startDate/endDate bounds (the filter is applied anyway)."""
    low, high = dt.date.min, dt.date.max
    for f in filters:
        field, op = (f.get("field") or "").lower(), (f.get("op") or "").lower()
        try:
            day = _as_datetime(f.get("value")).date()
        except (TypeError, ValueError):
            continue
        if field == "startdate" and op in ("lt", "lte", "eq"):
            high = min(high, day)
        if field == "enddate" and op in ("gt", "gte", "eq"):
            low = max(low, day)
    return low, high


def _ids_from(filters: list[dict], field: str) -> set[int] | None:
    for f in filters:
        if (f.get("field") or "").lower() == field.lower():
            op = (f.get("op") or "").lower()
            try:
                if op == "eq":
                    return {int(f.get("value"))}
                if op == "in":
                    return {int(v) for v in f.get("value") or []}
            except (TypeError, ValueError):
                return None
    return None


def _prefiltered(rows: list[dict], filters: list[dict], fields: dict[str, str]) -> list[dict]:
    """Cheap narrowing on one top-level id condition, so that big seeded tables stay fast to query."""
    for f in filters:
        op, name = (f.get("op") or "").lower(), (f.get("field") or "").lower()
        if op in ("eq", "in") and (name == "id" or name.endswith("id")):
            values = f.get("value") if op == "in" else [f.get("value")]
            try:
                wanted = {int(v) for v in values}
            except (TypeError, ValueError):
                continue
            return [r for r in rows if r.get(fields[name]) in wanted]
    return rows


def _unit_records(tables: dict, filters: list[dict]) -> list[dict]:
    low, high = _window(filters)
    contracts = _ids_from(filters, "contractID")
    services = _ids_from(filters, "contractServiceID")
    rows = []
    for cs in tables["contract_services"].values():
        if (contracts is None or cs["contractID"] in contracts) and (services is None or cs["id"] in services):
            rows.extend(_unit_rows(tables, cs, low, high))
    return rows


# --------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------
def _as_datetime(value: Any) -> dt.datetime:
    if not isinstance(value, str) or len(value) < 10 or value[4] != "-":
        raise ValueError(value)
    text = value.rstrip("Z")
    return dt.datetime.fromisoformat(text[:26] if "." in text else text)


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1")


def _comparable(record_value: Any, value: Any) -> tuple[Any, Any]:
    if isinstance(record_value, bool) or isinstance(value, bool):
        return _as_bool(record_value), _as_bool(value)
    if isinstance(record_value, int | float) and not isinstance(record_value, bool):
        return float(record_value), float(value)
    if isinstance(record_value, str):
        try:
            return _as_datetime(record_value), _as_datetime(value)
        except ValueError:
            return record_value.lower(), str(value).lower()
    return record_value, value


def _check_filter(f: Any, fields: dict[str, str]) -> None:
    if not isinstance(f, dict):
        raise ApiError(500, "Invalid filter: each condition must be an object.")
    op = (f.get("op") or "").lower()
    if op not in OPS:
        raise ApiError(500, f"Invalid operator '{f.get('op')}'.")
    if op in ("and", "or"):
        items = f.get("items") or []
        if not items:
            raise ApiError(500, f"The '{op}' condition needs items.")
        for item in items:
            _check_filter(item, fields)
        return
    if (f.get("field") or "").lower() not in fields:
        raise ApiError(500, f"Unable to find {f.get('field')} in the entity.")
    if op in ("in", "notin"):
        if not isinstance(f.get("value"), list):
            raise ApiError(500, f"The '{op}' operator needs a list value.")
        if len(f["value"]) > 500:
            raise ApiError(500, "Queries are limited to 500 or fewer 'OR' conditions.")


def _matches(record: dict, f: dict, fields: dict[str, str]) -> bool:
    op = f["op"].lower()
    if op == "and":
        return all(_matches(record, item, fields) for item in f["items"])
    if op == "or":
        return any(_matches(record, item, fields) for item in f["items"])
    actual = record.get(fields[f["field"].lower()])
    value = f.get("value")
    if op == "exist":
        return actual is not None and actual != ""
    if op == "notexist":
        return actual is None or actual == ""
    if op in ("in", "notin"):
        found = actual is not None and any(_safe_eq(actual, v) for v in value)
        return found if op == "in" else not found
    if actual is None:
        return op == "noteq"
    if op in ("beginswith", "endswith", "contains"):
        text, part = str(actual).lower(), str(value).lower()
        if op == "beginswith":
            return text.startswith(part)
        if op == "endswith":
            return text.endswith(part)
        return part in text
    try:
        a, b = _comparable(actual, value)
    except (TypeError, ValueError):
        raise ApiError(500, f"Value {value!r} is not valid for field {f['field']}.") from None
    return {"eq": a == b, "noteq": a != b, "gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def _safe_eq(actual: Any, value: Any) -> bool:
    try:
        a, b = _comparable(actual, value)
    except (TypeError, ValueError):
        return False
    return a == b


def _run_query(tables: dict, entity: str, query: dict, after_id: int | None) -> dict:
    if entity == "ContractServiceUnits":
        source = None
    else:
        source = list(tables[TABLES[entity]].values())
    fields = {name.lower(): name for name in FIELDS[entity]}
    lowered = {k.lower(): v for k, v in query.items()}
    filters = lowered.get("filter")
    if not filters or not isinstance(filters, list):
        raise ApiError(500, "A filter is required: the query must have at least one condition.")
    for f in filters:
        _check_filter(f, fields)
    size = lowered.get("maxrecords") or 500
    if not isinstance(size, int) or not 1 <= size <= 500:
        raise ApiError(500, "MaxRecords must be between 1 and 500.")
    include = lowered.get("includefields") or []
    for name in include:
        if name.lower() not in fields:
            raise ApiError(500, f"Unable to find {name} in the entity.")
    if source is None:
        source = _unit_records(tables, filters)
    else:
        source = _prefiltered(source, filters, fields)
    rows = sorted((r for r in source if all(_matches(r, f, fields) for f in filters)), key=lambda r: r["id"])
    if after_id is not None:
        rows = [r for r in rows if r["id"] > after_id]
    page, rest = rows[:size], rows[size:]
    if include:
        wanted = [fields[name.lower()] for name in include]
        page = [{k: r.get(k) for k in wanted} for r in page]
    next_url = None
    if rest:
        paging = json.dumps({"pageSize": size, "previousIds": [], "nextIds": [rows[size - 1]["id"]]})
        next_url = (f"http://{request.host}/ATServicesRest/V1.0/{entity}/query"
                    f"?paging={quote(paging)}&search={quote(json.dumps(query))}")
    return {"items": page, "pageDetails": {"count": len(page), "requestCount": size, "prevPageUrl": None,
                                          "nextPageUrl": next_url}}


def _query_from_request() -> tuple[dict, int | None]:
    after_id = None
    if request.args.get("paging"):
        try:
            after_id = int(json.loads(request.args["paging"])["nextIds"][0])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ApiError(500, "Invalid paging parameter.") from None
    body = request.get_data(as_text=True)
    text = body if body.strip() else request.args.get("search", "")
    try:
        query = json.loads(text) if text else {}
    except ValueError:
        raise ApiError(500, "The search object could not be read.") from None
    if not isinstance(query, dict):
        raise ApiError(500, "The search object could not be read.")
    return query, after_id


# --------------------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------------------
def _body() -> dict:
    try:
        body = json.loads(request.get_data(as_text=True) or "null")
    except ValueError:
        raise ApiError(500, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(500, "The request body must be an object.")
    return body


def _ci(body: dict) -> dict:
    return {k.lower(): v for k, v in body.items()}


def _recurring_contract(tables: dict, contract_id: Any) -> dict:
    try:
        contract = tables["contracts"].get(int(contract_id))
    except (TypeError, ValueError):
        contract = None
    if contract is None:
        raise ApiError(500, f"Contract {contract_id} not found: no matching records found.")
    if contract["contractType"] != 7:
        raise ApiError(500, "contractID must reference a Recurring Service type Contract (Contract.ContractType = 7).")
    return contract


def _create_contract_service(tables: dict, parent_id: int) -> dict:
    body = _body()
    values = _ci(body)
    unknown = set(values) - {f.lower() for f in FIELDS["ContractServices"]}
    if unknown:
        raise ApiError(500, f"Unknown field(s): {', '.join(sorted(unknown))}.")
    if values.get("contractid") not in (None, parent_id):
        raise ApiError(500, "contractID does not match the parent contract.")
    contract = _recurring_contract(tables, parent_id)
    service = tables["services"].get(_int(values.get("serviceid"), "serviceID"))
    if service is None:
        raise ApiError(500, "serviceID: no matching Service found.")
    if values.get("unitprice") is None:
        raise ApiError(500, "unitPrice is required.")
    csid = _add_contract_service(
        tables, contract["id"], service, unitPrice=values.get("unitprice"), unitCost=values.get("unitcost"),
        invoiceDescription=values.get("invoicedescription"), internalDescription=values.get("internaldescription"),
    )
    return {"itemId": csid}


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ApiError(500, f"{name} must be an integer.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(500, f"{name} is required and must be an integer.") from None


def _create_adjustment(tables: dict, parent_id: int | None) -> dict:
    body = _body()
    values = _ci(body)
    unknown = set(values) - {f.lower() for f in ADJUSTMENT_FIELDS}
    if unknown:
        raise ApiError(500, f"Unknown field(s): {', '.join(sorted(unknown))}.")
    if not values.get("effectivedate"):
        raise ApiError(500, "effectiveDate is required.")
    try:
        effective = _as_datetime(values["effectivedate"]).date()
    except ValueError:
        raise ApiError(500, "effectiveDate is not a valid date.") from None
    change = values.get("unitchange")
    if not isinstance(change, int) or isinstance(change, bool):
        raise ApiError(500, "unitChange is required and must be a whole number.")
    if values.get("contractserviceid") is not None:
        cs = tables["contract_services"].get(_int(values["contractserviceid"], "contractServiceID"))
        if cs is None:
            raise ApiError(500, "contractServiceID: no matching records found.")
        contract = _recurring_contract(tables, cs["contractID"])
    else:
        if values.get("contractid") is None and parent_id is None:
            raise ApiError(500, "Either contractServiceID or both contractID and serviceID must be provided.")
        contract = _recurring_contract(tables, parent_id if parent_id is not None else values.get("contractid"))
        service_id = _int(values.get("serviceid"), "serviceID")
        service = tables["services"].get(service_id)
        if service is None:
            raise ApiError(500, "serviceID: no matching Service found.")
        cs = next((c for c in tables["contract_services"].values()
                   if c["contractID"] == contract["id"] and c["serviceID"] == service_id), None)
        if cs is None:
            # Documented: the adjustment creates the missing ContractService itself.
            cs = tables["contract_services"][_add_contract_service(tables, contract["id"], service)]
    events = tables["unit_events"].setdefault(cs["id"], [])
    future = [*events, [effective.isoformat(), change]]
    checkpoints = {dt.date.fromisoformat(d) for d, _ in future}
    if any(sum(c for d, c in future if dt.date.fromisoformat(d) <= day) < 0 for day in checkpoints):
        raise ApiError(500, "The adjustment would make the number of units negative.")
    events.append([effective.isoformat(), change])
    adjustment_id = _new_id(tables)
    tables["adjustments"].append({
        "id": adjustment_id, "contractID": contract["id"], "serviceID": cs["serviceID"], "contractServiceID": cs["id"],
        "effectiveDate": _stamp(effective), "unitChange": change,
        "adjustedUnitPrice": values.get("adjustedunitprice"), "adjustedUnitCost": values.get("adjustedunitcost"),
    })
    return {"itemId": adjustment_id}


# --------------------------------------------------------------------------------------------------
# Fields metadata (picklists)
# --------------------------------------------------------------------------------------------------
def _picklist(values: list[tuple[int, str]]) -> list[dict]:
    return [{"value": str(v), "label": label, "isDefaultValue": False, "sortOrder": i, "parentValue": "",
             "isActive": True, "isSystem": True} for i, (v, label) in enumerate(values)]


def _field_info(entity: str) -> dict:
    picklists = {
        ("Companies", "companyType"): COMPANY_TYPES,
        ("Contracts", "contractType"): CONTRACT_TYPES,
        ("Contracts", "status"): CONTRACT_STATUSES,
        ("Services", "periodType"): PERIOD_TYPES,
    }
    fields = []
    for name in FIELDS.get(entity, []):
        values = picklists.get((entity, name))
        fields.append({
            "name": name, "dataType": "integer" if name == "id" or name.endswith("ID") else "string",
            "length": 0, "isRequired": name in ("companyName", "companyType", "contractName", "name"),
            "isReadOnly": name == "id", "isQueryable": True, "isReference": name.endswith("ID"),
            "referenceEntityType": "", "isPickList": values is not None,
            "picklistValues": _picklist(values) if values else None, "picklistParentValueField": "",
            "isSupportedWebhookField": False,
        })
    return {"fields": fields}


# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------
def _authenticated() -> bool:
    expected = SIM_CREDENTIALS["autotask"]
    return (
        request.headers.get("ApiIntegrationCode") == expected["integration_code"]
        and (request.headers.get("UserName") or "").lower() == expected["username"].lower()
        and request.headers.get("Secret") == expected["secret"]
    )


def make_blueprint(state) -> Blueprint:
    bp = Blueprint("autotask_sim", __name__)

    @bp.before_request
    def guard():
        parts = _segments(request.path)
        head = parts[0].lower() if parts else ""
        if head in ("zoneinformation", "versioninformation"):
            return None  # no auth, no thread limit
        if not _authenticated():
            return error_response(401, "")
        key = getattr(g, "endpoint_key", None)
        with state.lock:
            # The server counts requests in flight per endpoint from before its simulated latency;
            # the simulator accepts one tracking identifier, so that is per identifier + endpoint.
            busy = state.in_flight.current(key) if key else 0
        if busy > THREAD_LIMIT:
            # Thread-limit rejections do not always come as a 429 (n8n-nodes-autotask retryHandler).
            return error_response(500, "", kind="thread_limit")
        return None

    def handle(rest: str) -> Response:
        try:
            return _json(_dispatch(state, request.method, [p for p in rest.split("/") if p]))
        except ApiError as error:
            return error_response(error.status, error.message, error.kind)

    for prefix in PREFIXES:
        bp.add_url_rule(f"{prefix}<path:rest>", endpoint=f"api{prefix.strip('/')}", view_func=handle,
                        methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    return bp


def _contract_child(tables: dict, method: str, parts: list[str], child: str) -> Any:
    """`Contracts/{id}/Services` and its siblings: create under the contract, or list its children."""
    parent = _int(parts[1], "parentId")
    if child == "ContractServiceAdjustments" and len(parts) == 3 and method == "POST":
        return _create_adjustment(tables, parent)
    if child == "ContractServices" and len(parts) == 3 and method == "POST":
        return _create_contract_service(tables, parent)
    if len(parts) == 3 and method == "GET" and child != "ContractServiceAdjustments":
        query = {"filter": [{"op": "eq", "field": "contractID", "value": parent}]}
        return _run_query(tables, child, query, None)
    raise ApiError(405, f"The requested resource does not support http method '{method}'.")


def _dispatch(state, method: str, raw: list[str]) -> Any:
    parts = raw[1:] if raw and raw[0].lower() == "v1.0" else raw
    lower = [p.lower() for p in parts]
    if lower == ["versioninformation"]:
        return {"apiVersions": ["1.0"]}
    if not raw or raw[0].lower() != "v1.0" or not parts:
        raise ApiError(404, "No HTTP resource was found that matches the request URI.")
    if lower == ["zoneinformation"] and method == "GET":
        user = request.args.get("user", "")
        if user.lower() != SIM_CREDENTIALS["autotask"]["username"].lower():
            raise ApiError(500, "Zone information could not be determined for this user.")
        return {**ZONE, "url": f"http://{request.host}/ATServicesRest/"}
    entity = ENTITIES.get(lower[0])
    if entity is None or entity in ("ZoneInformation", "VersionInformation"):
        raise ApiError(404, "No HTTP resource was found that matches the request URI.")
    if entity == "Version" and method == "GET":
        return {"majorVersion": 1, "minorVersion": 0, "build": 0, "customerType": "Sim"}
    with state.lock:
        tables = state.data["autotask"]
        if entity == "ContractServiceAdjustments":
            if lower[1:] == [] and method == "POST":
                return _create_adjustment(tables, None)
            raise ApiError(405, f"The requested resource does not support http method '{method}'.")
        if entity == "Contracts" and len(parts) >= 3 and lower[2] in CHILDREN:
            return _contract_child(tables, method, parts, CHILDREN[lower[2]])
        if lower[1:] == ["query"] and method in ("GET", "POST") and entity in FIELDS:
            query, after_id = _query_from_request()
            return _run_query(tables, entity, query, after_id)
        if lower[1:] == ["entityinformation", "fields"] and method == "GET":
            return _field_info(entity)
        if len(parts) == 2 and method == "GET" and entity in TABLES:
            try:
                record = tables[TABLES[entity]].get(int(parts[1]))
            except ValueError:
                raise ApiError(404, "No HTTP resource was found that matches the request URI.") from None
            return {"item": record}
    raise ApiError(405, f"The requested resource does not support http method '{method}'.")
