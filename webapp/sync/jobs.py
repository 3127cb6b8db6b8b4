"""RQ entry points of a sync: plan the run, push batches of companies, sweep up after dead jobs.

A run's planning job (`SyncRun.job_id`) fans the claimed companies out into push jobs that any number
of workers take. Each company mapping's `job_id` names the job that owns it and `sync_run_id` its
run, which is how the sweeper finds companies whose job died (worker killed, job failed) and hands
them to a new job: a SIGKILLed worker leaves its RQ job "started" forever, but its lease in Redis
expires. The sweeper runs on every cron tick, when a worker starts, and at the end of every push job
of a run, so a run ends even without the clock process.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math

from flask import current_app
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import select

from ..extensions import db
from ..jobs import on_cron_tick
from ..models import CompanyMapping, Integration, LineResult, SyncRun
from ..models._types import utcnow
from ..queue import enqueue, get_queue, get_redis
from . import state
from .leases import Leases, job_lease_key, lease_seconds, lock_key
from .push import Pusher
from .review import push_approved
from .state import CompanyStatus, JobRef, JobRole, LineAction, RunState

log = logging.getLogger(__name__)

JOB_TIMEOUT = 3600
DEFAULT_BATCH = 20
MAX_ATTEMPTS = 3  # a push job that crashed (a database error…) hands its companies on this many times
# Companies per push job, by what one line read costs:
# - ConnectWise reads each agreement on its own, so small batches spread the run over workers at no cost;
# - Autotask reads up to 500 contracts in two queries, so fewer, larger batches save read calls;
# - Kaseya BMS reads contract lines per mapped service across the whole tenant, so every batch pays the
#   same full read: as many batches as writes may be in flight (3), for three full reads in all;
# - HaloPSA reads many recurring invoices through the list of all of them (a page per 100), so it is split
#   the same way: three batches, each reading the list once.
BATCH_BY_KIND = {"connectwise": 20, "autotask": 50}
SPLIT_IN_BATCHES = {"kaseya_bms": 3, "halopsa": 3}


def batch_size(kind: str, companies: int) -> int:
    """Companies per push job: big enough to batch the line reads, small enough to spread over workers."""
    configured = current_app.config.get("SYNC_BATCH_SIZE")
    if configured:
        return max(1, int(configured))
    if kind in SPLIT_IN_BATCHES:
        return max(1, math.ceil(companies / SPLIT_IN_BATCHES[kind]))
    return BATCH_BY_KIND.get(kind, DEFAULT_BATCH)


def enqueue_job(job: JobRef, *args, delay: float = 0) -> None:
    func = plan_run if job.role == JobRole.PLAN else push_companies
    if delay:
        get_queue().enqueue_in(dt.timedelta(seconds=delay), func, job.run_id, *args, job_id=job.id,
                               job_timeout=JOB_TIMEOUT)
    else:
        enqueue(func, job.run_id, *args, job_id=job.id, job_timeout=JOB_TIMEOUT)


def _current_job_id() -> str | None:
    job = get_current_job()
    return job.id if job is not None else None


def job_session(func):
    """Run a job body inside a lease that shows the job alive; whatever happens, end its database
    transaction, and if it crashed hand the companies it still holds to a new job (after a pause),
    so no failure leaves a company busy beyond its lease."""

    @functools.wraps(func)
    def wrapper(run_id: int, *args, attempt: int = 0, **kwargs):
        job_id = _current_job_id()
        try:
            with Leases(get_redis(), lease_seconds()) as leases:
                if job_id is not None:
                    leases.hold(job_lease_key(job_id))
                return func(run_id, *args, leases=leases, job_id=job_id, **kwargs)
        except Exception:
            db.session.rollback()
            log.exception("sync job %s of run %s failed", job_id, run_id)
            if job_id is not None:
                recover(run_id, job_id, attempt)
            raise
        finally:
            db.session.close()

    return wrapper


def recover(run_id: int, job_id: str, attempt: int) -> None:
    """Hand a crashed job's companies to a new push job, or after MAX_ATTEMPTS close them as errors."""
    try:
        ids = list(db.session.scalars(state.owned_by(job_id)))
        if not ids:
            return
        if attempt + 1 < MAX_ATTEMPTS:
            new = JobRef.new(run_id, JobRole.PUSH)
            state.hand_over(ids, new, from_job=job_id)
            db.session.commit()
            get_queue().enqueue_in(dt.timedelta(seconds=min(10, lease_seconds())), push_companies, run_id, ids,
                                   attempt=attempt + 1, job_id=new.id, job_timeout=JOB_TIMEOUT)
            return
        reason = "SeatSync failed to push this company several times; the next sync tries again."
        state.finish_companies(run_id, [state.Finished(i, CompanyStatus.ERROR, reason) for i in ids], job_id=job_id)
        db.session.commit()
        state.close_run_if_done(run_id)
    except Exception:  # the sweeper takes the companies over once the job's lease has expired
        db.session.rollback()
        log.exception("could not hand on the companies of sync job %s", job_id)


# --------------------------------------------------------------------------------------------------
# The jobs
# --------------------------------------------------------------------------------------------------
@job_session
def plan_run(run_id: int, *, leases: Leases, job_id: str | None) -> dict:
    """Fix the billed month, then split the companies this job owns into push jobs."""
    from ..counts import push_month

    run = db.session.get(SyncRun, run_id)
    if not state.run_is_open(run):
        return {"batches": 0}
    integration = db.session.get(Integration, run.integration_id)
    state.run_started(run, push_month(integration.option("push_month"), utcnow()))
    # By agreement, so companies sharing an agreement land in one batch (and one read).
    ids = list(db.session.scalars(state.owned_by(job_id or run.job_id).order_by(None)
                                  .order_by(CompanyMapping.agreement_id, CompanyMapping.id)))
    size = batch_size(integration.kind, len(ids))
    batches = []
    for start in range(0, len(ids), size):
        batch = ids[start:start + size]
        job = JobRef.new(run.id, JobRole.PUSH)
        state.hand_over(batch, job)
        batches.append((job, batch))
    db.session.commit()
    for job, batch in batches:
        enqueue_job(job, batch)
    if not batches:
        state.close_run_if_done(run.id)
    return {"batches": len(batches)}


@job_session
def push_companies(run_id: int, mapping_ids: list[int], *, leases: Leases, job_id: str | None) -> dict:
    """Push a batch of a run's companies: those this job still owns and whose push lock it gets."""
    run = db.session.get(SyncRun, run_id)
    if run is None:
        return {"skipped": "run deleted"}
    query = state.owned_by(job_id, mapping_ids) if job_id else select(CompanyMapping.id).where(
        CompanyMapping.id.in_(mapping_ids), CompanyMapping.status.in_(state.BUSY))
    ids = list(db.session.scalars(query))
    integration = db.session.get(Integration, run.integration_id)
    if ids and not _blocked(run, integration, ids, job_id):
        held = [i for i in ids if leases.acquire(lock_key(integration.id, i))]
        _defer([i for i in ids if i not in held], run_id, job_id)
        if held:
            state.start_pushing(held, run)
            db.session.commit()
            Pusher(run, integration, leases, job_id=job_id).push(held)
    state.close_run_if_done(run_id)
    sweep_run(run_id, utcnow())
    return {"companies": len(ids)}


def _blocked(run: SyncRun, integration: Integration, ids: list[int], job_id: str | None) -> bool:
    """Close the companies when nothing may be sent now (integration disabled, credentials failing,
    the run stopped); True if so."""
    if not integration.enabled:
        outcome, reason, synced = (CompanyStatus.DISABLED,
                                   "The integration is disabled: nothing was sent to the PSA.", False)
    elif integration.credentials_status == "failing" or state.stop_reason(run.id):
        outcome, synced = CompanyStatus.ERROR, True
        reason = state.stop_reason(run.id) or ("The PSA rejected the API credentials: re-enter them and "
                                               "click Authenticate.")
    else:
        return False
    state.finish_companies(run.id, [state.Finished(i, outcome, reason, synced) for i in ids], job_id=job_id)
    db.session.commit()
    return True


def _defer(ids: list[int], run_id: int, job_id: str | None) -> None:
    """Companies another job is pushing right now (their push lock is taken): try them again later."""
    if not ids:
        return
    job = JobRef.new(run_id, JobRole.PUSH)
    state.hand_over(ids, job, from_job=job_id)
    db.session.commit()
    enqueue_job(job, ids, delay=min(10, lease_seconds()))


# --------------------------------------------------------------------------------------------------
# The sweeper
# --------------------------------------------------------------------------------------------------
def _job_alive(job_id: str, now: dt.datetime) -> bool:
    redis = get_redis()
    if redis.exists(job_lease_key(job_id)):
        return True
    try:
        job = Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=True)
    if status in ("queued", "deferred", "scheduled"):
        return True
    if status == "started":
        # Started but no lease: its worker died, unless it has only just started (lease not yet taken).
        started = job.started_at
        if started is not None and started.tzinfo is None:
            started = started.replace(tzinfo=dt.UTC)
        return started is not None and (now - started).total_seconds() < lease_seconds()
    return False


def sweep_run(run_id: int, now: dt.datetime) -> int:
    """Hand the companies of a run whose job died to a new job; close the run when all are done."""
    run = db.session.get(SyncRun, run_id)
    if run is None or run.state not in state.ACTIVE_RUN:
        return 0
    by_job: dict[str, list[int]] = {}
    for mapping_id, job_id in state.busy_of_run(run.id):
        by_job.setdefault(job_id or "", []).append(mapping_id)
    if not by_job:
        state.close_run_if_done(run.id)
        return 0
    taken = 0
    for job_id, ids in by_job.items():
        if job_id and _job_alive(job_id, now):
            continue
        dead = JobRef.of_owner(run, job_id)
        new = JobRef.new(run.id, dead.role)
        state.hand_over(ids, new, from_job=job_id or None)
        if dead.role == JobRole.PLAN:
            state.replan(run, new)
        db.session.commit()
        enqueue_job(new, *(() if dead.role == JobRole.PLAN else (ids,)))
        log.warning("sync run %s: job %s died; %d companies handed to %s", run.id, job_id, len(ids), new.id)
        taken += len(ids)
    return taken


@on_cron_tick
def sweep_stale_runs(now: dt.datetime) -> int:
    """Every tick: take over the companies of dead jobs, close finished runs, and push approved changes
    whose company another run held when they were approved."""
    run_ids = db.session.scalars(select(SyncRun.id).where(SyncRun.state.in_(state.ACTIVE_RUN))).all()
    taken = sum(sweep_run(run_id, now) for run_id in run_ids)
    approved = select(LineResult.run_id).where(LineResult.action == LineAction.APPROVED)
    for run in db.session.scalars(select(SyncRun).where(SyncRun.state == RunState.AWAITING_REVIEW,
                                                        SyncRun.id.in_(approved))).all():
        taken += push_approved(run)
    return taken
