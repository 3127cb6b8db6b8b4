"""Every Autotask request the client makes exists in the official OpenAPI (Swagger 2.0) document.

The client is run through all of its operations against a mocked API; each recorded request is then
checked against `psa/specs/autotask-rest-v1-swagger.json`: the path and method, the required headers
and query parameters, and every body field (query filters and includeFields included) against the
entity's model.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from tests.specs import spec_path
from webapp.psa_clients import Line, WriteOptions, make_client
from webapp.psa_clients.http import RetryPolicy

SPEC_PATH = spec_path("autotask-rest-v1-swagger.json")
ZONE_URL = "https://webservices.autotask.net/atservicesrest/v1.0/zoneInformation"
ROOT = "https://webservices14.autotask.net/ATServicesRest/"



@pytest.fixture(scope="module")
def spec():
    return json.loads(SPEC_PATH.read_text())


def fake_api(request):
    """Plausible answers for whatever the client asks, so that every code path sends its requests."""
    path = urlsplit(request.url).path.lower()
    if path.endswith("/zoneinformation"):
        return 200, {}, json.dumps({"zoneName": "Z", "url": ROOT, "webUrl": "https://ww14.autotask.net/", "ci": 1})
    if path.endswith("/entityinformation/fields"):
        return 200, {}, json.dumps({"fields": [{"name": "companyType", "isPickList": True,
                                                "picklistValues": [{"value": "1", "label": "Customer"}]}]})
    if path.endswith("/query"):
        return 200, {}, json.dumps({"items": [], "pageDetails": {"count": 0, "nextPageUrl": None}})
    if re.search(r"/services/\d+$", path) and request.method == "GET":
        return 200, {}, json.dumps({"item": {"id": 22, "name": "Backup", "unitPrice": 4.5, "unitCost": 2.0}})
    return 200, {}, json.dumps({"itemId": 99})


@pytest.fixture(scope="module")
def recorded():
    """The requests of one pass through every client operation."""
    client = make_client("autotask", {"username": "api@example.com", "secret": "s", "integration_code": "c"},
                         config={"HTTP_SLEEP": lambda s: None, "HTTP_RETRY_POLICY": RetryPolicy(attempts=1)})
    options = WriteOptions(effective_date=dt.date(2026, 10, 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo",
                      lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("204.1.2.3", port))])
        with responses.RequestsMock() as rsps:
            rsps.add_callback(responses.GET, re.compile(r"https://.*"), callback=fake_api)
            rsps.add_callback(responses.POST, re.compile(r"https://.*"), callback=fake_api)
            client.check_credentials()
            client.list_products("mail")
            client.company_scope_options()
            client.search_companies("acme", type_ids=["1"], status_ids=["active"])
            client.list_companies(type_ids=["1"], status_ids=["inactive"])
            client.list_agreements("4")
            client.read_lines(["11", "12"], options.effective_date)
            client.set_quantity("11", "22", 9, current=Line("11", "22", "33", 4), options=options)
            client.set_quantity("11", "22", 6, current=None, options=options)
            client.product_prices(["22"])
            return [(c.request.method, c.request.url, dict(c.request.headers), c.request.body) for c in rsps.calls]


def spec_operation(spec, method: str, url: str):
    """The spec's (path template, operation) for a request URL, matching case-insensitively like Autotask."""
    path = urlsplit(url).path
    base = spec["basePath"].lower()
    assert path.lower().startswith(base + "/"), f"{url} is not under {spec['basePath']}"
    rest = path[len(base):]
    for template, operations in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(template)) + "$"
        if re.match(pattern, rest, re.IGNORECASE) and method.lower() in operations:
            return template, operations[method.lower()]
    raise AssertionError(f"{method} {rest} is not an operation of the Autotask API")


def resolve(spec, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["definitions"][schema["$ref"].split("/")[-1]]
    return schema


def check_object(spec, value, schema: dict, where: str) -> None:
    schema = resolve(spec, schema)
    if isinstance(value, dict) and schema.get("properties"):
        properties = schema["properties"]
        for name in schema.get("required", []):
            assert name in value, f"{where}: required field {name} missing"
        for name, item in value.items():
            assert name in properties, f"{where}: {name} is not a field of the model"
            check_object(spec, item, properties[name], f"{where}.{name}")
    elif isinstance(value, list) and schema.get("type") == "array":
        for index, item in enumerate(value):
            check_object(spec, item, schema.get("items", {}), f"{where}[{index}]")


def filter_fields(filters: list[dict]) -> list[str]:
    fields = []
    for condition in filters:
        if condition.get("field"):
            fields.append(condition["field"])
        fields.extend(filter_fields(condition.get("items") or []))
    return fields


def test_every_request_is_an_operation_of_the_official_api(spec, recorded):
    used = set()
    for method, url, headers, _ in recorded:
        template, operation = spec_operation(spec, method, url)
        used.add(f"{method} {template}")
        query = parse_qs(urlsplit(url).query)
        for parameter in operation.get("parameters", []):
            if not parameter.get("required"):
                continue
            if parameter["in"] == "query":
                assert parameter["name"] in query, f"{template}: query parameter {parameter['name']} missing"
            # Zone discovery is documented (and used by every client) without auth headers.
            if parameter["in"] == "header" and not template.lower().endswith("/zoneinformation"):
                assert parameter["name"].lower() in {h.lower() for h in headers}, f"{template}: {parameter['name']}"
    assert used == {
        "GET /V1.0/ZoneInformation", "POST /V1.0/Companies/query", "POST /V1.0/Services/query",
        "GET /V1.0/Companies/entityInformation/fields", "POST /V1.0/Contracts/query",
        "POST /V1.0/ContractServices/query", "POST /V1.0/ContractServiceUnits/query",
        "POST /V1.0/ContractServiceAdjustments",
    }


def test_every_body_field_is_in_the_model_the_api_declares(spec, recorded):
    for method, url, _, body in recorded:
        if not body:
            continue
        template, operation = spec_operation(spec, method, url)
        payload = json.loads(body)
        (body_parameter,) = [p for p in operation["parameters"] if p["in"] == "body"]
        check_object(spec, payload, body_parameter["schema"], f"{method} {template}")


def test_every_queried_and_returned_field_belongs_to_the_queried_entity(spec, recorded):
    for method, url, _, body in recorded:
        template, operation = spec_operation(spec, method, url)
        if not template.endswith("/query"):
            continue
        result = resolve(spec, operation["responses"]["200"]["schema"])
        entity = resolve(spec, result["properties"]["items"]["items"])
        query = json.loads(body)
        for field in [*filter_fields(query["filter"]), *query.get("includeFields", [])]:
            assert field in entity["properties"], f"{template}: {field} is not a field of the entity"
        assert 1 <= query["maxRecords"] <= 500
        for condition in query["filter"]:
            assert condition["op"] in {"eq", "noteq", "gt", "gte", "lt", "lte", "beginsWith", "endsWith", "contains",
                                       "exist", "notExist", "in", "notIn", "and", "or"}


def test_adjustments_carry_the_fields_the_api_needs(spec, recorded):
    adjustments = [json.loads(body) for method, url, _, body in recorded if url.endswith("ContractServiceAdjustments")]
    assert adjustments
    for adjustment in adjustments:
        # effectiveDate is mandatory (SOAP field info); either contractServiceID or contractID + serviceID.
        assert adjustment["effectiveDate"].endswith("T00:00:00")
        assert {"contractID", "serviceID"} <= set(adjustment) or "contractServiceID" in adjustment
        assert isinstance(adjustment["unitChange"], int)
