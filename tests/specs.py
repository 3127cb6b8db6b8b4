"""Where the official OpenAPI documents of the PSAs live: `shared/psa/specs/` beside the repository
(as on every developer machine and on CI), or under SEATSYNC_SHARED; and the checks every spec-conformance
test shares."""

import contextlib
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import responses

SHARED = Path(os.environ.get("SEATSYNC_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def spec_path(name: str) -> Path:
    path = SHARED / "psa" / "specs" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the spec-conformance tests need shared/ beside the "
                                "repository (or SEATSYNC_SHARED pointing at it)")
    return path


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def operation(spec: dict, method: str, path: str) -> tuple[str, dict]:
    for template, operations in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path, flags=re.IGNORECASE) and method.lower() in operations:
            return template, operations[method.lower()]
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def check_value(spec: dict, schema: dict, value, where: str) -> list[str]:
    """Differences between a JSON value and its schema: unknown or missing fields, wrong types."""
    schema = resolve(spec, schema)
    kind = schema.get("type")
    if value is None:
        return [] if schema.get("nullable") or kind is None else [f"{where}: null for a non-nullable {kind}"]
    if kind == "object" or "properties" in schema:
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        properties = schema.get("properties", {})
        problems = [f"{where}.{k}: not a field of the spec" for k in value if k not in properties]
        missing = [k for k in schema.get("required", []) if k not in value]
        problems += [f"{where}.{k}: required by the spec, not sent" for k in missing]
        for key, item in value.items():
            if key in properties:
                problems += check_value(spec, properties[key], item, f"{where}.{key}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected an array"]
        return [p for i, item in enumerate(value) for p in check_value(spec, schema["items"], item, f"{where}[{i}]")]
    expected = {"integer": int, "number": (int, float), "string": str, "boolean": bool}.get(kind)
    if expected and (not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool))):
        return [f"{where}: {value!r} is not a {kind}"]
    return []


@contextlib.contextmanager
def answering(base: str, answers: list[tuple[str, object]]):
    """A mocked PSA at `base`: every GET and POST is answered 200 with the JSON of the first (path pattern,
    answer) its path matches. Yields the RequestsMock, whose `calls` are the requests the client sent."""

    def answer(request):
        path = urlsplit(request.url).path
        body = next(body for pattern, body in answers if re.search(pattern, path))
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    with responses.RequestsMock() as rsps:
        for method in ("GET", "POST"):
            rsps.add_callback(method, re.compile(re.escape(base) + r"/.*"), callback=answer)
        yield rsps
