"""Every auditable action of the integration screens writes exactly one audit row, and none holds a secret."""

import json

import pytest

from tests.fixtures.integrations import HX, company, connect
from webapp.connections import get_integration
from webapp.extensions import db
from webapp.models import AuditEvent, CompanyMapping, Product, ProductMapping

SECRETS = ("sim-private", "sim-secret", "sim-password", "SIMTRACKINGID")


def _prepare_sync(integration):
    acme = company("Acme Dental")
    product = db.session.scalar(db.select(Product).filter_by(name="Endpoint Backup"))
    db.session.add_all([
        ProductMapping(integration=integration, product_id=product.id, psa_product_id="1", psa_product_name="x"),
        CompanyMapping(integration=integration, company=acme, psa_company_id="1", agreement_id="1"),
    ])
    db.session.commit()
    return acme


ACTIONS = {
    "integration.schedule": lambda c, i: c.post("/integrations/connectwise/schedule", headers=HX, data={
        "schedule_kind": "daily", "schedule_time": "03:15"}),
    "integration.options": lambda c, i: c.post("/integrations/connectwise/options", headers=HX, data={
        "push_month": "month_to_date", "create_missing_lines": "on"}),
    "integration.scope": lambda c, i: c.post("/integrations/connectwise/scope", headers=HX, data={
        "type_ids": ["1"]}),
    "integration.status": lambda c, i: c.post("/integrations/connectwise/status", headers=HX, data={}),
    "company_mapping.excluded": lambda c, i: c.post(
        f"/integrations/connectwise/companies/{company('Bluebird Logistics').id}/exclude", headers=HX),
    "sync.requested": lambda c, i: c.post("/integrations/connectwise/sync", headers=HX),
}


@pytest.mark.parametrize("kind", sorted(ACTIONS))
def test_each_integration_action_writes_exactly_one_audit_row_without_secrets(kind, psa_app, psa_sim, client,
                                                                                login_as):
    login_as("admin")
    integration = connect("connectwise", psa_sim)
    _prepare_sync(integration)
    before = db.session.scalar(db.select(db.func.count(AuditEvent.id)))
    response = ACTIONS[kind](client, integration)
    assert response.status_code in (200, 204, 302), response.text
    events = db.session.scalars(db.select(AuditEvent).where(AuditEvent.id > before)).all()
    assert [e.kind for e in events] == [kind]
    assert events[0].actor == "admin@msp.example"
    dumped = json.dumps([events[0].summary, events[0].target, events[0].before, events[0].after], default=str)
    assert not any(secret in dumped for secret in SECRETS)


def test_changing_credentials_audits_the_field_names_only(psa_app, psa_sim, client, login_as):
    login_as("admin")
    client.post("/integrations/connectwise/credentials", headers=HX, data={
        "site": psa_sim.host, "company_id": "seatsync", "public_key": "sim-public", "private_key": "sim-private"})
    (event,) = db.session.scalars(db.select(AuditEvent).filter_by(kind="integration.credentials")).all()
    assert "private_key" in json.dumps([event.summary, event.before, event.after], default=str)
    assert "sim-private" not in json.dumps([event.summary, event.target, event.before, event.after], default=str)
    assert get_integration("connectwise").credentials_status == "ok"
