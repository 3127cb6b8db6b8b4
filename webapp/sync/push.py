"""Pushing a batch of companies: read their lines, plan, write, record, retry, read back.

The one write path: a normal run, an approved review, a revert and a takeover after a dead worker all
go through `Pusher.push` — plan → intent → write → record (record.py), so exactly-once and recording
hold for each. They differ only in the targets a company gets (`companies`): its counts, the approved
lines, or the "before" quantities of the run being reverted.

A company spans one or more agreements: its mapping's agreement, and the agreements some of its
products are billed on instead (per-product overrides). Each agreement is read, planned and written
on its own (one batched write per agreement); the company is recorded once all of them are settled.

- Reads are batched (one `read_lines` for the companies due); a failed batch read is retried as a
  batch, and only a permanent failure (one agreement gone) falls back to reading company by company.
- Writes run on a small thread pool (as many threads as the PSA allows requests in flight per
  endpoint); the pool threads only call the client with plain values, all database work stays on the
  job's thread.
- A company whose read or write failed transiently (after the HTTP layer's own retries) is tried again
  within the run with backoff and jitter, until its retry budget (SYNC_RETRY_SECONDS) is spent; only
  then is it an error. Permanent failures are recorded at once.
- After a company's writes its lines are read back (batched) and each written line is recorded as
  verified or mismatch.
- A 401 stops the run: this job marks the credentials failing and sets the run's stop flag; every job
  (this one included) releases only the companies it holds.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from flask import current_app
from sqlalchemy import select

from .. import audit
from ..connections import client_for
from ..extensions import db
from ..models import AgreementOverride, CompanyMapping, Integration, LineResult, Product, ProductMapping
from ..models._types import utcnow
from ..psa_clients.base import (
    CredentialsRejected,
    Line,
    PsaClient,
    PsaError,
    QuantityChange,
    TransientError,
    WriteOptions,
    WriteResult,
)
from ..timezones import org_zone
from . import plan as planning
from . import record, state
from .leases import Leases, lock_key
from .plan import Change
from .record import CompanyRecord, MappingRef, Recorder
from .state import LineAction

log = logging.getLogger(__name__)

# Writes in flight per job for a PSA that documents no concurrency limit (Kaseya BMS): ConnectWise's
# guidance of "two or three requests in parallel" is the only figure the research notes give.
UNDOCUMENTED_CONCURRENCY = 3
FINISH_GROUP = 10  # companies recorded per transaction…
FINISH_EVERY = 0.25  # …or at least this often (seconds), so progress moves as companies finish
STOP_CHECK_EVERY = 0.5  # seconds between two reads of the run's stop flag
CATALOG_PRICES_KEPT = 3600  # seconds a run's catalog prices are shared by its jobs
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 60.0  # seconds between a company's attempts within a run


def write_parallelism(client: PsaClient) -> int:
    """Writes a job keeps in flight: the PSA's allowed concurrency per endpoint."""
    return max(1, int(client.concurrency_per_endpoint or UNDOCUMENTED_CONCURRENCY))


Key = tuple[str, str]  # a line of a company: (agreement, PSA product)
# How a revert puts back a line, by what the reverted run did to it (shown with the line).
REVERT_NOTES = {
    LineAction.CREATED: "this line was created by the reverted run: set to 0, not deleted",
    # ConnectWise keep history: the client has no call that takes a cancellation back, so the addition the
    # run added carries the earlier quantity again (the invoice is the same) and the history shows both.
    LineAction.REPLACED: "the reverted run cancelled the earlier addition and added this one (history kept): "
                         "this one is set back to {before:g}; the cancelled one stays in the history",
}


@dataclass
class Company:
    """One company being pushed: what it must bill on each agreement and what is settled so far."""

    ref: MappingRef
    spans: dict[str, list[planning.ProductTarget]]  # agreement → targets; the mapping's own agreement first
    unmapped: list[tuple[int, str, int]]
    last_written: dict[str, dict[str, float]]  # agreement → PSA product → quantity SeatSync last left
    approved: dict[Key, LineResult] = field(default_factory=dict)  # review: approved rows by line
    kept: list[LineResult] = field(default_factory=list)
    settled: dict[Key, LineResult] = field(default_factory=dict)  # by line (("", "unmapped:id"), ("", ""))
    # A revert: per line, the quantity the reverted run left (a line holding another changed since), and
    # what the line's record says about how it is put back (created lines: zero, never deleted).
    expected: dict[Key, float | None] | None = None
    notes: dict[Key, str] = field(default_factory=dict)
    sending: int = 0  # writes of this company in flight (one per agreement)
    transient: PsaError | None = None  # a write that failed transiently in this attempt
    attempts: int = 0
    first_failure: float | None = None
    due: float = 0.0
    last_error: PsaError | None = None

    def record(self) -> CompanyRecord:
        return CompanyRecord(self.ref, list(self.settled.values()), self.kept,
                             [row.id for row in self.approved.values()])


class Stop(Exception):
    """The run was stopped (credentials rejected here or in another job)."""


class Pusher:
    """Pushes the companies a job holds through one client, recording every line."""

    def __init__(self, run, integration: Integration, leases: Leases, *, job_id: str | None,
                 client: PsaClient | None = None, sleep: Callable[[float], None] = time.sleep):
        self.run_id, self.month, self.review = run.id, run.month, bool(run.dry_run)
        self.reverts, self.overwrite_changed = run.reverts_run_id, bool(run.overwrite_changed)
        self.integration_id, self.kind = integration.id, integration.kind
        self.job_id = job_id
        self.leases = leases
        self.sleep = sleep
        self.client = client or client_for(integration)
        self.on = planning.billed_month_start(utcnow(), org_zone().key)
        self.write_options = WriteOptions(effective_date=self.on, keep_history=bool(integration.option("keep_history")))
        # §4b: decreases bill from the next period, where the write carries a date the PSA bills from.
        defer = integration.option("decreases_from") == "next_period" and self.client.dates_changes(self.write_options)
        self.next_period = planning.next_period_start(self.on) if defer else None
        self.later: dict[str, dict[str, float]] = {}  # per agreement: quantities billed from the next period
        self.catalog: dict[str, Line] | None = None  # catalog prices, read once when a line is to be created
        self.decreases_need_approval = bool(integration.option("decreases_need_approval"))
        self.create_missing = bool(integration.option("create_missing_lines"))
        self.retry_seconds = float(current_app.config.get("SYNC_RETRY_SECONDS", 900))
        self.recorder = Recorder(self.run_id, self.integration_id, self.on,
                                 quantity_readable=self.client.quantity_readable)
        self.product_maps = [(row.product_id, row.psa_product_id, row.name, planning.QuantityRule.of(row))
                             for row in db.session.execute(
            select(ProductMapping.product_id, ProductMapping.psa_product_id, Product.name, ProductMapping.included,
                   ProductMapping.minimum, ProductMapping.maximum, ProductMapping.extra)
            .join(Product, Product.id == ProductMapping.product_id)
            .where(ProductMapping.integration_id == integration.id))]
        self.psa_product_ids = sorted({row[1] for row in self.product_maps})
        self.stop = threading.Event()
        self.in_flight: dict[Future, tuple[Company, list[tuple[Change, object]]]] = {}
        self.finished: list[CompanyRecord] = []
        self.unverified: dict[MappingRef, list[LineResult]] = {}  # written, not yet flushed
        self.to_verify: dict[MappingRef, list[record.Written]] = {}
        self.last_flush = time.monotonic()
        self.last_stop_check = 0.0
        self.intents: dict = {}

    # -- preparing ---------------------------------------------------------------------------------
    def companies(self, mapping_ids: list[int]) -> list[Company]:
        from ..counts import target_counts

        refs = [MappingRef(*row[:3], row[3] or "") for row in db.session.execute(
            select(CompanyMapping.id, CompanyMapping.integration_id, CompanyMapping.company_id,
                   CompanyMapping.agreement_id).where(CompanyMapping.id.in_(mapping_ids)).order_by(CompanyMapping.id))]
        counts = target_counts(self.month, company_ids=sorted({r.company_id for r in refs}))
        mapped = {row[0] for row in self.product_maps}
        unmapped_ids = {pid for (_, pid), n in counts.items() if n and pid not in mapped}
        names = dict(db.session.execute(select(Product.id, Product.name).where(Product.id.in_(unmapped_ids))).all()) \
            if unmapped_ids else {}
        ids = [r.id for r in refs]
        last = record.last_written(ids)
        approved = record.approved_lines(self.run_id, ids)
        reverted = record.written_lines(self.reverts, ids) if self.reverts else {}
        overrides = self.overrides(ids)
        by_company: dict[int, dict[int, int]] = {}
        for (company_id, product_id), n in counts.items():  # grouped once, not scanned per company
            by_company.setdefault(company_id, {})[product_id] = n
        out = []
        for ref in refs:
            company_counts = by_company.get(ref.company_id, {})
            company = Company(ref, self.spans(ref, company_counts, overrides.get(ref.id, {})),
                              [(pid, names.get(pid, str(pid)), n) for pid, n in company_counts.items()
                               if pid in unmapped_ids and n], last.get(ref.id, {}))
            if self.reverts:
                self.revert_only(company, reverted.get(ref.id, []))
            elif ref.id in approved:
                self.approve_only(company, approved[ref.id])
            out.append(company)
        self.intents = self.recorder.pending_intents(sorted({a for c in out for a in c.spans}))
        return out

    def overrides(self, mapping_ids: list[int]) -> dict[int, dict[int, str]]:
        """Per mapping, the products billed on another agreement than the mapping's: {product id: agreement}."""
        out: dict[int, dict[int, str]] = {}
        for mapping_id, product_id, agreement_id in db.session.execute(
                select(AgreementOverride.company_mapping_id, AgreementOverride.product_id,
                       AgreementOverride.agreement_id).where(AgreementOverride.company_mapping_id.in_(mapping_ids))):
            out.setdefault(mapping_id, {})[product_id] = agreement_id
        return out

    def spans(self, ref: MappingRef, counts: dict[int, int], overrides: dict[int, str]):
        """Agreement → targets: each mapped product on its override agreement, the others on the mapping's."""
        by_agreement: dict[str, list] = {ref.agreement_id: []}
        for row in self.product_maps:
            by_agreement.setdefault(overrides.get(row[0], ref.agreement_id), []).append(row)
        return {agreement: planning.product_targets(counts, maps) for agreement, maps in by_agreement.items()}

    def approve_only(self, company: Company, rows: list[LineResult]) -> None:
        """An approval pass: push exactly the approved targets; this run's other rows stay as they are."""
        company.approved = {(row.agreement_id, row.psa_product_id): row for row in rows}
        company.spans = targets_by_agreement(rows, lambda row: int(row.target or 0), with_rule=True)
        company.unmapped = []
        company.kept = record.kept_lines(self.run_id, company.ref.id, [row.id for row in rows])

    def revert_only(self, company: Company, rows: list[tuple[LineResult, float | None]]) -> None:
        """A revert: put back the quantity each line written by the reverted run held before it; a line it
        created goes to zero (never deleted). A line whose earlier quantity nobody knows is reported, not written."""
        known = {row.id: before for row, before in rows if before is not None}
        company.spans = targets_by_agreement([row for row, _ in rows if row.id in known], lambda r: int(known[r.id]))
        company.unmapped = []
        company.expected = {(row.agreement_id, row.psa_product_id): row.after for row, _ in rows}
        company.notes = {(row.agreement_id, row.psa_product_id): REVERT_NOTES[row.action].format(before=before)
                         for row, before in rows if row.action in REVERT_NOTES and before is not None}
        for row, _ in rows:
            if row.id not in known:
                change = Change(row.psa_product_id, row.product_id, None, planning.ATTENTION,
                                agreement_id=row.agreement_id,
                                message=f"the quantity before run {self.reverts} is unknown: this PSA cannot read it "
                                        "back and SeatSync had not written this line before; not reverted")
                company.settled[line_key(change)] = self.recorder.result(
                    company.ref, change, action=LineAction.NEEDS_ATTENTION, hint="Set the line in the PSA by hand.")

    # -- the loop ----------------------------------------------------------------------------------
    def push(self, mapping_ids: list[int]) -> None:
        waiting = self.companies(mapping_ids)
        lookahead = 4 * write_parallelism(self.client)
        try:
            with ThreadPoolExecutor(max_workers=write_parallelism(self.client),
                                    thread_name_prefix="seatsync-psa-write") as pool:
                while waiting or self.in_flight:
                    self.check_stop()
                    now = time.monotonic()
                    due = [c for c in waiting if c.due <= now]
                    waiting = [c for c in waiting if c.due > now]
                    pause = min(1.0, min((c.due for c in waiting), default=now + 1.0) - now)
                    if due:
                        waiting += self.send_due(pool, due, lookahead)
                    elif self.in_flight:
                        waiting += self.collect(timeout=max(0.0, pause))
                    else:
                        self.sleep(max(0.0, pause))
                    self.flush()
        except Stop:
            self.stop.set()
            while self.in_flight:
                self.collect(timeout=None)
            self.flush(force=True)
            self.release_stopped()
            return
        self.flush(force=True)
        self.verify()

    def send_due(self, pool: ThreadPoolExecutor, due: list[Company], lookahead: int) -> list[Company]:
        """Read the due companies' lines in one batch, then plan and send chunk by chunk; returns those to retry."""
        lines, retry = self.read(due)
        due = [c for c in due if all(a in lines for a in c.spans)]  # the others were retried or settled
        for start in range(0, len(due), lookahead):
            chunk = [(c, self.plan(c, lines)) for c in due[start:start + lookahead]]
            db.session.commit()  # the intents are recorded before they are sent
            for company, writes in chunk:
                by_agreement: dict[str, list[tuple[Change, object]]] = {}
                for change, intent in writes:
                    by_agreement.setdefault(change.agreement_id, []).append((change, intent))
                company.sending, company.transient = len(by_agreement), None
                for agreement_id, group in by_agreement.items():
                    batch = [QuantityChange(ch.psa_product_id, int(ch.target), ch.write_line, ch.effective_from)
                             for ch, _ in group]
                    self.in_flight[pool.submit(self.send, agreement_id, batch)] = (company, group)
                if not writes:
                    self.done(company)
            retry += self.collect(timeout=0)
            while len(self.in_flight) >= lookahead:
                retry += self.collect(timeout=None)
            self.flush()
        return retry

    def read(self, due: list[Company]) -> tuple[dict[str, list[Line]], list[Company]]:
        """One batched read of the due companies' lines; (lines, companies to try again later)."""
        try:
            return self.read_lines([a for c in due for a in c.spans]), []
        except CredentialsRejected as error:
            self.reject(error)
        except TransientError as error:
            log.info("batched line read failed (%s); %d companies try again after a pause", error, len(due))
            return {}, [c for c in due if self.failed(c, None, error)]
        except PsaError:  # a permanent failure of one agreement (e.g. deleted): read each on its own
            pass
        lines, retry = {}, []
        for company in due:
            try:
                lines.update(self.read_lines(list(company.spans)))
            except CredentialsRejected as error:
                self.reject(error)
            except PsaError as error:
                if self.failed(company, None, error):
                    retry.append(company)
        return lines, retry

    def read_lines(self, agreement_ids: list[str]) -> dict[str, list[Line]]:
        """The lines as billed now; where decreases are deferred and the PSA reads per date, also what
        each line bills from the next period (kept in `self.later`)."""
        lines = self.client.read_lines(agreement_ids, self.on, self.psa_product_ids)
        if self.next_period is not None and self.client.dated_reads:
            for agreement_id, later in self.client.read_lines(agreement_ids, self.next_period,
                                                              self.psa_product_ids).items():
                self.later[agreement_id] = {ln.product_id: ln.quantity for ln in later if ln.quantity is not None}
        return lines

    def plan(self, company: Company, lines: dict[str, list[Line]]) -> list[tuple[Change, object]]:
        """Settle what needs no write; return (change, intent) of the writes, intents prepared."""
        if any(a not in lines for a in company.spans):
            return []  # its read failed: settled as an error, or waiting to try again
        try:
            writes = []
            for change in self.changes(company, lines):
                if change.kind == planning.CREATE:
                    change.catalog = self.catalog_prices().get(change.psa_product_id)
                key = line_key(change)
                if key in company.settled:
                    continue
                done = self.decide(company, change)
                if done is None:
                    writes.append((change, self.recorder.prepare_intent(change.agreement_id, change, self.intents)))
                else:
                    company.settled[key] = done
            return writes
        except Exception as error:  # one company's bug or bad data must not stop the others
            log.exception("planning company mapping %s failed", company.ref.id)
            company.settled = {("", ""): self.recorder.company_error(
                company.ref, f"SeatSync failed to push this company: {type(error).__name__}",
                "The next sync retries; if it keeps failing, report it.")}
            return []

    def changes(self, company: Company, lines: dict[str, list[Line]]) -> list[Change]:
        """The changes of each agreement the company spans (unmapped products reported once, on its own)."""
        out = []
        # A revert plans a missing line as created, so `changed_since` reports it removed since the run.
        create_missing = self.create_missing or company.expected is not None
        for agreement_id, targets in company.spans.items():
            own = agreement_id == company.ref.agreement_id
            for change in planning.plan_agreement(
                    targets, lines[agreement_id], create_missing_lines=create_missing,
                    last_written=company.last_written.get(agreement_id, {}), unmapped=company.unmapped if own else (),
                    later=self.later.pop(agreement_id, None), next_period_start=self.next_period):
                change.agreement_id = agreement_id if change.psa_product_id else company.ref.agreement_id
                if line_key(change) in company.notes and change.writes:
                    change.message = company.notes[line_key(change)]
                out.append(change)
        return out

    def catalog_prices(self) -> dict[str, Line]:
        """The mapped products' catalog prices: read once per run (shared by its jobs through Redis), on the
        first line to create; none on failure: the money of new lines is then unknown, the push goes on."""
        if self.catalog is None:
            from ..queue import get_redis

            key = f"seatsync:catalog-prices:{self.run_id}"
            cached = get_redis().get(key)
            if cached:
                self.catalog = {pid: Line(**values) for pid, values in json.loads(cached).items()}
                return self.catalog
            try:
                self.catalog = self.client.product_prices(self.psa_product_ids)
            except PsaError as error:
                log.info("reading catalog prices failed (%s); new lines are priced unknown", error)
                self.catalog = {}
                return self.catalog  # not kept: the next job of the run tries again
            get_redis().set(key, json.dumps({pid: asdict(line) for pid, line in self.catalog.items()}),
                            ex=CATALOG_PRICES_KEPT)
        return self.catalog

    def decide(self, company: Company, change: Change) -> LineResult | None:
        """The line's result when nothing is to be written now; None when it must be written."""
        mapping = company.ref
        if change.kind == planning.ATTENTION:
            hint = change.extra.get("hint") or (
                "Remove the extra lines in the PSA, then sync again." if "duplicate" in change.message
                else "Map the product, or add the line in the PSA, then sync again.")
            return self.recorder.result(mapping, change, action=LineAction.NEEDS_ATTENTION, hint=hint)
        if change.kind == planning.NONE:
            intent = self.intents.pop((change.agreement_id, change.psa_product_id), None)
            if intent is not None and change.target is not None and change.basis == change.target:
                return self.recorder.completed(mapping, change, intent)
            return self.recorder.result(mapping, change, action=LineAction.NONE, after=change.basis)
        if company.expected is not None and not self.overwrite_changed:
            drift = changed_since(company.expected.get(line_key(change)), change, self.reverts)
            if drift:
                return self.recorder.result(mapping, change, action=LineAction.CHANGED_SINCE, message=drift,
                                            changed_in_psa=False,  # the action says it, with the reverted run's figure
                                            hint="Check the line in the PSA; to put it back anyway, confirm the "
                                                 "revert of these lines on this page.")
        if not company.approved and company.expected is None and planning.needs_approval(
                change, review_before_push=self.review, decreases_need_approval=self.decreases_need_approval):
            return self.recorder.result(mapping, change, action=LineAction.PLANNED,
                                        message=change.message or ("decrease: needs approval"
                                                                   if change.is_decrease else ""))
        return None

    def send(self, agreement_id: str, changes: list[QuantityChange]) -> list[WriteResult | PsaError] | None:
        """Runs on a pool thread: plain values in, plain values out, no database."""
        if self.stop.is_set():
            return None
        try:
            return self.client.set_quantities(agreement_id, changes, options=self.write_options)
        except PsaError as error:  # the whole request failed (CredentialsRejected included)
            return [error] * len(changes)

    def collect(self, *, timeout: float | None) -> list[Company]:
        """Record the writes that came back within `timeout` (None: wait for one); returns companies to
        try again. Runs on the job's thread: all database work stays there."""
        if not self.in_flight:
            return []
        done, _ = wait(list(self.in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        retry = []
        for future in done:
            company, writes = self.in_flight.pop(future)
            if self.collect_agreement(company, writes, future):
                retry.append(company)
        return retry

    def collect_agreement(self, company: Company, writes, future: Future) -> bool:
        """Settle the lines written on one of a company's agreements; once all its agreements are back, True
        when it must be tried again (else it is done)."""
        try:
            outcomes = future.result()
        except Exception as error:  # a client bug: the intents stay pending, the next run re-reads
            log.exception("writing company mapping %s failed", company.ref.id)
            outcomes = [PsaError(f"SeatSync failed to write: {type(error).__name__}")] * len(writes)
        if outcomes is None:  # not sent: the run was stopped; release_stopped closes the company
            return False
        company.sending -= 1
        for (change, intent), outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, CredentialsRejected):
                self.reject(outcome, raise_stop=False)
            if isinstance(outcome, TransientError) and not self.stop.is_set():
                company.transient = outcome  # the intent stays pending: the next attempt re-reads, writes the rest
            elif isinstance(outcome, PsaError):
                company.settled[line_key(change)] = self.recorder.error_result(company.ref, change, outcome)
            else:
                company.settled[line_key(change)] = self.recorder.written(company.ref, change, intent, outcome)
        if company.sending > 0:
            return False
        if company.transient is not None:
            return self.failed(company, None, company.transient)
        self.done(company)
        return False

    def failed(self, company: Company, change: Change | None, error: PsaError) -> bool:
        """A transient failure: True to try again later, False when the company's retry budget is spent
        (then it is settled as an error)."""
        now = time.monotonic()
        company.first_failure = company.first_failure or now
        company.attempts += 1
        company.last_error = error
        if isinstance(error, TransientError) and now - company.first_failure < self.retry_seconds:
            ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (company.attempts - 1))
            company.due = now + random.uniform(ceiling / 2, ceiling)
            return True
        company.settled["", ""] = self.recorder.error_result(company.ref, change, error)
        self.done(company)
        return False

    def done(self, company: Company) -> None:
        self.finished.append(company.record())
        written = [r for r in company.settled.values() if r.action in state.WRITTEN and r.verification is None]
        if written and self.client.quantity_readable:
            self.unverified[company.ref] = written

    # -- recording ---------------------------------------------------------------------------------
    def flush(self, *, force: bool = False) -> None:
        """Record finished companies, in groups, at least every FINISH_EVERY seconds."""
        if not self.finished:
            return
        if not force and len(self.finished) < FINISH_GROUP and time.monotonic() - self.last_flush < FINISH_EVERY:
            return
        recorded = [r for item in self.finished for r in item.results] + self.recorder.written_intents
        self.recorder.finish(self.finished, job_id=self.job_id)
        db.session.flush()
        for ref, results in self.unverified.items():  # plain values: the rows leave the session below
            self.to_verify[ref] = [(r.id, r.agreement_id, r.psa_product_id, int(r.target)) for r in results]
        self.unverified.clear()
        db.session.commit()
        for item in self.finished:
            self.leases.release(lock_key(self.integration_id, item.mapping.id))
        for row in recorded:  # done with: keep what the session holds (and expires at commits) small
            if row in db.session:
                db.session.expunge(row)
        self.finished.clear()
        self.last_flush = time.monotonic()

    def verify(self) -> None:
        """Read the written lines back (one batched read) and record what the PSA holds."""
        if not self.to_verify:
            return
        refs = list(self.to_verify)
        agreements = sorted({agreement for rows in self.to_verify.values() for _, agreement, _, _ in rows})
        try:
            # From the next period every write shows (a deferred decrease only then; one made now too).
            lines = self.client.read_lines(agreements, self.next_period or self.on, self.psa_product_ids)
        except PsaError as error:
            log.warning("reading back %d companies failed (%s); their lines stay unverified", len(refs), error)
            return
        self.recorder.verify(self.to_verify, lines)
        db.session.commit()
        self.to_verify.clear()

    # -- stopping ----------------------------------------------------------------------------------
    def reject(self, error: CredentialsRejected, *, raise_stop: bool = True) -> None:
        """401: mark the credentials failing and stop the run, once."""
        if not self.stop.is_set():
            self.stop.set()
            credentials_failed(self.integration_id, self.run_id, error)
        if raise_stop:
            raise Stop()

    def check_stop(self) -> None:
        """Stop when this job rejected the credentials, or another job stopped the run (read at most every
        STOP_CHECK_EVERY seconds: the loop turns at every answer)."""
        if self.stop.is_set():
            raise Stop()
        if time.monotonic() - self.last_stop_check >= STOP_CHECK_EVERY:
            self.last_stop_check = time.monotonic()
            if state.stop_reason(self.run_id):
                raise Stop()

    def release_stopped(self) -> None:
        """Close the companies this job still holds: not pushed because the run was stopped."""
        if self.job_id is None:
            return
        reason = state.stop_reason(self.run_id) or "The sync was stopped."
        rows = db.session.execute(select(CompanyMapping.id, CompanyMapping.agreement_id).where(
            CompanyMapping.id.in_(state.owned_by(self.job_id).scalar_subquery()))).all()
        refs = [MappingRef(mapping_id, self.integration_id, 0, agreement or "") for mapping_id, agreement in rows]
        hint = CredentialsRejected.default_hint
        self.recorder.finish([CompanyRecord(ref, [self.recorder.company_error(ref, reason, hint)]) for ref in refs],
                             job_id=self.job_id)
        db.session.commit()


def line_key(change: Change) -> Key:
    return (change.agreement_id, change.psa_product_id or f"unmapped:{change.product_id}")


def targets_by_agreement(rows: list[LineResult], target: Callable[[LineResult], int], *, with_rule: bool = False):
    """Agreement → targets of recorded lines (an approval's, with the count and rule it was planned from;
    or a reverted run's)."""
    spans: dict[str, list[planning.ProductTarget]] = {}
    for row in rows:
        spans.setdefault(row.agreement_id, []).append(planning.ProductTarget(
            row.psa_product_id, target(row), (row.product_id,) if row.product_id else (),
            **({"count": row.count, "rule": row.rule} if with_rule else {})))
    return spans


def changed_since(expected: float | None, change: Change, run_id: int) -> str:
    """Why a line is not reverted: it holds something else than the reverted run left ("" when it does not).
    Where the PSA cannot read the quantity (Kaseya BMS), what SeatSync last wrote there stands in for it."""
    if not change.writes or expected is None:
        return ""
    if change.kind == planning.CREATE:
        return f"removed from the PSA since run {run_id}: that run left {expected:g}; not recreated"
    held = change.before if change.before is not None else change.last_written
    if held is None or float(held) == float(expected):
        return ""
    return (f"changed in the PSA since run {run_id}: that run left {expected:g}, the line holds {held:g} now; "
            "not reverted")


def credentials_failed(integration_id: int, run_id: int, error: CredentialsRejected) -> None:
    """Mark the integration's credentials failing and set the run's stop flag (only these two rows)."""
    db.session.rollback()
    integration = db.session.get(Integration, integration_id)
    integration.credentials_status = "failing"
    integration.credentials_message = error.psa_message
    integration.credentials_checked_at = utcnow()
    audit.record("integration.credentials_failing", integration.kind,
                 "The PSA rejected the API credentials during a sync; syncs stop until they are re-entered.")
    db.session.commit()
    state.stop_run(run_id, "Stopped: the PSA rejected the API credentials. Re-enter them and click Authenticate.")
