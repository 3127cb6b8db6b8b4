"""Simulated Kaseya BMS REST API v2 (psa/kaseya_bms.md; spec psa/specs/kaseya-bms-openapi-v2.json).

What it reproduces, because SeatSync's client must cope with it:
- `POST /v2/security/authenticate` (multipart or urlencoded form, field names in any case) returns a
  JWT-like opaque token with `accessTokenExpireOn` as a zone-less UTC time and a refresh token;
  `POST /v2/security/refreshtoken` swaps them. A missing, unknown or expired token answers HTTP 401
  with the envelope code 978001 "Security Error". `settings.token_lifetime` (seconds) is the knob
  for tests of refresh and expiry; clearing `tokens` expires every token at once.
- Every answer is the envelope `{success, error{code,message,details,stackStrace,subErrors}, result
  [, totalRecords]}` in camelCase, as the real wire is (notes §0.6). Business failures (unknown
  record, bad Units, wrong login) answer HTTP 200 with success=false, as the real API does.
- Paging: `PageSize`/`PageNumber` in the query (GET) or the body (POST searches), 1-based, PageSize
  capped at `settings.max_page_size`; inputs are read in any case, as ASP.NET binds them.
- `POST /v2/finance/contracts/recurringservices/{id}/services` upserts by ServiceId: a service
  already on the contract gets the posted Units from EffectiveDate, a new one becomes a new line.
  This is SeatSync's documented assumption (notes §0.2, §8.1), not known behaviour of the real API.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .seed import SIM_CREDENTIALS
from .wire import arg as _arg
from .wire import as_bool as _bool
from .wire import as_int as _int
from .wire import bearer_is_live
from .wire import ci as _ci
from .wire import contains as _contains
from .wire import new_id as _new_id

PREFIX = "/v2/"
EXPIRED_TOKEN_CODE = 978001
TYPE_IDS = {"Client": 1, "Prospect": 2, "Vendor": 3}
RECURRING = "Recurring Services"


def empty_state() -> dict:
    return {
        "settings": {"tenant": SIM_CREDENTIALS["kaseya_bms"]["company"], "token_lifetime": 3600.0,
                     "refresh_lifetime": 86400.0, "max_page_size": 100},
        "users": {SIM_CREDENTIALS["kaseya_bms"]["username"].lower(): SIM_CREDENTIALS["kaseya_bms"]["password"]},
        "tokens": {},  # access token -> expiry (epoch seconds)
        "refresh_tokens": {},  # refresh token -> {"access": ..., "expires": ...}
        "account_types": {},
        "accounts": {},
        "services": {},
        "contracts": {},
        "contract_services": {},  # one row per (contract, service): the upsert assumption
        "next_id": 1000,
    }


def owns_path(path: str) -> bool:
    return path.startswith(PREFIX)


def endpoint_of(path: str) -> str:
    """The route template, e.g. `finance/contracts/recurringservices/{id}/services`."""
    return re.sub(r"/\d+(?=/|$)", "/{id}", path[len(PREFIX):].rstrip("/").lower())


# --------------------------------------------------------------------------------------------------
# Envelope and input helpers
# --------------------------------------------------------------------------------------------------
def _envelope(result: Any = None, *, total: int | None = None, success: bool = True, code: int = 0,
              message: str | None = None) -> dict:
    body = {"success": success,
            "error": {"code": code, "message": message, "details": None, "stackStrace": None, "subErrors": []},
            "result": result}
    if total is not None:
        body["totalRecords"] = total
    return body


def _ok(result: Any, total: int | None = None) -> Response:
    return jsonify(_envelope(result, total=total))


def _fail(message: str, *, status: int = 200, code: int | None = None) -> Response:
    response = jsonify(_envelope(None, success=False, code=code if code is not None else status, message=message))
    response.status_code = status
    return response


def error_response(status: int, message: str, kind: str | None = None) -> Response:
    if kind == "envelope":  # a business failure: HTTP 200, success=false
        return _fail(message)
    return _fail(message, status=status, code=EXPIRED_TOKEN_CODE if status == 401 else status)


def _arg_list(name: str) -> list[str]:
    lowered = name.lower()
    return [v for key in request.args if key.lower() == lowered for v in request.args.getlist(key)]


def _form(name: str) -> str:
    lowered = name.lower()
    for key in request.form:
        if key.lower() == lowered:
            return request.form.get(key) or ""
    return ""


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")


def _page(rows: list, tables: dict, page_size: Any, page_number: Any) -> tuple[list, int]:
    size = max(1, min(_int(page_size) or 25, tables["settings"]["max_page_size"]))
    number = max(1, _int(page_number) or 1)  # 0 and 1 both mean the first page
    return rows[(number - 1) * size:number * size], len(rows)


# --------------------------------------------------------------------------------------------------
# Records as the API shows them (camelCase)
# --------------------------------------------------------------------------------------------------
def _account_out(tables: dict, account: dict) -> dict:
    account_type = tables["account_types"].get(str(account["accountTypeId"]), {})
    return {**account, "accountType": account_type.get("name"), "tenantName": tables["settings"]["tenant"]}


def _contract_summary(tables: dict, contract: dict) -> dict:
    account = tables["accounts"].get(str(contract["accountId"]), {})
    lines = [s for s in tables["contract_services"].values() if s["contractId"] == contract["id"]]
    return {
        "id": contract["id"], "contractName": contract["name"], "accountName": account.get("accountName"),
        "contractType": contract["contractType"],
        "contractBillingPrice": round(sum(s["units"] * s["unitPrice"] for s in lines), 2),
        "status": "Active" if contract["isActive"] else "Inactive", "contractNumber": f"C-{contract['id']}",
        "billingCycle": "Monthly", "startDate": contract["startDate"], "endDate": contract["endDate"],
    }


def _related_out(tables: dict, line: dict) -> dict:
    contract = tables["contracts"][str(line["contractId"])]
    account = tables["accounts"].get(str(contract["accountId"]), {})
    return {  # RelatedServicesListOutputDto: deliberately without units, like the real API
        "id": line["id"], "serviceId": line["serviceId"], "contractId": line["contractId"],
        "accountId": contract["accountId"], "serviceName": line["serviceName"],
        "serviceDescription": line["description"], "contractName": contract["name"],
        "accountName": account.get("accountName"), "effectiveDate": line["effectiveDate"],
        "contractStartDate": contract["startDate"], "contractEndDate": contract["endDate"],
        "unitCost": line["unitCost"], "unitPrice": line["unitPrice"], "marginType": 1,
        "margin": round(line["unitPrice"] - line["unitCost"], 2), "excludeFromContractBulkUpdates": False,
    }


def _service_post_out(tables: dict, line: dict) -> dict:
    contract = tables["contracts"][str(line["contractId"])]
    return {  # RecurringServicePostOutputDto
        "id": line["id"], "createdBy": 1, "createdOn": line["createdOn"], "modifiedBy": 1,
        "modifiedOn": line["modifiedOn"], "serviceId": line["serviceId"], "serviceName": line["serviceName"],
        "description": line["description"], "contractId": line["contractId"], "contractName": contract["name"],
        "totalCost": round(line["units"] * line["unitCost"], 2),
        "totalPrice": round(line["units"] * line["unitPrice"], 2),
        "units": float(line["units"]), "unitCost": line["unitCost"], "unitPrice": line["unitPrice"],
        "margin": round(line["unitPrice"] - line["unitCost"], 2), "originalUnitPrice": line["unitPrice"],
        "originalUnitCost": line["unitCost"], "effectiveDate": line["effectiveDate"], "sortOrder": line["sortOrder"],
    }


# --------------------------------------------------------------------------------------------------
# The API
# --------------------------------------------------------------------------------------------------
def make_blueprint(state) -> Blueprint:
    bp = Blueprint("kaseya_bms_sim", __name__)
    _security_routes(bp, state)
    _crm_routes(bp, state)
    _service_routes(bp, state)
    _contract_routes(bp, state)
    return bp


def _issue_tokens(t: dict) -> dict:
    now = time.time()
    access = ".".join(secrets.token_urlsafe(n) for n in (12, 24, 16))  # looks like a JWT, is opaque
    refresh = secrets.token_urlsafe(24)
    expires = now + float(t["settings"]["token_lifetime"])
    refresh_expires = now + float(t["settings"]["refresh_lifetime"])
    t["tokens"][access] = expires
    t["refresh_tokens"][refresh] = {"access": access, "expires": refresh_expires}
    return {"accessToken": access, "refreshToken": refresh, "accessTokenExpireOn": _utc(expires),
            "refreshTokenExpireOn": _utc(refresh_expires)}


def _security_routes(bp: Blueprint, state) -> None:
    def tables() -> dict:
        return state.data["kaseya_bms"]

    @bp.before_request
    def require_token():
        if not request.path.startswith(PREFIX) or request.path.lower() in (
            "/v2/security/authenticate", "/v2/security/refreshtoken",
        ):
            return None
        if not bearer_is_live(state, "kaseya_bms"):
            return _fail("Security Error", status=401, code=EXPIRED_TOKEN_CODE)
        return None

    @bp.post("/v2/security/authenticate")
    def authenticate():
        with state.lock:
            t = tables()
            tenant = _form("Tenant").strip()
            if _form("GrantType").lower() != "password":
                return _fail("GrantType is not supported", status=400)
            if not tenant:
                return _fail("Tenant can't be empty", status=400)
            user = _form("UserName").strip().lower()
            if (t["users"].get(user) is None or t["users"][user] != _form("Password")
                    or tenant.lower() != t["settings"]["tenant"].lower()):
                return _fail("Invalid username, password or tenant.", code=978002)
            return _ok(_issue_tokens(t))

    @bp.post("/v2/security/refreshtoken")
    def refresh_token():
        with state.lock:
            t = tables()
            access, refresh = _form("AccessToken"), _form("RefreshToken")
            record = t["refresh_tokens"].get(refresh)
            if not access or record is None or record["access"] != access or record["expires"] <= time.time():
                return _fail("Security Error", status=401, code=EXPIRED_TOKEN_CODE)
            del t["refresh_tokens"][refresh]
            t["tokens"].pop(access, None)
            return _ok(_issue_tokens(t))


def _crm_routes(bp: Blueprint, state) -> None:
    def tables() -> dict:
        return state.data["kaseya_bms"]

    @bp.get("/v2/system/accounttypes/lookup")
    def account_types():
        with state.lock:
            return _ok(list(tables()["account_types"].values()))

    @bp.get("/v2/crm/accounts/summary")
    def accounts_summary():
        with state.lock:
            t = tables()
            type_id, active = _int(_arg("Filter.AccountTypeId")), _bool(_arg("Filter.IsActive"))
            rows = [
                _account_out(t, a) for a in t["accounts"].values()
                if _contains(a["accountName"], _arg("Filter.AccountName"))
                and (type_id is None or a["accountTypeId"] == type_id)
                and (active is None or a["isActive"] == active)
            ]
            rows.sort(key=lambda a: (a["accountName"].lower(), a["id"]))
            page, total = _page(rows, t, _arg("PageSize"), _arg("PageNumber"))
            return _ok(page, total)

    @bp.get("/v2/crm/accounts/lookup")
    def accounts_lookup():
        with state.lock:
            t = tables()
            ids = {_int(v) for v in _arg_list("Filter.Ids")}
            with_inactive = _bool(_arg("Filter.WithInactiveAccounts")) or False
            rows = [
                {"id": a["id"], "name": a["accountName"], "tenantName": t["settings"]["tenant"],
                 "isActive": a["isActive"]}
                for a in t["accounts"].values()
                if (not ids or a["id"] in ids) and _contains(a["accountName"], _arg("Filter.Name"))
                and (with_inactive or a["isActive"])
            ]
            rows.sort(key=lambda a: (a["name"].lower(), a["id"]))
            if _arg("PageSize"):
                rows = _page(rows, t, _arg("PageSize"), _arg("PageNumber"))[0]
            return _ok(rows)  # a List response: no totalRecords


def _service_routes(bp: Blueprint, state) -> None:
    def tables() -> dict:
        return state.data["kaseya_bms"]

    @bp.post("/v2/admin/finance/services/search")
    def services_search():
        body = request.get_json(silent=True) or {}
        flt = _ci(body, "Filter") or {}
        with state.lock:
            t = tables()
            is_active = _ci(flt, "IsActive")
            rows = [
                s for s in t["services"].values()
                if _contains(s["name"], _ci(flt, "Name"))
                and (is_active is None or s["isActive"] == bool(_int(is_active)))
            ]
            rows.sort(key=lambda s: (s["name"].lower(), s["id"]))
            page, total = _page(rows, t, _ci(body, "PageSize"), _ci(body, "PageNumber"))
            return _ok(page, total)

    @bp.get("/v2/admin/finance/services/<int:service_id>")
    def service_get(service_id: int):
        with state.lock:
            service = tables()["services"].get(str(service_id))
            if service is None:
                return _fail(f"Service {service_id} not found.", code=404)
            return _ok(service)

    @bp.post("/v2/admin/finance/services/<int:service_id>/relatedservices/search")
    def related_services(service_id: int):
        body = request.get_json(silent=True) or {}
        flt = _ci(body, "Filter") or {}
        with state.lock:
            t = tables()
            if str(service_id) not in t["services"]:
                return _fail(f"Service {service_id} not found.", code=404)
            rows = [
                _related_out(t, line) for line in t["contract_services"].values() if line["serviceId"] == service_id
            ]
            rows = [r for r in rows if _contains(r["contractName"], _ci(flt, "ContractName"))
                    and _contains(r["accountName"], _ci(flt, "AccountName"))]
            rows.sort(key=lambda r: r["id"])
            page, total = _page(rows, t, _ci(body, "PageSize"), _ci(body, "PageNumber"))
            return _ok(page, total)


def _contract_routes(bp: Blueprint, state) -> None:
    def tables() -> dict:
        return state.data["kaseya_bms"]

    @bp.get("/v2/finance/contracts/lookup")
    def contracts_lookup():
        with state.lock:
            t = tables()
            ids = {_int(v) for v in _arg_list("Ids")}
            account_id = _int(_arg("AccountId"))
            exclude_expired = _bool(_arg("ExcludeExpiredContracts")) or False
            today = dt.date.today().isoformat()
            rows = [
                {"id": c["id"], "name": c["name"], "isDefault": False, "slaId": None, "slaName": None,
                 "isActive": c["isActive"], "endDate": c["endDate"]}
                for c in t["contracts"].values()
                if (not ids or c["id"] in ids) and (account_id is None or c["accountId"] == account_id)
                and _contains(c["name"], _arg("Name"))
                and not (exclude_expired and c["endDate"] and c["endDate"][:10] < today)
            ]
            rows.sort(key=lambda c: c["id"])
            return _ok(rows)  # a List response: no paging, no totalRecords

    @bp.get("/v2/finance/contracts/summary")
    def contracts_summary():
        with state.lock:
            t = tables()
            account_name = _arg("Filter.AccountName")
            accounts = {a["id"] for a in t["accounts"].values() if _contains(a["accountName"], account_name)}
            rows = [_contract_summary(t, c) for c in t["contracts"].values() if c["accountId"] in accounts]
            rows = [
                r for r in rows
                if _contains(r["accountName"], account_name)
                and _contains(r["contractName"], _arg("Filter.ContractName"))
                and _contains(r["contractType"], _arg("Filter.ContractType"))
                and (not _arg("Filter.Status") or r["status"].lower() == _arg("Filter.Status").lower())
            ]
            rows.sort(key=lambda r: r["id"])
            page, total = _page(rows, t, _arg("PageSize"), _arg("PageNumber"))
            return _ok(page, total)

    @bp.post("/v2/finance/contracts/recurringservices/<int:contract_id>/services")
    def post_recurring_services(contract_id: int):
        items = request.get_json(silent=True)
        if not isinstance(items, list) or not items:
            return _fail("The request body must be a list of services.", status=400)
        with state.lock:
            t = tables()
            contract = t["contracts"].get(str(contract_id))
            if contract is None:
                return _fail(f"Contract {contract_id} not found.", code=404)
            if contract["contractType"] != RECURRING:
                return _fail("Services can only be added to a Recurring Services contract.", code=400)
            checked = _checked_services(t, items)
            if isinstance(checked, Response):
                return checked
            # The spec's RecurringServicePostOutputDtoResponse: one object, the first line written.
            return _ok(_upsert_services(t, contract_id, checked))


def _checked_services(t: dict, items: list) -> list[tuple[dict, dict, int, str]] | Response:
    """(item, service, units, effective date) per posted item, or the failure the first bad item earns."""
    checked = []
    for item in items:
        service = t["services"].get(str(_ci(item, "ServiceId")))
        units = _ci(item, "Units")
        if service is None:
            return _fail(f"Service {_ci(item, 'ServiceId')} not found.", code=404)
        if not isinstance(units, int) or isinstance(units, bool) or units < 0:
            return _fail("Units must be a whole number of 0 or more.", code=400)
        effective = str(_ci(item, "EffectiveDate") or "")
        try:
            dt.date.fromisoformat(effective[:10])
        except ValueError:
            return _fail("EffectiveDate is not a date.", code=400)
        checked.append((item, service, units, effective))
    return checked


def _upsert_services(t: dict, contract_id: int, checked: list[tuple[dict, dict, int, str]]) -> dict | None:
    now = _utc(time.time())
    out = None
    on_contract = {s["serviceId"]: s for s in t["contract_services"].values() if s["contractId"] == contract_id}
    for item, service, units, effective in checked:
        # SeatSync's assumption (notes §8.1): one line per service per contract, upserted.
        line = on_contract.get(service["id"])
        if line is None:
            line = {"id": _new_id(t), "contractId": contract_id, "serviceId": service["id"],
                    "serviceName": service["name"], "description": service["description"],
                    "unitCost": service["unitCost"], "unitPrice": service["unitPrice"], "units": 0,
                    "effectiveDate": effective, "sortOrder": 0, "createdOn": now, "history": []}
            t["contract_services"][str(line["id"])] = line
            on_contract[service["id"]] = line
        for field, key in (("ServiceName", "serviceName"), ("ServiceDescription", "description"),
                           ("UnitCost", "unitCost"), ("UnitPrice", "unitPrice"), ("SortOrder", "sortOrder")):
            if _ci(item, field) is not None:
                line[key] = _ci(item, field)
        line["units"] = units
        line["effectiveDate"] = effective
        line["modifiedOn"] = now
        line["history"].append({"units": units, "effectiveDate": effective, "at": now})
        out = out or _service_post_out(t, line)
    return out


# --------------------------------------------------------------------------------------------------
# Seed
# --------------------------------------------------------------------------------------------------
def line_quantities(tables: dict, on: dt.date) -> dict[tuple[str, str], float]:
    """Test hook: (contract id, service id) -> units (the simulator keeps one upserted row per pair; `on` unused)."""
    return {(str(line["contractId"]), str(line["serviceId"])): float(line["units"])
            for line in tables["contract_services"].values()}


def seed(tables: dict, dataset) -> None:
    tables["account_types"] = {
        "1": {"id": 1, "name": "Client", "isActive": True, "isClient": True, "isVendor": False},
        "2": {"id": 2, "name": "Prospect", "isActive": True, "isClient": False, "isVendor": False},
        "3": {"id": 3, "name": "Vendor", "isActive": True, "isClient": False, "isVendor": True},
        "4": {"id": 4, "name": "Former Partner", "isActive": False, "isClient": False, "isVendor": False},
    }
    today = dt.date.today()
    start = f"{today.year - 1}-01-01T00:00:00"
    end = f"{today.year + 2}-12-31T00:00:00"
    now = _utc(time.time())
    service_ids = {}
    for index, name in enumerate(dataset.products):
        service_id = 201 + index
        service_ids[name] = service_id
        tables["services"][str(service_id)] = {
            "id": service_id, "name": name, "description": f"{name} — per user, monthly",
            "unitCost": 2.0 + index, "unitPrice": 4.0 + 2 * index, "categoryId": 1, "category": "Licensing",
            "subCategoryId": None, "subCategory": None, "unitOfMeasureId": 1, "unitOfMeasure": "User",
            "margin": 2.0 + index, "marginType": 1, "isActive": True, "isTaxable": False,
        }
    retired = 201 + len(dataset.products)
    tables["services"][str(retired)] = {
        "id": retired, "name": "Retired Backup Plan", "description": "No longer sold", "unitCost": 1.0,
        "unitPrice": 2.0, "categoryId": 1, "category": "Licensing", "unitOfMeasureId": 1, "unitOfMeasure": "User",
        "isActive": False, "isTaxable": False,
    }
    next_contract = 3001
    line_id = 50001
    for index, company in enumerate(dataset.companies):
        account_id = 101 + index
        tables["accounts"][str(account_id)] = {
            "id": account_id, "accountCode": f"A{account_id}", "accountName": company.name,
            "accountTypeId": TYPE_IDS.get(company.type, 1), "isActive": company.active, "isBilling": True,
            "currencyName": "USD", "parentId": None,
        }
        for agreement in company.agreements:
            contract_id = next_contract
            next_contract += 1
            tables["contracts"][str(contract_id)] = {
                "id": contract_id, "name": agreement.name, "accountId": account_id, "contractType": RECURRING,
                "isActive": agreement.active, "startDate": start, "endDate": end,
            }
            for product, quantity in agreement.lines.items():
                service = tables["services"][str(service_ids[product])]
                tables["contract_services"][str(line_id)] = {
                    "id": line_id, "contractId": contract_id, "serviceId": service["id"],
                    "serviceName": service["name"], "description": service["description"],
                    "unitCost": service["unitCost"], "unitPrice": service["unitPrice"], "units": quantity,
                    "effectiveDate": start, "sortOrder": 0, "createdOn": now, "modifiedOn": now, "history": [],
                }
                line_id += 1
        if index == 0 and company.agreements:  # a contract of another type, never offered for mapping
            tables["contracts"][str(next_contract)] = {
                "id": next_contract, "name": f"{company.name} — Time & Materials", "accountId": account_id,
                "contractType": "Time and Materials", "isActive": True, "startDate": start, "endDate": end,
            }
            next_contract += 1
    tables["next_id"] = max(line_id, 60000)
