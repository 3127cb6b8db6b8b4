import re

from webapp.cli import create_user
from webapp.extensions import db
from webapp.models import ApiToken, User


def test_a_form_post_without_csrf_token_is_refused_and_changes_nothing(client, login_as):
    login_as("admin")
    response = client.post("/logout", csrf=False)
    assert response.status_code == 400
    assert "security token" in response.text
    assert client.get("/").status_code == 200  # still signed in


def test_an_htmx_post_without_csrf_header_is_refused_with_a_banner(client, login_as):
    login_as("admin")
    response = client.post("/logout", csrf=False, headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert response.text.strip().startswith('<div class="banner banner-error"')


def test_sign_in_without_csrf_token_is_refused(client):
    from tests.fixtures.app import PASSWORD
    from webapp.cli import create_user

    create_user("ana@msp.example", "admin", PASSWORD)
    db.session.commit()
    response = client.post("/login", data={"email": "ana@msp.example", "password": PASSWORD}, csrf=False)
    assert response.status_code == 400
    assert db.session.scalar(db.select(User.last_login_at)) is None


def test_pages_carry_the_csrf_token_for_htmx_requests(client, login_as):
    login_as("viewer")
    page = client.get("/").text
    assert re.search(r'hx-headers=\'\{"X-CSRFToken": "[^"]+"\}\'', page)


def test_security_headers_forbid_inline_script(client, login_as):
    login_as("viewer")
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    script_src = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    # No inline script anywhere in the page: every <script> loads a file.
    for tag in re.findall(r"<script\b[^>]*>", response.text):
        assert "src=" in tag
    assert " on" not in " ".join(re.findall(r"<[^>]+ on[a-z]+=", response.text))


def test_session_cookie_is_httponly_and_samesite(client):
    from tests.fixtures.app import PASSWORD
    from webapp.cli import create_user

    create_user("ana@msp.example", "admin", PASSWORD)
    db.session.commit()
    response = client.post("/login", data={"email": "ana@msp.example", "password": PASSWORD})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_assets_are_served_by_the_app_itself(client, login_as):
    login_as("viewer")
    page = client.get("/").text
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        assert client.get(path).status_code == 200, path
    assert "https://" not in "".join(re.findall(r'<(?:script|link)\b[^>]*>', page))


def test_pages_showing_a_new_api_token_or_a_reset_password_are_never_cached(client, login_as):
    login_as("admin")
    colleague, _ = create_user("colleague@msp.example", "viewer", "a-long-enough-password")
    db.session.commit()
    token_page = client.post("/settings/tokens", data={"name": "vendor", "scope": "read"})
    reset_page = client.post(f"/users/{colleague.id}/reset-password")
    assert token_page.status_code == reset_page.status_code == 200
    for response in (token_page, reset_page, client.get("/"), client.get("/settings"), client.get("/users")):
        assert response.headers["Cache-Control"] == "no-store"


def test_api_answers_are_never_cached(client):
    row, secret = ApiToken.issue("vendor", "read", None)
    db.session.add(row)
    db.session.commit()
    response = client.get("/api/v1/companies", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"


def test_static_assets_stay_cacheable(client, login_as):
    login_as("viewer")
    assert client.get("/static/app.css").headers.get("Cache-Control") != "no-store"
