"""Apply plans through a PSA client and record what happened, exactly once.

Exactly once rests on three things:
1. A lock per company mapping in Redis, held with a lease that a heartbeat thread renews while the
   job runs and that expires when a worker dies, so two jobs never push one company at once.
2. Lines are read afresh while the lock is held and only differences are written, so pushing a
   company again writes nothing that has already happened (absolute quantities and Autotask deltas
   alike: the Autotask client computes its delta from the fresh units).
3. Every write is recorded as a PushIntent (committed) before it is sent. After a crash or a lost
   answer the intent is still pending; the next push re-reads, writes only what is missing, and
   reports the earlier write as completed instead of silently calling the line "in sync".

Progress is committed per company (line results, mapping status, run counters in one transaction),
so a killed worker leaves whole companies done or not done, never half-recorded.

The HTTP writes of a batch run on a small thread pool (as many threads as the PSA allows requests in
flight per endpoint), so the PSA's allowed concurrency is kept busy; the Redis limiter in
psa_clients/http.py keeps the total across all workers within it. Every database change — intents,
line results, statuses — stays on the job's own thread and session: the pool threads only call the
client with plain values and hand back what the PSA answered.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from flask import current_app
from rq import get_current_job
from sqlalchemy import case, exists, func, or_, select, update
from sqlalchemy import inspect as sa_inspect

from .. import audit
from ..connections import client_for
from ..extensions import db
from ..models import CompanyMapping, Integration, LineResult, Product, ProductMapping, PushIntent, SyncRun
from ..psa_clients.base import CredentialsRejected, PsaClient, PsaError, QuantityChange, WriteOptions, WriteResult
from ..queue import get_queue, get_redis
from . import plan as planning
from .plan import Change

log = logging.getLogger(__name__)

LOCK_PREFIX = "seatsync:sync:lock"
LEASE_PREFIX = "seatsync:sync:lease"
BUSY = ("queued", "syncing")
WRITTEN = ("updated", "created", "replaced", "adjusted")
OUTCOME_COLUMN = {"in sync": "in_sync", "updated": "updated", "needs attention": "needs_attention", "error": "errors"}
# Writes in flight per job for a PSA that documents no concurrency limit (Kaseya BMS): ConnectWise's
# guidance of "two or three requests in parallel" is the only figure the research notes give.
UNDOCUMENTED_CONCURRENCY = 3
FINISH_GROUP = 10  # companies recorded per transaction while a batch is still being planned

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) "
          "else return 0 end")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lease_seconds() -> int:
    return int(current_app.config["SYNC_LEASE_SECONDS"])


def lock_key(mapping: CompanyMapping) -> str:
    return f"{LOCK_PREFIX}:{mapping.integration_id}:{mapping.id}"


def lease_key(job_id: str) -> str:
    return f"{LEASE_PREFIX}:{job_id}"


def run_job_prefix(run_id: int) -> str:
    return f"sync-{run_id}"


def of_run(run_id: int):
    """CompanyMapping rows a run claimed (their job_id names the run's job or one of its batches)."""
    prefix = run_job_prefix(run_id)
    return or_(CompanyMapping.job_id == prefix, CompanyMapping.job_id.like(f"{prefix}-%"))


class Leases:
    """Redis keys a job holds while it works; a heartbeat thread renews them until released."""

    def __init__(self, redis, ttl: int):
        self.redis = redis
        self.ttl = max(1, int(ttl))
        self.token = uuid.uuid4().hex
        self.keys: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="seatsync-lease-heartbeat", daemon=True)

    def acquire(self, key: str) -> bool:
        if self.redis.set(key, self.token, nx=True, ex=self.ttl):
            self.keys.add(key)
            return True
        return False

    def hold(self, key: str) -> None:
        self.redis.set(key, self.token, ex=self.ttl)
        self.keys.add(key)

    def release(self, key: str) -> None:
        if key in self.keys:
            self.keys.discard(key)
            self.redis.eval(_RELEASE, 1, key, self.token)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            for key in list(self.keys):
                try:
                    self.redis.eval(_RENEW, 1, key, self.token, self.ttl)
                except Exception:  # a Redis blip must not kill the push; the next beat retries
                    log.warning("could not renew lease %s", key, exc_info=True)

    def __enter__(self) -> Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for key in list(self.keys):
            try:
                self.release(key)
            except Exception:  # the lease expires by itself
                log.warning("could not release %s", key, exc_info=True)


# --------------------------------------------------------------------------------------------------
# Run bookkeeping (shared with jobs.py and the runs page)
# --------------------------------------------------------------------------------------------------
def count_company(run_id: int, outcome: str | None) -> None:
    """Add one finished company to the run's counters, in SQL so concurrent workers never lose one."""
    values = {"done": SyncRun.done + 1}
    column = OUTCOME_COLUMN.get(outcome or "")
    if column:
        values[column] = getattr(SyncRun, column) + 1
    db.session.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values))


def count_companies(run_id: int, outcomes: dict[str, int]) -> None:
    """count_company for many companies at once (one UPDATE)."""
    values = {"done": SyncRun.done + sum(outcomes.values())}
    for outcome, n in outcomes.items():
        column = OUTCOME_COLUMN.get(outcome or "")
        if column and n:
            values[column] = getattr(SyncRun, column) + n
    db.session.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values))


def maybe_finish(run_id: int) -> None:
    """Close the run once every company is done (awaiting review when changes wait for approval)."""
    waiting = exists().where(LineResult.run_id == run_id, LineResult.action.in_(("planned", "approved")))
    db.session.execute(
        update(SyncRun)
        .where(SyncRun.id == run_id, SyncRun.done >= SyncRun.total,
               SyncRun.state.in_(("queued", "running", "awaiting_review")))
        .values(state=case((waiting, "awaiting_review"), else_="finished"),
                finished_at=case((waiting, None), else_=utcnow()))
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def status_reason(results: Iterable[LineResult], outcome: str) -> str:
    results = list(results)
    if outcome == "error":
        first = next(r for r in results if r.action == "error")
        return " — ".join(p for p in (first.message, first.hint) if p)
    if outcome == "needs attention":
        planned = sum(1 for r in results if r.action == "planned")
        if planned:
            return f"{planned} change(s) await approval on the sync run page."
        dismissed = sum(1 for r in results if r.action == "dismissed")
        attention = [r.message for r in results if r.action == "needs_attention"]
        if attention:
            return attention[0] + (f" (and {len(attention) - 1} more)" if len(attention) > 1 else "")
        return f"{dismissed} change(s) were dismissed on review; the PSA still differs."
    if outcome == "updated":
        return f"{sum(1 for r in results if r.action in WRITTEN)} line(s) updated."
    return ""


def outcome_of(actions: Iterable[str]) -> str:
    actions = ["needs_attention" if a == "dismissed" else a for a in actions]
    return planning.company_outcome(actions)


def blocked_reason(integration: Integration) -> tuple[str, str] | None:
    """(status, reason) when the integration may not send anything now."""
    if not integration.enabled:
        return "disabled", "The integration is disabled: nothing was sent to the PSA."
    if integration.credentials_status == "failing":
        return "error", ("The PSA rejected the API credentials"
                         + (f" ({integration.credentials_message})" if integration.credentials_message else "")
                         + ": re-enter them and click Authenticate.")
    return None


def release_unpushed(run: SyncRun, mappings: list[CompanyMapping], status: str, reason: str,
                     *, error: PsaError | None = None) -> None:
    """Close companies that will not be pushed (integration disabled, credentials rejected)."""
    now = utcnow()
    for mapping in mappings:
        if error is not None:
            db.session.add(LineResult(
                run_id=run.id, company_mapping_id=mapping.id, agreement_id=mapping.agreement_id or "",
                action="error", message=error.psa_message, http_status=error.status, hint=error.hint,
            ))
        mapping.status = status
        mapping.status_reason = reason
        mapping.job_id = None
        if status != "disabled":
            mapping.last_sync_at = now
        count_company(run.id, status)
    db.session.commit()
    maybe_finish(run.id)


def credentials_failed(run: SyncRun, integration: Integration, error: CredentialsRejected) -> None:
    """401: mark the integration failing and stop the whole run (every company it still holds)."""
    db.session.rollback()
    integration = db.session.get(Integration, integration.id)
    integration.credentials_status = "failing"
    integration.credentials_message = error.psa_message
    integration.credentials_checked_at = utcnow()
    audit.record("integration.credentials_failing", integration.kind,
                 "The PSA rejected the API credentials during a sync; syncs stop until they are re-entered.")
    remaining = db.session.scalars(
        select(CompanyMapping).where(of_run(run.id), CompanyMapping.status.in_(BUSY))
    ).all()
    run = db.session.get(SyncRun, run.id)
    run.message = "Stopped: the PSA rejected the API credentials. Re-enter them and click Authenticate."
    reason = f"The PSA rejected the API credentials ({error.psa_message}). {error.hint}"
    release_unpushed(run, remaining, "error", reason, error=error)
    db.session.execute(update(SyncRun).where(SyncRun.id == run.id)
                       .values(state="failed", finished_at=utcnow(), message=run.message))
    db.session.commit()


# --------------------------------------------------------------------------------------------------
# The push
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MappingRef:
    """The columns of a company mapping a push needs, read once: ORM rows expire at every commit and
    would be re-read one SELECT at a time."""

    id: int
    integration_id: int
    company_id: int
    agreement_id: str

    @classmethod
    def of(cls, mapping: CompanyMapping) -> MappingRef:
        return cls(mapping.id, mapping.integration_id, mapping.company_id, mapping.agreement_id or "")


class Pusher:
    """Pushes the companies of one run through one client, recording every line."""

    def __init__(self, run: SyncRun, integration: Integration, leases: Leases, client: PsaClient | None = None):
        from ..counts import org_timezone

        self.run = run
        self.integration = integration
        # Plain ids: the ORM rows expire at every commit and would be re-read on each use.
        self.run_id, self.integration_id = run.id, integration.id
        self.leases = leases
        self.client = client or client_for(integration)
        self.on = planning.billed_month_start(utcnow(), str(org_timezone()))
        self.write_options = WriteOptions(effective_date=self.on, keep_history=bool(integration.option("keep_history")))
        self.review = bool(run.dry_run)
        self.decreases_need_approval = bool(integration.option("decreases_need_approval"))
        self.create_missing = bool(integration.option("create_missing_lines"))
        self.known_intents: dict[tuple[str, str], int] | None = None
        self.written_intents: list[PushIntent] = []
        self.product_maps = db.session.execute(
            select(ProductMapping.product_id, ProductMapping.psa_product_id, Product.name)
            .join(Product, Product.id == ProductMapping.product_id)
            .where(ProductMapping.integration_id == integration.id)
        ).all()
        self.psa_product_ids = sorted({row.psa_product_id for row in self.product_maps})

    # -- reads ------------------------------------------------------------------------------------
    def last_written(self, mapping_ids: list[int]) -> dict[int, dict[str, float]]:
        """Per mapping, per PSA product: the quantity SeatSync last left on the line."""
        latest = (
            select(func.max(LineResult.id))
            .where(LineResult.company_mapping_id.in_(mapping_ids), LineResult.after.is_not(None),
                   LineResult.action.in_(("none", *WRITTEN)), LineResult.psa_product_id != "")
            .group_by(LineResult.company_mapping_id, LineResult.psa_product_id)
        )
        rows = db.session.execute(
            select(LineResult.company_mapping_id, LineResult.psa_product_id, LineResult.after)
            .where(LineResult.id.in_(latest))
        )
        out: dict[int, dict[str, float]] = defaultdict(dict)
        for mapping_id, psa_product_id, after in rows:
            out[mapping_id][psa_product_id] = after
        return out

    def pending_intents(self, agreement_ids: list[str]) -> dict[tuple[str, str], PushIntent]:
        """Pending intents of these agreements; all their intents of the period are kept for prepare_intent."""
        of_batch = (PushIntent.integration_id == self.integration_id, PushIntent.period == self.on,
                    PushIntent.agreement_id.in_(agreement_ids))
        # Ids only: a row is loaded when its line is written again, not kept in the session meanwhile.
        self.known_intents = {(a, p): i for i, a, p in db.session.execute(
            select(PushIntent.id, PushIntent.agreement_id, PushIntent.psa_product_id).where(*of_batch))}
        rows = db.session.scalars(select(PushIntent).where(*of_batch, PushIntent.state == "pending"))
        return {(i.agreement_id, i.psa_product_id): i for i in rows}

    def read_lines(self, mappings: list[CompanyMapping]) -> dict[str, list] | None:
        """One batched read for all agreements; None when it failed (then each is read on its own)."""
        try:
            return self.client.read_lines([m.agreement_id for m in mappings], self.on, self.psa_product_ids)
        except CredentialsRejected:
            raise
        except PsaError as error:
            log.info("batched line read failed (%s); reading agreements one by one", error)
            return None

    def lines_of(self, mapping: CompanyMapping, batch: dict[str, list] | None) -> list:
        if batch is not None:
            return batch.get(mapping.agreement_id, [])
        return self.client.read_lines([mapping.agreement_id], self.on, self.psa_product_ids).get(
            mapping.agreement_id, [])

    # -- the per-company loop -----------------------------------------------------------------------
    def push(self, rows: list[CompanyMapping]) -> None:
        # The rows were committed ("syncing") and so expired: read the columns needed in one query rather
        # than one SELECT per row, and detach the rows so no commit of the batch has to expire them again.
        ids = [sa_inspect(m).identity[0] for m in rows]
        mappings = [MappingRef(*row[:3], row[3] or "") for row in db.session.execute(
            select(CompanyMapping.id, CompanyMapping.integration_id, CompanyMapping.company_id,
                   CompanyMapping.agreement_id).where(CompanyMapping.id.in_(ids)).order_by(CompanyMapping.id))]
        for row in rows:
            db.session.expunge(row)
        company_ids = sorted({m.company_id for m in mappings})
        from ..counts import target_counts

        counts = target_counts(self.run.month, company_ids=company_ids)
        mapping_ids = [m.id for m in mappings]
        last = self.last_written(mapping_ids)
        intents = self.pending_intents([m.agreement_id for m in mappings])
        mapped_products = {pid for pid, _, _ in self.product_maps}
        names = {}
        unmapped_ids = {pid for (cid, pid), n in counts.items() if n and pid not in mapped_products}
        if unmapped_ids:
            names = dict(db.session.execute(select(Product.id, Product.name).where(Product.id.in_(unmapped_ids))).all())
        try:
            lines = self.read_lines(mappings)
        except CredentialsRejected as error:
            credentials_failed(self.run, self.integration, error)
            return
        self.rejected: CredentialsRejected | None = None
        self.stop = threading.Event()
        pending: dict[Future, tuple[MappingRef, list, list]] = {}
        finished: list[tuple[MappingRef, list[LineResult]]] = []
        lookahead = 4 * write_parallelism(self.client)
        with ThreadPoolExecutor(max_workers=write_parallelism(self.client),
                                thread_name_prefix="seatsync-psa-write") as pool:
            for mapping in mappings:
                if self.stop.is_set():
                    break
                company_counts = {pid: n for (cid, pid), n in counts.items() if cid == mapping.company_id}
                targets = planning.product_targets(company_counts, self.product_maps)
                unmapped = [(pid, names.get(pid, str(pid)), n) for pid, n in company_counts.items()
                            if pid in unmapped_ids and n]
                writes: list[tuple[int, Change, PushIntent]] = []
                try:
                    current = self.lines_of(mapping, lines)
                    changes = planning.plan_agreement(
                        targets, current, create_missing_lines=self.create_missing,
                        last_written=last.get(mapping.id), unmapped=unmapped,
                    )
                    results: list[LineResult | None] = []
                    for change in changes:
                        done = self.decide(mapping, change, intents)
                        if done is None:
                            writes.append((len(results), change, self.prepare_intent(mapping, change, intents)))
                        results.append(done)
                    if writes:
                        db.session.commit()  # recorded before they are sent
                except CredentialsRejected as error:
                    self.reject(error)
                    break
                except PsaError as error:  # only the line read raises it: nothing of this company is in the session
                    results, writes = [self.error_result(mapping, None, error)], []
                except Exception as error:  # one company's bug or bad data must not stop the others
                    db.session.rollback()  # its uncommitted intents (never sent); others' "done" marks wait in finish
                    log.exception("pushing company mapping %s failed", mapping.id)
                    results, writes = [self.crash_result(mapping, error)], []
                if writes:
                    batch = [QuantityChange(c.psa_product_id, int(c.target), c.line) for _, c, _ in writes]
                    pending[pool.submit(self.send, mapping.agreement_id, batch)] = (mapping, results, writes)
                else:
                    finished.append((mapping, results))
                for future in [f for f in pending if f.done()]:  # record writes as they come back
                    self.collect(future, *pending.pop(future), into=finished)
                # Plan only a little ahead of the writes: enough to keep the pool busy, while what the
                # session holds (and expires at every commit) stays small.
                while len(pending) >= lookahead:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for future in done:
                        self.collect(future, *pending.pop(future), into=finished)
                if len(finished) >= FINISH_GROUP:
                    self.finish(finished)
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    self.collect(future, *pending.pop(future), into=finished)
                self.finish(finished)
        self.finish(finished)
        if self.rejected is not None:
            credentials_failed(self.run, self.integration, self.rejected)
        else:
            # Once per batch, after its last company: whichever job commits last closes the run.
            maybe_finish(self.run_id)

    def reject(self, error: CredentialsRejected) -> None:
        """401: stop sending; companies not yet written are closed by credentials_failed."""
        self.rejected = self.rejected or error
        self.stop.set()

    def send(self, agreement_id: str, changes: list[QuantityChange]) -> list[WriteResult | PsaError] | None:
        """Runs on a pool thread: plain values in, plain values out, no database."""
        if self.stop.is_set():
            return None
        return self.client.set_quantities(agreement_id, changes, options=self.write_options)

    def collect(self, future: Future, mapping: MappingRef, results: list, writes: list, *, into: list) -> None:
        """Record one company's writes (on the job's thread); the company joins the next finish."""
        try:
            outcomes = future.result()
        except CredentialsRejected as error:
            self.reject(error)
            return
        except Exception as error:  # a client bug: the intents stay pending, the next run re-reads
            log.exception("writing company mapping %s failed", mapping.id)
            outcomes = [error] * len(writes)
        if outcomes is None:  # skipped after a 401
            return
        for (index, change, intent), outcome in zip(writes, outcomes, strict=True):
            results[index] = self.record_write(mapping, change, intent, outcome, mark=False)
        into.append((mapping, results))

    def finish(self, finished: list[tuple[MappingRef, list[LineResult]]]) -> None:
        """Record finished companies in one transaction — each whole, with its status and the run's counters —
        then release their locks. Empties `finished`."""
        if not finished:
            return
        now = utcnow()
        for intent in self.written_intents:  # marked here, in the transaction that records the companies
            intent.state, intent.completed_at = "done", now
        rows, outcomes = [], defaultdict(int)
        for mapping, results in finished:
            db.session.add_all(results)
            outcome = outcome_of(r.action for r in results)
            outcomes[outcome] += 1
            rows.append({"id": mapping.id, "status": outcome, "status_reason": status_reason(results, outcome),
                         "last_sync_at": now, "job_id": None})
        db.session.execute(update(CompanyMapping), rows)  # by primary key, one statement for the group
        count_companies(self.run_id, outcomes)
        db.session.commit()
        for mapping, results in finished:
            self.leases.release(lock_key(mapping))
            for result in results:  # done with: keep the session (expired at every commit) small
                db.session.expunge(result)
        for intent in self.written_intents:
            if intent in db.session:
                db.session.expunge(intent)
        self.written_intents.clear()
        finished.clear()

    # -- one line ---------------------------------------------------------------------------------
    def result(self, mapping: CompanyMapping, change: Change, **values) -> LineResult:
        line = change.line
        message = values.pop("message", change.message)
        if change.changed_in_psa:
            note = (f"changed in the PSA since the last sync: SeatSync left {change.last_written:g}, "
                    f"the PSA had {change.before:g}")
            message = f"{note}; {message}" if message else note
        return LineResult(
            run_id=self.run_id, company_mapping_id=mapping.id, product_id=change.product_id,
            psa_product_id=change.psa_product_id, agreement_id=mapping.agreement_id or "",
            line_id=values.pop("line_id", line.line_id if line is not None else None),
            before=change.before, target=change.target,
            changed_in_psa=change.changed_in_psa, message=message, **values,
        )

    def error_result(self, mapping: CompanyMapping, change: Change | None, error: PsaError) -> LineResult:
        if change is None:
            return LineResult(run_id=self.run_id, company_mapping_id=mapping.id,
                              agreement_id=mapping.agreement_id or "", action="error",
                              message=error.psa_message, http_status=error.status, hint=error.hint)
        return self.result(mapping, change, action="error", message=error.psa_message,
                           http_status=error.status, hint=error.hint)

    def crash_result(self, mapping: CompanyMapping, error: Exception) -> LineResult:
        return LineResult(run_id=self.run_id, company_mapping_id=mapping.id,
                          agreement_id=mapping.agreement_id or "", action="error",
                          message=f"SeatSync failed to push this company: {type(error).__name__}",
                          hint="The next sync retries; if it keeps failing, report it.")

    def apply(self, mapping: CompanyMapping, change: Change, intents: dict, *, approved: bool = False) -> LineResult:
        """Decide and, if needed, write one line now (the reviewed-run path; batches use push)."""
        done = self.decide(mapping, change, intents, approved=approved)
        if done is not None:
            return done
        intent = self.prepare_intent(mapping, change, intents)
        db.session.commit()  # recorded before it is sent
        try:
            written = self.client.set_quantity(mapping.agreement_id, change.psa_product_id, int(change.target),
                                               current=change.line, options=self.write_options)
        except CredentialsRejected:
            raise
        except PsaError as error:
            written = error
        return self.record_write(mapping, change, intent, written)

    def decide(self, mapping: CompanyMapping, change: Change, intents: dict, *,
               approved: bool = False) -> LineResult | None:
        """The line's result when nothing is to be written now; None when it must be written."""
        key = (mapping.agreement_id, change.psa_product_id)
        if change.kind == planning.ATTENTION:
            hint = ("Remove the extra lines in the PSA, then sync again." if "duplicate" in change.message
                    else "Map the product, or add the line in the PSA, then sync again.")
            return self.result(mapping, change, action="needs_attention", hint=hint)
        if change.kind == planning.NONE:
            intent = intents.pop(key, None)
            if intent is not None and change.target is not None and change.before == change.target:
                # The write recorded before an interruption did reach the PSA: report it, once.
                self.mark_done(intent)
                return self.result(mapping, change, action="updated", after=change.before,
                                   message="completed: the write sent before an interruption had reached the PSA")
            return self.result(mapping, change, action="none", after=change.before)
        if not approved and planning.needs_approval(change, review_before_push=self.review,
                                                    decreases_need_approval=self.decreases_need_approval):
            return self.result(mapping, change, action="planned",
                               message=change.message or ("decrease: needs approval" if change.is_decrease else ""))
        return None

    def prepare_intent(self, mapping: CompanyMapping, change: Change, intents: dict) -> PushIntent:
        """The pending PushIntent of a write (the caller commits it before sending)."""
        key = (mapping.agreement_id, change.psa_product_id)
        intent = intents.pop(key, None)
        if intent is None and self.known_intents is not None:  # the batch's intent ids were read at its start
            known = self.known_intents.get(key)
            intent = db.session.get(PushIntent, known) if known is not None else None
        elif intent is None:
            intent = db.session.scalar(select(PushIntent).where(
                PushIntent.integration_id == self.integration_id, PushIntent.agreement_id == key[0],
                PushIntent.psa_product_id == key[1], PushIntent.period == self.on))
        if intent is None:
            intent = PushIntent(integration_id=self.integration_id, agreement_id=key[0], psa_product_id=key[1],
                                period=self.on, target=0)
            db.session.add(intent)
        before = change.before
        intent.target = int(change.target)
        intent.delta = (change.target - before) if before is not None else None
        intent.state, intent.run_id, intent.completed_at = "pending", self.run_id, None
        return intent

    def mark_done(self, intent: PushIntent, *, now: bool = False) -> None:
        """A batch marks intents done when it records their companies (finish), so a rollback for one
        company never loses another's mark; a single write (apply) marks at once."""
        if now or self.known_intents is None:
            intent.state, intent.completed_at = "done", utcnow()
        else:
            self.written_intents.append(intent)

    def record_write(self, mapping: CompanyMapping, change: Change, intent: PushIntent,
                     written: WriteResult | Exception, *, mark: bool = True) -> LineResult:
        if isinstance(written, PsaError):
            # The intent stays pending: whether a lost answer was applied is settled by the next read.
            return self.error_result(mapping, change, written)
        if isinstance(written, Exception):
            return self.crash_result(mapping, written)
        self.mark_done(intent, now=mark)
        action = "none" if written.action == "unchanged" else written.action
        return self.result(mapping, change, action=action, after=written.line.quantity,
                           line_id=written.line.line_id or None, psa_response=written.response[:2000])


def write_parallelism(client: PsaClient) -> int:
    """Writes a job keeps in flight: the PSA's allowed concurrency per endpoint."""
    return max(1, int(client.concurrency_per_endpoint or UNDOCUMENTED_CONCURRENCY))


# --------------------------------------------------------------------------------------------------
# Job bodies (wrapped by jobs.py)
# --------------------------------------------------------------------------------------------------
def job_session(func):
    """Run a job body and end its database transaction whatever happens, so no worker sits idle in a
    transaction holding locks (migrations and truncates would wait on it)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            db.session.close()

    return wrapper


def _claimed(run_id: int, mapping_ids: list[int], job_id: str | None) -> list[CompanyMapping]:
    query = select(CompanyMapping).where(CompanyMapping.id.in_(mapping_ids), CompanyMapping.status.in_(BUSY))
    if job_id is not None:
        query = query.where(CompanyMapping.job_id == job_id)  # not re-assigned by the sweeper meanwhile
    return list(db.session.scalars(query.order_by(CompanyMapping.id)))


def _defer(run_id: int, mappings: list[CompanyMapping], func, *args) -> None:
    """Companies another job is pushing right now: try them again once that push is likely over."""
    job_id = f"{run_job_prefix(run_id)}-d{uuid.uuid4().hex[:10]}"
    for mapping in mappings:
        mapping.job_id = job_id
    db.session.commit()
    get_queue().enqueue_in(dt.timedelta(seconds=min(10, lease_seconds())), func, run_id, *args,
                           job_id=job_id, job_timeout=3600)


@job_session
def push_companies(run_id: int, mapping_ids: list[int]) -> dict:
    """Push a batch of a run's companies (one batched line read, then per-company writes)."""
    job = get_current_job()
    job_id = job.id if job is not None else None
    run = db.session.get(SyncRun, run_id)
    if run is None:
        return {"skipped": "run deleted"}
    with Leases(get_redis(), lease_seconds()) as leases:
        if job_id is not None:
            leases.hold(lease_key(job_id))
        mappings = _claimed(run_id, mapping_ids, job_id)
        if not mappings:
            maybe_finish(run_id)
            return {"pushed": 0}
        integration = db.session.get(Integration, run.integration_id)
        blocked = blocked_reason(integration)
        if blocked:
            release_unpushed(run, mappings, *blocked)
            return {"pushed": 0, "blocked": blocked[0]}
        held = [m for m in mappings if leases.acquire(lock_key(m))]
        busy = [m for m in mappings if m not in held]
        if busy:
            _defer(run_id, busy, push_companies, [m.id for m in busy])
        if not held:
            return {"pushed": 0, "deferred": len(busy)}
        for mapping in held:
            mapping.status = "syncing"
        if run.state == "queued":
            run.state, run.started_at = "running", run.started_at or utcnow()
        db.session.commit()
        Pusher(run, integration, leases).push(held)
        return {"pushed": len(held), "deferred": len(busy)}


@job_session
def push_approved(run_id: int, line_result_ids: list[int]) -> dict:
    """Write the changes an admin approved on a reviewed run (re-reading the lines first)."""
    run = db.session.get(SyncRun, run_id)
    if run is None:
        return {"skipped": "run deleted"}
    approved = db.session.scalars(select(LineResult).where(
        LineResult.id.in_(line_result_ids), LineResult.run_id == run_id, LineResult.action == "approved")).all()
    by_mapping: dict[int, list[LineResult]] = defaultdict(list)
    for line in approved:
        by_mapping[line.company_mapping_id].append(line)
    integration = db.session.get(Integration, run.integration_id)
    blocked = blocked_reason(integration)
    with Leases(get_redis(), lease_seconds()) as leases:
        mappings = db.session.scalars(select(CompanyMapping).where(CompanyMapping.id.in_(list(by_mapping)))).all()
        if blocked:
            for line in approved:
                line.message = blocked[1]
            db.session.commit()
            return {"pushed": 0, "blocked": blocked[0]}
        held = [m for m in mappings if leases.acquire(lock_key(m))]
        busy = [m for m in mappings if m not in held]
        if busy:
            ids = [r.id for m in busy for r in by_mapping[m.id]]
            get_queue().enqueue_in(dt.timedelta(seconds=min(10, lease_seconds())), push_approved, run_id, ids,
                                   job_timeout=3600)
        if not held:
            return {"pushed": 0}
        for mapping in held:
            mapping.status = "syncing"
        db.session.commit()
        pusher = Pusher(run, integration, leases)
        try:
            lines = pusher.read_lines(held)
        except CredentialsRejected as error:
            credentials_failed(run, integration, error)
            return {"pushed": 0}
        pushed = 0
        for mapping in held:
            try:
                current = pusher.lines_of(mapping, lines)
                for row in by_mapping[mapping.id]:
                    target = planning.ProductTarget(row.psa_product_id, int(row.target or 0),
                                                    (row.product_id,) if row.product_id else ())
                    (change,) = planning.plan_agreement([target], current, create_missing_lines=pusher.create_missing)
                    done = pusher.apply(mapping, change, {}, approved=True)
                    for name in ("before", "after", "action", "message", "http_status", "hint", "psa_response",
                                 "line_id"):
                        setattr(row, name, getattr(done, name))
                    pushed += 1
            except CredentialsRejected as error:
                credentials_failed(run, integration, error)
                return {"pushed": pushed}
            except PsaError as error:
                for row in by_mapping[mapping.id]:
                    if row.action == "approved":
                        row.action, row.message, row.http_status, row.hint = ("error", error.psa_message,
                                                                              error.status, error.hint)
            settle_mapping(run_id, mapping.id)
            leases.release(lock_key(mapping))
        maybe_finish(run_id)
        return {"pushed": pushed}


def settle_mapping(run_id: int, mapping_id: int) -> None:
    """Recompute a company's status from its line results in a reviewed run (after approve/dismiss)."""
    mapping = db.session.get(CompanyMapping, mapping_id)
    results = db.session.scalars(select(LineResult).where(LineResult.run_id == run_id,
                                                          LineResult.company_mapping_id == mapping_id)).all()
    if any(r.action == "approved" for r in results):
        return  # its push is still to come
    outcome = outcome_of(r.action for r in results)
    mapping.status = outcome
    mapping.status_reason = status_reason(results, outcome)
    mapping.last_sync_at = utcnow()
    mapping.job_id = None
    db.session.commit()
