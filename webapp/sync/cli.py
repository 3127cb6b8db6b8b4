"""`flask sync` and `flask sync-status`: the operator's view of the engine."""

from __future__ import annotations

import time

import click
from flask import Flask
from sqlalchemy import func, select

from ..extensions import db
from ..models import Company, CompanyMapping, Integration, SyncRun
from ..psa_clients import PSA_KINDS
from .state import ACTIVE_RUN, RunState


def _integrations(kind: str | None) -> list[Integration]:
    query = select(Integration).order_by(Integration.kind)
    if kind:
        query = query.where(Integration.kind == kind)
    return list(db.session.scalars(query))


def _summary(run: SyncRun) -> str:
    return (f"run {run.id} ({run.integration.kind}): {run.state.replace('_', ' ')} — {run.done}/{run.total} companies, "
            f"{run.in_sync} in sync, {run.updated} updated, {run.needs_attention} need attention, {run.errors} errors"
            + (f". {run.message}" if run.message else ""))


def _start_runs(kind: str | None, company: str | None) -> tuple[list[int], bool]:
    """Start a run per integration (or for one company); (run ids, whether any could not start)."""
    from . import SyncUnavailable, start_sync

    runs, failed = [], False
    for integration in _integrations(kind):
        if not kind and not integration.enabled:
            continue
        mapping = None
        if company:
            mapping = db.session.scalar(
                select(CompanyMapping).join(Company, Company.id == CompanyMapping.company_id)
                .where(CompanyMapping.integration_id == integration.id, Company.name == company))
            if mapping is None:
                click.echo(f"{integration.kind}: {company!r} has no company mapping.")
                failed = True
                continue
        try:
            run = start_sync(integration, trigger="cli", company_mapping=mapping)
        except SyncUnavailable as error:
            click.echo(f"{integration.kind}: {error.reason}")
            failed = True
            continue
        click.echo(f"{integration.kind}: run {run.id} queued ({run.total} companies).")
        runs.append(run.id)
    return runs, failed


def _wait_for(runs: list[int], timeout: int) -> bool:
    """Wait for the runs to end and print each outcome; True if any did not end well."""
    deadline = time.monotonic() + timeout
    pending = list(runs)
    while pending and time.monotonic() < deadline:
        time.sleep(0.5)
        db.session.rollback()
        pending = [r for r in pending if db.session.get(SyncRun, r).state in ACTIVE_RUN]
    failed = False
    for run_id in runs:
        run = db.session.get(SyncRun, run_id)
        click.echo(_summary(run))
        failed = failed or run.state in (*ACTIVE_RUN, RunState.FAILED) or run.errors > 0
    return failed


def register_sync_cli(app: Flask) -> None:
    @app.cli.command("sync")
    @click.option("--psa", "kind", type=click.Choice(PSA_KINDS),
                  help="Only this PSA (default: every enabled integration).")
    @click.option("--company", help="Only this SeatSync company (exact name).")
    @click.option("--wait/--no-wait", default=True, help="Wait for the run(s) to end and print the outcome.")
    @click.option("--timeout", default=3600, show_default=True, help="Seconds to wait.")
    def sync_command(kind: str | None, company: str | None, wait: bool, timeout: int):
        """Run a sync now, as "Sync now" does."""
        runs, failed = _start_runs(kind, company)
        if not runs and not failed:
            click.echo("No enabled integration to sync.")
        if wait:
            failed = _wait_for(runs, timeout) or failed
        if failed:
            raise SystemExit(1)

    @app.cli.command("sync-status")
    def sync_status():
        """Integrations, schedules, the last run and company statuses."""
        from .schedule import describe, next_run

        for integration in _integrations(None):
            nxt = next_run(integration)
            click.echo(f"{integration.kind}: {'enabled' if integration.enabled else 'disabled'}, credentials "
                       f"{integration.credentials_status}, schedule {describe(integration)}"
                       + (f", next run {nxt:%Y-%m-%d %H:%M} UTC" if nxt else ""))
            statuses = db.session.execute(
                select(CompanyMapping.status, func.count()).where(CompanyMapping.integration_id == integration.id)
                .group_by(CompanyMapping.status).order_by(CompanyMapping.status)).all()
            if statuses:
                click.echo("  companies: " + ", ".join(f"{n} {s}" for s, n in statuses))
            last = db.session.scalar(select(SyncRun).where(SyncRun.integration_id == integration.id)
                                     .order_by(SyncRun.id.desc()).limit(1))
            if last is not None:
                click.echo("  last " + _summary(last))
