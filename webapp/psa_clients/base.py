"""The one interface the rest of SeatSync uses to talk to a PSA.

Every PSA difference lives behind this interface, in exactly one client module. Clients know nothing
about the database: they take credentials and return plain dataclasses. Errors are a small set of
typed exceptions that carry the PSA's message, the HTTP status and a hint an admin can act on.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


# --------------------------------------------------------------------------------------------------
# Values that cross the interface
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PsaItem:
    """A PSA record shown in a picker: a product/service, a company, a company type or status."""

    id: str
    name: str
    detail: str = ""  # secondary text for the picker, e.g. identifier, type, status


@dataclass(frozen=True)
class Agreement:
    """A ConnectWise agreement / Autotask Recurring Service contract / Kaseya BMS contract / HaloPSA recurring
    invoice."""

    id: str
    name: str
    company_id: str
    detail: str = ""  # e.g. agreement type, start/end dates


@dataclass(frozen=True)
class Line:
    """The PSA record that carries a quantity on an agreement for one PSA product/service.

    `line_id` identifies the record to update (CW addition id, Autotask contract service id, BMS
    contract service id). `quantity` is what the PSA bills now (for Autotask: the units of the
    ContractServiceUnits period that contains the billed date). It is None where the API cannot
    read it back (Kaseya BMS v2, see `quantity_readable`): the engine then writes the absolute
    target unless SeatSync itself last wrote that same value.
    """

    agreement_id: str
    product_id: str
    line_id: str
    quantity: float | None
    description: str = ""
    unit_price: float | None = None
    unit_cost: float | None = None
    currency: str = ""


@dataclass(frozen=True)
class ComputedLine(Line):
    """A line whose quantity the PSA computes itself (HaloPSA: from users, licences or assets).

    SeatSync never writes it: a sync reports it as needing attention with `reason` and `hint`.
    """

    reason: str = ""
    hint: str = ""
def money(value: Any) -> float | None:
    """A unit price or cost as a PSA's JSON gives it (a number), or None when it is absent or not a number."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class WriteResult:
    """What one write did, for the per-line record (before / target / after / action / response)."""

    line: Line  # the line after the write, with the quantity the PSA now holds
    action: str  # "updated" | "created" | "replaced" (keep-history) | "adjusted" (delta posted)
    response: str = ""  # short, secret-free summary of the PSA's answer (ids, status)


@dataclass(frozen=True)
class QuantityChange:
    """One line of a batched write: bill `target` for `product_id`; `current` as just read (None: create).

    `effective_date`, when set, replaces the options' date for this line only (a decrease deferred to
    the next billing period); `current` then holds the quantity billed from that date.
    """

    product_id: str
    target: int
    current: Line | None
    effective_date: dt.date | None = None

    def options(self, options: WriteOptions) -> WriteOptions:
        """The write options of this line: the integration's, with this line's effective date."""
        if self.effective_date is None or self.effective_date == options.effective_date:
            return options
        return dataclasses.replace(options, effective_date=self.effective_date)


@dataclass
class WriteOptions:
    """Integration options that change how a quantity is written."""

    effective_date: dt.date  # first day of the billed month (new lines) / change date (history)
    keep_history: bool = False  # ConnectWise: cancel the current addition and post a new one
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
class PsaError(Exception):
    """A PSA request failed. `str(error)` is safe to show and to log: it never holds a secret."""

    default_hint: ClassVar[str] = "Check the integration's settings and try again."

    def __init__(self, message: str, *, status: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.psa_message = message
        self.status = status
        self.hint = hint or self.default_hint

    def __repr__(self) -> str:  # keeps secrets out of reprs by construction: only safe fields
        return f"{type(self).__name__}(status={self.status!r}, message={self.psa_message!r})"


class CredentialsRejected(PsaError):
    default_hint = "The PSA rejected the API credentials: re-enter them and click Authenticate."


class PermissionDenied(PsaError):
    default_hint = "The API user's security role lacks a permission this action needs."


class NotFound(PsaError):
    default_hint = "The record no longer exists in the PSA: edit the mapping."


class ValidationFailed(PsaError):
    default_hint = "The PSA refused the data it was sent; its message says which field."


class TransientError(PsaError):
    """Connection errors, timeouts and 5xx that outlasted the retries."""

    default_hint = "The PSA did not answer in time; the next sync will try again."


class RateLimited(TransientError):
    """429, or an Autotask thread-limit error, that outlasted the retries."""

    default_hint = "The PSA's request limit was reached; the next sync will continue."


class HostRefused(PsaError):
    """The host is not a public HTTPS host (and not listed in PSA_DEV_HOSTS)."""

    default_hint = "Enter the PSA's public host name, e.g. na.myconnectwise.net."


def int_ids(values: Iterable[Any], what: str, psa: str) -> list[int]:
    """PSA record ids as the integers the API wants; a clear ValidationFailed for anything else."""
    try:
        return [int(str(v).strip()) for v in values]
    except ValueError:
        raise ValidationFailed(f"A {psa} {what} id must be a number.") from None


@dataclass(frozen=True)
class CredentialField:
    """One field of a PSA's credential form, with the label the seeds use."""

    name: str
    label: str
    secret: bool = False  # encrypted at rest, never sent back to the browser
    host: bool = False  # where the secrets go: changing it needs the secrets typed again
    required: bool = True
    help: str = ""
    placeholder: str = ""


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------
class PsaClient(abc.ABC):
    """One connection to one PSA tenant. Construct through `webapp.psa_clients.make_client`."""

    kind: ClassVar[str]  # "connectwise" | "autotask" | "kaseya_bms" | "halopsa"
    display_name: ClassVar[str]
    # PSA limits enforced across all workers (see http.py): requests per hour, concurrent requests
    # per endpoint. None = no documented limit.
    hourly_limit: ClassVar[int | None] = None
    concurrency_per_endpoint: ClassVar[int | None] = None
    hourly_per_endpoint: ClassVar[bool] = False  # True: the hourly budget counts per endpoint, not per tenant
    minute_limit: ClassVar[int | None] = None  # requests per minute per tenant (HaloPSA)
    quantity_readable: ClassVar[bool] = True  # False: read_lines returns lines with quantity None
    # True: a line read on a later date can show a quantity scheduled from then (Autotask units per
    # period), so a decrease deferred to the next period is seen only by reading that period.
    dated_reads: ClassVar[bool] = False
    credential_fields: ClassVar[tuple[CredentialField, ...]]
    host_hint: ClassVar[str] = ""  # set: normalize_credentials cleans the host field (see there)

    @classmethod
    def normalize_credentials(cls, values: dict[str, str], *, dev_hosts: frozenset[str] = frozenset()
                              ) -> tuple[dict[str, str], list[str]]:
        """Clean what an admin typed. Returns (values, notices shown to the admin).

        Values are trimmed. With a `host_hint`, secrets are kept exactly as typed (a secret may end in a
        space) and the host field is reduced to the host (http.normalize_host). Raises ValidationFailed
        with a clear message for input that cannot be used (e.g. http://).
        """
        cleaned = {k: (v or "").strip() for k, v in values.items()}
        notices: list[str] = []
        for form_field in cls.credential_fields if cls.host_hint else ():
            name = form_field.name
            if form_field.secret and values.get(name) is not None:
                cleaned[name] = values[name]
            elif form_field.host and cleaned.get(name):
                from .http import normalize_host  # http builds on this module

                cleaned[name], notice = normalize_host(cleaned[name], psa=cls.display_name, field=form_field.label,
                                                       hint=cls.host_hint, dev_hosts=frozenset(dev_hosts))
                notices += [notice] if notice else []
        return cleaned, notices

    @abc.abstractmethod
    def check_credentials(self) -> str:
        """The cheapest authenticated call. Returns a short description of the tenant on success."""

    @abc.abstractmethod
    def list_products(self, search: str = "") -> list[PsaItem]:
        """Products (ConnectWise catalog items) or services (Autotask, Kaseya BMS), active only."""

    @abc.abstractmethod
    def company_scope_options(self) -> dict[str, list[PsaItem]]:
        """The PSA's company types and statuses: {"types": [...], "statuses": [...]}."""

    @abc.abstractmethod
    def search_companies(
        self,
        search: str = "",
        *,
        type_ids: Sequence[str] = (),
        status_ids: Sequence[str] = (),
        limit: int = 50,
    ) -> list[PsaItem]:
        """Companies whose name contains `search`, restricted to the scope (empty = no filter)."""

    @abc.abstractmethod
    def list_companies(self, *, type_ids: Sequence[str] = (), status_ids: Sequence[str] = ()) -> list[PsaItem]:
        """Every company in scope (for Suggest matches), paged to the end in as few calls as possible."""

    @abc.abstractmethod
    def list_agreements(self, company_id: str) -> list[Agreement]:
        """Active agreements of a company (Autotask: Recurring Service contracts only)."""

    @abc.abstractmethod
    def read_lines(self, agreement_ids: Iterable[str], on: dt.date,
                   product_ids: Iterable[str] | None = None) -> dict[str, list[Line]]:
        """Current lines of many agreements, in as few calls as the API allows.

        Returns {agreement_id: [Line, ...]} with an entry (possibly empty) for every requested id.
        `on` is a date inside the billed month (Autotask reads the units of the period holding it).
        `product_ids`, when given, are the only PSA products the caller needs lines of: a client
        whose reads cost per product (Kaseya BMS) reads just those; others may return more.
        Raises NotFound if an agreement no longer exists (when the API can tell).
        """

    @abc.abstractmethod
    def set_quantity(
        self,
        agreement_id: str,
        product_id: str,
        target: int,
        *,
        current: Line | None,
        options: WriteOptions,
    ) -> WriteResult:
        """Make the PSA bill `target` for this product on this agreement.

        `current` is the line as just read (None: create it). Implementations must be safe to
        call again after a crash: callers re-read the lines first, so a write that already
        happened is seen in `current` and the second call writes nothing or only what is missing.
        """

    def product_prices(self, product_ids: Sequence[str]) -> dict[str, Line]:
        """The catalog unit price and cost of these products/services, as lines without a quantity
        (`Line.unit_price/unit_cost`), for pricing a line that is still to be created. One read; {} when
        the PSA gives none (the money of new lines is then unknown)."""
        return {}

    def dates_changes(self, options: WriteOptions) -> bool:
        """Whether the write carries an effective date the PSA bills from (so a decrease can be
        deferred to the next billing period). ConnectWise only when history is kept."""
        return True

    def set_quantities(
        self,
        agreement_id: str,
        changes: Sequence[QuantityChange],
        *,
        options: WriteOptions,
    ) -> list[WriteResult | PsaError]:
        """Write several lines of one agreement; one result per change, in order.

        A line that fails is returned as its PsaError, so the other lines are still written and
        each is recorded on its own; CredentialsRejected is raised (it stops the whole run).
        The default writes line by line; a client whose API takes many lines in one request
        (Kaseya BMS) overrides it. The same retry-safety as set_quantity applies.
        """
        results: list[WriteResult | PsaError] = []
        for change in changes:
            try:
                results.append(self.set_quantity(agreement_id, change.product_id, change.target,
                                                 current=change.current, options=change.options(options)))
            except CredentialsRejected:
                raise
            except PsaError as error:
                results.append(error)
        return results

    def close(self) -> None:
        """Release pooled connections (of the client's PsaHttp, if it has one)."""
        http = getattr(self, "http", None)
        if http is not None:
            http.close()


class BatchWritingClient(PsaClient):
    """A client whose API writes many lines of one agreement in one request (Kaseya BMS, HaloPSA).

    It implements set_quantities; set_quantity is a batch of one.
    """

    def set_quantity(self, agreement_id: str, product_id: str, target: int, *, current: Line | None,
                     options: WriteOptions) -> WriteResult:
        (result,) = self.set_quantities(agreement_id, [QuantityChange(product_id, target, current)], options=options)
        if isinstance(result, PsaError):
            raise result
        return result

    @abc.abstractmethod
    def set_quantities(self, agreement_id: str, changes: Sequence[QuantityChange], *,
                       options: WriteOptions) -> list[WriteResult | PsaError]:
        """See PsaClient.set_quantities: every line in as few requests as the API allows."""
