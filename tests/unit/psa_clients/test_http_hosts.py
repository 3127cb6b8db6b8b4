"""The PSA HTTP layer's host rules: which addresses SeatSync connects to, and that it connects to the checked one."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import ssl
import threading

import pytest
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from webapp.psa_clients import HostRefused, make_client
from webapp.psa_clients.http import PsaHttp

REAL_GETADDRINFO = socket.getaddrinfo


def answer(*addresses: str):
    """A getaddrinfo that answers every name with these addresses."""
    def fake(host, port, *args, **kwargs):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]
    return fake


@pytest.mark.parametrize("address", [
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.5",  # IPv4-mapped private
    "::ffff:0:a9fe:a9fe",  # SIIT-translated link-local (cloud metadata 169.254.169.254)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of the cloud metadata address
    "64:ff9b:1::808:808",  # local-use NAT64, whatever it embeds
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::1", "fe80::1", "fd00::1",
])
def test_a_host_resolving_to_a_local_ipv4_inside_an_ipv6_form_is_refused_before_any_request(monkeypatch, address):
    monkeypatch.setattr(socket, "getaddrinfo", answer(address))
    http = PsaHttp()
    with responses.RequestsMock() as rsps, pytest.raises(HostRefused, match="private or local"):
        http.request("GET", "https://psa.example.com/api")
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("address", ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2606:4700::1111"])
def test_a_public_ipv4_reached_through_nat64_6to4_or_a_mapped_form_is_allowed(monkeypatch, address):
    monkeypatch.setattr(socket, "getaddrinfo", answer(address))
    with responses.RequestsMock() as rsps:
        rsps.get("https://psa.example.com/api", json={})
        assert PsaHttp().request("GET", "https://psa.example.com/api").status_code == 200


def test_one_private_address_among_public_ones_refuses_the_host(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", answer("93.184.216.34", "64:ff9b::a00:5"))
    with responses.RequestsMock(), pytest.raises(HostRefused):
        PsaHttp().request("GET", "https://psa.example.com/api")


@pytest.mark.parametrize("url", [
    "http://psa.example.com/api",  # a public host only over https
    "https://127.0.0.1:8099/api",  # a development host only over http, exactly as listed
    "http://127.0.0.1:8100/api",  # another port of a listed development host
    "http://localhost:8099/api",  # another spelling of a listed development host
    "https://user:password@psa.example.com/api",
    "ftp://psa.example.com/api",
])
def test_a_url_outside_the_host_rules_is_refused_before_any_request(monkeypatch, url):
    def dns(host, port, *args, **kwargs):  # names are public, address literals are themselves
        return answer(host if host[0].isdigit() else "93.184.216.34")(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    http = PsaHttp(dev_hosts=frozenset({"127.0.0.1:8099"}))
    with responses.RequestsMock() as rsps, pytest.raises(HostRefused):
        http.request("GET", url)
    assert len(rsps.calls) == 0


def test_an_autotask_zone_lookup_url_on_a_private_address_is_refused(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", answer("10.0.0.5"))
    client = make_client("autotask", {"username": "api@example.com", "secret": "s3cret!!", "integration_code": "CODE1"},
                         config={"AUTOTASK_ZONE_URL": "http://zones.internal.example/zoneInformation"})
    with responses.RequestsMock() as rsps, pytest.raises(HostRefused):
        client.check_credentials()
    assert len(rsps.calls) == 0


def test_an_autotask_zone_answer_pointing_at_a_nat64_loopback_is_refused(monkeypatch):
    def dns(host, port, *args, **kwargs):
        address = "64:ff9b::7f00:1" if host == "zone.attacker.example" else "93.184.216.34"
        return answer(address)(host, port)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    client = make_client("autotask", {"username": "api@example.com", "secret": "s3cret!!", "integration_code": "CODE1"})
    zone_url = "https://webservices.autotask.net/atservicesrest/v1.0/zoneInformation"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps, pytest.raises(HostRefused):
        rsps.get(zone_url, json={"zoneName": "X", "url": "https://zone.attacker.example/ATServicesRest/"})
        stolen = rsps.post("https://zone.attacker.example/ATServicesRest/v1.0/Companies/query", json={"items": []})
        client.check_credentials()
    assert stolen.call_count == 0


# --------------------------------------------------------------------------------------------------
# The connection goes to the checked address, with the host's name in TLS and in Host
# --------------------------------------------------------------------------------------------------
PSA_NAME = "psa.example.test"
CHECKED = "93.184.216.34"  # what the name resolves to when SeatSync checks it
REBOUND = "10.9.9.9"  # what it resolves to afterwards (DNS rebinding): an internal service


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PSA_NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(PSA_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "psa.pem", tmp_path / "psa.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class Server:
    """A local HTTP(S) server recording the Host header and TLS server name of every request."""

    def __init__(self, tls: tuple | None = None):
        self.hosts: list[str] = []
        self.server_names: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.hosts.append(self.headers["Host"])
                expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()
                body = json.dumps({"success": True, "result": {"accessToken": "A.B.C", "refreshToken": "R",
                                                               "accessTokenExpireOn": expires}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")  # every request opens a new connection
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_connection_goes_to_the_checked_address_even_when_dns_answers_differently_later(tmp_path, monkeypatch):
    cert_file, key_file = self_signed(tmp_path)
    psa, internal = Server(tls=(cert_file, key_file)), Server()
    lookups = []

    def dns(host, port, *args, **kwargs):
        if host == PSA_NAME:
            lookups.append(host)
            return answer(CHECKED if len(lookups) == 1 else REBOUND)(host, port)
        # The network: the checked address reaches the PSA, the rebound one an internal service.
        routes = {CHECKED: psa.port, REBOUND: internal.port}
        if host in routes:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", routes[host]))]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    try:
        client = make_client("kaseya_bms", {"hostname": f"{PSA_NAME}:{psa.port}", "username": "api",
                                            "password": "Pa55-w0rd!", "company": "Contoso"})
        client.http.session.verify = str(cert_file)  # the test PSA's own certificate authority
        for _ in range(3):
            client.check_credentials()
    finally:
        psa.close()
        internal.close()
    assert internal.hosts == []
    assert psa.hosts == [f"{PSA_NAME}:{psa.port}"] * 3
    assert psa.server_names == [PSA_NAME] * 3  # SNI names the host; the certificate was verified for it
    assert lookups == [PSA_NAME]


def test_a_certificate_for_another_name_is_refused_although_the_address_was_checked(tmp_path, monkeypatch):
    cert_file, key_file = self_signed(tmp_path)
    psa = Server(tls=(cert_file, key_file))

    def dns(host, port, *args, **kwargs):
        if host == "other.example.test":
            return answer(CHECKED)(host, port)
        if host == CHECKED:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", psa.port))]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    http = PsaHttp()
    http.session.verify = str(cert_file)
    try:
        with pytest.raises(HostRefused, match="valid certificate"):
            http.request("POST", f"https://other.example.test:{psa.port}/v2/security/authenticate")
    finally:
        psa.close()
    assert psa.hosts == [] and http.calls == 1  # not retried: a certificate does not fix itself

