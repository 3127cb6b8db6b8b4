"""ConnectWise Manage (ConnectWise PSA): the billed quantity lives on agreement *additions*.

Every fact about the API below comes from the research notes in `psa/connectwise.md` ("notes §x");
nothing here was tested against a live tenant. Things the notes mark as unverified are called out
where they are used.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from .base import (
    Agreement,
    CredentialField,
    CredentialsRejected,
    HostRefused,
    Line,
    NotFound,
    PermissionDenied,
    PsaClient,
    PsaError,
    PsaItem,
    RateLimited,
    TransientError,
    ValidationFailed,
    WriteOptions,
    WriteResult,
    money,
)
from .http import DEFAULT_TIMEOUT, PsaHttp, base_url_for, limiter_for

log = logging.getLogger(__name__)

# Cloud UI hosts answer the API on a sibling host (notes §1, from django-connectwise CW_CLOUD_URLS).
CLOUD_API_HOSTS = {
    "na.myconnectwise.net": "api-na.myconnectwise.net",
    "eu.myconnectwise.net": "api-eu.myconnectwise.net",
    "au.myconnectwise.net": "api-au.myconnectwise.net",
    "aus.myconnectwise.net": "api-aus.myconnectwise.net",
    "za.myconnectwise.net": "api-za.myconnectwise.net",
    "staging.connectwisedev.com": "api-staging.connectwisedev.com",
}
PAGE_SIZE = 1000  # the API's hard maximum (notes §0.5); the default of 25 is a classic trap
CODEBASE_CACHE_SECONDS = 12 * 3600  # re-read sooner on any 404 (hosted upgrades move it)
LAST_CODEBASE_SECONDS = 30 * 24 * 3600  # the last codebase seen, used while companyinfo fails
READ_PARALLELISM = 3  # notes §0.6: "serially, or at most two or three requests in parallel"

KEYS_HINT = (
    "The API keys were rejected — re-enter them (Public Key and Private Key of the API member), "
    "and check the Company ID and the Client ID."
)
COMPANY_ID_HINT = (
    "Check the Company ID: it is the company name you type on the ConnectWise Manage login page, "
    "not the company's display name."
)
SITE_HINT = "Enter the host you log in to ConnectWise Manage at, e.g. na.myconnectwise.net."
# notes §4 (403 row): the read-only integration role of a public setup guide, plus add/edit on
# agreements because SeatSync writes additions.
SECURITY_ROLE_HINT = (
    "The API member's security role lacks a permission. It needs: Companies › Company Maintenance "
    "(Inquire Level: All); Finance › Agreements (Inquire, Add and Edit Level: All); Procurement › "
    "Product Catalog (Inquire Level: All); System › API Reports (Inquire Level: All)."
)
AGREEMENT_GONE_HINT = "The agreement no longer exists — edit the mapping."

_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")
_CODEBASE_RE = re.compile(r"^[A-Za-z0-9_.-]+/$")
# Fields of an addition carried over to its replacement when history is kept, so the new line
# bills exactly like the old one apart from the quantity.
_CARRIED_FIELDS = (
    "billCustomer", "unitPrice", "unitCost", "lessIncluded", "taxableFlag", "description",
    "invoiceDescription", "uom", "sequenceNumber", "prorateCurrentPeriodFlag",
)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _normalize_site(raw: str) -> tuple[str, str | None]:
    """The bare host an admin meant, and a notice when what they typed had to be trimmed."""
    value = (raw or "").strip()
    lowered = value.lower()
    if lowered.startswith("http://"):
        raise ValidationFailed(
            "ConnectWise Manage is only reached over HTTPS: an “http://” address is refused.",
            hint="Enter only the host name, e.g. na.myconnectwise.net.",
        )
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme.lower() != "https":
            raise ValidationFailed(f"“{parts.scheme}://” is not a web address SeatSync can use.", hint=SITE_HINT)
        host = parts.netloc
    else:
        host = value.split("/", 1)[0]
    if "@" in host:
        raise ValidationFailed("The site must not contain a user name or password.", hint=SITE_HINT)
    host = host.lower().rstrip(".")
    if not host or not _HOST_RE.match(host):
        raise ValidationFailed(f"“{value}” is not a host name.", hint=SITE_HINT)
    notice = None
    if host != lowered.rstrip("/"):
        notice = f"The ConnectWise Manage Site was shortened to the host “{host}”; SeatSync finds the API path itself."
    return host, notice


def _escape(value: str) -> str:
    """A string literal for `conditions`: quotes and backslashes escaped so input cannot change the query."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _int_ids(values: Iterable[Any], what: str) -> list[int]:
    try:
        return [int(str(v).strip()) for v in values]
    except ValueError:
        raise ValidationFailed(f"A ConnectWise {what} id must be a number.") from None


def _cw_datetime(day: dt.date) -> str:
    return f"{day:%Y-%m-%d}T00:00:00Z"  # notes §1: UTC ISO 8601, in conditions inside [ ]


def _cw_date(value: Any) -> dt.date | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _name_of(ref: Any) -> str:
    return str(ref.get("name") or "") if isinstance(ref, dict) else ""


class _Secrets:
    """The Client ID; prints as a placeholder."""

    __slots__ = ("client_id",)

    def __init__(self, client_id: str):
        self.client_id = client_id

    def __repr__(self) -> str:
        return "<hidden>"


class _ApiKeyAuth(requests.auth.AuthBase):
    """Basic `companyId+publicKey:privateKey` (notes §0.1). Holds only the encoded header; never printable."""

    __slots__ = ("_header",)

    def __init__(self, company_id: str, public_key: str, private_key: str):
        token = base64.b64encode(f"{company_id}+{public_key}:{private_key}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def __call__(self, request):
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "<ConnectWise API key auth>"


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------
class ConnectWiseClient(PsaClient):
    kind = "connectwise"
    display_name = "ConnectWise Manage"
    hourly_limit = None  # no documented limit (notes §0.6)
    concurrency_per_endpoint = READ_PARALLELISM
    credential_fields = (
        CredentialField("site", "ConnectWise Manage Site", host=True, help="The host only, e.g. na.myconnectwise.net.",
                        placeholder="na.myconnectwise.net"),
        CredentialField("company_id", "Company ID", help="The company you type on the ConnectWise login page."),
        CredentialField("public_key", "Public Key", help="From the API member's API Keys tab."),
        CredentialField("private_key", "Private Key", secret=True, help="Shown once, when the API key is created."),
        CredentialField("client_id", "Client ID", secret=True, required=False,
                        help="Leave empty to use SeatSync's own Client ID."),
    )

    @classmethod
    def normalize_credentials(cls, values: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        cleaned, notices = super().normalize_credentials(values)
        if cleaned.get("site"):
            cleaned["site"], notice = _normalize_site(cleaned["site"])
            if notice:
                notices.append(notice)
        return cleaned, notices

    def __init__(self, credentials: dict[str, Any], *, redis=None, dev_hosts: frozenset[str] = frozenset(),
                 config: dict[str, Any] | None = None):
        config = dict(config or {})
        values = {k: str(v).strip() for k, v in credentials.items() if v is not None}
        self._site_typed = values.get("site", "")
        self.site = self._site_typed.lower()
        self.company_id = values.get("company_id", "")
        self._dev_hosts = frozenset(h.strip().lower() for h in dev_hosts)
        # Secrets live only in _ApiKeyAuth and _Secrets, which print as placeholders, so no repr shows them.
        client_id = values.get("client_id") or str(config.get("CW_CLIENT_ID") or "")
        self._secrets = _Secrets(client_id)
        public_key, private_key = values.get("public_key", ""), values.get("private_key", "")
        self._keys_present = bool(self.company_id and public_key and private_key)
        self._auth = _ApiKeyAuth(self.company_id, public_key, private_key)
        sleep = config.get("HTTP_SLEEP") or time.sleep
        limiter = limiter_for(self, redis, tenant_key=f"connectwise:{self.site}:{self.company_id.lower()}",
                              host=self.site, dev_hosts=self._dev_hosts, config=config, sleep=sleep)
        self.http = PsaHttp(dev_hosts=self._dev_hosts, limiter=limiter, policy=config.get("HTTP_RETRY_POLICY"),
                            timeout=config.get("HTTP_TIMEOUT") or DEFAULT_TIMEOUT, sleep=sleep)
        # The whole Basic credential too: an echoed Authorization header is its base64.
        self.http.scrub.add(private_key, client_id, f"{self.company_id}+{public_key}:{private_key}")
        self._redis = redis
        self._root: str | None = None
        self._codebase: str | None = None
        self._company_name = ""
        self._codebase_rechecked = False
        self._lock = threading.Lock()
        self._additions: dict[str, dict[str, Any]] = {}  # raw additions of the last read, by id

    def __repr__(self) -> str:
        return f"ConnectWiseClient(site={self.site!r}, company_id={self.company_id!r})"

    def close(self) -> None:
        self.http.close()

    # ---------------------------------------------------------------------------------------------
    # URLs, codebase and requests
    # ---------------------------------------------------------------------------------------------
    def _site_root(self) -> str:
        if self._root is None:
            host, _notice = _normalize_site(self._site_typed)
            # Development hosts are used exactly as typed (PRODUCT.md §5): no cloud → API mapping.
            if host not in self._dev_hosts:
                host = CLOUD_API_HOSTS.get(host, host)
            self._root = base_url_for(host, self._dev_hosts)
        return self._root

    def _fetch_codebase(self) -> str:
        # Unauthenticated (notes §1): no credentials go with it, and SiteUrl in the answer is never
        # followed, so a hostile answer cannot redirect the keys to another host.
        url = f"{self._site_root()}/login/companyinfo/{quote(self.company_id, safe='')}"
        response = self.http.request("GET", url, endpoint="login/companyinfo", headers={"Accept": "application/json"})
        if response.status_code >= 500:  # an outage says nothing about the site or the company
            raise TransientError(f"ConnectWise Manage at {self.site} failed (HTTP {response.status_code}).",
                                 status=response.status_code)
        info: Any = None
        answered = response.status_code == 200
        if answered:
            try:
                info = response.json()
            except ValueError:
                answered = False
        if not answered or (info is not None and not isinstance(info, dict)):
            raise HostRefused(
                f"{self.site} did not answer like a ConnectWise Manage site (HTTP {response.status_code}).",
                status=response.status_code, hint=SITE_HINT,
            )
        if info is None:  # an unknown company answers 200 with JSON null (notes §1)
            raise CredentialsRejected(
                f"ConnectWise Manage at {self.site} does not know the Company ID “{self.company_id}”.",
                hint=COMPANY_ID_HINT,
            )
        codebase = str(info.get("Codebase") or "v4_6_release/")
        if not codebase.endswith("/"):
            codebase += "/"
        if not _CODEBASE_RE.match(codebase):
            raise HostRefused(f"{self.site} answered with an unexpected codebase.", hint=SITE_HINT)
        self._company_name = str(info.get("CompanyName") or "")
        return codebase

    @property
    def _codebase_cache_key(self) -> str:
        return f"seatsync:cw-codebase:{self.site}:{self.company_id.lower()}"

    def _remember_codebase(self, codebase: str) -> None:
        # Shared by every worker's client: a sync's batch jobs don't each ask companyinfo again.
        if self._redis is not None:
            self._redis.set(self._codebase_cache_key, codebase, ex=CODEBASE_CACHE_SECONDS)
            self._redis.set(self._codebase_cache_key + ":last", codebase, ex=LAST_CODEBASE_SECONDS)

    def _cached_codebase(self, key: str) -> str | None:
        cached = self._redis.get(key) if self._redis is not None else None
        return cached.decode() if cached else None

    def _look_up_codebase(self) -> str:
        """A fresh codebase, or the last known one while companyinfo fails without an answer about the company."""
        try:
            codebase = self._fetch_codebase()
        except (TransientError, HostRefused) as error:
            known = self._codebase or self._cached_codebase(self._codebase_cache_key + ":last")
            if known is None:
                raise
            log.warning("ConnectWise companyinfo of %s failed (%s); using the last known codebase %s",
                        self.site, error, known)
            return known
        self._remember_codebase(codebase)
        return codebase

    def _api_base(self, *, fresh: bool = False) -> str:
        with self._lock:
            if self._codebase is None and not fresh:
                self._codebase = self._cached_codebase(self._codebase_cache_key)
            if self._codebase is None or fresh:
                self._check_ready()
                self._codebase = self._look_up_codebase()
            return f"{self._site_root()}/{self._codebase}apis/3.0"

    def _codebase_moved(self) -> bool:
        """After a 404: hosted upgrades move the codebase, so re-read it once per client (notes §0.2)."""
        with self._lock:
            if self._codebase_rechecked:
                return False
            self._codebase_rechecked = True
            old = self._codebase
            self._codebase = self._look_up_codebase()
            if self._codebase != old:
                log.info("ConnectWise codebase of %s moved from %s to %s", self.site, old, self._codebase)
                return True
            return False

    def _check_ready(self) -> None:
        if not self._site_typed:
            raise ValidationFailed("The ConnectWise Manage Site is missing.", hint=SITE_HINT)
        if not self._keys_present:
            raise CredentialsRejected("The Company ID, Public Key and Private Key are all needed.", hint=KEYS_HINT)
        if not self._secrets.client_id:
            raise ValidationFailed(
                "No ConnectWise Client ID is configured; ConnectWise requires one on every API call.",
                hint="Enter a Client ID from developer.connectwise.com/ClientID, or set CW_CLIENT_ID.",
            )

    def _call(
        self,
        method: str,
        path: str = "",
        *,
        endpoint: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        url: str | None = None,
        not_found_hint: str | None = None,
    ) -> requests.Response:
        for _attempt in range(2):
            target = url or f"{self._api_base()}{path}"
            response = self.http.request(
                method, target, endpoint=endpoint, params=params, json=body, auth=self._auth,
                headers={"clientId": self._secrets.client_id, "Accept": "application/json"},
                idempotent=method != "POST",
            )
            if response.status_code == 404 and url is None and self._codebase_moved():
                continue
            break
        # The routing error is plain text, possibly with a success status (notes §0.7 quotes only the body).
        plain_text = "json" not in response.headers.get("Content-Type", "")
        if response.status_code >= 400 or (plain_text and "Cannot route" in response.text[:200]):
            raise self._error(response, not_found_hint=not_found_hint)
        return response

    def _error(self, response: requests.Response, *, not_found_hint: str | None = None) -> PsaError:
        status = response.status_code
        # Scrubbed before it is shortened, so no cut-off piece of a secret survives.
        message = " ".join(self.http.scrub(self._psa_message(response)).split())[:300]
        if "Cannot route" in message:  # wrong company in the key, or a codebase that does not exist (notes §0.7)
            return CredentialsRejected(
                f"ConnectWise could not route the request for Company ID “{self.company_id}”: {message}",
                status=status, hint=COMPANY_ID_HINT,
            )
        if status == 401:
            return CredentialsRejected(message, status=status, hint=KEYS_HINT)
        if status == 403:
            return PermissionDenied(message, status=status, hint=SECURITY_ROLE_HINT)
        if status == 404:
            return NotFound(message, status=status, hint=not_found_hint)
        if status == 429:
            return RateLimited(message, status=status)
        if status >= 500:
            return TransientError(message, status=status)
        return ValidationFailed(message, status=status)

    @staticmethod
    def _psa_message(response: requests.Response) -> str:
        """`message` plus the first `errors[].message` of CW's error body (notes §0.7), else the text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("message") or body.get("errors")):
            message = str(body.get("message") or "").strip()
            errors = body.get("errors") or []
            first = errors[0].get("message") if errors and isinstance(errors[0], dict) else None
            if first and str(first).strip() not in message:
                message = f"{message.rstrip('.')}: {str(first).strip()}" if message else str(first).strip()
            return message
        return response.text[:20_000].strip() or f"ConnectWise answered HTTP {response.status_code}."

    def _get_all(self, path: str, *, endpoint: str, params: dict[str, Any],
                 not_found_hint: str | None = None) -> list[dict[str, Any]]:
        """Every page of a list, following `Link: rel="next"` (notes §3.3) with all query params kept."""
        params = {**params, "pageSize": PAGE_SIZE, "page": 1}
        rows: list[dict[str, Any]] = []
        response = self._call("GET", path, endpoint=endpoint, params=params, not_found_hint=not_found_hint)
        while True:
            page = response.json()
            if not isinstance(page, list):
                raise TransientError("ConnectWise answered a list request with something other than a list.")
            rows.extend(page)
            next_url = response.links.get("next", {}).get("url")
            if not next_url or not page:
                return rows
            params["page"] += 1
            # Credentials only ever go to the configured host: a next link elsewhere is rebuilt locally.
            if urlsplit(next_url)[:2] == urlsplit(self._site_root())[:2]:
                response = self._call("GET", endpoint=endpoint, url=next_url, not_found_hint=not_found_hint)
            else:
                response = self._call("GET", path, endpoint=endpoint, params=params, not_found_hint=not_found_hint)

    # ---------------------------------------------------------------------------------------------
    # Interface
    # ---------------------------------------------------------------------------------------------
    def check_credentials(self) -> str:
        # companyinfo proves host and Company ID; /system/info proves the keys and the Client ID
        # (notes §2.1; the PowerShell module treats its failure as bad auth).
        self._api_base(fresh=True)
        info = self._call("GET", "/system/info", endpoint="system/info").json() or {}
        name = self._company_name or self.company_id
        version = info.get("version") if isinstance(info, dict) else None
        banner = f"{name} — ConnectWise Manage {version}" if version else f"{name} — ConnectWise Manage"
        return self.http.scrub(banner)

    def list_products(self, search: str = "") -> list[PsaItem]:
        # Bundles cannot be agreement additions (notes §2.4). `contains` rather than `like`: a tenant
        # was seen silently ignoring `like` (notes §3.1).
        conditions = ['inactiveFlag=false and productClass!="Bundle"']
        if search.strip():
            term = _escape(search.strip())
            conditions.append(f"(identifier contains {term} or description contains {term})")
        rows = self._get_all("/procurement/catalog", endpoint="procurement/catalog", params={
            "conditions": " and ".join(conditions),
            "fields": "id,identifier,description,productClass,inactiveFlag",
            "orderBy": "description asc",
        })
        return [
            PsaItem(str(r["id"]), str(r.get("description") or r.get("identifier") or r["id"]),
                    str(r.get("identifier") or ""))
            for r in rows if not r.get("inactiveFlag")
        ]

    def product_prices(self, product_ids: Sequence[str]) -> dict[str, Line]:
        ids = _int_ids(product_ids, "product")
        if not ids:
            return {}
        rows = self._get_all("/procurement/catalog", endpoint="procurement/catalog", params={
            "conditions": f"id in ({','.join(map(str, ids))})", "fields": "id,price,cost"})
        return {str(r["id"]): Line("", str(r["id"]), "", None, unit_price=money(r.get("price")),
                                   unit_cost=money(r.get("cost"))) for r in rows}

    def company_scope_options(self) -> dict[str, list[PsaItem]]:
        types = self._get_all("/company/companies/types", endpoint="company/companies/types",
                              params={"orderBy": "name asc"})
        statuses = self._get_all("/company/companies/statuses", endpoint="company/companies/statuses",
                                 params={"orderBy": "name asc"})
        return {
            "types": [PsaItem(str(t["id"]), str(t.get("name") or t["id"])) for t in types],
            "statuses": [
                PsaItem(str(s["id"]), str(s.get("name") or s["id"]), "inactive status" if s.get("inactiveFlag") else "")
                for s in statuses
            ],
        }

    def _company_query(self, search: str, type_ids: Sequence[str], status_ids: Sequence[str]) -> dict[str, Any]:
        conditions = ["deletedFlag=false"]
        if search.strip():
            conditions.append(f"name contains {_escape(search.strip())}")
        if status_ids:
            conditions.append(f"status/id in ({','.join(map(str, _int_ids(status_ids, 'status')))})")
        params: dict[str, Any] = {
            "conditions": " and ".join(conditions),
            "fields": "id,identifier,name,status,types",
            "orderBy": "name asc",
        }
        if type_ids:  # `types` is an array: only childConditions can filter it (notes §2.2)
            params["childConditions"] = f"types/id in ({','.join(map(str, _int_ids(type_ids, 'type')))})"
        return params

    @staticmethod
    def _company_item(row: dict[str, Any]) -> PsaItem:
        types = ", ".join(_name_of(t) for t in row.get("types") or [] if _name_of(t))
        detail = " · ".join(p for p in (str(row.get("identifier") or ""), types, _name_of(row.get("status"))) if p)
        return PsaItem(str(row["id"]), str(row.get("name") or row.get("identifier") or row["id"]), detail)

    def search_companies(self, search: str = "", *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = (),
                         limit: int = 50) -> list[PsaItem]:
        params = self._company_query(search, type_ids, status_ids)
        params.update(pageSize=max(1, min(int(limit), PAGE_SIZE)), page=1)
        rows = self._call("GET", "/company/companies", endpoint="company/companies", params=params).json()
        return [self._company_item(r) for r in rows[:limit]]

    def list_companies(self, *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = ()) -> list[PsaItem]:
        rows = self._get_all("/company/companies", endpoint="company/companies",
                             params=self._company_query("", type_ids, status_ids))
        return [self._company_item(r) for r in rows]

    def list_agreements(self, company_id: str) -> list[Agreement]:
        (company,) = _int_ids([company_id], "company")
        rows = self._get_all("/finance/agreements", endpoint="finance/agreements", params={
            "conditions": f'company/id={company} and agreementStatus="Active" and cancelledFlag=false',
            "fields": "id,name,type,company,agreementStatus,cancelledFlag,startDate,endDate,noEndingDateFlag",
            "orderBy": "name asc",
        })
        agreements = []
        for r in rows:
            if r.get("cancelledFlag") or (r.get("agreementStatus") or "Active") != "Active":
                continue
            start, end = _cw_date(r.get("startDate")), _cw_date(r.get("endDate"))
            period = f"from {start:%Y-%m-%d}" if start else ""
            if end and not r.get("noEndingDateFlag"):
                period = f"{period} to {end:%Y-%m-%d}".strip()
            detail = " · ".join(p for p in (_name_of(r.get("type")), period) if p)
            agreements.append(Agreement(str(r["id"]), str(r.get("name") or r["id"]), str(company), detail))
        return agreements

    # ---------------------------------------------------------------------------------------------
    # Lines
    # ---------------------------------------------------------------------------------------------
    def read_lines(self, agreement_ids: Iterable[str], on: dt.date,
                   product_ids: Iterable[str] | None = None) -> dict[str, list[Line]]:
        # Additions exist only under one agreement (`/finance/agreements/{id}/additions`); the spec
        # has no cross-agreement additions list and no `agreementId in (...)` filter on another path
        # (notes §0.3, §2.4, §5 "Coverage"). `/system/bundles` could batch them but is unverified
        # (notes §2.6), so the minimum is one GET per agreement with pageSize=1000, run up to
        # READ_PARALLELISM at a time (the shared limiter caps it across workers too).
        ids = list(dict.fromkeys(str(a) for a in agreement_ids))
        numeric = dict(zip(ids, _int_ids(ids, "agreement"), strict=True))
        if not ids:
            return {}
        self._api_base()  # resolve the codebase once, before the threads start
        if len(ids) == 1:
            results = [self._read_agreement(numeric[ids[0]], on)]
        else:
            with ThreadPoolExecutor(max_workers=min(READ_PARALLELISM, len(ids))) as pool:
                results = list(pool.map(lambda a: self._read_agreement(numeric[a], on), ids))
        lines: dict[str, list[Line]] = {}
        for agreement_id, additions in zip(ids, results, strict=True):
            current = self._current_additions(additions, on)
            for raw in current:
                self._additions[str(raw["id"])] = raw
            lines[agreement_id] = [self._line(agreement_id, raw) for raw in current]
        return lines

    def _read_agreement(self, agreement_id: int, on: dt.date) -> list[dict[str, Any]]:
        return self._get_all(
            f"/finance/agreements/{agreement_id}/additions",
            endpoint="finance/agreements/additions",
            params={"conditions": f"cancelledDate=null or cancelledDate>=[{_cw_datetime(on)}]"},
            not_found_hint=AGREEMENT_GONE_HINT,
        )

    @staticmethod
    def _current_additions(additions: list[dict[str, Any]], on: dt.date) -> list[dict[str, Any]]:
        """Additions that bill on `on`: not cancelled before it (checked here too, not only by the filter).

        When history is kept, the old addition is cancelled from the change date and a successor for
        the same product posted. If `on` falls before that date both would count, so a cancelled
        addition is dropped when an uncancelled one of the same product exists: the successor is the
        line SeatSync manages, and a write repeated after a crash then sees it instead of duplicating it.
        """
        live = []
        for raw in additions:
            cancelled = _cw_date(raw.get("cancelledDate"))
            if cancelled is None or cancelled >= on:
                live.append(raw)
        open_products = {str((r.get("product") or {}).get("id")) for r in live if not r.get("cancelledDate")}
        return [
            r for r in live
            if not r.get("cancelledDate") or str((r.get("product") or {}).get("id")) not in open_products
        ]

    @staticmethod
    def _line(agreement_id: str, raw: dict[str, Any]) -> Line:
        product = raw.get("product") or {}
        return Line(
            agreement_id=str(agreement_id),
            product_id=str(product.get("id", "")),
            line_id=str(raw["id"]),
            quantity=float(raw.get("quantity") or 0),
            description=str(product.get("identifier") or raw.get("description") or ""),
            unit_price=money(raw.get("unitPrice")),
            unit_cost=money(raw.get("unitCost")),
        )

    def dates_changes(self, options: WriteOptions) -> bool:
        # Only a kept-history write carries a date (the successor's effectiveDate); an in-place PATCH
        # of the quantity bills from whenever the agreement is next invoiced.
        return options.keep_history

    def set_quantity(self, agreement_id: str, product_id: str, target: int, *, current: Line | None,
                     options: WriteOptions) -> WriteResult:
        (agreement,) = _int_ids([agreement_id], "agreement")
        (product,) = _int_ids([product_id], "product")
        additions = f"/finance/agreements/{agreement}/additions"
        if current is not None and float(current.quantity) == float(target):
            return WriteResult(current, "unchanged", f"addition {current.line_id} already bills {target}")
        if current is None:
            created = self._post_addition(additions, product, target, options.effective_date, {})
            return WriteResult(created, "created", f"addition {created.line_id} created")

        if options.keep_history:
            raw = self._additions.get(current.line_id) or self._call(
                "GET", f"{additions}/{int(current.line_id)}", endpoint="finance/agreements/additions",
                not_found_hint="The addition was deleted in ConnectWise; the next sync recreates it.",
            ).json()
            started = _cw_date(raw.get("effectiveDate"))
            # An addition that starts on or after the change date has no earlier period to preserve;
            # cancelling it before it starts would leave a line that never billed.
            if started is None or started < options.effective_date:
                return self._replace(additions, product, target, current, raw, options.effective_date)

        updated = self._patch(additions, current.line_id, [{"op": "replace", "path": "quantity", "value": target}])
        line = self._line(str(agreement), updated)
        if not updated.get("product"):
            line = replace(line, product_id=current.product_id, description=current.description,
                           unit_price=current.unit_price, unit_cost=current.unit_cost)
        return WriteResult(line, "updated", f"addition {line.line_id} quantity {current.quantity:g} → {target}")

    def _replace(self, additions: str, product: int, target: int, current: Line, raw: dict[str, Any],
                 effective: dt.date) -> WriteResult:
        """Keep history (PRODUCT.md §4, notes §0.4b): end the current addition the day before, post a successor."""
        last_day = effective - dt.timedelta(days=1)
        if _cw_date(raw.get("cancelledDate")) != last_day:  # already done by an interrupted earlier run
            self._patch(additions, current.line_id,
                        [{"op": "replace", "path": "cancelledDate", "value": _cw_datetime(last_day)}])
        template = {k: raw[k] for k in _CARRIED_FIELDS if raw.get(k) is not None}
        created = self._post_addition(additions, product, target, effective, template)
        self._additions.pop(current.line_id, None)
        return WriteResult(
            created, "replaced",
            f"addition {current.line_id} cancelled {last_day:%Y-%m-%d}; addition {created.line_id} "
            f"created from {effective:%Y-%m-%d}",
        )

    def _patch(self, additions: str, line_id: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        response = self._call(
            "PATCH", f"{additions}/{int(line_id)}", endpoint="finance/agreements/additions", body=operations,
            not_found_hint="The addition was deleted in ConnectWise; the next sync recreates it.",
        )
        body = response.json() if response.content else {}
        if isinstance(body, dict) and body.get("id") is not None:
            return body
        return {"id": line_id, **_patched(operations)}

    def _post_addition(self, additions: str, product: int, target: int, effective: dt.date,
                       template: dict[str, Any]) -> Line:
        body = {
            **template,
            "product": {"id": product},
            "billCustomer": template.get("billCustomer") or "Billable",
            "quantity": target,
            "effectiveDate": _cw_datetime(effective),
        }
        response = self._call("POST", additions, endpoint="finance/agreements/additions", body=body,
                              not_found_hint=AGREEMENT_GONE_HINT)
        raw = response.json()
        if not isinstance(raw, dict) or raw.get("id") is None:
            raise TransientError("ConnectWise did not return the new addition.", status=response.status_code)
        self._additions[str(raw["id"])] = raw
        agreement_id = additions.split("/")[3]
        line = self._line(agreement_id, raw)
        if not line.product_id:
            line = replace(line, product_id=str(product))
        return line


def _patched(operations: list[dict[str, Any]]) -> dict[str, Any]:
    return {op["path"].lstrip("/"): op.get("value") for op in operations if op.get("op") in {"add", "replace"}}
