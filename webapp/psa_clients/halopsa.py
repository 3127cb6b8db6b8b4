"""HaloPSA (Halo API v2): customers, items, recurring invoices (the agreements) and their lines.

What is Halo-specific, and where it comes from (shared/psa/halopsa.md, "notes §x"; the paths, query
parameters and body fields are those of specs/halopsa-openapi-v2.json, checked by a test):
- The admin types the instance host (`acme.halopsa.com`); the API is `{instance}/api/...` and the token
  `POST {instance}/auth/token[?tenant=…]`, OAuth2 client credentials with a configurable scope (§2). The
  token is shared by every worker's client of the instance through Redis (tokens.py), never the secret;
  it is renewed before it expires and once on a 401.
- A customer's recurring invoices are its agreements; their lines (InvoiceDetail) carry `qty_order`,
  `unit_price` and `unit_cost` (§3). A line whose quantity Halo computes itself
  (`recurring_invoice_quantity_type` set) is a `ComputedLine`: it needs attention, it is never written.
- Writes post absolute `qty_order` for many lines of one recurring invoice at once to
  `RecurringInvoice/updatelines` (§3); how a missing line is added is an assumption, in `_new_line` only.
- Limits: 60 requests a minute per instance (§4, the lowest figure integrators report) and 429 +
  Retry-After, shared by every worker (http.py); no concurrency limit is documented.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import requests

from .base import (
    Agreement,
    BatchWritingClient,
    ComputedLine,
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
)
from .http import DEFAULT_TIMEOUT, PsaHttp, RetryPolicy, base_url_for, limiter_for, normalize_host
from .tokens import BearerToken, SharedTokens

log = logging.getLogger(__name__)

ENDPOINT_PATHS = {  # endpoint name (for limits) → path; the spec test checks every /api path here
    "token": "/auth/token",  # the authorisation server: not part of the /api document
    "Client": "/api/Client",
    "Item": "/api/Item",
    "Lookup": "/api/Lookup",
    "RecurringInvoice": "/api/RecurringInvoice",
    "RecurringInvoice/get": "/api/RecurringInvoice/{id}",
    "RecurringInvoice/updatelines": "/api/RecurringInvoice/updatelines",
}
# The list key of each paged answer (`{"record_count": N, "<key>": [...]}`). **Assumption**: the spec
# documents no answers; these are the keys Halo's own API explorer shows. A bare list is accepted too.
LIST_KEYS = {"Client": "clients", "Item": "items", "RecurringInvoice": "invoices"}
# **Assumption** (notes §3): the customer types are the Halo lookup with this id; read them on an instance.
CUSTOMER_TYPE_LOOKUP = 33
DEFAULT_SCOPE = "all"  # Halo's default (notes §2); admins whose API application refuses it type their own
PAGE_SIZE = 100
MAX_PAGES = 1000  # loop guard against a server that ignores page_no
READ_PARALLELISM = 3  # pages or recurring invoices read at once (no documented concurrency limit)
REFRESH_MARGIN = 60.0  # renew the token when it has less than this left
DEFAULT_TOKEN_LIFETIME = 3600.0
MANAGED = "quantity managed by HaloPSA"

INSTANCE_HINT = "Enter your HaloPSA host without https://, e.g. acme.halopsa.com."
CREDENTIALS_HINT = (
    "HaloPSA rejected the Client ID or Client Secret: re-enter them (Configuration › Integrations › Halo API, "
    "an application of type “Client ID and Secret (Services)”), and check the Tenant of a hosted instance."
)
PERMISSION_HINT = (
    "The Halo API application lacks a permission: it needs read on customers and items and read and edit "
    "on invoices (recurring invoices), and its agent must see the customers. Check the Scope too."
)
MANAGED_HINT = ("Halo computes this line's quantity (from users, licences or assets): set its quantity type "
                "to a fixed quantity in HaloPSA for SeatSync to sync it, or unmap the product.")


def _int_ids(values: Iterable[Any], what: str) -> list[int]:
    return int_ids(values, what, "HaloPSA")


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _rows(body: Any, key: str) -> list[dict]:
    rows = body.get(key) if isinstance(body, dict) else body
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _new_line(ihid: int, item_id: int, quantity: int, effective: dt.date) -> dict:
    """**Assumption** (notes §3): `updatelines` adds a line sent without `id`, with its recurring invoice
    (`ihid`) and item (`_itemid`); Halo fills the description and prices from the item. Only this
    function knows it; a retry of such a request could add the line twice, so it is sent as not idempotent
    (retried only when Halo surely did not process it) and the engine re-reads before any new attempt.
    """
    return {"ihid": ihid, "_itemid": item_id, "qty_order": quantity, "startdate": f"{effective:%Y-%m-%d}T00:00:00"}


class HaloPsaClient(BatchWritingClient):
    kind = "halopsa"
    display_name = "HaloPSA"
    minute_limit = 60  # per instance (notes §4)
    # None documented: 3 at a time per endpoint across all workers, like Kaseya BMS.
    concurrency_per_endpoint = READ_PARALLELISM
    host_hint = INSTANCE_HINT
    credential_fields = (
        CredentialField("instance", "Instance URL", host=True, placeholder="acme.halopsa.com",
                        help="Your HaloPSA host without https://, e.g. acme.halopsa.com."),
        CredentialField("tenant", "Tenant", required=False, help="Hosted instances only: your Halo tenant name."),
        CredentialField("client_id", "Client ID", help="Of the Halo API application (Client ID and Secret)."),
        CredentialField("client_secret", "Client Secret", secret=True),
        CredentialField("scope", "Scope", required=False, placeholder=DEFAULT_SCOPE,
                        help="Leave empty for “all”, or the scopes of the API application, e.g. "
                             "“read:customers read:items edit:invoices”."),
    )

    def __init__(self, credentials: dict[str, Any], *, redis=None, dev_hosts: frozenset[str] = frozenset(),
                 config: dict[str, Any] | None = None):
        config = dict(config or {})
        self._dev_hosts = frozenset(h.strip().lower() for h in dev_hosts)
        instance = str(credentials.get("instance") or "").strip()
        self.instance = normalize_host(instance, psa="HaloPSA", field="Instance URL", hint=INSTANCE_HINT,
                                       dev_hosts=self._dev_hosts)[0] if instance else ""
        self.tenant = str(credentials.get("tenant") or "").strip()
        self.client_id = str(credentials.get("client_id") or "").strip()
        self.scope = str(credentials.get("scope") or "").strip() or DEFAULT_SCOPE
        self._secret = str(credentials.get("client_secret") or "")
        self._token: BearerToken | None = None
        self._lines: dict[str, dict] = {}  # raw lines of the last read, by id: what a write must know
        sleep = config.get("HTTP_SLEEP") or time.sleep
        tenant_key = f"halopsa:{self.instance}:{self.tenant.lower()}"
        limiter = limiter_for(self, redis, tenant_key=tenant_key, host=self.instance, dev_hosts=self._dev_hosts,
                              config=config, sleep=sleep)
        self.http = PsaHttp(dev_hosts=self._dev_hosts, limiter=limiter, sleep=sleep,
                            policy=config.get("HTTP_RETRY_POLICY") or RetryPolicy(),
                            timeout=config.get("HTTP_TIMEOUT") or DEFAULT_TIMEOUT)
        self.http.scrub.add(self._secret)
        self._shared = SharedTokens(redis, config.get("TOKEN_CIPHER"), "halopsa",
                                    f"{self.instance}|{self.tenant.lower()}|{self.client_id}|{self.scope}")

    def __repr__(self) -> str:  # the secret and the token stay out of reprs
        return f"HaloPsaClient(instance={self.instance!r}, tenant={self.tenant!r}, client_id={self.client_id!r})"

    # Transport: token, requests, errors ------------------------------------------------------------
    def _url(self, endpoint: str, path_args: dict | None = None) -> str:
        if not self.instance:
            raise ValidationFailed("The HaloPSA Instance URL is missing.", hint=INSTANCE_HINT)
        return base_url_for(self.instance, self._dev_hosts) + ENDPOINT_PATHS[endpoint].format(**(path_args or {}))

    def _new_token(self) -> BearerToken:
        """A token from the authorisation server, shared with the other workers (client credentials have no
        refresh token: a new one is asked for)."""
        if not (self.client_id and self._secret):
            raise CredentialsRejected("The HaloPSA Client ID and Client Secret are both required.",
                                      hint=CREDENTIALS_HINT)
        form = {"grant_type": "client_credentials", "client_id": self.client_id, "client_secret": self._secret,
                "scope": self.scope}
        # Asking for a token twice is harmless, so 5xx and timeouts are retried like a read.
        tenant = {"tenant": self.tenant} if self.tenant else None  # hosted instances only
        response = self.http.request("POST", self._url("token"), endpoint="token",
                                     idempotent=True, data=form, params=tenant, headers={"Accept": "application/json"})
        body = _json(response)
        if response.status_code in (400, 401, 403):
            raise CredentialsRejected(f"HaloPSA refused the token request: {self._message(response, body)}",
                                      status=401, hint=CREDENTIALS_HINT)
        access = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not access:  # an outage or a gateway page: nothing about the credentials
            raise TransientError(f"HaloPSA could not issue a token just now (HTTP {response.status_code}).",
                                 status=response.status_code)
        try:
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        token = BearerToken.lasting(str(access), "", time.time() + lifetime, margin=REFRESH_MARGIN)
        self.http.scrub.add(token.access)
        self._shared.save(token)
        return token

    def _bearer(self) -> str:
        """The Authorization header: this client's token, another worker's, or a new one, renewed before expiry."""
        if self._token is None or not self._token.fresh():
            self._token = self._shared.load() or self._new_token()
            self.http.scrub.add(self._token.access)
        return f"Bearer {self._token.access}"

    def _message(self, response: requests.Response, body: Any) -> str:
        """Halo's error text, whatever its shape (a JSON string, an object, plain text), scrubbed."""
        if isinstance(body, str):
            text = body
        elif isinstance(body, dict):
            text = next((str(body[k]) for k in ("error_description", "message", "Message", "error", "title")
                         if body.get(k)), "")
        else:
            text = response.text if "html" not in response.headers.get("Content-Type", "") else ""
        return self.http.scrub(" ".join(text.split()))[:500] or f"HTTP {response.status_code}"

    def _call(self, method: str, endpoint: str, *, path_args: dict | None = None, idempotent: bool | None = None,
              **kwargs) -> Any:
        """One API request with the token; a refused token is replaced once. Returns the decoded answer."""
        url = self._url(endpoint, path_args)
        for attempt in (1, 2):
            headers = {"Authorization": self._bearer(), "Accept": "application/json"}
            response = self.http.request(method, url, endpoint=endpoint, idempotent=idempotent, headers=headers,
                                         **kwargs)
            if response.status_code == 401 and attempt == 1:
                log.info("HaloPSA: token refused on %s; asking for a new one", endpoint)
                self._shared.drop(self._token)
                self._token = None
                continue
            return self._check(response, endpoint)
        raise AssertionError("unreachable")

    def _check(self, response: requests.Response, endpoint: str) -> Any:
        status = response.status_code
        body = _json(response)
        if 200 <= status < 300:
            return body
        message = self._message(response, body)
        if status == 401:
            raise CredentialsRejected(f"HaloPSA refused the token: {message}", status=401, hint=CREDENTIALS_HINT)
        if status == 403:
            raise PermissionDenied(f"HaloPSA denied access to {endpoint}: {message}", status=403,
                                   hint=PERMISSION_HINT)
        if status == 404:
            raise NotFound(f"HaloPSA has no such record: {message}", status=404)
        if status >= 500:
            raise TransientError(f"HaloPSA failed (HTTP {status}): {message}", status=status)
        raise ValidationFailed(f"HaloPSA refused the request: {message}", status=status)

    def _page(self, endpoint: str, params: dict, number: int) -> tuple[list[dict], int | None]:
        body = self._call("GET", endpoint, params={**params, "pageinate": "true", "page_size": PAGE_SIZE,
                                                   "page_no": number})
        total = body.get("record_count") if isinstance(body, dict) else None
        return _rows(body, LIST_KEYS[endpoint]), total if isinstance(total, int) else None

    def _pages(self, endpoint: str, params: dict) -> Iterator[dict]:
        """Every record of a list, PAGE_SIZE at a time (pages from 1), each record once."""
        seen: set[Any] = set()
        for number in range(1, MAX_PAGES + 1):
            rows, total = self._page(endpoint, params, number)
            fresh = [r for r in rows if r.get("id") not in seen]
            seen.update(r.get("id") for r in fresh)
            yield from fresh
            if not fresh or len(rows) < PAGE_SIZE or (total is not None and len(seen) >= total):
                return

    # The interface ---------------------------------------------------------------------------------
    def check_credentials(self) -> str:
        self._token = self._new_token()  # a real token request: a cached one proves nothing about new credentials
        _rows, total = self._page("Client", {}, 1)
        customers = f", {total} active customers" if total is not None else ""
        return self.http.scrub(f"instance {self.instance}{customers}")

    def list_products(self, search: str = "") -> list[PsaItem]:
        params = {"search": search.strip()} if search.strip() else {}
        items = []
        for row in self._pages("Item", params):  # active items only: includeinactive is not sent
            price = row.get("recurringprice") or row.get("baseprice")
            detail = f"{price:.2f}" if isinstance(price, int | float) else ""
            items.append(PsaItem(str(row["id"]), str(row.get("name") or row.get("description") or row["id"]), detail))
        return sorted(items, key=lambda i: i.name.lower())

    def company_scope_options(self) -> dict[str, list[PsaItem]]:
        rows = _rows(self._call("GET", "Lookup", params={"lookupid": CUSTOMER_TYPE_LOOKUP}), "")
        types = [PsaItem(str(r["id"]), str(r.get("name") or r["id"])) for r in rows if r.get("id") is not None]
        # Customers have no status, only `inactive` (Area).
        return {"types": types, "statuses": [PsaItem("active", "Active"), PsaItem("inactive", "Inactive")]}

    def _customers(self, search: str, type_ids: Sequence[str], status_ids: Sequence[str]) -> Iterator[PsaItem]:
        types = set(_int_ids(type_ids, "customer type"))
        statuses = {s.strip().lower() for s in status_ids} & {"active", "inactive"}
        params: dict[str, Any] = {"search": search.strip()} if search.strip() else {}
        if statuses != {"active"}:  # Halo lists active customers only, unless asked (no filter: every one)
            params["includeinactive"] = "true"
        for row in self._pages("Client", params):
            active = not row.get("inactive")
            if (types and row.get("customertype") not in types) or (
                    statuses and ("active" if active else "inactive") not in statuses):
                continue
            detail = " · ".join(p for p in (str(row.get("customertype_new") or ""),
                                            "Active" if active else "Inactive") if p)
            yield PsaItem(str(row["id"]), str(row.get("name") or row["id"]), detail)

    def search_companies(self, search: str = "", *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = (),
                         limit: int = 50) -> list[PsaItem]:
        return list(islice(self._customers(search, type_ids, status_ids), max(0, limit)))

    def list_companies(self, *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = ()) -> list[PsaItem]:
        return list(self._customers("", type_ids, status_ids))

    def list_agreements(self, company_id: str) -> list[Agreement]:
        """The customer's recurring invoices that are not disabled."""
        (client,) = _int_ids([company_id], "customer")
        agreements = []
        for row in self._pages("RecurringInvoice", {"client_id": client}):
            if row.get("disabled") or row.get("client_id") not in (None, client):
                continue
            next_date = _date(row.get("nextcreationdate") or row.get("invoice_date"))
            detail = f"next invoice {next_date:%Y-%m-%d}" if next_date else ""
            name = str(row.get("name") or row.get("reference") or f"Recurring invoice {row['id']}")
            agreements.append(Agreement(str(row["id"]), name, str(client), detail))
        return sorted(agreements, key=lambda a: a.name.lower())

    # ----------------------------------------------------------------------------------------------
    # Lines
    # ----------------------------------------------------------------------------------------------
    def read_lines(self, agreement_ids: Iterable[str], on: dt.date,
                   product_ids: Iterable[str] | None = None) -> dict[str, list[Line]]:
        """The lines of many recurring invoices, in the fewest calls: min(pages of the whole list, ids).

        The list (`includelines=true`) cannot be filtered by recurring invoice id, only by customer,
        which this interface does not have; so a few invoices are read one by one, and many through
        the list, PAGE_SIZE a page, the pages after the first read READ_PARALLELISM at a time. When
        the first page shows the list is longer than the invoices still wanted, those are read one by one.
        """
        wanted = [str(i) for i in _int_ids(dict.fromkeys(str(a) for a in agreement_ids), "recurring invoice")]
        headers: dict[str, dict] = {}
        if len(wanted) > 1:
            headers = self._listed_headers(set(wanted))
        missing = [a for a in wanted if a not in headers]
        with ThreadPoolExecutor(max_workers=max(1, min(READ_PARALLELISM, len(missing)))) as pool:
            for agreement_id, header in zip(missing, pool.map(self._header, missing), strict=True):
                headers[agreement_id] = header
        return {a: self._current_lines(a, headers[a], on) for a in wanted}

    def _listed_headers(self, wanted: set[str]) -> dict[str, dict]:
        params = {"includelines": "true"}
        rows, total = self._page("RecurringInvoice", params, 1)
        pages = -(-total // PAGE_SIZE) if total is not None else 1
        found = {str(r.get("id")): r for r in rows if str(r.get("id")) in wanted}
        if pages <= 1 or pages - 1 > len(wanted - set(found)):
            return found  # the rest is cheaper read one by one
        with ThreadPoolExecutor(max_workers=READ_PARALLELISM) as pool:
            for page_rows, _ in pool.map(lambda n: self._page("RecurringInvoice", params, n), range(2, pages + 1)):
                found.update({str(r.get("id")): r for r in page_rows if str(r.get("id")) in wanted})
        return found

    def _header(self, agreement_id: str) -> dict:
        try:
            body = self._call("GET", "RecurringInvoice/get", path_args={"id": int(agreement_id)},
                              params={"includedetails": "true"})
        except NotFound:
            raise NotFound(f"HaloPSA has no recurring invoice {agreement_id}.", status=404,
                           hint="The recurring invoice no longer exists in HaloPSA: edit the mapping.") from None
        if not isinstance(body, dict):
            raise TransientError(f"HaloPSA answered recurring invoice {agreement_id} with something else.")
        return body

    def _current_lines(self, agreement_id: str, header: dict, on: dt.date) -> list[Line]:
        """The lines that bill in the month of `on`: active, not ended before it."""
        currency = header.get("currency_code_name")
        lines = []
        for raw in [r for r in header.get("lines") or [] if isinstance(r, dict)]:
            ended = _date(raw.get("enddate"))
            if raw.get("isinactive") or (ended is not None and ended < on):
                continue
            self._lines[str(raw.get("id"))] = {**raw, "ihid": raw.get("ihid") or int(agreement_id)}
            lines.append(self._line(agreement_id, raw, currency if isinstance(currency, str) else ""))
        return lines

    @staticmethod
    def _line(agreement_id: str, raw: dict, currency: str = "") -> Line:
        quantity = raw.get("qty_order")
        values = dict(agreement_id=str(agreement_id), product_id=str(raw.get("_itemid") or ""),
                      line_id=str(raw.get("id") or ""), quantity=float(quantity) if quantity is not None else 0.0,
                      description=str(raw.get("item_shortdescription") or raw.get("item_code") or ""),
                      unit_price=raw.get("unit_price"), unit_cost=raw.get("unit_cost"), currency=currency)
        # **Assumption** (notes §3): any quantity type but none/0 means Halo computes the quantity.
        if raw.get("recurring_invoice_quantity_type"):
            return ComputedLine(**values, reason=MANAGED, hint=MANAGED_HINT)
        return Line(**values)

    def set_quantities(self, agreement_id: str, changes: Sequence[QuantityChange], *,
                       options: WriteOptions) -> list[WriteResult | PsaError]:
        """Every changed line of one recurring invoice in one `updatelines` request, absolute quantities.

        A line that cannot be sent (a computed quantity, a bad target) is returned as its error and left
        out; if the request fails, every line in it gets that error.
        """
        (ihid,) = _int_ids([agreement_id], "recurring invoice")
        results: list[WriteResult | PsaError | None] = [None] * len(changes)
        sending: list[tuple[int, dict]] = []  # (index in changes, the InvoiceDetail sent)
        for index, change in enumerate(changes):
            try:
                sending.append((index, self._detail(ihid, change, options.effective_date)))
            except PsaError as error:
                results[index] = error
        if sending:
            creates = any("id" not in detail for _, detail in sending)
            try:
                answer = self._call("POST", "RecurringInvoice/updatelines", idempotent=not creates,
                                    json=[detail for _, detail in sending])
            except CredentialsRejected:
                raise
            except PsaError as error:
                for index, _ in sending:
                    results[index] = error
            else:
                returned = _rows(answer, "lines") if not isinstance(answer, list) else _rows(answer, "")
                for index, detail in sending:
                    results[index] = self._written(agreement_id, changes[index], detail, returned)
        return results

    def _detail(self, ihid: int, change: QuantityChange, effective: dt.date) -> dict:
        """The InvoiceDetail to send for one change: the line's id and its new absolute quantity, or a new line."""
        target, current = change.target, change.current
        if int(target) != target or target < 0:
            raise ValidationFailed(f"HaloPSA takes whole, non-negative quantities; {target} is not.")
        if current is None:
            (item_id,) = _int_ids([change.product_id], "item")
            return _new_line(ihid, item_id, int(target), effective)
        raw = self._lines.get(current.line_id, {})
        if isinstance(current, ComputedLine) or raw.get("recurring_invoice_quantity_type"):
            raise ValidationFailed(f"Line {current.line_id}: {MANAGED}; SeatSync does not overwrite it.",
                                   hint=MANAGED_HINT)
        (line_id,) = _int_ids([current.line_id], "line")
        return {"id": line_id, "ihid": ihid, "qty_order": int(target)}

    def _written(self, agreement_id: str, change: QuantityChange, sent: dict, returned: list[dict]) -> WriteResult:
        if "id" in sent:
            row = next((r for r in returned if r.get("id") == sent["id"]), None)
        else:
            row = next((r for r in returned if r.get("_itemid") == sent["_itemid"] and r.get("id")), None)
        current = change.current
        base = self._lines.get(current.line_id, {}) if current else {}
        raw = {**base, **sent, **(row or {})}
        if raw.get("id"):
            self._lines[str(raw["id"])] = raw
        line = self._line(agreement_id, raw, current.currency if current else "")
        if current is not None and not line.description:
            line = Line(line.agreement_id, line.product_id, line.line_id, line.quantity, current.description,
                        current.unit_price, current.unit_cost, current.currency)
        action = "updated" if current is not None else "created"
        before = f"{current.quantity:g} → " if current is not None and current.quantity is not None else ""
        return WriteResult(line, action, self.http.scrub(
            f"recurring invoice line {line.line_id or '(new)'}: qty_order {before}{int(change.target)}"))


def _json(response: requests.Response) -> Any:
    try:
        return response.json() if response.content else None
    except ValueError:
        return None


__all__ = ["ENDPOINT_PATHS", "HaloPsaClient", "MANAGED"]
