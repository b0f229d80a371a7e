"""The files of engine/serving/static/ as the service sends them: preview HTML, CSS, openapi.json.

openapi.json is served with the page schema embedded (GET /openapi.json)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson


@cache
def static_file(name: str) -> bytes:
    """engine/serving/static/NAME, read once."""
    return resources.files("engine.serving").joinpath("static", name).read_bytes()


@cache
def openapi_spec() -> dict[str, Any]:
    """engine/serving/static/openapi.json with the page schema (engine/request/page.schema.json)
    embedded as components.schemas.Page; its internal $refs are rewritten to point inside the
    embedding."""
    spec: dict[str, Any] = orjson.loads(static_file("openapi.json"))
    page = orjson.loads(resources.files("engine.request").joinpath("page.schema.json").read_bytes())
    page.pop("$schema", None)
    page.pop("$id", None)
    spec["components"]["schemas"]["Page"] = _rebase_refs(page, "#/components/schemas/Page/")
    return spec


@cache
def openapi_json() -> bytes:
    return orjson.dumps(openapi_spec())


def _rebase_refs(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                base + v[2:]
                if k == "$ref" and isinstance(v, str) and v.startswith("#/")
                else _rebase_refs(v, base)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase_refs(v, base) for v in node]
    return node
