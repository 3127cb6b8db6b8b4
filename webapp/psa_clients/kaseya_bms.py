"""Kaseya BMS (REST API v2): accounts, the services catalog, recurring-services contracts and their services.

What is BMS-specific, and where it comes from (psa/kaseya_bms.md):
- The API lives on its own host per region, `api.<ui host>` (§1): the admin types the UI host.
- Auth is a JWT from `POST /v2/security/authenticate` (multipart form: GrantType, UserName, Password,
  Tenant = the company name), refreshed with `POST /v2/security/refreshtoken` before it expires (§2.1).
  An expired token answers HTTP 401 "Security Error" code 978001; we log in again once. With Redis,
  the token is shared by every worker's client of the tenant (never the password), until it expires.
- Every answer is an envelope `{Success, Error{Code,Message,...}, Result[, TotalRecords]}`; failures can
  come with HTTP 200 and Success=false (§0.5, §4). The spec is PascalCase, the wire camelCase (§0.6):
  every field is read through `_ci`, which ignores case.
- Paging is `PageSize`/`PageNumber` (query for GET, body for POST searches); the page base and the
  maximum page size are undocumented (§4, §8.3), so pages start at 1, stop at TotalRecords or an
  empty page, and page 0 is fetched if records are still missing.
- The V2 API has **no read of a contract's service Units** (§0.2, §3.4): read_lines finds the lines
  (ids, prices, duplicates) through the related-services search and reports `quantity=None`.
- Writes post absolute `Units` with an EffectiveDate to the contract's recurring services (§3.5).
  What that does to a service already on the contract is undocumented; the assumption lives in
  `ASSUME_POST_REPLACES_UNITS` and `_post_units` only (§0.2, §8.1).
- Limits: 1,500 requests per hour per endpoint (§4); no documented concurrency limit.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import requests

from .base import (
    Agreement,
    BatchWritingClient,
    CredentialField,
    CredentialsRejected,
    Line,
    NotFound,
    PermissionDenied,
    PsaError,
    PsaItem,
    QuantityChange,
    TransientError,
    ValidationFailed,
    WriteOptions,
    WriteResult,
    int_ids,
    money,
)
from .http import DEFAULT_TIMEOUT, PsaHttp, RetryPolicy, base_url_for, limiter_for, normalize_host
from .tokens import BearerToken, SharedTokens

log = logging.getLogger(__name__)

# UI host an admin types (and the seeds ask for) → the V2 API host (notes §1). A host not listed here,
# e.g. one that already starts with "api.", is used as typed.
API_HOSTS = {
    "bms.kaseya.com": "api.bms.kaseya.com",
    "bmsemea.kaseya.com": "api.bmsemea.kaseya.com",
    "bmsapac.kaseya.com": "api.bmsapac.kaseya.com",
    "vorexlogin.com": "api.vorexlogin.com",
    "www.vorexlogin.com": "api.vorexlogin.com",
}

# Notes §0.2, §3.5 and §8.1: the API does not say whether posting a ServiceId that is already on the
# contract replaces that line's Units from EffectiveDate or appends a second line. We assume it
# replaces (an upsert by ServiceId), which is what the simulator implements. Under that assumption a
# write is absolute and safe to retry. If a sandbox shows otherwise, set this to False: existing
# lines are then never posted to (they need attention) and writes are not blindly retried.
ASSUME_POST_REPLACES_UNITS = True

READ_PARALLELISM = 3  # related-services searches in flight while reading lines (none documented)
PAGE_SIZE = 100  # the only documented page size (notes §4, Kaseya throttling article); max is unknown
IDS_PER_QUERY = 100  # ids per `Ids=` query, to keep URLs short
MAX_PAGES = 1000  # loop guard against a server that ignores PageNumber
CATALOG_TTL = 300.0  # seconds the active services catalog is reused within one client
REFRESH_MARGIN = 60.0  # refresh the token when it has less than this left (notes §2.1)
DEFAULT_TOKEN_LIFETIME = 3600.0  # when AccessTokenExpireOn is missing or unusable (printing-press default)
EXPIRED_TOKEN_CODE = 978001  # "Security Error" on an expired JWT (notes §2.1)
RECURRING_CONTRACT = "recurring"  # ContractType "Recurring Services" (Kaseya help: working with contracts)

HOST_HINT = "Enter your Kaseya BMS host without https://, e.g. bms.kaseya.com or bmsemea.kaseya.com."
CREDENTIALS_HINT = (
    "Kaseya BMS rejected the Username, Password or Company Name: re-enter them (the Company Name is shown "
    "under My Settings). Use an API Employee user without MFA."
)
PERMISSION_HINT = (
    "Give the API user's security role Admin › Special Features › Has API Access, view on CRM Accounts, "
    "view and edit on Finance Contracts and view on Admin › Finance › Services."
)
ENDPOINT_PATHS = {  # endpoint name (for limits) → path; the spec test checks every path here
    "authenticate": "/v2/security/authenticate",
    "refreshtoken": "/v2/security/refreshtoken",
    "accounttypes": "/v2/system/accounttypes/lookup",
    "accounts/summary": "/v2/crm/accounts/summary",
    "accounts/lookup": "/v2/crm/accounts/lookup",
    "services/search": "/v2/admin/finance/services/search",
    "services/get": "/v2/admin/finance/services/{serviceId}",
    "relatedservices/search": "/v2/admin/finance/services/{serviceId}/relatedservices/search",
    "contracts/lookup": "/v2/finance/contracts/lookup",
    "contracts/summary": "/v2/finance/contracts/summary",
    "recurringservices/services": "/v2/finance/contracts/recurringservices/{contractId}/services",
}


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def _ci(obj: Any, name: str, default: Any = None) -> Any:
    """`obj[name]` ignoring case: the spec says PascalCase, the wire is camelCase (notes §0.6)."""
    if not isinstance(obj, dict):
        return default
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return default


def _parse_time(value: Any) -> float | None:
    """Epoch seconds of an API timestamp; zone-less ones are UTC (notes §4, printing-press README)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _int_ids(values: Iterable[Any], what: str) -> list[int]:
    return int_ids(values, what, "Kaseya BMS")


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _normalize_hostname(raw: str, dev_hosts: frozenset[str]) -> tuple[str, str | None]:
    """The bare host an admin meant, and a notice when what they typed had to be trimmed."""
    return normalize_host(raw, psa="Kaseya BMS", field="Hostname", hint=HOST_HINT, dev_hosts=dev_hosts)


def api_host_for(hostname: str, dev_hosts: frozenset[str]) -> str:
    """The V2 API host of what the admin typed; a development host is used exactly as typed."""
    host = hostname.strip().lower()
    if host in dev_hosts:
        return host
    return API_HOSTS.get(host, host)


@dataclass(frozen=True)
class ContractServiceLine(Line):
    """A BMS contract service as the related-services search shows it: no Units (notes §3.2, §3.4).

    The prices and names are what a write must send back unchanged, so an update never reprices.
    """

    service_name: str = ""
    effective_date: str = ""


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------
class KaseyaBmsClient(BatchWritingClient):
    kind = "kaseya_bms"
    display_name = "Kaseya BMS"
    hourly_limit = 1500  # per endpoint (notes §4, Kaseya V2 help page)
    hourly_per_endpoint = True
    # None documented: SeatSync keeps to 3 at a time per endpoint across all workers, as the
    # ConnectWise notes advise for a PSA without a published limit.
    concurrency_per_endpoint = 3
    # The V2 API cannot report a contract service's Units: Line.quantity is None (notes §0.2, §3.4).
    quantity_readable: ClassVar[bool] = False
    host_hint = HOST_HINT
    credential_fields = (
        CredentialField("hostname", "Hostname", host=True,
                        help="Your Kaseya BMS host without https://, e.g. bms.kaseya.com.",
                        placeholder="bms.kaseya.com"),
        CredentialField("username", "Username", help="An API Employee user with API access."),
        CredentialField("password", "Password", secret=True),
        CredentialField("company", "Company Name", help="Your company name in Kaseya BMS (My Settings)."),
    )

    def __init__(self, credentials: dict[str, Any], *, redis=None, dev_hosts: frozenset[str] = frozenset(),
                 config: dict[str, Any] | None = None):
        config = dict(config or {})
        self._dev_hosts = frozenset(h.strip().lower() for h in dev_hosts)
        hostname = str(credentials.get("hostname") or "").strip()
        self.hostname = _normalize_hostname(hostname, self._dev_hosts)[0] if hostname else ""
        self.api_host = api_host_for(self.hostname, self._dev_hosts) if self.hostname else ""
        self.username = str(credentials.get("username") or "").strip()
        self.company = str(credentials.get("company") or "").strip()
        self._password = str(credentials.get("password") or "")
        self._token: BearerToken | None = None
        self._base_url: str | None = None
        self._catalog: dict[int, dict] | None = None
        self._catalog_at = 0.0
        sleep = config.get("HTTP_SLEEP") or time.sleep
        limiter = limiter_for(self, redis, tenant_key=f"kaseya_bms:{self.api_host}:{self.company.lower()}",
                              host=self.api_host, dev_hosts=self._dev_hosts, config=config, sleep=sleep)
        self.http = PsaHttp(
            dev_hosts=self._dev_hosts, limiter=limiter, policy=config.get("HTTP_RETRY_POLICY") or RetryPolicy(),
            is_throttled=_is_throttled, sleep=sleep, timeout=config.get("HTTP_TIMEOUT") or DEFAULT_TIMEOUT,
        )
        self.http.scrub.add(self._password)
        # The login endpoint has its own 1,500 an hour: every worker's client of the tenant shares one token.
        self._shared = SharedTokens(redis, config.get("TOKEN_CIPHER"), "kaseya_bms",
                                    f"{self.api_host}|{self.company.lower()}|{self.username.lower()}")

    def __repr__(self) -> str:  # the password and the token stay out of reprs
        return f"KaseyaBmsClient(host={self.api_host!r}, company={self.company!r}, username={self.username!r})"

    def close(self) -> None:
        self.http.close()

    # ----------------------------------------------------------------------------------------------
    # Transport: auth, envelope, errors
    # ----------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._base_url is None:
            if not self.api_host:
                raise ValidationFailed("The Kaseya BMS Hostname is missing.", hint=HOST_HINT)
            self._base_url = base_url_for(self.api_host, self._dev_hosts)
        return self._base_url

    def _authenticate(self) -> None:
        if not (self.username and self._password and self.company):
            raise CredentialsRejected("The Kaseya BMS Username, Password and Company Name are all required.",
                                      hint=CREDENTIALS_HINT)
        form = {"GrantType": "password", "UserName": self.username, "Password": self._password,
                "Tenant": self.company}
        # Logging in twice is harmless, so 5xx and timeouts are retried like a read.
        response = self.http.request(
            "POST", self.base_url + ENDPOINT_PATHS["authenticate"], endpoint="authenticate", idempotent=True,
            files={k: (None, v) for k, v in form.items()},  # the spec's multipart/form-data
        )
        body = self._json(response)
        if _login_refused(response, body):
            message = self._message(body) or f"HTTP {response.status_code}"
            raise CredentialsRejected(f"Kaseya BMS refused the login: {message}", status=401, hint=CREDENTIALS_HINT)
        if response.status_code != 200 or not _ci(_ci(body, "Result"), "AccessToken"):
            # An outage, a gateway page, or a success without a token: nothing was said about the credentials.
            raise TransientError(f"Kaseya BMS could not log in just now (HTTP {response.status_code}).",
                                 status=response.status_code)
        self._take_token(_ci(body, "Result"))
        log.info("Kaseya BMS: logged in to %s for company %s", self.api_host, self.company)

    def _refresh(self) -> bool:
        token = self._token
        if token is None or not token.refresh:
            return False
        try:
            response = self.http.request(
                "POST", self.base_url + ENDPOINT_PATHS["refreshtoken"], endpoint="refreshtoken", idempotent=True,
                files={"AccessToken": (None, token.access), "RefreshToken": (None, token.refresh)},
            )
        except TransientError as error:  # a refresh is only a shortcut: a new login may still work
            log.info("Kaseya BMS: token refresh failed (%s); logging in again", error)
            return False
        body = self._json(response)
        if response.status_code != 200 or not _ci(body, "Success") or not _ci(_ci(body, "Result"), "AccessToken"):
            return False
        self._take_token(_ci(body, "Result"))
        return True

    def _take_token(self, result: dict) -> None:
        access = _ci(result, "AccessToken")
        now = time.time()
        expires_at = _parse_time(_ci(result, "AccessTokenExpireOn"))
        if expires_at is None or expires_at <= now:  # missing, or a zone-less local time read as UTC
            expires_at = now + DEFAULT_TOKEN_LIFETIME
        self._use_token(BearerToken.lasting(str(access), str(_ci(result, "RefreshToken") or ""), expires_at,
                                            margin=REFRESH_MARGIN))
        self._shared.save(self._token)

    def _use_token(self, token: BearerToken) -> None:
        self.http.scrub.add(token.access, token.refresh)
        self._token = token

    def _ensure_token(self) -> None:
        if self._token is not None and self._token.fresh():
            return
        shared = self._shared.load()
        if shared is not None:
            self._use_token(shared)
            return
        if self._token is None or not self._refresh():
            self._authenticate()

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _message(self, body: Any) -> str:
        error = _ci(body, "Error")
        parts = [_ci(error, "Message"), _ci(error, "Details")]
        parts += [s for s in (_ci(error, "SubErrors") or []) if isinstance(s, str)]
        text = "; ".join(str(p).strip() for p in parts if p and str(p).strip())
        if not text and isinstance(body, dict):
            text = str(_ci(body, "Message") or _ci(body, "title") or "")
        return self.http.scrub(text)[:500]

    def _call(self, method: str, endpoint: str, *, path_args: dict | None = None,
              idempotent: bool | None = None, **kwargs) -> dict:
        """One API request through the envelope. Returns the envelope (Result, TotalRecords)."""
        url = self.base_url + ENDPOINT_PATHS[endpoint].format(**(path_args or {}))
        for attempt in (1, 2):
            self._ensure_token()
            headers = {"Authorization": f"Bearer {self._token.access}", "Accept": "application/json"}
            response = self.http.request(method, url, endpoint=endpoint, idempotent=idempotent,
                                         headers=headers, **kwargs)
            body = self._json(response)
            error_code = _ci(_ci(body, "Error"), "Code")
            expired = response.status_code == 401 or error_code == EXPIRED_TOKEN_CODE
            if expired and attempt == 1:
                log.info("Kaseya BMS: token refused on %s; logging in again", endpoint)
                self._shared.drop(self._token)
                self._token = None  # a refused token is not refreshed: log in afresh
                self._authenticate()
                continue
            return self._check(response, body, endpoint)
        raise AssertionError("unreachable")

    def _check(self, response: requests.Response, body: Any, endpoint: str) -> dict:
        status = response.status_code
        message = self._message(body)
        success = _ci(body, "Success")
        if status == 200 and isinstance(body, dict) and success is not False:
            return body
        if status == 401 or _ci(_ci(body, "Error"), "Code") == EXPIRED_TOKEN_CODE:
            raise CredentialsRejected(f"Kaseya BMS refused the login: {message or 'Security Error'}",
                                      status=401, hint=CREDENTIALS_HINT)
        if status == 403:
            raise PermissionDenied(f"Kaseya BMS denied access: {message or 'forbidden'}", status=403,
                                   hint=PERMISSION_HINT)
        if status == 404:
            raise NotFound(f"Kaseya BMS has no such record: {message or 'not found'}", status=404)
        if status >= 500:
            raise TransientError(f"Kaseya BMS failed (HTTP {status}): {message or 'server error'}", status=status)
        if status == 200 and not isinstance(body, dict):
            raise TransientError(f"Kaseya BMS answered {endpoint} with something that is not JSON.", status=status)
        return self._business_error(message, status)

    def _business_error(self, message: str, status: int) -> dict:
        """Success=false (usually with HTTP 200): the kind of failure is only in the message."""
        text = message.lower()
        if any(w in text for w in ("permission", "access denied", "not authorized", "unauthorized", "not allowed")):
            raise PermissionDenied(f"Kaseya BMS denied access: {message}", status=403, hint=PERMISSION_HINT)
        if any(w in text for w in ("not found", "does not exist", "doesn't exist", "no record")):
            raise NotFound(f"Kaseya BMS has no such record: {message}", status=404)
        if any(w in text for w in ("too many requests", "rate limit", "throttl")):
            raise TransientError(f"Kaseya BMS refused the request: {message}", status=status)
        raise ValidationFailed(f"Kaseya BMS refused the request: {message or 'no reason given'}", status=status)

    def _pages(self, method: str, endpoint: str, *, params: dict | None = None, body: dict | None = None,
               path_args: dict | None = None) -> Iterator[dict]:
        """Every record of a paged search, in PAGE_SIZE pages, each record once."""
        seen: set[Any] = set()
        total = None

        def fetch(number: int) -> list[dict]:
            nonlocal total
            if method == "GET":
                kwargs = {"params": {**(params or {}), "PageSize": PAGE_SIZE, "PageNumber": number}}
            else:
                kwargs = {"json": {**(body or {}), "PageSize": PAGE_SIZE, "PageNumber": number}}
            envelope = self._call(method, endpoint, path_args=path_args, idempotent=True, **kwargs)
            total = _ci(envelope, "TotalRecords", total)
            rows = [r for r in (_ci(envelope, "Result") or []) if isinstance(r, dict)]
            fresh = [r for r in rows if _ci(r, "Id") not in seen]
            seen.update(_ci(r, "Id") for r in fresh)
            return fresh if rows else []

        for number in range(1, MAX_PAGES + 1):
            rows = fetch(number)
            yield from rows
            if not rows or (total is not None and len(seen) >= total) or (total is None and len(rows) < PAGE_SIZE):
                break
        # The page base is undocumented (notes §4): a 0-based server leaves its first page for last.
        if total is not None and len(seen) < total:
            yield from fetch(0)

    # ----------------------------------------------------------------------------------------------
    # The interface
    # ----------------------------------------------------------------------------------------------
    def check_credentials(self) -> str:
        self._token = None  # always a real login: a cached token proves nothing about new credentials
        self._authenticate()
        return f"Kaseya BMS company “{self.company}” on {self.api_host}"

    def _services(self, search: str = "") -> list[dict]:
        flt: dict[str, Any] = {"IsActive": 1}
        if search:
            flt["Name"] = search
        return list(self._pages("POST", "services/search", body={"Filter": flt}))

    def _catalog_by_id(self) -> dict[int, dict]:
        if self._catalog is None or time.monotonic() - self._catalog_at > CATALOG_TTL:
            self._catalog = {int(_ci(s, "Id")): s for s in self._services()}
            self._catalog_at = time.monotonic()
        return self._catalog

    def product_prices(self, product_ids: Sequence[str]) -> dict[str, Line]:
        wanted = {str(p) for p in product_ids}
        return {str(sid): Line("", str(sid), "", None, unit_price=money(_ci(s, "UnitPrice")),
                               unit_cost=money(_ci(s, "UnitCost")))
                for sid, s in self._catalog_by_id().items() if str(sid) in wanted}

    def list_products(self, search: str = "") -> list[PsaItem]:
        rows = self._services(search.strip())
        if not search.strip():
            self._catalog = {int(_ci(s, "Id")): s for s in rows}
            self._catalog_at = time.monotonic()
        items = []
        for row in rows:
            detail = " · ".join(str(p) for p in (_ci(row, "Category"), _ci(row, "UnitOfMeasure")) if p)
            price = _ci(row, "UnitPrice")
            if isinstance(price, int | float):
                detail = f"{detail} · {price:.2f}" if detail else f"{price:.2f}"
            items.append(PsaItem(str(_ci(row, "Id")), str(_ci(row, "Name") or ""), detail))
        return sorted(items, key=lambda i: i.name.lower())

    def company_scope_options(self) -> dict[str, list[PsaItem]]:
        rows = _ci(self._call("GET", "accounttypes"), "Result") or []
        types = []
        for row in rows:
            if _ci(row, "IsActive") is False:
                continue
            kind = "client" if _ci(row, "IsClient") else "vendor" if _ci(row, "IsVendor") else ""
            types.append(PsaItem(str(_ci(row, "Id")), str(_ci(row, "Name") or ""), kind))
        # Accounts have no status lookup, only IsActive (AccountSummaryOutputDto).
        statuses = [PsaItem("active", "Active"), PsaItem("inactive", "Inactive")]
        return {"types": types, "statuses": statuses}

    def _accounts(self, search: str, type_ids: Sequence[str], status_ids: Sequence[str]) -> Iterator[PsaItem]:
        params: dict[str, Any] = {}
        if search.strip():
            params["Filter.AccountName"] = search.strip()
        wanted_types = set(_int_ids(type_ids, "account type"))
        if len(wanted_types) == 1:
            params["Filter.AccountTypeId"] = next(iter(wanted_types))
        statuses = {s.strip().lower() for s in status_ids} & {"active", "inactive"}
        if len(statuses) == 1:
            params["Filter.IsActive"] = "true" if statuses == {"active"} else "false"
        for row in self._pages("GET", "accounts/summary", params=params):
            if wanted_types and _ci(row, "AccountTypeId") not in wanted_types:
                continue
            active = bool(_ci(row, "IsActive"))
            if statuses and ("active" if active else "inactive") not in statuses:
                continue
            status = "Active" if active else "Inactive"
            detail = " · ".join(p for p in (str(_ci(row, "AccountType") or ""), status) if p)
            yield PsaItem(str(_ci(row, "Id")), str(_ci(row, "AccountName") or ""), detail)

    def search_companies(self, search: str = "", *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = (),
                         limit: int = 50) -> list[PsaItem]:
        found = []
        for item in self._accounts(search, type_ids, status_ids):
            found.append(item)
            if len(found) >= limit:
                break
        return found

    def list_companies(self, *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = ()) -> list[PsaItem]:
        return list(self._accounts("", type_ids, status_ids))

    def list_agreements(self, company_id: str) -> list[Agreement]:
        """Active Recurring Services contracts of an account: three calls.

        The contracts lookup filters by account id but has no contract type; the contracts summary has
        the type but filters by account *name* only (notes §3.3). So: the account's name, its active
        contracts, and the types of that name's contracts, intersected by contract id.
        """
        account_id = _int_ids([company_id], "account")[0]
        accounts = _ci(self._call("GET", "accounts/lookup", params={
            "Filter.Ids": account_id, "Filter.WithInactiveAccounts": "true"}), "Result") or []
        account = next((a for a in accounts if _ci(a, "Id") == account_id), None)
        if account is None:
            raise NotFound(f"Kaseya BMS has no account {account_id}.", status=404,
                           hint="The account no longer exists in Kaseya BMS: pick another company.")
        contracts = _ci(self._call("GET", "contracts/lookup", params={
            "AccountId": account_id, "ExcludeExpiredContracts": "true"}), "Result") or []
        active = {_ci(c, "Id"): c for c in contracts if _ci(c, "IsActive") is not False}
        if not active:
            return []
        summaries = {}
        for row in self._pages("GET", "contracts/summary", params={"Filter.AccountName": _ci(account, "Name")}):
            summaries[_ci(row, "Id")] = row
        agreements = []
        for contract_id, contract in active.items():
            summary = summaries.get(contract_id)
            contract_type = str(_ci(summary, "ContractType") or "")
            if RECURRING_CONTRACT not in contract_type.lower():
                continue
            end = str(_ci(contract, "EndDate") or _ci(summary, "EndDate") or "")[:10]
            detail = contract_type + (f" · ends {end}" if end else "")
            agreements.append(Agreement(str(contract_id), str(_ci(contract, "Name") or ""), str(account_id), detail))
        return sorted(agreements, key=lambda a: a.name.lower())

    def read_lines(self, agreement_ids: Iterable[str], on: dt.date,
                   product_ids: Iterable[str] | None = None) -> dict[str, list[Line]]:
        """The service lines of many contracts, without Units (the V2 API cannot report them).

        The V2 API has no "services of a contract" read (notes §3.4). The only documented read of
        contract services is the related-services search, which is per *service* across all
        contracts and returns ids, prices and effective dates but no Units. So the cost is per
        service, not per contract: 1 contracts lookup per 100 contracts (does each still exist?),
        the active services catalog (1 call per 100 services, reused for 5 minutes), then 1
        related-services search per catalog service (filtered by contract name when reading one
        contract, else paged over every contract using that service). Read many contracts at once.
        Each Line has quantity=None: unknown, so a sync writes the absolute target. With
        `product_ids`, only those services are searched: one search per mapped service, whatever
        the size of the catalog.
        """
        wanted = _int_ids(dict.fromkeys(str(a) for a in agreement_ids), "contract")
        result: dict[str, list[Line]] = {str(a): [] for a in wanted}
        if not wanted:
            return result
        names = self._contract_names(wanted)
        missing = [a for a in wanted if a not in names]
        if missing:
            raise NotFound(f"Kaseya BMS has no contract {', '.join(map(str, missing))}.", status=404,
                           hint="The contract no longer exists in Kaseya BMS: edit the mapping.")
        wanted_set = set(wanted)
        flt = {"ContractName": names[wanted[0]]} if len(wanted) == 1 and names[wanted[0]] else {}

        def related(service_id: int) -> list[dict]:
            return list(self._pages("POST", "relatedservices/search", body={"Filter": flt},
                                    path_args={"serviceId": service_id}))

        services = list(self._catalog_by_id())
        if product_ids is not None:
            needed = {str(p) for p in product_ids}
            services = [service for service in services if str(service) in needed]
        # Each service's pages are a chain; the services are independent, so a few are read at once
        # (no concurrency limit is documented: as many as SeatSync keeps writes in flight).
        with ThreadPoolExecutor(max_workers=max(1, min(READ_PARALLELISM, len(services)))) as pool:
            for service_id, rows in zip(services, pool.map(related, services), strict=True):
                for row in rows:
                    contract_id = _ci(row, "ContractId")
                    if contract_id in wanted_set:
                        result[str(contract_id)].append(self._line(row, contract_id, service_id))
        return result

    def _contract_names(self, contract_ids: list[int]) -> dict[int, str]:
        names = {}
        for chunk in _chunks(contract_ids, IDS_PER_QUERY):
            rows = _ci(self._call("GET", "contracts/lookup", params={"Ids": chunk}), "Result") or []
            names.update({_ci(r, "Id"): str(_ci(r, "Name") or "") for r in rows})
        return names

    @staticmethod
    def _line(row: dict, contract_id: int, service_id: int) -> ContractServiceLine:
        return ContractServiceLine(
            agreement_id=str(contract_id),
            product_id=str(_ci(row, "ServiceId") or service_id),
            line_id=str(_ci(row, "Id")),
            quantity=None,  # not in the API's answer (notes §3.2)
            description=str(_ci(row, "ServiceDescription") or ""),
            service_name=str(_ci(row, "ServiceName") or ""),
            unit_cost=money(_ci(row, "UnitCost")),
            unit_price=money(_ci(row, "UnitPrice")),
            effective_date=str(_ci(row, "EffectiveDate") or ""),
        )

    def set_quantities(self, agreement_id: str, changes: Sequence[QuantityChange], *,
                       options: WriteOptions) -> list[WriteResult | PsaError]:
        """Every changed line of one contract in one request: the write takes an array of services (notes §3.5).

        A line that cannot be sent (bad target, line gone, service gone) is returned as its error and
        left out of the request; if the request fails, every line in it gets that error.
        """
        contract_id = _int_ids([agreement_id], "contract")[0]
        results: list[WriteResult | PsaError | None] = [None] * len(changes)
        sending: list[tuple[int, int, dict]] = []  # (index in changes, service id, fields)
        for index, change in enumerate(changes):
            try:
                service_id, fields = self._line_fields(contract_id, change)
            except CredentialsRejected:
                raise
            except PsaError as error:
                results[index] = error
                continue
            sending.append((index, service_id, fields))
        by_date: dict[dt.date, list[tuple[int, int, dict]]] = {}  # one request per effective date
        for item in sending:
            by_date.setdefault(changes[item[0]].options(options).effective_date, []).append(item)
        for effective, group in by_date.items():
            entries = [(service_id, int(changes[index].target), fields) for index, service_id, fields in group]
            try:
                rows = self._post_units(contract_id, entries, effective)
            except CredentialsRejected:
                raise
            except PsaError as error:
                for index, _, _ in group:
                    results[index] = error
            else:
                for index, service_id, fields in group:
                    results[index] = self._written(contract_id, service_id, changes[index], fields,
                                                   rows.get(service_id, {}), effective)
        return results

    def _line_fields(self, contract_id: int, change: QuantityChange) -> tuple[int, dict]:
        """The service id and the fields a write sends back (an update never reprices the line)."""
        service_id = _int_ids([change.product_id], "service")[0]
        target, current = change.target, change.current
        if int(target) != target or target < 0:
            raise ValidationFailed(f"Kaseya BMS takes whole, non-negative Units; {target} is not.")
        if current is not None and not ASSUME_POST_REPLACES_UNITS:
            raise ValidationFailed(
                "Kaseya BMS's API cannot change the Units of a service already on a contract.",
                hint="Change the Units in Kaseya BMS by hand, or remove the line so SeatSync can create it.",
            )
        if current is not None:
            line = current if isinstance(current, ContractServiceLine) else self._find_line(contract_id, service_id)
            if line is None:
                raise NotFound(f"The service {service_id} is no longer on Kaseya BMS contract {contract_id}.",
                               status=404, hint="The line was removed in Kaseya BMS: the next sync recreates it.")
            return service_id, {"ServiceName": line.service_name, "ServiceDescription": line.description,
                                "UnitCost": line.unit_cost, "UnitPrice": line.unit_price}
        service = (self._catalog or {}).get(service_id) or self._service(service_id)
        return service_id, {"ServiceName": _ci(service, "Name"), "ServiceDescription": _ci(service, "Description"),
                            "UnitCost": _ci(service, "UnitCost"), "UnitPrice": _ci(service, "UnitPrice")}

    def _written(self, contract_id: int, service_id: int, change: QuantityChange, fields: dict, row: dict,
                 effective: dt.date) -> WriteResult:
        target, current = int(change.target), change.current
        units = _ci(row, "Units")
        after = ContractServiceLine(
            agreement_id=str(contract_id), product_id=str(service_id),
            line_id=str(_ci(row, "Id") or (current.line_id if current else "")),
            quantity=float(units) if units is not None else float(target),
            description=str(_ci(row, "Description") or fields["ServiceDescription"] or ""),
            service_name=str(_ci(row, "ServiceName") or fields["ServiceName"] or ""),
            unit_cost=money(_ci(row, "UnitCost", fields["UnitCost"])),
            unit_price=money(_ci(row, "UnitPrice", fields["UnitPrice"])),
            effective_date=str(_ci(row, "EffectiveDate") or ""),
        )
        line_id = after.line_id or "(new)"
        response = self.http.scrub(f"contract service {line_id}: Units {target} from {effective:%Y-%m-%d}")
        return WriteResult(line=after, action="updated" if current is not None else "created", response=response)

    def _post_units(self, contract_id: int, entries: list[tuple[int, int, dict]],
                    effective: dt.date) -> dict[int, dict]:
        """Post absolute Units for services of one contract (notes §3.5): {service id: the row the API returned}.

        Relies on ASSUME_POST_REPLACES_UNITS (notes §8.1): posting a service already on the contract
        sets its Units from EffectiveDate, so a retry of this absolute write changes nothing more.
        The spec answers with one object, so only one row may come back; the others keep what was sent.
        """
        body = []
        for service_id, units, fields in entries:
            item = {"ServiceId": service_id, "Units": units, "EffectiveDate": f"{effective:%Y-%m-%d}T00:00:00"}
            item.update({k: v for k, v in fields.items() if v is not None})
            body.append(item)
        envelope = self._call("POST", "recurringservices/services", path_args={"contractId": contract_id},
                              idempotent=ASSUME_POST_REPLACES_UNITS, json=body)
        result = _ci(envelope, "Result")
        rows = result if isinstance(result, list) else [result]
        by_service = {_ci(r, "ServiceId"): r for r in rows if isinstance(r, dict)}
        if len(entries) == 1 and not by_service.get(entries[0][0]) and rows and isinstance(rows[0], dict):
            by_service[entries[0][0]] = rows[0]  # one service sent: the one object is its row
        return by_service

    def _find_line(self, contract_id: int, service_id: int) -> ContractServiceLine | None:
        """The line of one service on one contract, for its prices, when the caller only has a plain Line."""
        name = self._contract_names([contract_id]).get(contract_id)
        if name is None:
            raise NotFound(f"Kaseya BMS has no contract {contract_id}.", status=404,
                           hint="The contract no longer exists in Kaseya BMS: edit the mapping.")
        for row in self._pages("POST", "relatedservices/search", body={"Filter": {"ContractName": name}},
                               path_args={"serviceId": service_id}):
            if _ci(row, "ContractId") == contract_id:
                return self._line(row, contract_id, service_id)
        return None

    def _service(self, service_id: int) -> dict:
        return _ci(self._call("GET", "services/get", path_args={"serviceId": service_id}), "Result") or {}


def _login_refused(response: requests.Response, body: Any) -> bool:
    """Only a real refusal of the login: 400/401/403, or the envelope saying Success=false.

    A 5xx, a body that is not the envelope, or a success without a token says nothing about the
    credentials (and throttling, also Success=false, was already retried by PsaHttp).
    """
    if response.status_code in (400, 401, 403):
        return True
    return response.status_code == 200 and isinstance(body, dict) and _ci(body, "Success") is False


def _is_throttled(response: requests.Response) -> bool:
    """Throttling is undocumented (notes §4): besides 429, a small Success=false body that says so."""
    if response.status_code != 200 or len(response.content) > 4000 or b"uccess" not in response.content:
        return False
    text = response.content.lower()
    return b"too many requests" in text or b"rate limit" in text


__all__ = ["ASSUME_POST_REPLACES_UNITS", "ContractServiceLine", "KaseyaBmsClient", "api_host_for"]
