"""Every `next` field redirects only within SeatSync (issue 11 §10)."""

import pytest

from tests.fixtures.app import PASSWORD
from webapp.cli import create_user
from webapp.extensions import db

OFF_SITE = ["//evil.example/x", "https://evil.example/", "/\\evil.example", "/\t/evil.example",
            "\\\\evil.example", "javascript:alert(1)", "evil.example"]


@pytest.mark.parametrize("target", OFF_SITE)
def test_sign_in_never_returns_to_another_site(client, target):
    create_user("ana@msp.example", "billing", PASSWORD)
    db.session.commit()
    response = client.post("/login", query_string={"next": target},
                           data={"email": "ana@msp.example", "password": PASSWORD})
    assert response.headers["Location"] == "/"


def test_sign_in_returns_to_the_page_asked_for(client):
    create_user("ana@msp.example", "billing", PASSWORD)
    db.session.commit()
    response = client.post("/login", query_string={"next": "/seats?page=2"},
                           data={"email": "ana@msp.example", "password": PASSWORD})
    assert response.headers["Location"] == "/seats?page=2"


@pytest.mark.parametrize("target", OFF_SITE)
def test_a_form_post_never_redirects_to_another_site(client, login_as, target):
    login_as("admin")
    response = client.post("/integrations/connectwise/sync", data={"next": target})
    assert response.status_code == 302
    assert response.headers["Location"] == "/integrations/connectwise/"
