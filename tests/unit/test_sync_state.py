"""Every transition of the sync engine's states (webapp/sync/state.py), table-driven, and the rule that
no other module writes status or action strings of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from webapp.extensions import db
from webapp.models import Company, CompanyMapping, Integration, LineResult
from webapp.sync import state
from webapp.sync.state import CompanyStatus, JobRef, JobRole, LineAction, RunState, Verification

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_with_companies(app):
    integration = Integration(kind="connectwise", enabled=True, credentials_status="ok")
    db.session.add(integration)
    db.session.flush()
    mappings = []
    for n in range(3):
        company = Company(name=f"Company {n}", external_id=f"c{n}")
        db.session.add(company)
        db.session.flush()
        mapping = CompanyMapping(integration_id=integration.id, company_id=company.id, psa_company_id=str(n),
                                 agreement_id=str(100 + n))
        db.session.add(mapping)
        mappings.append(mapping)
    db.session.flush()
    run = state.new_run(integration_id=integration.id, trigger="sync_now")
    candidates = db.select(CompanyMapping.id).where(CompanyMapping.integration_id == integration.id)
    run.total = len(state.claim_companies(run, candidates))
    db.session.commit()
    return run, mappings


def statuses(mappings):
    db.session.expire_all()
    return [db.session.get(CompanyMapping, m.id).status for m in mappings]


def test_claiming_queues_the_companies_for_the_runs_planning_job_and_never_twice(run_with_companies):
    run, mappings = run_with_companies
    assert run.state == RunState.QUEUED and run.total == 3 and run.job_id
    assert statuses(mappings) == [CompanyStatus.QUEUED] * 3
    other = state.new_run(integration_id=run.integration_id, trigger="schedule")
    candidates = db.select(CompanyMapping.id).where(CompanyMapping.integration_id == run.integration_id)
    assert state.claim_companies(other, candidates) == []


FINISHES = [
    # (outcome, counter that grows, synced)
    (CompanyStatus.IN_SYNC, "in_sync", True),
    (CompanyStatus.UPDATED, "updated", True),
    (CompanyStatus.NEEDS_ATTENTION, "needs_attention", True),
    (CompanyStatus.ERROR, "errors", True),
    (CompanyStatus.DISABLED, "needs_attention", False),
]


@pytest.mark.parametrize(("outcome", "counter", "synced"), FINISHES)
def test_finishing_a_company_sets_its_status_releases_it_and_counts_it_once(run_with_companies, outcome, counter,
                                                                             synced):
    run, mappings = run_with_companies
    job = JobRef.new(run.id, JobRole.PUSH)
    state.hand_over([m.id for m in mappings], job)
    state.start_pushing([m.id for m in mappings], run)
    finished = state.finish_companies(run.id, [state.Finished(mappings[0].id, outcome, "why", synced)],
                                      job_id=job.id)
    # A second finish of the same company (a job that lost it meanwhile) changes nothing.
    again = state.finish_companies(run.id, [state.Finished(mappings[0].id, outcome, "why")], job_id=job.id)
    db.session.commit()
    db.session.refresh(run)
    mapping = db.session.get(CompanyMapping, mappings[0].id)
    assert (finished, again) == (1, 0)
    assert mapping.status == outcome and mapping.job_id is None and mapping.sync_run_id is None
    assert (mapping.last_sync_at is not None) == synced
    assert run.done == 1 and getattr(run, counter) == 1
    assert run.in_sync + run.updated + run.needs_attention + run.errors == run.done
    assert statuses(mappings)[1:] == [CompanyStatus.SYNCING] * 2


def test_a_job_only_finishes_the_companies_it_still_owns(run_with_companies):
    run, mappings = run_with_companies
    first, second = JobRef.new(run.id, JobRole.PUSH), JobRef.new(run.id, JobRole.PUSH)
    state.hand_over([mappings[0].id], first)
    state.hand_over([mappings[0].id], second, from_job=first.id)  # the sweeper gave it to another job
    assert state.finish_companies(run.id, [state.Finished(mappings[0].id, CompanyStatus.UPDATED)],
                                  job_id=first.id) == 0
    assert state.finish_companies(run.id, [state.Finished(mappings[0].id, CompanyStatus.UPDATED)],
                                  job_id=second.id) == 1


RUN_ENDINGS = [
    # (undecided lines left, stop reason, resulting state)
    (False, "", RunState.FINISHED),
    (True, "", RunState.AWAITING_REVIEW),
    (False, "Stopped: credentials", RunState.FAILED),
    (True, "Stopped: credentials", RunState.FAILED),
]


@pytest.mark.parametrize(("undecided", "stop", "ending"), RUN_ENDINGS)
def test_a_run_ends_once_every_company_is_done(run_with_companies, undecided, stop, ending):
    run, mappings = run_with_companies
    state.close_run_if_done(run.id)
    db.session.refresh(run)
    assert run.state == RunState.QUEUED  # not done yet
    if stop:
        state.stop_run(run.id, stop)
    if undecided:
        db.session.add(LineResult(run_id=run.id, company_mapping_id=mappings[0].id, action=LineAction.PLANNED))
    state.finish_companies(run.id, [state.Finished(m.id, CompanyStatus.IN_SYNC) for m in mappings])
    db.session.commit()
    state.close_run_if_done(run.id)
    db.session.refresh(run)
    assert run.state == ending
    assert (run.finished_at is None) == (ending == RunState.AWAITING_REVIEW)
    if stop:
        assert run.message == stop


def test_approving_reopens_the_company_and_takes_back_its_earlier_count(run_with_companies):
    run, mappings = run_with_companies
    line = LineResult(run_id=run.id, company_mapping_id=mappings[0].id, action=LineAction.PLANNED, target=4)
    db.session.add(line)
    state.finish_companies(run.id, [state.Finished(m.id, CompanyStatus.NEEDS_ATTENTION) for m in mappings])
    db.session.commit()
    state.close_run_if_done(run.id)
    db.session.refresh(run)
    assert run.state == RunState.AWAITING_REVIEW and run.needs_attention == 3
    state.decide_lines([line], approve=True)
    job = JobRef.new(run.id, JobRole.PUSH)
    assert state.reopen_for_approval(run, [mappings[0].id], job) == [mappings[0].id]
    db.session.commit()
    db.session.refresh(run)
    assert run.state == RunState.RUNNING and run.done == 2 and run.needs_attention == 2
    assert statuses(mappings)[0] == CompanyStatus.QUEUED


def test_a_read_back_mismatch_moves_the_company_to_needs_attention_and_the_counters_with_it(run_with_companies):
    run, mappings = run_with_companies
    state.finish_companies(run.id, [state.Finished(m.id, CompanyStatus.UPDATED) for m in mappings])
    state.reclassify(run.id, mappings[1].id, CompanyStatus.UPDATED, CompanyStatus.NEEDS_ATTENTION, "differs")
    db.session.commit()
    db.session.refresh(run)
    assert (run.updated, run.needs_attention, run.done) == (2, 1, 3)
    assert statuses(mappings) == [CompanyStatus.UPDATED, CompanyStatus.NEEDS_ATTENTION, CompanyStatus.UPDATED]


OUTCOMES = [
    ([LineAction.NONE, LineAction.NONE], [], CompanyStatus.IN_SYNC),
    ([LineAction.UPDATED, LineAction.NONE], [], CompanyStatus.UPDATED),
    ([LineAction.ADJUSTED, LineAction.NEEDS_ATTENTION], [], CompanyStatus.NEEDS_ATTENTION),
    ([LineAction.UPDATED, LineAction.ERROR], [], CompanyStatus.ERROR),
    ([LineAction.PLANNED], [], CompanyStatus.NEEDS_ATTENTION),
    ([LineAction.DISMISSED, LineAction.NONE], [], CompanyStatus.NEEDS_ATTENTION),
    ([LineAction.UPDATED], [Verification.MISMATCH], CompanyStatus.NEEDS_ATTENTION),
    ([LineAction.UPDATED], [Verification.NOT_VERIFIABLE], CompanyStatus.UPDATED),
]


@pytest.mark.parametrize(("actions", "verifications", "outcome"), OUTCOMES)
def test_a_companys_outcome_is_its_worst_line(actions, verifications, outcome):
    assert state.company_outcome(actions, verifications) == outcome


def test_a_partial_outcome_says_both_what_was_updated_and_what_is_missing():
    results = [LineResult(action=LineAction.UPDATED, psa_product_id="7"),
               LineResult(action=LineAction.NEEDS_ATTENTION, psa_product_id="", message="not mapped")]
    outcome = state.company_outcome(r.action for r in results)
    assert outcome == CompanyStatus.NEEDS_ATTENTION
    assert state.status_reason(results, outcome) == "updated 1 line(s) · 1 product(s) not mapped."


def test_pages_show_words_not_codes():
    for value in [*RunState, *CompanyStatus, *LineAction, *Verification]:
        assert state.word(value) and "_" not in state.word(value), value
        assert state.tone(value) in ("ok", "live", "attention", "error", "muted"), value
    assert state.word(RunState.AWAITING_REVIEW) == "waiting for approval"
    assert state.word(Verification.NOT_VERIFIABLE) == "not verifiable"


# --------------------------------------------------------------------------------------------------
# No status or action literal outside the state module
# --------------------------------------------------------------------------------------------------
ENGINE_WORDS = {str(v) for v in (*CompanyStatus, *LineAction, *Verification, *RunState)}
# Values that also mean something else in other vocabularies (RQ job states, import states, audit text):
# checked only where they are compared with an engine column.
SHARED = {"queued", "running", "finished", "failed", "none", "error", "updated", "disabled", "excluded",
          "created", "cancelled"}
TEMPLATE_COMPARISON = re.compile(
    r"""(?:run\.state|line\.action|mapping\.status|(?<![.\w])status)\s*(?:==|!=|in)\s*\(?["']([^"']+)["']""")
ENGINE_COLUMNS = re.compile(r"\.(status|state|action|verification)\s*(==|!=|in\b|not in\b)\s*")


def _literals_outside_state() -> list[str]:
    found = []
    for path in sorted((ROOT / "webapp").rglob("*.py")):
        # The clients' WriteResult.action words are the PSA interface's own vocabulary (base.py), which
        # the engine maps to LineAction; a model column's insert default is not a transition.
        if path.match("sync/state.py") or "psa_clients" in path.parts:
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ENGINE_WORDS:
                line = source.splitlines()[node.lineno - 1]
                if path.match("models/integrations.py") and "default=" in line:
                    continue
                if node.value not in SHARED or ENGINE_COLUMNS.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    for path in sorted((ROOT / "webapp" / "templates").rglob("*.html")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            quoted = TEMPLATE_COMPARISON.findall(line)
            if any(value in ENGINE_WORDS for value in quoted):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    return found


def test_no_status_or_action_string_is_written_outside_the_state_module():
    assert _literals_outside_state() == []
