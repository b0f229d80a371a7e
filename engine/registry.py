"""The ranker registry: ranker classes found through the `rowrank.rankers` entry-point group.

The engine never imports `rankers` itself (dependency direction: rankers -> engine). Built-in
rankers are declared in pyproject.toml exactly as a third-party plug-in declares its own:

    [project.entry-points."rowrank.rankers"]
    my_type = "my_package.module:MyRanker"

The entry-point name is the `type` used in the engine config and must equal the class's
`type_name`.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

from engine.candidates import RankerConfig
from engine.errors import ConfigError

ENTRY_POINT_GROUP = "rowrank.rankers"
_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_METHODS = ("fit", "propose", "save", "load")


def ranker_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Declared ranker types (name -> entry point), without importing any of them.

    Raises ConfigError when two installed distributions claim one type name differently."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise ConfigError(
                f"ranker type {ep.name!r} is declared twice in entry-point group "
                f"{ENTRY_POINT_GROUP!r}: {other.value} and {ep.value}; uninstall one of them."
            )
        found[ep.name] = ep
    return dict(sorted(found.items()))


def ranker_type(type_name: str) -> type[Any]:
    """Load and check the ranker class registered as `type_name`."""
    eps = ranker_entry_points()
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(eps) or "(none installed)"
        raise ConfigError(f"unknown ranker type {type_name!r}; installed types: {known}")
    return _load(ep)


def ranker_types() -> dict[str, type[Any]]:
    """Every registered ranker class, by type name. A broken plug-in raises ConfigError naming
    its entry point."""
    return {name: _load(ep) for name, ep in ranker_entry_points().items()}


def _load(ep: importlib.metadata.EntryPoint) -> type[Any]:
    where = f"ranker plug-in {ep.name!r} ({ep.value}, entry-point group {ENTRY_POINT_GROUP!r})"
    try:
        cls = ep.load()
    except Exception as exc:  # any import-time failure of third-party code
        raise ConfigError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    check_ranker_class(cls, where)
    if cls.type_name != ep.name:
        raise ConfigError(
            f"{where}: the class says type_name={cls.type_name!r}; the entry-point name and "
            "type_name must be equal."
        )
    return cls


def check_ranker_class(cls: Any, where: str) -> None:
    """Raise ConfigError unless `cls` looks like a Ranker class (see engine.candidates.Ranker)."""
    problems: list[str] = []
    if not isinstance(cls, type):
        raise ConfigError(f"{where} is not a class but {type(cls).__name__}")
    type_name = getattr(cls, "type_name", None)
    if not isinstance(type_name, str) or not _TYPE_NAME.match(type_name):
        problems.append("type_name must be a lower_snake_case str class attribute")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, RankerConfig)):
        problems.append("Config must be a subclass of engine.candidates.RankerConfig")
    if not isinstance(getattr(cls, "keeps_finished", None), bool):
        problems.append("keeps_finished must be a bool class attribute")
    missing = [m for m in _METHODS if not callable(getattr(cls, m, None))]
    if missing:
        problems.append(f"missing method(s) {', '.join(missing)}")
    if problems:
        raise ConfigError(f"{where} is not a valid ranker: {'; '.join(problems)}")
