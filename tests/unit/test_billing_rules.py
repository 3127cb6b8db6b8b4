"""Quantity rules on the product mappings page, the effective-date option, and money sums (PRODUCT.md §4b)."""

from __future__ import annotations

import pytest

from tests.fixtures.integrations import HX, connect
from webapp.connections import get_integration
from webapp.extensions import db
from webapp.models import AuditEvent, Product, ProductMapping
from webapp.sync.money import add_up, amount


def _psa_id(client, kind, product):
    options = client.get(f"/integrations/{kind}/products/options", query_string={"product": product.id, "q": "backup"},
                         headers=HX).text
    return options.split('<option value="', 2)[2].split('"', 1)[0]


@pytest.fixture
def mapped(psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect("autotask", psa_sim)
    client.get("/integrations/autotask/")
    product = db.session.scalar(db.select(Product).filter_by(name="Endpoint Backup"))
    return product, _psa_id(client, "autotask", product)


def test_quantity_rules_are_saved_with_the_mapping_and_audited(mapped, client):
    product, psa_id = mapped
    response = client.post("/integrations/autotask/products", headers=HX, data={
        f"product-{product.id}": psa_id, f"included-{product.id}": "3", f"minimum-{product.id}": "5",
        f"maximum-{product.id}": "", f"extra-{product.id}": "1"})
    assert response.status_code == 200 and "Product mappings saved" in response.text
    mapping = db.session.scalar(db.select(ProductMapping))
    assert (mapping.included, mapping.minimum, mapping.maximum, mapping.extra) == (3, 5, None, 1)
    assert f'name="included-{product.id}"' in response.text and 'value="3"' in response.text
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="integration.product_mappings"))
    assert event.after == {"Endpoint Backup": f"Endpoint Backup (#{psa_id}) 3 included, +1 extra, minimum 5"}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("included", "-1", "Included must be a whole number from 0 to 1,000,000"),
    ("extra", "2.5", "Extra must be a whole number"),
    ("minimum", "lots", "Minimum must be a whole number"),
    ("maximum", "99999999999", "Maximum must be a whole number"),
])
def test_a_bad_rule_is_refused_with_a_clear_message_and_nothing_is_saved(mapped, client, field, value, message):
    product, psa_id = mapped
    response = client.post("/integrations/autotask/products", headers=HX,
                           data={f"product-{product.id}": psa_id, f"{field}-{product.id}": value})
    assert response.status_code == 422
    assert response.headers["HX-Retarget"] == "#products"
    assert message in response.text and "Nothing was saved" in response.text
    assert f'value="{value}"' in response.text  # what was typed stays in the form
    assert db.session.scalar(db.select(ProductMapping)) is None


def test_a_maximum_below_the_minimum_is_refused(mapped, client):
    product, psa_id = mapped
    response = client.post("/integrations/autotask/products", headers=HX, data={
        f"product-{product.id}": psa_id, f"minimum-{product.id}": "10", f"maximum-{product.id}": "4"})
    assert response.status_code == 422 and "The maximum (4) must be at least the minimum (10)." in response.text
    without_js = client.post("/integrations/autotask/products", data={
        f"product-{product.id}": psa_id, f"minimum-{product.id}": "10", f"maximum-{product.id}": "4"})
    assert without_js.status_code == 422 and "must be at least the minimum" in without_js.text


def test_the_decrease_option_is_saved_and_explained_in_the_psas_words(psa_app, psa_sim, client, login_as):
    login_as("billing")
    connect("autotask", psa_sim)
    page = client.get("/integrations/autotask/").text
    assert "From the next billing period" in page and "contract service adjustment effective the 1st" in page
    client.post("/integrations/autotask/options", data={"decreases_from": "next_period"}, headers=HX)
    assert get_integration("autotask").option("decreases_from") == "next_period"
    client.post("/integrations/autotask/options", data={"decreases_from": "tomorrow"}, headers=HX)
    assert get_integration("autotask").option("decreases_from") == "now"  # an unknown choice is the default


def test_money_adds_up_per_company_and_per_run():
    money = add_up([(1, 30.0, 12.0, ""), (1, -5.0, -2.0, ""), (2, 10.0, None, ""), (3, -8.0, -3.0, ""),
                    (4, None, None, "")])
    assert money.up[""] == (35.0, 2) and money.down[""] == (-8.0, 1)
    total = money.totals[""]
    assert (total.price, total.priced, total.unpriced, total.margin_known) == (27.0, 4, 1, False)
    assert [m.price for m in money.of(1)] == [25.0]
    assert amount(1240.5) == "+1,240.50" and amount(-85, "EUR") == "\u221285.00 EUR" and amount(None) == "unknown"
