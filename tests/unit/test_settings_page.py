"""The Settings page: organisation, sign-in, API tokens and encryption-key rotation; admins change, others read."""

import re

import pytest
from cryptography.fernet import Fernet

from tests.fixtures.app import TEST_ENCRYPTION_KEY
from webapp.crypto import decrypt_json, encrypt_json, is_current
from webapp.extensions import db
from webapp.models import ApiToken, AuditEvent, Integration, Organisation


def audit_rows():
    db.session.expire_all()
    return db.session.scalars(db.select(AuditEvent).order_by(AuditEvent.id)).all()


def test_every_role_can_read_the_settings_but_only_admins_see_the_controls(client, login_as):
    login_as("viewer")
    page = client.get("/settings")
    assert page.status_code == 200 and "Only admins can change settings." in page.text
    assert "Create token" not in page.text and "Save organisation" not in page.text


def test_an_admin_renames_the_organisation_and_sets_its_time_zone_audited_once(client, login_as):
    login_as("admin")
    response = client.post("/settings/organisation", data={"name": "Contoso MSP", "timezone": "Europe/London",
                                                           "cw_client_id": "abc-123"}, follow_redirects=True)
    assert "Settings saved." in response.text
    org = Organisation.get()
    assert (org.name, org.timezone, org.cw_client_id) == ("Contoso MSP", "Europe/London", "abc-123")
    [row] = audit_rows()
    assert row.kind == "settings.changed"
    assert row.before == {"name": "My MSP", "timezone": "UTC", "cw_client_id": ""}
    assert row.after == {"name": "Contoso MSP", "timezone": "Europe/London", "cw_client_id": "abc-123"}
    client.post("/settings/organisation", data={"name": "Contoso MSP", "timezone": "Europe/London",
                                                "cw_client_id": "abc-123"})
    assert len(audit_rows()) == 1  # saving without a change writes nothing


@pytest.mark.parametrize("timezone", ["Mars/Olympus_Mons", "../../etc/passwd", ""])
def test_a_time_zone_that_is_not_an_iana_name_is_refused(client, login_as, timezone):
    login_as("admin")
    page = client.post("/settings/organisation", data={"name": "X", "timezone": timezone})
    assert page.status_code == 422 and "is not a time zone" in page.text
    assert Organisation.get().timezone == "UTC" and audit_rows() == []


def test_an_api_token_is_shown_once_listed_by_prefix_and_revocable(client, login_as):
    login_as("admin")
    page = client.post("/settings/tokens", data={"name": "Vendor portal", "scope": "write"})
    token = re.search(r'<code class="secret-once" id="new-token">([^<]+)</code>', page.text).group(1)
    row = db.session.scalar(db.select(ApiToken))
    assert row.token_hash == ApiToken.hash(token) and row.scope == "write" and row.allows("write")
    listing = client.get("/settings").text
    assert token not in listing and f"{row.prefix}…" in listing and "Vendor portal" in listing
    client.post(f"/settings/tokens/{row.id}/revoke")
    db.session.refresh(row)
    assert row.revoked_at is not None and not row.allows("read")
    rows = audit_rows()
    assert [r.kind for r in rows] == ["token.created", "token.revoked"]
    assert token not in repr([(r.summary, r.before, r.after) for r in rows])


def test_a_token_needs_a_name_and_a_known_scope(client, login_as):
    login_as("admin")
    assert client.post("/settings/tokens", data={"name": "", "scope": "read"}).status_code == 422
    assert client.post("/settings/tokens", data={"name": "x", "scope": "admin"}).status_code == 422
    assert db.session.scalar(db.select(db.func.count(ApiToken.id))) == 0


def test_password_sign_in_can_be_limited_only_with_sso_and_a_break_glass_admin(app, client, login_as):
    me = login_as("admin")
    answer = client.post("/settings/sign-in", data={"local_login_disabled": "1"}, follow_redirects=True)
    assert "Configure single sign-on" in answer.text
    app.config.update(OIDC_ISSUER="https://login.example", OIDC_CLIENT_ID="id", OIDC_CLIENT_SECRET="s3cr3t")
    answer = client.post("/settings/sign-in", data={"local_login_disabled": "1"}, follow_redirects=True)
    assert "Mark at least one admin as break-glass" in answer.text
    assert not Organisation.get().local_login_disabled
    me.break_glass = True
    db.session.commit()
    client.post("/settings/sign-in", data={"local_login_disabled": "1"})
    db.session.expire_all()
    assert Organisation.get().local_login_disabled
    [row] = audit_rows()
    assert row.after == {"local_login_disabled": True}
    assert "s3cr3t" not in client.get("/settings").text


def _integration_with_old_key(app) -> Integration:
    old_key = TEST_ENCRYPTION_KEY
    integration = Integration(kind="connectwise", credentials_encrypted=encrypt_json({"private_key": "pk-123"}))
    db.session.add(integration)
    db.session.commit()
    # Rotation: a new key goes first; the old one stays to decrypt.
    app.config["ENCRYPTION_KEYS"] = [Fernet.generate_key().decode(), old_key]
    return integration


def test_the_page_shows_credentials_waiting_for_key_rotation_and_the_cli_rotates_them(app, client, login_as,
                                                                                    runner):
    login_as("admin")
    integration = _integration_with_old_key(app)
    page = client.get("/settings").text
    assert "rotation pending" in page and "0 of 1 credential sets use the current key" in page
    assert "2 keys configured in ENCRYPTION_KEY" in page
    result = runner.invoke(args=["rotate-encryption-key"])
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 1 of 1" in result.output
    db.session.expire_all()
    integration = db.session.get(Integration, integration.id)
    assert is_current(integration.credentials_encrypted)
    assert decrypt_json(integration.credentials_encrypted) == {"private_key": "pk-123"}
    assert "All 1 stored credential set use the current key" in client.get("/settings").text
    [row] = audit_rows()
    assert row.kind == "credentials.rotated" and "pk-123" not in repr((row.summary, row.before, row.after))
    assert "Re-encrypted 0 of 1" in runner.invoke(args=["rotate-encryption-key"]).output


@pytest.mark.parametrize("path,data", [
    ("/settings/organisation", {"name": "X", "timezone": "UTC"}),
    ("/settings/tokens", {"name": "x", "scope": "read"}),
    ("/settings/sign-in", {"local_login_disabled": "1"}),
])
def test_billing_users_cannot_change_settings(client, login_as, path, data):
    login_as("billing")
    assert client.post(path, data=data).status_code == 403
