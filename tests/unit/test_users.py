"""The Users page: admins invite, change roles, deactivate and reset passwords; each action is audited once."""

import re

import pytest

from tests.fixtures.app import PASSWORD
from webapp.cli import create_user
from webapp.extensions import db
from webapp.models import AuditEvent, User


def audit_rows():
    db.session.expire_all()
    return db.session.scalars(db.select(AuditEvent).order_by(AuditEvent.id)).all()


def a_user(email="colleague@msp.example", role="billing") -> User:
    user, _ = create_user(email, role, PASSWORD)
    db.session.commit()
    return user


def one_time_password(html: str) -> str:
    return re.search(r'<code class="secret-once">([^<]+)</code>', html).group(1)


def test_an_admin_invites_a_user_and_sees_the_password_once(client, login_as):
    login_as("admin")
    page = client.post("/users", data={"email": "New.Person@msp.example", "name": "New Person", "role": "billing",
                                       "local_password": "1"})
    assert page.status_code == 200
    password = one_time_password(page.text)
    user = db.session.scalar(db.select(User).filter_by(email="new.person@msp.example"))
    assert user.role == "billing" and user.check_password(password)
    assert password not in client.get("/users").text  # shown once only
    rows = audit_rows()
    assert [(r.kind, r.target, r.actor) for r in rows] == [
        ("user.created", "new.person@msp.example", "admin@msp.example")]
    assert password not in repr((rows[0].summary, rows[0].before, rows[0].after))
    # The new user can sign in with it.
    other = client.application.test_client()
    assert other.post("/login", data={"email": "new.person@msp.example", "password": password}).status_code == 302


def test_an_sso_only_invite_has_no_password(client, login_as):
    login_as("admin")
    page = client.post("/users", data={"email": "sso@msp.example", "role": "viewer"})
    assert 'class="secret-once"' not in page.text
    assert db.session.scalar(db.select(User).filter_by(email="sso@msp.example")).password_hash is None


@pytest.mark.parametrize("email", ["not-an-address", "admin@msp.example"])
def test_a_bad_or_existing_email_is_refused_and_nothing_is_written(client, login_as, email):
    login_as("admin")
    page = client.post("/users", data={"email": email, "role": "viewer"})
    assert page.status_code == 422
    assert db.session.scalar(db.select(db.func.count(User.id))) == 1
    assert audit_rows() == []


def test_an_admin_changes_a_role_and_it_is_audited_once(client, login_as):
    login_as("admin")
    user = a_user()
    client.post(f"/users/{user.id}/role", data={"role": "viewer"})
    db.session.refresh(user)
    assert user.role == "viewer"
    [row] = audit_rows()
    assert (row.kind, row.before, row.after) == ("user.role_changed", {"role": "billing"}, {"role": "viewer"})


def test_the_last_active_admin_cannot_be_demoted_or_deactivated(client, login_as):
    me = login_as("admin")
    other = a_user("second@msp.example", "admin")
    other.active = False
    db.session.commit()
    assert "cannot change your own role" in client.post(f"/users/{me.id}/role", data={"role": "viewer"},
                                                        follow_redirects=True).text
    assert "cannot deactivate yourself" in client.post(f"/users/{me.id}/deactivate", follow_redirects=True).text
    db.session.refresh(me)
    assert me.role == "admin" and me.active
    assert audit_rows() == []


def test_a_deactivated_user_is_signed_out_at_once(app, client, login_as):
    login_as("admin")
    victim = a_user()
    their_browser = app.test_client()
    assert their_browser.post("/login", data={"email": victim.email, "password": PASSWORD}).status_code == 302
    assert their_browser.get("/").status_code == 200
    client.post(f"/users/{victim.id}/deactivate")
    assert their_browser.get("/").status_code == 302  # back to the sign-in page
    assert their_browser.post("/login", data={"email": victim.email, "password": PASSWORD}).status_code == 401
    [row] = audit_rows()
    assert row.kind == "user.deactivated" and row.target == victim.email
    client.post(f"/users/{victim.id}/reactivate")
    assert [r.kind for r in audit_rows()] == ["user.deactivated", "user.reactivated"]
    assert their_browser.post("/login", data={"email": victim.email, "password": PASSWORD}).status_code == 302


def test_a_password_reset_shows_the_new_password_once_and_ends_old_sessions(app, client, login_as):
    login_as("admin")
    victim = a_user()
    their_browser = app.test_client()
    their_browser.post("/login", data={"email": victim.email, "password": PASSWORD})
    page = client.post(f"/users/{victim.id}/reset-password")
    password = one_time_password(page.text)
    assert their_browser.get("/").status_code == 302
    assert their_browser.post("/login", data={"email": victim.email, "password": password}).status_code == 302
    [row] = audit_rows()
    assert row.kind == "user.password_reset" and password not in repr((row.summary, row.before, row.after))


def test_only_admins_can_be_break_glass(client, login_as):
    me = login_as("admin")
    billing = a_user()
    client.post(f"/users/{billing.id}/break-glass", data={"break_glass": "1"})
    client.post(f"/users/{me.id}/break-glass", data={"break_glass": "1"})
    db.session.expire_all()
    assert not db.session.get(User, billing.id).break_glass and db.session.get(User, me.id).break_glass
    assert [r.kind for r in audit_rows()] == ["user.break_glass_changed"]


@pytest.mark.parametrize("role", ["viewer", "billing"])
def test_only_admins_reach_the_users_page(client, login_as, role):
    login_as(role)
    assert client.get("/users").status_code == 403
