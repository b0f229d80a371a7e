"""Fuzzing the HTTP API from its own OpenAPI document (engine/serving/static/openapi.json, served at
/openapi.json) with schemathesis on hypothesis, against a real uvicorn socket and the trained
`tiny_model`.

For every operation, schema-valid (positive) and schema-violating (negative) requests are
generated, seeded (`derandomize=True`: the same cases every run) and bounded in number. Each
answer must be: not a 5xx, a status code the document lists for that operation, a documented
content type and headers, and a body valid against the documented schema (pages against
engine/request/page.schema.json, errors against Error). The admin reload route is fuzzed without a
token (all 401) and with it (deep: the body's model_dir reaches the path checks).

A second, schema-free layer sends raw bytes and raw query strings, which schemathesis does not
generate (it always sends well-formed JSON): still no 5xx and the JSON error shape.

Needs `schemathesis` (a test dependency, see docs/reliability.md)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import requests
import schemathesis
from damage import copy_model, wait_ready
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from schemathesis import checks
from schemathesis.generation import GenerationMode
from servers import ServerThread

from engine.serving.http import create_app
from engine.serving.static_files import openapi_spec

TOKEN = "fuzz-admin-token"
TIMEOUT = 60
# Cases per operation and generation mode: ~165 requests in all, ~15 s on 2 busy cores.
EXAMPLES = 12
# Batches are capped at 5 requests while fuzzing, so a case costs a few page builds, not 100;
# the 100-request limit itself is a cell of test_bad_input_http.py.
FUZZ_MAX_BATCH = 5
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz_models")
    copy_model(tiny_model, root / "m")
    events = tmp_path_factory.mktemp("fuzz_events")
    app = create_app(root / "m", admin_token=TOKEN, models_root=root, events_dir=events)
    with ServerThread(app) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def schema() -> Any:
    spec = copy.deepcopy(openapi_spec())
    batch = spec["components"]["schemas"]["BatchRequest"]["properties"]["requests"]
    batch["maxItems"] = FUZZ_MAX_BATCH
    return schemathesis.openapi.from_dict(spec)


def test_the_fuzzed_document_is_the_served_one(server: str) -> None:
    served = requests.get(f"{server}/openapi.json", timeout=TIMEOUT).json()
    assert served == orjson.loads(orjson.dumps(openapi_spec()))
    assert (
        served["components"]["schemas"]["BatchRequest"]["properties"]["requests"]["maxItems"] == 100
    )


OPERATIONS = [
    ("GET", "/v1/users/{user_id}/page"),
    ("POST", "/v1/pages"),
    ("POST", "/v1/events"),
    ("GET", "/preview/{user_id}"),
    ("GET", "/preview"),
    ("GET", "/preview.css"),
    ("POST", "/v1/admin/reload"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
]


def _fuzz(
    schema: Any,
    server: str,
    method: str,
    path: str,
    headers: dict[str, str],
    examples: int = EXAMPLES,
) -> int:
    """Run both generation modes of one operation; returns how many requests were sent."""
    op = schema[path][method]
    sent = 0
    with requests.Session() as session:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            parameters = op.definition.raw.get("parameters", [])
            has_input = bool(parameters) or "requestBody" in op.definition.raw
            if mode is GenerationMode.NEGATIVE and not has_input:
                continue  # nothing to make invalid

            @settings(
                max_examples=examples,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                nonlocal sent
                response = case.call(
                    base_url=server, session=session, headers=headers, timeout=TIMEOUT
                )
                sent += 1
                case.validate_response(response, checks=CHECKS)

            check()
    return sent


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_answer_is_documented_and_none_is_a_5xx(
    schema: Any, server: str, method: str, path: str
) -> None:
    sent = _fuzz(schema, server, method, path, {})
    assert sent >= 1


def test_reload_with_the_token(schema: Any, server: str, tiny_model: Path) -> None:
    """model_dir strings reach the path checks (.., NUL, very long names, the root itself)."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    sent = _fuzz(schema, server, "POST", "/v1/admin/reload", auth, examples=8)
    assert sent >= 8
    assert wait_ready(server)["status"] == "ready"  # whatever was tried, a model serves


# ----- raw bytes, outside the schema -----------------------------------------------------------


def _error_validator() -> Draft202012Validator:
    registry = Registry().with_resource("urn:api", DRAFT202012.create_resource(openapi_spec()))
    return Draft202012Validator({"$ref": "urn:api#/components/schemas/Error"}, registry=registry)


RAW = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_raw_bodies_get_a_json_answer(server: str) -> None:
    validator = _error_validator()
    bodies = st.one_of(
        st.binary(max_size=300),
        st.text(max_size=100).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ).map(lambda doc: orjson.dumps({"requests": doc}, option=orjson.OPT_NON_STR_KEYS)),
    )
    seen: set[int] = set()

    with requests.Session() as session:

        @RAW
        @given(body=bodies)
        def post(body: bytes) -> None:
            r = session.post(f"{server}/v1/pages", data=body, timeout=TIMEOUT)
            seen.add(r.status_code)
            assert r.status_code < 500, (body, r.text)
            assert r.headers["content-type"] == "application/json"
            if r.status_code != 200:
                assert not list(validator.iter_errors(r.json())), r.text

        post()
    assert 400 in seen


def test_raw_query_strings_get_a_json_answer(server: str) -> None:
    validator = _error_validator()
    keys = st.sampled_from(["device", "at", "country", "user", "x", ""]) | st.text(max_size=5)
    pairs = st.lists(st.tuples(keys, st.text(max_size=30)), max_size=4)
    seen: set[int] = set()

    with requests.Session() as session:

        @RAW
        @given(pairs=pairs, user=st.text(min_size=1, max_size=20))
        def get(pairs: list[tuple[str, str]], user: str) -> None:
            query = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
            url = f"{server}/v1/users/{quote(user, safe='')}/page?{query}"
            r = session.get(url, timeout=TIMEOUT)
            seen.add(r.status_code)
            assert r.status_code < 500, (url, r.text)
            if r.status_code != 200:
                assert r.headers["content-type"] == "application/json", url
                assert not list(validator.iter_errors(r.json())), r.text

        get()
    assert 400 in seen
