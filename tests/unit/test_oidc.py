"""Single sign-on: the full authorization code flow against the local OpenID provider."""

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.fixtures.app import PASSWORD
from tests.fixtures.oidc_provider import CLIENT_SECRET, OidcProvider
from webapp.cli import create_user
from webapp.extensions import db
from webapp.models import AuditEvent, Organisation, User
from webapp.settings import ConfigurationError, load_settings


def start(client, next_url=None) -> str:
    response = client.get("/login/sso" + (f"?{urlencode({'next': next_url})}" if next_url else ""))
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def finish(client, callback_url: str):
    parts = urlsplit(callback_url)
    return client.get(f"{parts.path}?{parts.query}", follow_redirects=True)


def sign_in(client, provider: OidcProvider, email: str, next_url=None):
    return finish(client, provider.sign_in(start(client, next_url), email))


def signed_in(client) -> bool:
    return client.get("/").status_code == 200


def test_the_sign_in_page_offers_sso_only_when_it_is_configured(app, client, oidc_provider):
    assert "Sign in with SSO" not in client.get("/login").text
    app.config.update(OIDC_ISSUER=oidc_provider.issuer, OIDC_CLIENT_ID="x", OIDC_CLIENT_SECRET="y")
    assert "Sign in with SSO" in client.get("/login").text


def test_a_new_colleague_signs_in_with_sso_and_becomes_a_viewer(app, client, sso):
    page = sign_in(client, sso, "new.colleague@msp.example", next_url="/")
    assert page.status_code == 200
    assert "new.colleague@msp.example · viewer" in page.text
    user = db.session.scalar(db.select(User).filter_by(email="new.colleague@msp.example"))
    assert user.role == "viewer" and user.oidc_subject == sso.subject_for("new.colleague@msp.example")
    assert user.password_hash is None and user.last_login_at is not None
    # PKCE: the code was redeemed with its verifier.
    assert sso.token_requests[-1]["code_verifier"]
    events = db.session.scalars(db.select(AuditEvent)).all()
    assert [(e.kind, e.target) for e in events] == [("user.created", "new.colleague@msp.example")]
    assert CLIENT_SECRET not in str([(e.summary, e.before, e.after) for e in events])


def test_new_sso_users_get_the_configured_default_role(app, client, sso):
    app.config["OIDC_DEFAULT_ROLE"] = "billing"
    sign_in(client, sso, "biller@msp.example")
    assert db.session.scalar(db.select(User.role).filter_by(email="biller@msp.example")) == "billing"


def test_an_existing_local_user_is_matched_by_email_and_keeps_their_role(app, client, sso):
    create_user("Boss@msp.example", "admin", PASSWORD)
    db.session.commit()
    page = sign_in(client, sso, "boss@msp.example")
    assert "boss@msp.example · admin" in page.text
    user = db.session.scalar(db.select(User).filter_by(email="boss@msp.example"))
    assert user.oidc_subject == sso.subject_for("boss@msp.example")
    assert db.session.scalar(db.select(db.func.count(User.id))) == 1
    assert db.session.scalar(db.select(db.func.count(AuditEvent.id))) == 0  # nobody was created


def test_a_user_is_found_by_subject_after_their_email_changed(app, client, sso):
    user, _ = create_user("old.name@msp.example", "billing", PASSWORD)
    user.oidc_subject = "stable-subject-42"
    db.session.commit()
    sso.id_token_overrides = {"sub": "stable-subject-42"}
    page = sign_in(client, sso, "new.name@msp.example")
    assert "old.name@msp.example · billing" in page.text


def test_a_forged_state_is_refused_with_a_clear_message(app, client, sso):
    callback = sso.sign_in(start(client), "someone@msp.example")
    query = parse_qs(urlsplit(callback).query)
    page = client.get("/login/sso/callback?" + urlencode({"code": query["code"][0], "state": "forged"}),
                      follow_redirects=True)
    assert "state mismatch" in page.text
    assert not signed_in(client)
    assert sso.token_requests == []  # the code was never redeemed


def test_an_answer_for_another_browser_is_refused(app, sso):
    attacker, victim = app.test_client(), app.test_client()
    callback = sso.sign_in(start(attacker), "attacker@msp.example")
    page = finish(victim, callback)
    assert "state mismatch" in page.text
    assert not signed_in(victim)


def test_an_id_token_for_another_application_is_refused(app, client, sso):
    sso.id_token_overrides = {"aud": "some-other-app"}
    page = sign_in(client, sso, "someone@msp.example")
    assert "meant for a different application (audience mismatch)" in page.text
    assert not signed_in(client)
    assert db.session.scalar(db.select(db.func.count(User.id))) == 0


def test_an_expired_id_token_is_refused(app, client, sso):
    now = int(time.time())
    sso.id_token_overrides = {"iat": now - 7200, "exp": now - 3600}
    page = sign_in(client, sso, "someone@msp.example")
    assert "ID token has expired" in page.text
    assert not signed_in(client)


def test_an_id_token_from_another_issuer_is_refused(app, client, sso):
    sso.id_token_overrides = {"iss": "https://evil.example"}
    page = sign_in(client, sso, "someone@msp.example")
    assert "unexpected issuer" in page.text
    assert not signed_in(client)


def test_an_account_from_a_disallowed_domain_is_refused(app, client, sso):
    page = sign_in(client, sso, "stranger@gmail.com")
    assert "Accounts from gmail.com may not sign in to SeatSync" in page.text
    assert not signed_in(client)
    assert db.session.scalar(db.select(db.func.count(User.id))) == 0


def test_without_allowed_domains_only_existing_users_may_sign_in(app, client, sso):
    app.config["OIDC_ALLOWED_DOMAINS"] = []
    page = sign_in(client, sso, "stranger@gmail.com")
    assert "There is no SeatSync account for stranger@gmail.com" in page.text
    create_user("known@partner.example", "viewer", PASSWORD)
    db.session.commit()
    assert "known@partner.example · viewer" in sign_in(client, sso, "known@partner.example").text


def test_a_deactivated_user_cannot_sign_in_with_sso(app, client, sso):
    user, _ = create_user("gone@msp.example", "billing", PASSWORD)
    user.active = False
    db.session.commit()
    page = sign_in(client, sso, "gone@msp.example")
    assert "This account is deactivated" in page.text
    assert not signed_in(client)


def test_an_unverified_email_is_refused(app, client, sso):
    sso.id_token_overrides = {"email_verified": False}
    page = sign_in(client, sso, "someone@msp.example")
    assert "has not verified someone@msp.example" in page.text


def test_the_sign_in_returns_to_the_page_asked_for(app, client, sso):
    parts = urlsplit(sso.sign_in(start(client, "/?from=sso"), "a@msp.example"))
    response = client.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302 and response.headers["Location"] == "/?from=sso"


@pytest.mark.parametrize("role,break_glass,allowed", [
    ("admin", True, True), ("admin", False, False), ("billing", True, False), ("viewer", False, False),
])
def test_with_local_sign_in_disabled_only_break_glass_admins_use_a_password(app, client, role, break_glass,
                                                                            allowed):
    Organisation.get().local_login_disabled = True
    user, _ = create_user(f"{role}@msp.example", role, PASSWORD)
    user.break_glass = break_glass
    db.session.commit()
    response = client.post("/login", data={"email": user.email, "password": PASSWORD})
    if allowed:
        assert response.status_code == 302 and signed_in(client)
    else:
        assert response.status_code == 403 and "Password sign-in is turned off" in response.text
        assert not signed_in(client)


def test_local_accounts_keep_working_when_sso_is_configured(app, client, sso):
    create_user("local@msp.example", "billing", PASSWORD)
    db.session.commit()
    assert client.post("/login", data={"email": "local@msp.example", "password": PASSWORD}).status_code == 302
    assert signed_in(client)


# --- linking only with proof, app roles (issue 11 §2) -------------------------------------------------


def test_a_token_without_email_verified_cannot_take_over_an_admins_account(app, client, sso):
    admin, _ = create_user("boss@msp.example", "admin", PASSWORD)
    db.session.commit()
    sso.id_token_overrides = {"sub": "attacker-subject", "email_verified": None}  # as Entra ID sends by default
    page = sign_in(client, sso, "boss@msp.example")
    assert "did not confirm that this e-mail address is verified" in page.text
    assert not signed_in(client)
    db.session.refresh(admin)
    assert admin.oidc_subject is None


def test_an_account_linked_to_one_identity_is_never_relinked_to_another(app, client, sso):
    admin, _ = create_user("boss@msp.example", "admin", PASSWORD)
    admin.oidc_subject = "the-real-boss"
    db.session.commit()
    sso.id_token_overrides = {"sub": "someone-else", "email_verified": True}
    page = sign_in(client, sso, "boss@msp.example")
    assert "linked to a different single sign-on identity" in page.text
    assert not signed_in(client)
    db.session.refresh(admin)
    assert admin.oidc_subject == "the-real-boss"


def test_a_linked_user_signs_in_by_subject_without_email_verified(app, client, sso):
    user, _ = create_user("ana@msp.example", "billing", PASSWORD)
    user.oidc_subject = "ana-subject"
    db.session.commit()
    sso.id_token_overrides = {"sub": "ana-subject", "email_verified": None}
    assert "ana@msp.example · billing" in sign_in(client, sso, "ana@msp.example").text


def test_a_new_colleague_without_email_verified_is_still_created_in_an_allowed_domain(app, client, sso):
    sso.id_token_overrides = {"email_verified": None}
    assert "newbie@msp.example · viewer" in sign_in(client, sso, "newbie@msp.example").text


ROLE_MAP = {"SeatSync.Admin": "admin", "SeatSync.Billing": "billing", "SeatSync.Viewer": "viewer"}


def test_entra_app_roles_set_the_role_of_a_new_user(app, client, sso):
    app.config["OIDC_ROLE_MAP"] = ROLE_MAP
    sso.id_token_overrides = {"roles": ["SeatSync.Viewer", "SeatSync.Billing", "Unrelated.Role"]}
    assert "biller@msp.example · billing" in sign_in(client, sso, "biller@msp.example").text


def test_entra_app_roles_change_an_existing_users_role_with_an_audit_entry(app, client, sso):
    app.config["OIDC_ROLE_MAP"] = ROLE_MAP
    user, _ = create_user("ana@msp.example", "admin", PASSWORD)
    user.oidc_subject = sso.subject_for("ana@msp.example")
    db.session.commit()
    sso.id_token_overrides = {"roles": ["SeatSync.Viewer"]}
    assert "ana@msp.example · viewer" in sign_in(client, sso, "ana@msp.example").text
    event = db.session.scalar(db.select(AuditEvent).filter_by(kind="user.role_changed"))
    assert (event.before, event.after) == ({"role": "admin"}, {"role": "viewer"})


def test_without_a_mapped_app_role_sso_sign_in_is_refused(app, client, sso):
    app.config["OIDC_ROLE_MAP"] = ROLE_MAP
    sso.id_token_overrides = {"roles": ["Other.App"]}
    page = sign_in(client, sso, "someone@msp.example")
    assert "You have no SeatSync role" in page.text
    assert not signed_in(client)
    assert db.session.scalar(db.select(db.func.count(User.id))) == 0


def test_the_role_map_setting_is_read_and_checked(tmp_path):
    settings = load_settings(str(tmp_path), {"OIDC_ROLE_MAP": "SeatSync.Admin=admin, SeatSync.Billing = billing"})
    assert settings["OIDC_ROLE_MAP"] == {"SeatSync.Admin": "admin", "SeatSync.Billing": "billing"}
    with pytest.raises(ConfigurationError, match="OIDC_ROLE_MAP"):
        load_settings(str(tmp_path), {"OIDC_ROLE_MAP": "SeatSync.Admin=superuser"})
