"""Every HaloPSA request the client makes exists in Halo's own OpenAPI document (psa/specs/halopsa-openapi-v2.json).

The client runs every interface method against a mocked instance that records each request; each one to
`/api` (the document's server) is then checked against the spec: the path and method exist, every query
parameter is declared with a value of its type, and a JSON body uses only the schema's field names with
their types. The fields the client reads from answers must be fields of the spec's schemas too (the
document declares no answers, so any schema counts), apart from the few listed with their reason.
"""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.specs import answering, check_value, operation, spec_path
from webapp.psa_clients import Line, WriteOptions, make_client
from webapp.psa_clients.base import QuantityChange
from webapp.psa_clients.halopsa import ENDPOINT_PATHS, LIST_KEYS

SPEC_PATH = spec_path("halopsa-openapi-v2.json")
BASE = "https://acme.halopsa.com"
CREDS = {"instance": "acme.halopsa.com", "tenant": "acme", "client_id": "app", "client_secret": "secret-123"}
LINE = {"id": 70, "ihid": 7, "_itemid": 5, "item_shortdescription": "Backup", "item_code": "BK", "qty_order": 3.0,
        "unit_price": 4.0, "unit_cost": 2.0, "isinactive": False, "enddate": None,
        "recurring_invoice_quantity_type": None}
HEADER = {"id": 7, "client_id": 12, "name": "Monthly", "reference": "R7", "disabled": False,
          "nextcreationdate": "2026-11-01T00:00:00", "invoice_date": "2026-10-01T00:00:00",
          "currency_code_name": "USD", "lines": [LINE]}
ANSWERS = [  # path pattern → answer, first match wins
    (r"/auth/token$", {"access_token": "tok-abc", "token_type": "Bearer", "expires_in": 3600}),
    (r"/api/Client$", {"record_count": 1, "clients": [{"id": 12, "name": "Acme", "inactive": False,
                                                       "customertype": 1, "customertype_new": "Client"}]}),
    (r"/api/Item$", {"record_count": 1, "items": [{"id": 5, "name": "Backup", "description": "Backup",
                                                   "recurringprice": 4.0, "baseprice": 4.0}]}),
    (r"/api/Lookup$", [{"id": 1, "name": "Client"}]),
    (r"/api/RecurringInvoice/updatelines$", [LINE]),
    (r"/api/RecurringInvoice/\d+$", HEADER),
    (r"/api/RecurringInvoice$", {"record_count": 1, "invoices": [HEADER]}),
]
# Fields the client reads that are not fields of any schema, each with the reason.
READS_OUTSIDE_THE_SPEC = {
    "access_token": "the OAuth2 token answer (RFC 6749 §5.1); /auth/token is not part of the /api document",
    "expires_in": "the OAuth2 token answer (RFC 6749 §5.1)",
    "error_description": "the OAuth2 error answer (RFC 6749 §5.2)",
    "error": "the OAuth2 error answer (RFC 6749 §5.2)",
    "record_count": "the paged list envelope; the document declares no answers",
    **{key: "the paged list envelope's list" for key in LIST_KEYS.values()},
    "message": "an error answer's text; the document declares no error answers",
    "Message": "an error answer's text; the document declares no error answers",
    "title": "an ASP.NET problem details answer",
}


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


class RecordingDict(dict):
    """An answer that records which fields the client reads."""

    reads: set[str] = set()

    def get(self, key, default=None):
        RecordingDict.reads.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        RecordingDict.reads.add(key)
        return super().__getitem__(key)


def recording(value):
    if isinstance(value, dict):
        return RecordingDict({k: recording(v) for k, v in value.items()})
    if isinstance(value, list):
        return [recording(v) for v in value]
    return value


@pytest.fixture
def recorded(monkeypatch, public_dns):
    """Run every interface method; return the requests sent and the field names read from answers."""
    RecordingDict.reads = set()
    from webapp.psa_clients import halopsa

    real_json = halopsa._json
    monkeypatch.setattr(halopsa, "_json", lambda response: recording(real_json(response)))

    with answering(BASE, ANSWERS) as rsps:
        client = make_client("halopsa", CREDS, config={"HTTP_SLEEP": lambda s: None})
        client.check_credentials()
        client.list_products()
        client.list_products("back")
        client.company_scope_options()
        client.search_companies("ac", type_ids=["1"], status_ids=["inactive"])
        client.list_companies()
        client.list_agreements("12")
        on = dt.date(2026, 10, 1)
        (line,) = client.read_lines(["7"], on)["7"]
        client.read_lines(["7", "8"], on)  # through the list
        options = WriteOptions(effective_date=on)
        client.set_quantities("7", [QuantityChange("5", 4, line), QuantityChange("6", 2, None)], options=options)
        client.set_quantity("7", "5", 3, current=Line("7", "5", "70", 0), options=options)
        requests_sent = [call.request for call in rsps.calls]
    return requests_sent, RecordingDict.reads


def api_path(url: str) -> str | None:
    """The path the document names (its server is `/api`), or None for the token endpoint."""
    path = urlsplit(url).path
    return path[len("/api"):] if path.startswith("/api/") else None


def test_every_api_path_the_client_knows_is_in_the_spec(spec):
    for path in ENDPOINT_PATHS.values():
        if path.startswith("/api/"):
            assert path[len("/api"):] in spec["paths"], path


def test_every_request_uses_a_documented_path_method_and_query(spec, recorded):
    requests_sent, _ = recorded
    used = set()
    for request in requests_sent:
        path = api_path(request.url)
        if path is None:
            assert urlsplit(request.url).path == "/auth/token"
            continue
        template, op = operation(spec, request.method, path)
        used.add(template)
        declared = {p["name"]: p for p in op.get("parameters", [])}
        for name, value in parse_qsl(urlsplit(request.url).query):
            assert name in declared and declared[name]["in"] == "query", f"{template}: query {name} not in the spec"
            kind = declared[name]["schema"].get("type")
            if kind in ("int", "integer"):
                assert value.lstrip("-").isdigit(), f"{template}: {name}={value} is not an integer"
            if kind in ("bool", "boolean"):
                assert value in ("true", "false"), f"{template}: {name}={value} is not a boolean"
    api_paths = {p[len("/api"):] for p in ENDPOINT_PATHS.values() if p.startswith("/api/")}
    assert used == api_paths  # the scenario covered every endpoint


def test_every_request_body_has_only_spec_fields_of_their_types(spec, recorded):
    requests_sent, _ = recorded
    bodies = 0
    for request in requests_sent:
        path = api_path(request.url)
        if path is None or request.body is None:
            continue
        template, op = operation(spec, request.method, path)
        content = op["requestBody"]["content"]
        content_type = request.headers["Content-Type"].split(";")[0]
        assert content_type in content, f"{template}: {content_type} is not a declared content type"
        assert check_value(spec, content[content_type]["schema"], json.loads(request.body), template) == []
        bodies += 1
    assert bodies == 2


def test_the_write_sends_absolute_quantities_of_existing_lines_and_adds_missing_ones(recorded):
    requests_sent, _ = recorded
    first = next(r for r in requests_sent if r.url.endswith("/updatelines"))
    assert json.loads(first.body) == [{"id": 70, "ihid": 7, "qty_order": 4},
                                      {"ihid": 7, "_itemid": 6, "qty_order": 2, "startdate": "2026-10-01T00:00:00"}]


def test_the_token_request_is_oauth2_client_credentials(recorded):
    requests_sent, _ = recorded
    token = next(r for r in requests_sent if urlsplit(r.url).path == "/auth/token")
    assert urlsplit(token.url).query == "tenant=acme"
    assert {k for k, _ in parse_qsl(token.body)} == {"grant_type", "client_id", "client_secret", "scope"}


def test_every_field_read_from_an_answer_is_in_the_spec(spec, recorded):
    _, reads = recorded
    documented: set[str] = set()
    for schema in spec["components"]["schemas"].values():
        documented |= set(schema.get("properties", {}))
    unknown = {name for name in reads if isinstance(name, str) and name not in documented}
    assert unknown - set(READS_OUTSIDE_THE_SPEC) == set()
    assert {"qty_order", "unit_price", "unit_cost", "_itemid", "recurring_invoice_quantity_type"} <= reads
