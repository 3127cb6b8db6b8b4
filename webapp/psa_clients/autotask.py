"""Autotask PSA (REST API v1.0): Recurring Service contracts, their services and unit adjustments.

What is Autotask-specific, and where it comes from (psa/autotask.md):
- The REST host depends on the tenant's zone: `zoneInformation?user=` (no auth) returns the REST root.
  It is cached (per client and, with Redis, for 12 hours across workers) and re-resolved once on 401.
  An unknown username answers `500 {"errors":["Zone information could not be determined"]}`; any
  other failure of the lookup is transient, and the last known zone (kept 30 days) is used instead.
- Three auth headers: ApiIntegrationCode (the API tracking identifier), UserName, Secret.
- Queries are `POST {Entity}/query` with a filter list (never empty), at most 500 records a page,
  following `pageDetails.nextPageUrl` by re-POSTing the same body.
- Units live on ContractServiceUnits (one row per billing period, split at each adjustment's
  effective date) and change only through ContractServiceAdjustments, a create-only **delta**.
- Errors are `{"errors": [...]}`; validation failures arrive as HTTP 500, permission failures as
  403 or as a 500 saying "does not have the adequate permissions", thread-limit rejections
  (Itgenatr005) with any status.
- Limits: 10,000 requests per hour per database, 3 concurrent requests per tracking identifier and
  object endpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import requests

from .base import (
    Agreement,
    CredentialField,
    CredentialsRejected,
    Line,
    NotFound,
    PermissionDenied,
    PsaClient,
    PsaError,
    PsaItem,
    TransientError,
    ValidationFailed,
    WriteOptions,
    WriteResult,
    money,
)
from .http import DEFAULT_TIMEOUT, PsaHttp, RetryPolicy, base_url_for, limiter_for

log = logging.getLogger(__name__)

DEFAULT_ZONE_URL = "https://webservices.autotask.net/atservicesrest/v1.0/zoneInformation"
API_VERSION = "v1.0/"
PAGE_SIZE = 500  # Autotask's maximum and page size; larger values are rejected, not clamped
IN_CHUNK = 500  # queries are limited to 500 OR conditions; an `in` list counts as such
MAX_PAGES = 1000  # loop guard against a nextPageUrl that never ends
ZONE_CACHE_SECONDS = 12 * 3600
LAST_ZONE_SECONDS = 30 * 24 * 3600  # the last zone seen, used when a lookup fails (zones rarely move)
RECURRING_SERVICE = 7  # Contracts.contractType (ContractServices entity doc)
CONTRACT_ACTIVE = 1  # Contracts.status

CREDENTIALS_HINT = (
    "The API user or secret was rejected — re-enter them (Username, Password and API Tracking Identifier)."
)
PERMISSION_HINT = (
    "Give the API user the 'API User (API-only)' security level (Admin > Account Settings & Users > "
    "Resources/Users > Security Levels); restricted copies of it hide records or refuse writes."
)
_THREAD_LIMIT = re.compile(r"itgenatr005|thread threshold.*exceeded", re.IGNORECASE)
_NO_PERMISSION = re.compile(r"adequate permissions|not have (the )?permission|not authorized", re.IGNORECASE)
_MISSING = re.compile(r"no matching records|not found|does not exist", re.IGNORECASE)
# What zoneInformation answers for a username it does not know (measured live by other clients).
_UNKNOWN_USER = re.compile(r"zone information could not be determined", re.IGNORECASE)


def error_messages(response: requests.Response) -> list[str]:
    """The messages of an Autotask error body: `{"errors": [...]}` (strings, or objects with a message)."""
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    messages = []
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            error = error.get("message") or error.get("Message") or ""
        if error:
            messages.append(str(error))
    if not messages and (body.get("Message") or body.get("message")):
        messages.append(str(body.get("Message") or body.get("message")))
    return messages


def is_thread_limited(response: requests.Response) -> bool:
    """Thread-limit rejections were not processed, whatever their status: safe to retry, even a delta."""
    if response.status_code < 400:
        return False
    return any(_THREAD_LIMIT.search(message) for message in error_messages(response))


def is_answer(response: requests.Response) -> bool:
    """An HTTP 500 that is Autotask's answer, not a failure: not worth retrying.

    Autotask sends validation, permission and missing-record errors as HTTP 500 with an errors list.
    The zone lookup's only such answer is the unknown username; anything else it fails with is transient.
    """
    if response.status_code != 500:
        return False
    messages = error_messages(response)
    if "zoneinformation" in urlsplit(response.url or "").path.lower():
        return any(_UNKNOWN_USER.search(message) for message in messages)
    return bool(messages)


def parse_datetime(value: str | None) -> dt.datetime | None:
    """Autotask datetimes are UTC without a zone designator, e.g. 2024-01-31T15:04:05.307."""
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1]
    parsed = dt.datetime.fromisoformat(text[:26] if "." in text else text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _date_value(day: dt.date) -> str:
    # Date-only fields are stored at midnight with no zone conversion (adjustment effectiveDate doc).
    return f"{day.isoformat()}T00:00:00"


def _chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _int_id(value: str, what: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValidationFailed(f"“{value}” is not an Autotask {what} id.") from None


class AutotaskClient(PsaClient):
    kind = "autotask"
    display_name = "Autotask PSA"
    hourly_limit = 10_000
    concurrency_per_endpoint = 3
    dated_reads = True  # units are per period: an adjustment from next month shows only in its period
    credential_fields: ClassVar[tuple[CredentialField, ...]] = (
        CredentialField(
            "username", "Username",
            help="The API-only user's username (an email address).",
            placeholder="api-user@example.com",
        ),
        CredentialField("secret", "Password", secret=True, help="The API user's secret."),
        CredentialField(
            "integration_code", "API Tracking Identifier", secret=True,
            help="The tracking identifier generated on the API user's page (Custom integration).",
        ),
    )

    def __init__(self, credentials: dict[str, Any], *, redis=None, dev_hosts=frozenset(), config=None):
        config = dict(config or {})
        self._username = (credentials.get("username") or "").strip()
        self._secret = credentials.get("secret") or ""
        self._integration_code = (credentials.get("integration_code") or "").strip()
        self._redis = redis
        self._dev_hosts = frozenset(dev_hosts)
        self._zone_url = config.get("AUTOTASK_ZONE_URL") or DEFAULT_ZONE_URL
        self._sleep = config.get("HTTP_SLEEP") or time.sleep
        self._config = config
        self._zone: dict[str, Any] | None = None
        self._base: str | None = None
        self._zone_fetches = 0
        self._currency: str | None = None
        self.http = PsaHttp(
            dev_hosts=self._dev_hosts,
            policy=config.get("HTTP_RETRY_POLICY") or RetryPolicy(),
            timeout=config.get("HTTP_TIMEOUT") or DEFAULT_TIMEOUT,
            is_throttled=is_thread_limited,
            is_answer=is_answer,
            sleep=self._sleep,
        )
        self.http.scrub.add(self._secret, self._integration_code)

    def __repr__(self) -> str:  # the secret and the tracking identifier stay out of reprs
        return f"AutotaskClient(username={self._username!r}, base={self._base!r})"

    @classmethod
    def normalize_credentials(cls, values: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        cleaned = {k: (v or "").strip() for k, v in values.items()}
        for field in cls.credential_fields:
            if field.required and not cleaned.get(field.name):
                raise ValidationFailed(f"{field.label} is required.", hint=f"Enter the {field.label}.")
        return cleaned, []

    # ----------------------------------------------------------------------------------------------
    # Zone and requests
    # ----------------------------------------------------------------------------------------------
    def _zone_cache_key(self) -> str:
        digest = hashlib.sha256(f"{self._zone_url}\n{self._username.lower()}".encode()).hexdigest()[:24]
        return f"seatsync:autotask-zone:{digest}"

    def _resolve_zone(self, *, fresh: bool = False) -> str:
        if self._base and not fresh:
            return self._base
        zone = None if fresh else self._cached_zone(self._zone_cache_key())
        if zone is None:
            zone = self._look_up_zone()
        self._use_zone(zone)
        return self._base

    def _cached_zone(self, key: str) -> dict[str, Any] | None:
        cached = self._redis.get(key) if self._redis is not None else None
        return json.loads(cached) if cached else None

    def _look_up_zone(self) -> dict[str, Any]:
        """A fresh zone, or the last known one while the lookup fails for a reason other than the user."""
        try:
            zone = self._fetch_zone()
        except TransientError as error:
            known = self._zone or self._cached_zone(self._zone_cache_key() + ":last")
            if known is None:
                raise
            log.warning("Autotask zone lookup failed (%s); using the last known zone %s", error, known.get("url"))
            return known
        if self._redis is not None:
            value = json.dumps(zone)
            self._redis.set(self._zone_cache_key(), value, ex=ZONE_CACHE_SECONDS)
            self._redis.set(self._zone_cache_key() + ":last", value, ex=LAST_ZONE_SECONDS)
        return zone

    def _fetch_zone(self) -> dict[str, Any]:
        if not self._username:
            raise CredentialsRejected("The Autotask username is missing.", hint=CREDENTIALS_HINT)
        self._zone_fetches += 1
        # Zone discovery takes no auth headers and is exempt from thread limits. Failures that are
        # not Autotask's answer (5xx, timeouts, connection errors) are retried by PsaHttp and end
        # as TransientError there.
        response = self.http.request(
            "GET", self._zone_url, endpoint="ZoneInformation", params={"user": self._username},
        )
        messages = [self.http.scrub(m) for m in error_messages(response)]
        if any(_UNKNOWN_USER.search(m) for m in messages):
            raise CredentialsRejected(
                "Autotask could not find the zone of this API user: " + "; ".join(messages),
                status=response.status_code,
                hint="Check the Username: it is the API user's username, an email address. " + CREDENTIALS_HINT,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict) or not body.get("url"):
            # Not an answer about the user (a gateway page, an outage, an empty body): try again later.
            raise TransientError(
                f"Autotask's zone lookup failed (HTTP {response.status_code}"
                + (f": {'; '.join(messages)}" if messages else "") + ").",
                status=response.status_code,
            )
        return {k: body.get(k) for k in ("zoneName", "url", "webUrl", "ci")}

    def _use_zone(self, zone: dict[str, Any]) -> None:
        parts = urlsplit(zone["url"])
        root = base_url_for(parts.netloc, self._dev_hosts)  # its address is checked by every request
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self._zone = zone
        self._base = f"{root}{path}{API_VERSION}"
        if self._redis is not None and self.http.limiter is None:
            database = zone.get("ci") or parts.netloc
            code_digest = hashlib.sha256(self._integration_code.encode()).hexdigest()[:16]
            self.http.limiter = limiter_for(self, self._redis, tenant_key=f"autotask:{database}:{code_digest}",
                                            host=parts.netloc, dev_hosts=self._dev_hosts, config=self._config,
                                            sleep=self._sleep)

    def _headers(self) -> dict[str, str]:
        return {
            "ApiIntegrationCode": self._integration_code,
            "UserName": self._username,
            "Secret": self._secret,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def _same_host(self, url: str) -> str:
        """An absolute URL from Autotask (nextPageUrl), pinned to the zone's host and scheme."""
        base = urlsplit(self._base)
        parts = urlsplit(url)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))

    def _request(
        self, method: str, path_or_url: str, *, endpoint: str, idempotent: bool | None = None, **kwargs,
    ) -> requests.Response:
        """Send one API request; re-resolve the zone once on 401; raise typed errors for failures."""
        fetches = self._zone_fetches
        for attempt in range(2):
            base = self._resolve_zone()
            url = self._same_host(path_or_url) if "://" in path_or_url else base + path_or_url
            response = self.http.request(
                method, url, endpoint=endpoint, idempotent=idempotent, headers=self._headers(), **kwargs,
            )
            if response.status_code != 401 or attempt or self._zone_fetches > fetches:
                break
            # A stale zone also answers 401: look it up again, and retry only if it moved.
            old = self._base
            self._resolve_zone(fresh=True)
            if self._base == old:
                break
        self._raise_for(response)
        return response

    def _raise_for(self, response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        messages = [self.http.scrub(m) for m in error_messages(response)]
        text = "; ".join(messages)
        if status == 401:
            raise CredentialsRejected(
                "Autotask rejected the API user, its secret or the API tracking identifier.",
                status=status, hint=CREDENTIALS_HINT,
            )
        if status == 403 or any(_NO_PERMISSION.search(m) for m in messages):
            raise PermissionDenied(
                text or "The API user's security level does not allow this request.", status=status,
                hint=PERMISSION_HINT,
            )
        if status == 404:
            raise NotFound(text or "Autotask has no such record.", status=status)
        if status >= 500 and not messages:
            raise TransientError(f"Autotask failed with HTTP {status}.", status=status)
        if status >= 502:
            raise TransientError(text or f"Autotask failed with HTTP {status}.", status=status)
        # Autotask reports validation and business-rule failures as HTTP 500 with an errors list.
        if any(_MISSING.search(m) for m in messages):
            raise NotFound(text, status=status)
        raise ValidationFailed(text or f"Autotask refused the request (HTTP {status}).", status=status)

    def _query(
        self,
        entity: str,
        filters: list[dict[str, Any]],
        fields: Sequence[str],
        *,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """All records matching `filters` (AND-ed), paging to the end (or to `limit`)."""
        body = {
            "filter": filters or [{"op": "gte", "field": "id", "value": 0}],  # a query must have a filter
            "maxRecords": min(PAGE_SIZE, limit) if limit else PAGE_SIZE,
            # id is needed to page past 500 records (advanced query features doc).
            "includeFields": list(dict.fromkeys(["id", *fields])),
        }
        items: list[dict[str, Any]] = []
        target: str | None = f"{entity}/query"
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            response = self._request("POST", target, endpoint=entity, idempotent=True, json=body)
            try:
                data = response.json()
            except ValueError:
                raise TransientError(
                    f"Autotask sent an unreadable {entity} page.", status=response.status_code,
                ) from None
            items.extend(data.get("items") or [])
            target = (data.get("pageDetails") or {}).get("nextPageUrl")
            if not target or (limit and len(items) >= limit):
                return items[:limit] if limit else items
            if target in seen:
                break
            seen.add(target)
        raise TransientError(f"Autotask kept returning more {entity} pages; stopped to avoid a loop.")

    # ----------------------------------------------------------------------------------------------
    # The interface
    # ----------------------------------------------------------------------------------------------
    def check_credentials(self) -> str:
        self._resolve_zone()
        self._query("Companies", [{"op": "gte", "field": "id", "value": 0}], ["id"], limit=1)
        zone = self._zone or {}
        where = f"zone {zone.get('zoneName')}" if zone.get("zoneName") else urlsplit(self._base).netloc
        return self.http.scrub(f"Connected to Autotask as {self._username} ({where}).")

    def list_products(self, search: str = "") -> list[PsaItem]:
        filters: list[dict[str, Any]] = [{"op": "eq", "field": "isActive", "value": True}]
        if search.strip():
            filters.append({"op": "contains", "field": "name", "value": search.strip()})
        rows = self._query("Services", filters, ["name", "sku", "unitPrice", "externalID"])
        items = [
            PsaItem(id=str(row["id"]), name=row.get("name") or f"Service {row['id']}", detail=self._service_detail(row))
            for row in rows
        ]
        return sorted(items, key=lambda item: item.name.lower())

    def product_prices(self, product_ids: Sequence[str]) -> dict[str, Line]:
        ids = [_int_id(p, "service") for p in product_ids]
        rows = self._query("Services", [{"op": "in", "field": "id", "value": ids}], ["unitPrice", "unitCost"]) \
            if ids else []
        return {str(r["id"]): Line("", str(r["id"]), "", None, unit_price=money(r.get("unitPrice")),
                                   unit_cost=money(r.get("unitCost")), currency=self.tenant_currency()) for r in rows}

    @staticmethod
    def _internal_price(contract_service: dict[str, Any]) -> float | None:
        """The unit price in the tenant's internal currency: with Multi-currency `unitPrice` is the
        customer's currency and `internalCurrencyUnitPrice` the internal one (ContractServices doc)."""
        internal = money(contract_service.get("internalCurrencyUnitPrice"))
        return internal if internal is not None else money(contract_service.get("unitPrice"))

    def tenant_currency(self) -> str:
        """The tenant's internal currency code (Currencies.isInternalCurrency), read once per client and
        cached with the zone; "" when the API user may not read it (money then shows no currency)."""
        if self._currency is None:
            key = self._zone_cache_key() + ":currency"
            cached = self._redis.get(key) if self._redis is not None else None
            if cached is not None:
                self._currency = cached.decode() if isinstance(cached, bytes) else str(cached)
                return self._currency
            try:
                rows = self._query("Currencies", [{"op": "eq", "field": "isInternalCurrency", "value": True}],
                                   ["name"], limit=1)
            except (NotFound, PermissionDenied, ValidationFailed) as error:
                log.info("Autotask currencies are not readable (%s); amounts show no currency", error)
                rows = []
            self._currency = str(rows[0].get("name") or "")[:10] if rows else ""
            if self._redis is not None:
                self._redis.set(key, self._currency, ex=ZONE_CACHE_SECONDS)
        return self._currency

    @staticmethod
    def _service_detail(row: dict[str, Any]) -> str:
        parts = [row.get("sku") or row.get("externalID") or ""]
        if row.get("unitPrice") is not None:
            parts.append(f"unit price {row['unitPrice']:g}")
        return " · ".join(p for p in parts if p)

    def company_scope_options(self) -> dict[str, list[PsaItem]]:
        response = self._request("GET", "Companies/entityInformation/fields", endpoint="Companies")
        fields = (response.json() or {}).get("fields") or []
        company_type = next((f for f in fields if (f.get("name") or "").lower() == "companytype"), {})
        types = [
            PsaItem(id=str(value["value"]), name=value.get("label") or str(value["value"]))
            for value in sorted(company_type.get("picklistValues") or [], key=lambda v: v.get("sortOrder") or 0)
            if value.get("isActive", True)
        ]
        statuses = [PsaItem(id="active", name="Active"), PsaItem(id="inactive", name="Inactive")]
        return {"types": types, "statuses": statuses}

    @staticmethod
    def _company_filters(search: str, type_ids: Sequence[str], status_ids: Sequence[str]) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        if search.strip():
            filters.append({"op": "contains", "field": "companyName", "value": search.strip()})
        if type_ids:
            types = [_int_id(t, "company type") for t in type_ids]
            filters.append({"op": "in", "field": "companyType", "value": types})
        wanted = {s.strip().lower() for s in status_ids}
        if wanted and wanted <= {"active", "inactive"} and len(wanted) == 1:
            filters.append({"op": "eq", "field": "isActive", "value": wanted == {"active"}})
        return filters

    @staticmethod
    def _company_item(row: dict[str, Any]) -> PsaItem:
        detail = [row.get("companyNumber") or ""]
        if row.get("isActive") is False:
            detail.append("inactive")
        return PsaItem(
            id=str(row["id"]), name=row.get("companyName") or f"Company {row['id']}",
            detail=" · ".join(d for d in detail if d),
        )

    def search_companies(
        self, search: str = "", *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = (), limit: int = 50,
    ) -> list[PsaItem]:
        rows = self._query(
            "Companies", self._company_filters(search, type_ids, status_ids),
            ["companyName", "companyNumber", "isActive"], limit=max(1, limit),
        )
        return sorted((self._company_item(r) for r in rows), key=lambda item: item.name.lower())

    def list_companies(self, *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = ()) -> list[PsaItem]:
        rows = self._query(
            "Companies", self._company_filters("", type_ids, status_ids), ["companyName", "companyNumber", "isActive"],
        )
        return sorted((self._company_item(r) for r in rows), key=lambda item: item.name.lower())

    def list_agreements(self, company_id: str) -> list[Agreement]:
        rows = self._query(
            "Contracts",
            [
                {"op": "eq", "field": "companyID", "value": _int_id(company_id, "company")},
                {"op": "eq", "field": "contractType", "value": RECURRING_SERVICE},
                {"op": "eq", "field": "status", "value": CONTRACT_ACTIVE},
            ],
            ["contractName", "contractNumber", "companyID", "startDate", "endDate"],
        )
        agreements = []
        for row in rows:
            start, end = parse_datetime(row.get("startDate")), parse_datetime(row.get("endDate"))
            period = f"{start:%Y-%m-%d} – {end:%Y-%m-%d}" if start and end else ""
            agreements.append(Agreement(
                id=str(row["id"]),
                name=row.get("contractName") or f"Contract {row['id']}",
                company_id=str(row.get("companyID") or company_id),
                detail=" · ".join(p for p in ("Recurring Service", row.get("contractNumber") or "", period) if p),
            ))
        return sorted(agreements, key=lambda a: a.name.lower())

    def read_lines(self, agreement_ids: Iterable[str], on: dt.date,
                   product_ids: Iterable[str] | None = None) -> dict[str, list[Line]]:
        requested = list(dict.fromkeys(str(a) for a in agreement_ids))
        result: dict[str, list[Line]] = {a: [] for a in requested}
        key_of = {_int_id(a, "contract"): a for a in requested}
        ids = list(key_of)
        for chunk in _chunks(ids, IN_CHUNK):
            services = self._query(
                "ContractServices", [{"op": "in", "field": "contractID", "value": list(chunk)}],
                ["contractID", "serviceID", "invoiceDescription", "unitPrice", "internalCurrencyUnitPrice", "unitCost"],
            )
            units = self._period_units(chunk, on)
            for cs in sorted(services, key=lambda row: row["id"]):
                row = units.get(cs["id"]) or units.get((cs.get("contractID"), cs.get("serviceID")))
                agreement = key_of.get(cs.get("contractID"), str(cs.get("contractID")))
                result.setdefault(agreement, []).append(Line(
                    agreement_id=agreement,
                    product_id=str(cs["serviceID"]),
                    line_id=str(cs["id"]),
                    quantity=float(row.get("units") or 0) if row else 0.0,
                    description=cs.get("invoiceDescription") or "",
                    unit_price=self._internal_price(cs), unit_cost=money(cs.get("unitCost")),
                    currency=self.tenant_currency(),
                ))
        return result

    def _period_units(self, contract_ids: Sequence[int], on: dt.date) -> dict[Any, dict[str, Any]]:
        """The ContractServiceUnits row holding `on` per contract service (and per contract + service).

        Rows are split at each adjustment's effective date and the earlier row ends on that date, so
        two rows can touch `on`: the later one is what bills from `on`. The date filter is widened by
        a day and refined here, because the time part of stored dates is not documented.
        """
        rows = self._query(
            "ContractServiceUnits",
            [
                {"op": "in", "field": "contractID", "value": list(contract_ids)},
                {"op": "lte", "field": "startDate", "value": _date_value(on + dt.timedelta(days=1))},
                {"op": "gte", "field": "endDate", "value": _date_value(on - dt.timedelta(days=1))},
            ],
            ["contractID", "contractServiceID", "serviceID", "startDate", "endDate", "units"],
        )
        best: dict[Any, dict[str, Any]] = {}
        for row in rows:
            start, end = parse_datetime(row.get("startDate")), parse_datetime(row.get("endDate"))
            if start is None or start.date() > on or (end is not None and end.date() < on):
                continue
            rank = (start, row.get("id") or 0)
            for key in (row.get("contractServiceID"), (row.get("contractID"), row.get("serviceID"))):
                if key is None:
                    continue
                held = best.get(key)
                if held is None or rank > held["_rank"]:
                    best[key] = {**row, "_rank": rank}
        return best

    def set_quantity(
        self,
        agreement_id: str,
        product_id: str,
        target: int,
        *,
        current: Line | None,
        options: WriteOptions,
    ) -> WriteResult:
        contract_id = _int_id(agreement_id, "contract")
        service_id = _int_id(product_id, "service")
        target = int(target)
        if current is None:
            if target == 0:
                line = Line(str(contract_id), str(service_id), "", 0.0)
                return WriteResult(line=line, action="unchanged", response="no contract service needed for 0 units")
            return self._create_line(contract_id, service_id, target, options)
        units = int(round(current.quantity))
        delta = target - units
        if delta == 0:
            return WriteResult(line=current, action="unchanged", response="units already match")
        item_id = self._adjust(contract_id, service_id, delta, options.effective_date)
        line = replace(current, quantity=float(units + delta))
        return WriteResult(
            line=line, action="adjusted",
            response=f"ContractServiceAdjustment {item_id}: {delta:+d} units from {options.effective_date.isoformat()}",
        )

    def _adjust(self, contract_id: int, service_id: int, delta: int, effective: dt.date) -> Any:
        """POST one unit delta. Never blindly retried: a lost answer could mean it was applied."""
        body = {
            "contractID": contract_id,
            "serviceID": service_id,
            "unitChange": delta,
            "effectiveDate": _date_value(effective),
        }
        response = self._request("POST", "ContractServiceAdjustments", endpoint="ContractServiceAdjustments",
                                 idempotent=False, json=body)
        return self._item_id(response, "ContractServiceAdjustment")

    def _item_id(self, response: requests.Response, what: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {}
        item_id = body.get("itemId") if isinstance(body, dict) else None
        if item_id is None:
            messages = "; ".join(self.http.scrub(m) for m in error_messages(response))
            raise ValidationFailed(messages or f"Autotask did not confirm the {what}.", status=response.status_code)
        return item_id

    def _create_line(self, contract_id: int, service_id: int, target: int, options: WriteOptions) -> WriteResult:
        """One adjustment POST: Autotask adds the missing ContractService itself.

        ContractServiceAdjustments doc: "The ContractServiceAdjustment can be created without the
        specified ContractService entity in place. If the API … cannot find the correct
        ContractService entity, it will create it." So a new line costs one call instead of four
        (read the service, create the contract service, re-read units, post the delta). The line id
        is not in the answer (itemId is the adjustment's); the next read shows it. After a lost
        answer the next run re-reads: the line exists with its units, or is still missing and
        created then — never both.
        """
        try:
            item_id = self._adjust(contract_id, service_id, target, options.effective_date)
        except (NotFound, ValidationFailed) as error:
            if "service" not in error.psa_message.lower():
                raise
            raise type(error)(error.psa_message, status=error.status,
                              hint="If the mapped service no longer exists in Autotask, edit the product mapping."
                              ) from None
        line = Line(str(contract_id), str(service_id), "", float(target))
        return WriteResult(
            line=line, action="created",
            response=(f"ContractServiceAdjustment {item_id}: {target:+d} units from "
                      f"{options.effective_date.isoformat()} (contract service added by Autotask)"),
        )

    def close(self) -> None:
        self.http.close()


__all__ = ["AutotaskClient", "PsaError"]
