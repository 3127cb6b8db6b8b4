"""The sync engine with real RQ worker processes, real Redis and the database, against the PSA simulator."""

from __future__ import annotations

import pytest

from tests.fixtures.workers import build_world, wait_for_run
from webapp.extensions import db
from webapp.models import CompanyMapping, LineResult

pytestmark = pytest.mark.integration

PM, EB = "Password Manager Business", "Endpoint Backup"
# Demo agreements: even-numbered customers already bill Password Manager Business (5, 7, 9, 11).
SEATS = {
    ("Acme Dental", PM): 5,  # already 5 in the PSA: in sync
    ("Acme Dental", EB): 2,  # no line yet: created
    ("Bluebird Logistics", PM): 4,  # no line: created
    ("Cedar Law Group", PM): 3,  # 7 in the PSA: lowered
    ("Delta Architects", EB): 1,
}


def psa_writes(sim, kind):
    """Requests that change something in the PSA (Autotask queries and BMS logins are POSTs that do not)."""
    return [r for r in sim.requests(kind) if r["method"] in ("POST", "PATCH", "PUT", "DELETE")
            and not r["path"].lower().endswith("/query") and "login" not in r["path"].lower()
            and "token" not in r["path"].lower()]


def expected():
    return {k: [float(v)] for k, v in SEATS.items()}


@pytest.mark.parametrize("kind", ["connectwise", "autotask"])
def test_a_full_sync_leaves_exactly_the_target_quantities_and_a_second_sync_writes_nothing(kind, psa_sim, rq_workers):
    world = build_world(kind, psa_sim, SEATS)
    rq_workers.start(2)
    run = wait_for_run(world.start().id)
    assert run.state == "finished", rq_workers.output()
    quantities = world.quantities()
    got = {k: v for k, v in quantities.items() if k in SEATS}
    assert got == expected()
    # Companies with no seats: lines for mapped products on their agreements are set to zero or left absent.
    assert all(v in ([0.0],) for k, v in quantities.items() if k not in SEATS and k[0] != "Evergreen Clinic"
               and k[0] != "Granite Accounting"), quantities
    assert run.total == len(world.mappings) and run.done == run.total
    errors = [(r.message, r.hint) for r in db.session.scalars(db.select(LineResult).filter_by(action="error"))]
    assert run.errors == 0 and run.updated >= 4, errors

    psa_sim.clear_log()
    second = wait_for_run(world.start().id)
    writes = psa_writes(psa_sim, kind)
    assert second.state == "finished" and second.updated == 0, rq_workers.output()
    assert writes == []
    statuses = set(db.session.scalars(db.select(CompanyMapping.status)))
    assert statuses == {"in sync"}
    assert db.session.scalar(db.select(db.func.count(LineResult.id)).where(LineResult.run_id == second.id,
                                                                            LineResult.action != "none")) == 0
