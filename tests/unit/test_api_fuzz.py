"""Property-based run of the JSON API against its own OpenAPI document (Schemathesis): whatever a
client sends — in or out of the schema, NUL characters included — SeatSync answers without a server
error (issue 11 §8). Bounded: a fixed number of examples per operation and mode (about two minutes).
"""

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from webapp.blueprints.api import OPENAPI_PATH
from webapp.extensions import db
from webapp.models import ApiToken, Company, Product

EXAMPLES = 30  # per operation and mode
DOCUMENT = json.loads(OPENAPI_PATH.read_text())
# (path, method, mode); an operation without any input has nothing to get wrong (no negative mode).
OPERATIONS = [(path, method.upper(), mode) for path, item in DOCUMENT["paths"].items()
              for method, operation in item.items() if method in {"get", "post", "put", "patch", "delete"}
              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
              if mode == GenerationMode.POSITIVE or operation.get("parameters") or item.get("parameters")
              or operation.get("requestBody")]


@pytest.fixture
def write_token(app):
    row, secret = ApiToken.issue("fuzz", "write", None)
    db.session.add_all([row, Company(name="Acme Dental", external_id="acme"), Product(name="Password Manager")])
    db.session.commit()
    return secret


@pytest.mark.parametrize("path,method,mode", OPERATIONS)
def test_the_api_never_answers_with_a_server_error(app, write_token, path, method, mode):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    schema.config.generation.update(allow_x00=True)
    headers = {"Authorization": f"Bearer {write_token}"}

    @given(case=schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def answers_without_a_server_error(case):
        db.session.rollback()  # the test's session is the requests' session: start each example clean
        case.call_and_validate(headers=headers, checks=[not_a_server_error])

    answers_without_a_server_error()
