from tests.fixtures.app import PASSWORD
from webapp.cli import create_user
from webapp.extensions import db


def test_sign_in_with_the_right_password_opens_the_dashboard(client, app):
    create_user("ana@msp.example", "billing", PASSWORD)
    db.session.commit()
    response = client.post("/login", data={"email": "Ana@MSP.example ", "password": PASSWORD})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "Dashboard" in client.get("/").text


def test_wrong_password_and_unknown_email_get_the_same_generic_message(client):
    create_user("ana@msp.example", "billing", PASSWORD)
    db.session.commit()
    wrong = client.post("/login", data={"email": "ana@msp.example", "password": "nope"})
    unknown = client.post("/login", data={"email": "who@msp.example", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong e-mail or password." in wrong.text and "Wrong e-mail or password." in unknown.text
    assert client.get("/").status_code == 302  # still signed out


def test_repeated_failed_sign_ins_are_rate_limited(client):
    statuses = [client.post("/login", data={"email": "x@msp.example", "password": "bad"}).status_code
                for _ in range(6)]
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429
    assert "Too many sign-in attempts" in client.post("/login", data={"email": "x@msp.example", "password": "b"}).text


def test_pages_need_a_signed_in_user(client):
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_sign_out_ends_the_session(client, login_as):
    login_as("viewer")
    assert client.post("/logout").status_code == 302
    assert client.get("/").status_code == 302


def test_a_deactivated_user_is_signed_out_on_the_next_request(client, login_as):
    user = login_as("billing")
    assert client.get("/").status_code == 200
    user.active = False
    db.session.commit()
    assert client.get("/").status_code == 302


def test_bumping_the_session_version_ends_existing_sessions(client, login_as):
    user = login_as("admin")
    user.session_version += 1
    db.session.commit()
    assert client.get("/").status_code == 302


def test_next_parameter_cannot_redirect_off_site(client):
    create_user("ana@msp.example", "billing", PASSWORD)
    db.session.commit()
    response = client.post("/login?next=//evil.example/x", data={"email": "ana@msp.example", "password": PASSWORD})
    assert response.headers["Location"] == "/"
