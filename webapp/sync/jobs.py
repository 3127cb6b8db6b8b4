"""RQ entry points of a sync: plan the run, push batches of companies, sweep up after dead workers.

A run's job (`sync-<run>`) fans the claimed companies out into batch jobs (`sync-<run>-b<n>`) that
any number of workers take. Each company mapping's `job_id` names the job that owns it, which is how
the sweeper (every cron tick) finds companies whose job died with its worker and hands them to a
new job: a SIGKILLed worker leaves its RQ job "started" forever, but its lease in Redis expires.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid

from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job
from sqlalchemy import select

from ..extensions import db
from ..jobs import on_cron_tick
from ..models import CompanyMapping, Integration, SyncRun
from ..queue import enqueue, get_redis
from .push import (
    BUSY,
    Leases,
    job_session,
    lease_key,
    lease_seconds,
    maybe_finish,
    of_run,
    push_companies,
    run_job_prefix,
    utcnow,
)

log = logging.getLogger(__name__)

JOB_TIMEOUT = 3600
DEFAULT_BATCH = 20
# Companies per batch job, by what one line read costs:
# - ConnectWise reads each agreement on its own, so small batches spread the run over workers at no cost;
# - Autotask reads up to 500 contracts in two queries, so fewer, larger batches save read calls;
# - Kaseya BMS reads contract lines per mapped service across the whole tenant, so every batch pays the
#   same full read: as many batches as writes may be in flight (3), so each runs on its own worker and
#   the recording of results is shared out, for three full reads in all.
BATCH_BY_KIND = {"connectwise": 20, "autotask": 50}
SPLIT_IN_BATCHES = {"kaseya_bms": 3}


def batch_size(kind: str, companies: int) -> int:
    """Companies per batch job: big enough to batch the line reads, small enough to spread over workers."""
    configured = current_app.config.get("SYNC_BATCH_SIZE")
    if configured:
        return max(1, int(configured))
    if kind in SPLIT_IN_BATCHES:
        return max(1, math.ceil(companies / SPLIT_IN_BATCHES[kind]))
    return BATCH_BY_KIND.get(kind, DEFAULT_BATCH)


def enqueue_run(run: SyncRun) -> None:
    enqueue(plan_run, run.id, job_id=run_job_prefix(run.id), job_timeout=JOB_TIMEOUT)


@job_session
def plan_run(run_id: int, source_job_id: str | None = None) -> dict:
    """Fix the billed month, then split the run's companies (those owned by `source_job_id`) into batch jobs."""
    from rq import get_current_job

    from ..counts import push_month

    run = db.session.get(SyncRun, run_id)
    if run is None or run.state not in ("queued", "running"):
        return {"batches": 0}
    job = get_current_job()
    with Leases(get_redis(), lease_seconds()) as leases:
        if job is not None:
            leases.hold(lease_key(job.id))
        integration = db.session.get(Integration, run.integration_id)
        if run.month is None:
            run.month = push_month(integration.option("push_month"), utcnow())
        run.state, run.started_at = "running", run.started_at or utcnow()
        ids = list(db.session.scalars(
            select(CompanyMapping.id)
            .where(CompanyMapping.job_id == (source_job_id or run_job_prefix(run.id)), CompanyMapping.status.in_(BUSY))
            .order_by(CompanyMapping.agreement_id, CompanyMapping.id)
        ))
        size = batch_size(integration.kind, len(ids))
        batches = []
        for n, start in enumerate(range(0, len(ids), size)):
            batch = ids[start:start + size]
            job_id = f"{source_job_id or run_job_prefix(run.id)}-b{n}"
            db.session.execute(db.update(CompanyMapping).where(CompanyMapping.id.in_(batch))
                               .values(job_id=job_id).execution_options(synchronize_session=False))
            batches.append((job_id, batch))
        db.session.commit()
        for job_id, batch in batches:
            enqueue(push_companies, run.id, batch, job_id=job_id, job_timeout=JOB_TIMEOUT)
        if not batches:
            maybe_finish(run.id)
        return {"batches": len(batches)}


def _job_alive(job_id: str, now: dt.datetime) -> bool:
    redis = get_redis()
    if redis.exists(lease_key(job_id)):
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


@on_cron_tick
def sweep_stale_runs(now: dt.datetime) -> int:
    """Hand companies whose job died (worker killed, job lost) to a new job; close finished runs."""
    requeued = 0
    for run in db.session.scalars(select(SyncRun).where(SyncRun.state.in_(("queued", "running")))).all():
        rows = db.session.execute(
            select(CompanyMapping.id, CompanyMapping.job_id).where(of_run(run.id), CompanyMapping.status.in_(BUSY))
        ).all()
        if not rows:
            maybe_finish(run.id)
            continue
        by_job: dict[str, list[int]] = {}
        for mapping_id, job_id in rows:
            by_job.setdefault(job_id, []).append(mapping_id)
        for job_id, ids in by_job.items():
            if _job_alive(job_id, now):
                continue
            planning = job_id == run_job_prefix(run.id) or job_id.rsplit("-", 1)[-1].startswith("p")
            new_id = f"{run_job_prefix(run.id)}-{'p' if planning else 'r'}{uuid.uuid4().hex[:10]}"
            db.session.execute(db.update(CompanyMapping)
                               .where(CompanyMapping.id.in_(ids), CompanyMapping.job_id == job_id)
                               .values(job_id=new_id, status="queued").execution_options(synchronize_session=False))
            db.session.commit()
            if planning:  # the fan-out itself never ran, or died
                enqueue(plan_run, run.id, new_id, job_id=new_id, job_timeout=JOB_TIMEOUT)
            else:
                enqueue(push_companies, run.id, ids, job_id=new_id, job_timeout=JOB_TIMEOUT)
            log.warning("sync run %s: job %s died; %d companies handed to %s", run.id, job_id, len(ids), new_id)
            requeued += len(ids)
    return requeued

