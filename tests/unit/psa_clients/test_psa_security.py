"""What a hostile or misconfigured PSA answer can do to each client: redirect it, or echo its secrets back."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

import pytest
import responses

from webapp.psa_clients import HostRefused, PsaError, make_client
from webapp.psa_clients.http import RetryPolicy

ATTACKER = "https://collector.attacker.example/catch"
EXPIRES = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()


@dataclass
class Psa:
    kind: str
    credentials: dict
    config: dict
    secrets: tuple[str, ...]  # every value that must never come back, in any form
    answers: dict  # (method, url) → the normal JSON answer
    unauthenticated: tuple  # the first request, before any secret-bearing call
    authenticated: tuple  # a request carrying the credentials
    action: str  # the client method that makes both requests


CW_PRIVATE, CW_CLIENT_ID = "PRIV/s3cr3t+9f 8e%7d", "0b8c2d6e-1111-2222-3333-444455556666"
CW_API = "https://api-na.myconnectwise.net"
CONNECTWISE = Psa(
    kind="connectwise",
    credentials={"site": "na.myconnectwise.net", "company_id": "acmemsp", "public_key": "PubKey123",
                 "private_key": CW_PRIVATE},
    config={"CW_CLIENT_ID": CW_CLIENT_ID},
    secrets=(CW_PRIVATE, CW_CLIENT_ID, f"acmemsp+PubKey123:{CW_PRIVATE}"),
    answers={
        ("GET", f"{CW_API}/login/companyinfo/acmemsp"): {"CompanyName": "Acme", "Codebase": "v4_6_release/"},
        ("GET", f"{CW_API}/v4_6_release/apis/3.0/system/info"): {"version": "v2025.1"},
    },
    unauthenticated=("GET", f"{CW_API}/login/companyinfo/acmemsp"),
    authenticated=("GET", f"{CW_API}/v4_6_release/apis/3.0/system/info"),
    action="check_credentials",
)

AT_SECRET, AT_CODE = "S3cr3t/Pa55 word+!%", "TRACKING+IDENTIFIER/123456789"
AT_ZONE = "https://webservices.autotask.net/atservicesrest/v1.0/zoneInformation"
AT_API = "https://webservices14.autotask.net/ATServicesRest/v1.0"
AUTOTASK = Psa(
    kind="autotask",
    credentials={"username": "api-user@example.com", "secret": AT_SECRET, "integration_code": AT_CODE},
    config={},
    secrets=(AT_SECRET, AT_CODE),
    answers={
        ("GET", AT_ZONE): {"zoneName": "Z14", "url": "https://webservices14.autotask.net/ATServicesRest/"},
        ("POST", f"{AT_API}/Companies/query"): {"items": [{"id": 0}], "pageDetails": {"nextPageUrl": None}},
    },
    unauthenticated=("GET", AT_ZONE),
    authenticated=("POST", f"{AT_API}/Companies/query"),
    action="check_credentials",
)

BMS_PASSWORD, BMS_TOKEN = "Pa55 w0rd/S3cret+%&", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhcGkifQ.c2lnbmF0dXJl"
BMS_API = "https://api.bms.kaseya.com"
KASEYA_BMS = Psa(
    kind="kaseya_bms",
    credentials={"hostname": "bms.kaseya.com", "username": "api-employee", "password": BMS_PASSWORD,
                 "company": "Contoso MSP"},
    config={},
    secrets=(BMS_PASSWORD, BMS_TOKEN, "REFRESH-TOKEN-VALUE-123"),
    answers={
        ("POST", f"{BMS_API}/v2/security/authenticate"): {"success": True, "result": {
            "accessToken": BMS_TOKEN, "refreshToken": "REFRESH-TOKEN-VALUE-123", "accessTokenExpireOn": EXPIRES}},
        ("GET", f"{BMS_API}/v2/system/accounttypes/lookup"): {"success": True, "result": []},
    },
    unauthenticated=("POST", f"{BMS_API}/v2/security/authenticate"),  # the login itself carries the password
    authenticated=("GET", f"{BMS_API}/v2/system/accounttypes/lookup"),
    action="company_scope_options",
)
PSAS = [CONNECTWISE, AUTOTASK, KASEYA_BMS]


@pytest.fixture(autouse=True)
def public_dns(monkeypatch):
    def dns(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", dns)


def build(psa: Psa):
    config = {"HTTP_SLEEP": lambda seconds: None, "HTTP_RETRY_POLICY": RetryPolicy(attempts=2), **psa.config}
    return make_client(psa.kind, psa.credentials, config=config)


def register(rsps, psa: Psa, replaced: tuple, callback=None, **answer) -> None:
    """The PSA's normal answers, with `replaced` answering `answer` (or through `callback`) instead."""
    for (method, url), body in psa.answers.items():
        if (method, url) != replaced:
            rsps.add(method, url, json=body)
        elif callback:
            rsps.add_callback(method, url, callback=callback)
        else:
            rsps.add(method, url, **answer)


def leaked_forms(text: str, secret: str) -> list[str]:
    """The forms of `secret` found in `text`: raw, URL-encoded, or inside any base64 run (at any alignment)."""
    found = [form for form in {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)} if form in text]
    for run in re.findall(r"[A-Za-z0-9+/_-]{6,}", text):
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for alphabet in (None, b"-_"):
                try:
                    decoded = base64.b64decode(chunk, altchars=alphabet)
                except (binascii.Error, ValueError):
                    continue
                if secret.encode() in decoded:
                    found.append(f"base64 {run}")
    return found


def shown(error: PsaError) -> str:
    return "\n".join([str(error), error.psa_message, error.hint, repr(error)])


# --------------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("which", ["unauthenticated", "authenticated"])
@pytest.mark.parametrize("psa", PSAS, ids=lambda p: p.kind)
def test_a_redirecting_psa_is_an_error_and_nothing_reaches_the_other_address(psa, which, status):
    client = build(psa)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        caught_get, caught_post = rsps.get(ATTACKER, json={}), rsps.post(ATTACKER, json={})
        register(rsps, psa, getattr(psa, which), status=status, headers={"Location": ATTACKER})
        with pytest.raises(HostRefused) as caught:
            getattr(client, psa.action)()
    assert caught_get.call_count == caught_post.call_count == 0
    assert caught.value.status == status
    assert "SeatSync does not follow redirects" in caught.value.hint
    assert "check the host name" in caught.value.hint
    for secret in psa.secrets:
        assert not leaked_forms(shown(caught.value), secret)


# --------------------------------------------------------------------------------------------------
# A PSA (or a proxy in front of it) that echoes the request in its error
# --------------------------------------------------------------------------------------------------
ORDINARY_HEADERS = {"user-agent", "accept-encoding", "accept", "connection", "content-type", "content-length"}


def echo(request) -> str:
    """The request's credentials-bearing parts as-is, URL-encoded and base64-encoded, as echoing servers show them."""
    body = request.body or b""
    body = body.decode(errors="replace") if isinstance(body, bytes) else body
    parts = [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in ORDINARY_HEADERS] + [body]
    return " | ".join(f"{p} ({quote(p)}) ({base64.b64encode(p.encode()).decode()})" for p in parts if p)


def echo_error(psa: Psa, request) -> tuple[int, dict, str]:
    text = echo(request)
    if psa.kind == "autotask":
        return 500, {"Content-Type": "application/json"}, json.dumps({"errors": [text]})
    if psa.kind == "kaseya_bms":
        envelope = {"success": False, "error": {"code": 400, "message": text}, "result": None}
        return 400, {"Content-Type": "application/json"}, json.dumps(envelope)
    return 400, {"Content-Type": "text/plain"}, f"Bad request: {text}"  # ConnectWise behind a proxy


@pytest.mark.parametrize("which", ["unauthenticated", "authenticated"])
@pytest.mark.parametrize("psa", PSAS, ids=lambda p: p.kind)
def test_a_psa_echoing_the_request_in_its_error_shows_no_secret_in_any_form(psa, which, caplog):
    caplog.set_level(logging.DEBUG)
    client = build(psa)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        method, url = getattr(psa, which)
        register(rsps, psa, (method, url), callback=lambda request: echo_error(psa, request))
        with pytest.raises(PsaError) as caught:
            getattr(client, psa.action)()
        assert any(call.request.url.startswith(url) for call in rsps.calls)  # the echo was really answered
    for secret in psa.secrets:
        assert not leaked_forms(shown(caught.value), secret), secret
        assert not leaked_forms(caplog.text, secret), secret


def test_connectwise_echoing_the_basic_authorization_in_json_shows_no_part_of_the_key():
    client = build(CONNECTWISE)

    def answer(request):
        auth = request.headers["Authorization"]
        message = f"Invalid header Authorization: {auth} ({auth.split()[1]}) clientId={request.headers['clientId']}"
        return 400, {"Content-Type": "application/json"}, json.dumps({"code": "InvalidObject", "message": message})

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register(rsps, CONNECTWISE, CONNECTWISE.authenticated, callback=answer)
        with pytest.raises(PsaError) as caught:
            client.check_credentials()
    text = shown(caught.value)
    assert "Invalid header Authorization" in text
    header = base64.b64encode(f"acmemsp+PubKey123:{CW_PRIVATE}".encode()).decode()
    assert header not in text
    for secret in CONNECTWISE.secrets:
        assert not leaked_forms(text, secret), secret
