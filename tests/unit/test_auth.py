import datetime as dt
import statistics
import time
from email.utils import parsedate_to_datetime

from tests.fixtures.app import PASSWORD, TEST_ENCRYPTION_KEY, CsrfClient, app_environ
from webapp import create_app
from webapp.cli import create_user
from webapp.extensions import db
from webapp.settings import load_settings


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


# --- sessions end server-side (issue 11 §3) --------------------------------------------------------


def _signed_in_as_thief(app, cookies: dict[str, str], **environ):
    thief = app.test_client()
    for name, value in cookies.items():
        thief.set_cookie(name, value)
    return thief.get("/", environ_base=environ).status_code == 200


def test_a_copied_session_cookie_stops_working_after_sign_out(app, client, login_as):
    login_as("admin")
    copied = {"session": client.get_cookie("session").value}
    assert _signed_in_as_thief(app, copied)
    client.post("/logout")
    assert not _signed_in_as_thief(app, copied)


def test_a_copied_remember_me_cookie_stops_working_after_sign_out(app, client):
    create_user("ana@msp.example", "admin", PASSWORD)
    db.session.commit()
    client.post("/login", data={"email": "ana@msp.example", "password": PASSWORD, "remember": "y"})
    copied = {"remember_token": client.get_cookie("remember_token").value}
    assert _signed_in_as_thief(app, copied)
    client.post("/logout")
    assert not _signed_in_as_thief(app, copied)


def test_the_remember_me_cookie_is_short_lived_and_same_site(client):
    create_user("ana@msp.example", "admin", PASSWORD)
    db.session.commit()
    response = client.post("/login", data={"email": "ana@msp.example", "password": PASSWORD, "remember": "y"})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("remember_token="))
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie
    expires = parsedate_to_datetime(cookie.split("Expires=")[1].split(";")[0])
    assert expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=14, minutes=1)


def test_remember_me_lifetime_is_a_setting_and_cookies_are_secure_in_production(tmp_path):
    settings = load_settings(str(tmp_path), {"SEATSYNC_ENV": "production", "SECRET_KEY": "k", "DATABASE_URL": "x",
                                             "ENCRYPTION_KEY": TEST_ENCRYPTION_KEY, "REMEMBER_ME_DAYS": "3"})
    assert settings["REMEMBER_COOKIE_DURATION"] == dt.timedelta(days=3)
    assert settings["REMEMBER_COOKIE_SECURE"] and settings["SESSION_COOKIE_SECURE"]


def test_a_copied_session_cookie_is_refused_from_another_address_even_with_a_forged_forwarded_for(app, client):
    create_user("ana@msp.example", "admin", PASSWORD)
    db.session.commit()
    client.post("/login", data={"email": "ana@msp.example", "password": PASSWORD},
                environ_base={"REMOTE_ADDR": "203.0.113.5"})
    copied = {"session": client.get_cookie("session").value}
    thief = app.test_client()
    thief.set_cookie("session", copied["session"])
    response = thief.get("/", headers={"X-Forwarded-For": "203.0.113.5"},
                         environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert response.status_code == 302


# --- the client address and sign-in limits (issue 11 §4) --------------------------------------------


def _proxied_app(migrated_database, tmp_path, hops: str):
    proxied = create_app(environ=app_environ(migrated_database, str(tmp_path), TRUSTED_PROXIES=hops),
                         overrides={"TESTING": True})
    proxied.test_client_class = CsrfClient
    return proxied


def _sign_in_from(client, address: str, email: str, password: str, proxy: str = "10.0.0.2"):
    return client.post("/login", data={"email": email, "password": password},
                       headers={"X-Forwarded-For": address}, environ_base={"REMOTE_ADDR": proxy}).status_code


def test_behind_a_proxy_one_client_failing_does_not_lock_out_the_others(app, migrated_database, tmp_path):
    create_user("ana@msp.example", "billing", PASSWORD)
    db.session.commit()
    proxied = _proxied_app(migrated_database, tmp_path, "1")
    with proxied.app_context():
        attacker, colleague = proxied.test_client(), proxied.test_client()
        statuses = [_sign_in_from(attacker, "203.0.113.66", f"x{i}@msp.example", "bad") for i in range(6)]
        assert statuses == [401] * 5 + [429]
        assert _sign_in_from(colleague, "198.51.100.20", "ana@msp.example", PASSWORD) == 302


def test_without_a_trusted_proxy_a_forged_forwarded_for_does_not_reset_the_limit(client):
    statuses = [_sign_in_from(client, f"203.0.113.{i}", f"x{i}@msp.example", "bad") for i in range(6)]
    assert statuses == [401] * 5 + [429]


def test_guessing_one_accounts_password_from_many_addresses_is_limited(app, client):
    create_user("ana@msp.example", "admin", PASSWORD)
    db.session.commit()
    statuses = [client.post("/login", data={"email": "ana@msp.example", "password": f"guess{i}"},
                            environ_base={"REMOTE_ADDR": f"203.0.113.{i}"}).status_code for i in range(11)]
    assert statuses == [401] * 10 + [429]
    other = client.post("/login", data={"email": "bob@msp.example", "password": "x"},
                        environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert other.status_code == 401  # the limit is the account's, not everyone's


# --- timing (issue 11 §7) ---------------------------------------------------------------------------


def test_sign_in_takes_the_same_time_whether_or_not_the_account_exists(app, client):
    app.config.update(LOGIN_RATE_LIMIT="1000 per minute", LOGIN_ACCOUNT_RATE_LIMIT="1000 per minute")
    create_user("ana@msp.example", "admin", PASSWORD)
    sso_only, _ = create_user("sso.only@msp.example", "viewer", PASSWORD)
    sso_only.password_hash = None
    db.session.commit()

    def seconds(email: str) -> float:
        start = time.perf_counter()
        assert client.post("/login", data={"email": email, "password": "wrong"}).status_code == 401
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {"ana@msp.example": [], "nobody@msp.example": [], "sso.only@msp.example": []}
    for _ in range(7):
        for email, times in samples.items():
            times.append(seconds(email))
    known, unknown, no_password = (statistics.median(t) for t in samples.values())
    assert 0.6 * known <= unknown <= 1.6 * known, (known, unknown)
    assert 0.6 * known <= no_password <= 1.6 * known, (known, no_password)
