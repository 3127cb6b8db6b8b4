"""Every Kaseya BMS request the client makes exists in the official OpenAPI document (psa/specs).

The client runs every interface method against a mocked API that records each request; each one is
then checked against the spec: the path and method exist, the query parameters are declared, a form
or JSON body uses only declared field names, sends the required ones and the declared types. The
fields the client reads from answers must exist in the answers' schemas too.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.specs import answering, check_value, operation, resolve, spec_path
from webapp.psa_clients import Line, WriteOptions, kaseya_bms, make_client
from webapp.psa_clients.kaseya_bms import ENDPOINT_PATHS, ContractServiceLine

SPEC_PATH = spec_path("kaseya-bms-openapi-v2.json")
BASE = "https://api.bms.kaseya.com"
CREDS = {"hostname": "bms.kaseya.com", "username": "api-employee", "password": "pw-123456", "company": "Contoso"}
# Fields the client reads that are not in the spec, each with the reason.
READS_OUTSIDE_THE_SPEC = {
    "title": "ASP.NET problem details: a 400 answered before the controller runs has no envelope",
}



@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


def form_fields(request) -> dict[str, str]:
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    return dict(re.findall(r'name="([^"]+)"\r\n\r\n(.*?)\r\n--', body, flags=re.S))


def envelope(result, total=None):
    body = {"success": True, "error": {"code": 0, "message": None, "details": None, "stackStrace": None,
                                       "subErrors": []}, "result": result}
    if total is not None:
        body["totalRecords"] = total
    return body


TOKEN = {"accessToken": "a.b.c", "refreshToken": "r", "accessTokenExpireOn": "2099-01-01T00:00:00",
         "refreshTokenExpireOn": "2099-01-02T00:00:00"}
SERVICE = {"id": 5, "name": "Backup", "description": "Backup per user", "unitCost": 2.0, "unitPrice": 4.0,
           "category": "Licensing", "unitOfMeasure": "User", "isActive": True}
RELATED = {"id": 50, "serviceId": 5, "contractId": 1000, "accountId": 7, "serviceName": "Backup",
           "serviceDescription": "Backup per user", "contractName": "Acme MS", "effectiveDate": "2026-01-01T00:00:00",
           "unitCost": 2.0, "unitPrice": 4.0}
ANSWERS = [  # path pattern → answer, first match wins
    (r"/security/(authenticate|refreshtoken)$", envelope(TOKEN)),
    (r"/system/accounttypes/lookup$", envelope([{"id": 1, "name": "Client", "isActive": True, "isClient": True,
                                                 "isVendor": False}])),
    (r"/crm/accounts/summary$", envelope([{"id": 7, "accountName": "Acme", "accountTypeId": 1,
                                           "accountType": "Client", "isActive": True}], 1)),
    (r"/crm/accounts/lookup$", envelope([{"id": 7, "name": "Acme", "isActive": True}])),
    (r"/services/search$", envelope([SERVICE], 1)),
    (r"/relatedservices/search$", envelope([RELATED], 1)),
    (r"/admin/finance/services/\d+$", envelope(SERVICE)),
    (r"/finance/contracts/lookup$", envelope([{"id": 1000, "name": "Acme MS", "isActive": True,
                                               "endDate": "2027-01-01T00:00:00"}])),
    (r"/finance/contracts/summary$", envelope([{"id": 1000, "contractName": "Acme MS",
                                                "contractType": "Recurring Services", "endDate": None}], 1)),
    (r"/recurringservices/\d+/services$", envelope({"id": 50, "serviceId": 5, "units": 3.0, "unitCost": 2.0,
                                                    "unitPrice": 4.0, "description": "Backup per user",
                                                    "serviceName": "Backup", "effectiveDate": "2026-10-01T00:00:00"})),
]


@pytest.fixture
def recorded(monkeypatch, public_dns):
    """Run every interface method; return the requests sent and the field names read from answers."""
    reads: set[str] = set()
    real_ci = kaseya_bms._ci

    def recording_ci(obj, name, default=None):
        reads.add(name)
        return real_ci(obj, name, default)

    monkeypatch.setattr(kaseya_bms, "_ci", recording_ci)

    with answering(BASE, ANSWERS) as rsps:
        client = make_client("kaseya_bms", CREDS, config={"HTTP_SLEEP": lambda s: None})
        client.check_credentials()
        client.list_products()
        client.list_products("back")
        client.company_scope_options()
        client.search_companies("ac", type_ids=["1"], status_ids=["active"])
        client.list_companies()
        client.list_agreements("7")
        on = dt.date(2026, 10, 1)
        (line,) = client.read_lines(["1000"], on)["1000"]
        options = WriteOptions(effective_date=on)
        client.set_quantity("1000", "5", 3, current=line, options=options)
        client.set_quantity("1000", "5", 3, current=Line("1000", "5", "50", 0), options=options)
        client._catalog = None
        client.set_quantity("1000", "6", 3, current=None, options=options)
        client._token.expires_at = 0  # the next call refreshes the token
        client.company_scope_options()
        requests_sent = [call.request for call in rsps.calls]
    return requests_sent, reads


def test_every_path_the_client_knows_is_in_the_spec(spec):
    for path in ENDPOINT_PATHS.values():
        assert path in spec["paths"], path


def test_every_request_uses_a_documented_path_method_and_query(spec, recorded):
    requests_sent, _ = recorded
    used = set()
    for request in requests_sent:
        parts = urlsplit(request.url)
        template, op = operation(spec, request.method, parts.path)
        used.add((request.method, template))
        declared = {p["name"]: p for p in op.get("parameters", [])}
        for name, value in parse_qsl(parts.query):
            assert name in declared and declared[name]["in"] == "query", f"{template}: query {name} not in the spec"
            schema = declared[name]["schema"]
            kind = schema.get("items", {}).get("type") if schema.get("type") == "array" else schema.get("type")
            if kind == "integer":
                assert value.lstrip("-").isdigit(), f"{template}: {name}={value} is not an integer"
            if kind == "boolean":
                assert value in ("true", "false"), f"{template}: {name}={value} is not a boolean"
    assert {t for _, t in used} == set(ENDPOINT_PATHS.values())  # the scenario covered every endpoint


def test_every_request_body_has_the_spec_fields_and_required_ones(spec, recorded):
    requests_sent, _ = recorded
    for request in requests_sent:
        template, op = operation(spec, request.method, urlsplit(request.url).path)
        if request.body is None:
            assert "requestBody" not in op or not op["requestBody"].get("required"), template
            continue
        content = op["requestBody"]["content"]
        content_type = request.headers["Content-Type"].split(";")[0]
        assert content_type in content, f"{template}: {content_type} is not a declared content type"
        schema = content[content_type]["schema"]
        if content_type == "multipart/form-data":
            fields = form_fields(request)
            schema = resolve(spec, schema)
            assert set(fields) <= set(schema["properties"]), f"{template}: {set(fields) - set(schema['properties'])}"
            assert set(schema.get("required", [])) <= set(fields), f"{template}: a required form field is missing"
        else:
            problems = check_value(spec, schema, json.loads(request.body), template)
            assert problems == []


def test_authentication_sends_what_a_password_login_needs(recorded):
    requests_sent, _ = recorded
    login = next(r for r in requests_sent if r.url.endswith("/v2/security/authenticate"))
    assert set(form_fields(login)) == {"GrantType", "UserName", "Password", "Tenant"}


def test_every_field_read_from_an_answer_is_in_the_spec(spec, recorded):
    _, reads = recorded
    documented = {"Success", "Error", "Result", "TotalRecords"}
    for schema in spec["components"]["schemas"].values():
        documented |= set(schema.get("properties", {}))
    documented_lower = {name.lower() for name in documented}
    unknown = {name for name in reads if name.lower() not in documented_lower} - set(READS_OUTSIDE_THE_SPEC)
    assert unknown == set()


def test_the_write_body_matches_the_recurring_services_schema_exactly(spec):
    """ServiceId, Units (int32), EffectiveDate and the prices, as RecurringServicePostInputDto declares."""
    schema = spec["components"]["schemas"]["RecurringServicePostInputDto"]["properties"]
    assert schema["Units"] == {"type": "integer", "format": "int32"}
    assert {"ServiceId", "Units", "UnitCost", "UnitPrice", "EffectiveDate", "ServiceName",
            "ServiceDescription"} <= set(schema)
    line = ContractServiceLine("1", "5", "50", None, service_name="Backup", unit_cost=1.0, unit_price=2.0)
    assert line.quantity is None
