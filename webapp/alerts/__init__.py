"""Alerts: the sync engine records, this package turns records into events and delivers them.

Flow (one way): a run closes (webapp/sync/state.py `close_run_if_done`, whose conditional UPDATE
closes each run exactly once) → its `on_run_closed` hook enqueues `jobs.run_closed` → the run's
records become `AlertEvent`s (events.py) → one `Delivery` per channel that wants the event and has
not had the same key within the debounce window → `jobs.deliver` sends it through the queue, retried
with backoff; a channel whose deliveries fail ALERT_PAUSE_AFTER times in a row is paused until a
"Send test" succeeds. Digest channels collect their deliveries for one message a day (cron tick).
"""

from __future__ import annotations

EVENTS = {
    "run.finished": "Sync run finished (in sync, updated, needs attention, errors, verified)",
    "run.failed": "Sync run stopped",
    "line.failed": "A line could not be written",
    "credentials.failing": "PSA credentials rejected (401)",
    "mapping.missing": "New company or product without a mapping",
    "quantity.drift": "Quantity changed by hand in the PSA",
    "quantity.swing": "Quantity swing above the integration's threshold",
}
SEVERITIES = ("info", "warning", "error")
CHANNEL_KINDS = {"email": "E-mail", "teams": "Microsoft Teams", "slack": "Slack", "webhook": "Signed webhook"}


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else 0


def init_alerts(app) -> None:
    """Register the engine hook and the digest tick (the modules register themselves on import)."""
    from . import jobs  # noqa: F401
