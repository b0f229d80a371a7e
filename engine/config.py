"""The engine config: which ranker instances exist and how the page is assembled, from TOML.

    [rankers.trending_24h]      # the instance name: row ids, logs, traces, a model feature
    type = "trending"           # a registered ranker type (engine.registry)
    half_life_hours = 24        # the type's own keys, checked by its Config

    [assembly]                  # how rows become a page (see AssemblyConfig)
    pinned = ["continue_watching"]

    [layouts.mobile]            # per-device overrides of engine.request.layout.DEFAULT_LAYOUTS
    rows = 6

    [page]                      # page-model settings (typed by the page-model code)

A typo anywhere fails at start-up with the section and key named (ConfigError).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, replace
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from engine.candidates import Ranker, RankerConfig
from engine.data.columns import DEVICES
from engine.errors import ConfigError
from engine.registry import ranker_type
from engine.request.layout import DEFAULT_LAYOUTS, DeviceLayout
from engine.request.selectors import (
    DEFAULT_MAX_ROWS_OTHER_KINDS,
    DEFAULT_MAX_ROWS_PER_KIND,
    AssemblyRules,
)

DEFAULT_CONFIG = "default_config.toml"
# Instance names become row ids "<name>" / "<name>:<key>", so no ":" and nothing odd.
_INSTANCE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_M = TypeVar("_M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RankerSpec(_Section):
    """One configured ranker instance: its registered type and its validated Config."""

    type: str
    config: SerializeAsAny[RankerConfig]


class LayoutOverride(_Section):
    """Per-device changes to engine.request.layout.DEFAULT_LAYOUTS; omitted fields keep the
    default."""

    rows: int | None = Field(default=None, ge=1)
    titles_per_row: int | None = Field(default=None, ge=1)
    min_row_length: int | None = Field(default=None, ge=0)
    visible_rows: int | None = Field(default=None, ge=1)
    visible_titles: int | None = Field(default=None, ge=1)


class AssemblyConfig(_Section):
    """How candidate rows become a page after scoring: the `[assembly]` table, turned into
    engine.request.selectors.AssemblyRules by `rules()` (the defaults are that module's)."""

    # Instance names whose rows go to the top, in this order, whenever they have a row.
    pinned: list[str] = Field(default_factory=list)
    # A member in the middle of something gets the continue_watching row on top.
    pin_continue_watching: bool = True
    # At most this many rows of one kind (CandidateRow.kind) on a page ...
    max_rows_per_kind: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_ROWS_PER_KIND)
    )
    # ... and this many of any kind not listed above.
    max_rows_other_kinds: int = Field(default=DEFAULT_MAX_ROWS_OTHER_KINDS, ge=0)
    # Show each title at most once on a page (the higher row keeps it).
    dedupe: bool = True
    # Score penalty per row of the same kind already placed (row-scorer units).
    diversity_weight: float = Field(default=0.2, ge=0)

    def rules(self) -> AssemblyRules:
        """The selectors' rules for engine.request.selectors."""
        return AssemblyRules(
            pinned=tuple(self.pinned),
            pin_continue_watching=self.pin_continue_watching,
            max_rows_per_kind=dict(self.max_rows_per_kind),
            max_rows_other_kinds=self.max_rows_other_kinds,
            dedupe=self.dedupe,
            diversity_weight=self.diversity_weight,
        )


class EngineConfig(_Section):
    """The whole engine config. Build with `load_config` / `parse_config`."""

    rankers: dict[str, RankerSpec]
    assembly: AssemblyConfig = Field(default_factory=lambda: AssemblyConfig())
    layouts: dict[str, LayoutOverride] = Field(default_factory=dict)
    # Page-model settings: left open here, typed by the page-model code that reads them.
    page: dict[str, Any] = Field(default_factory=dict)

    def layout(self, device: str) -> DeviceLayout:
        """The device layout with this config's overrides applied."""
        base = DEFAULT_LAYOUTS[device]
        override = self.layouts.get(device)
        if override is None:
            return base
        return replace(base, **override.model_dump(exclude_none=True))

    def to_document(self) -> dict[str, Any]:
        """The TOML-shaped dict `parse_config` reads back (JSON-able; saved in model dirs)."""
        return {
            "rankers": {
                name: {"type": spec.type, **spec.config.model_dump(mode="json")}
                for name, spec in self.rankers.items()
            },
            "assembly": self.assembly.model_dump(mode="json"),
            "layouts": {
                d: o.model_dump(mode="json", exclude_none=True) for d, o in self.layouts.items()
            },
            "page": dict(self.page),
        }


_SECTIONS = ("rankers", "assembly", "layouts", "page")


def load_config(path: str | PathLike[str] | None = None) -> EngineConfig:
    """Read an engine config TOML file; None gives the built-in default config."""
    if path is None:
        text = resources.files("engine").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
        source = f"built-in {DEFAULT_CONFIG}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read engine config {path}: {exc}") from exc
        source = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    return parse_config(doc, source=source)


def parse_config(doc: dict[str, Any], *, source: str = "engine config") -> EngineConfig:
    """Validate a TOML-shaped dict: every ranker instance against its type's Config."""
    unknown = sorted(set(doc) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(_SECTIONS)}"
        )
    raw_rankers = doc.get("rankers")
    if not isinstance(raw_rankers, dict) or not raw_rankers:
        raise ConfigError(f"{source}: needs at least one [rankers.<name>] table with a `type`")
    rankers = {name: _parse_ranker(name, table, source) for name, table in raw_rankers.items()}
    layouts = doc.get("layouts", {})
    if not isinstance(layouts, dict):
        raise ConfigError(f"{source}: [layouts] must be tables named by device")
    bad_devices = sorted(set(layouts) - set(DEVICES))
    if bad_devices:
        raise ConfigError(
            f"{source}: [layouts.{bad_devices[0]}] is not a device; use one of {', '.join(DEVICES)}"
        )
    assembly = _section(AssemblyConfig, doc.get("assembly", {}), f"{source}: [assembly]")
    parsed_layouts = {
        device: _section(LayoutOverride, table, f"{source}: [layouts.{device}]")
        for device, table in layouts.items()
    }
    page = doc.get("page", {})
    if not isinstance(page, dict):
        raise ConfigError(f"{source}: [page] must be a table")
    cfg = EngineConfig(rankers=rankers, assembly=assembly, layouts=parsed_layouts, page=page)
    missing = [p for p in cfg.assembly.pinned if p not in cfg.rankers]
    if missing:
        raise ConfigError(
            f"{source}: [assembly] pinned names {', '.join(missing)}, which is not a configured "
            f"ranker; configured: {', '.join(cfg.rankers)}"
        )
    for device in cfg.layouts:
        _check_layout(cfg.layout(device), device, source)
    return cfg


def build_rankers(cfg: EngineConfig) -> dict[str, Ranker]:
    """One unfitted ranker per configured instance, in config order."""
    out: dict[str, Ranker] = {}
    for name, spec in cfg.rankers.items():
        cls = ranker_type(spec.type)
        out[name] = cls(name, spec.config)
    return out


def _parse_ranker(name: str, table: Any, source: str) -> RankerSpec:
    where = f"{source}: [rankers.{name}]"
    if not _INSTANCE_NAME.match(name):
        raise ConfigError(
            f"{where}: instance names are lower_snake_case (letters, digits, _), "
            "because they become row ids"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    keys = dict(table)
    type_name = keys.pop("type", None)
    if not isinstance(type_name, str):
        raise ConfigError(f'{where} needs `type = "<ranker type>"`')
    try:
        cls = ranker_type(type_name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    config_cls: type[RankerConfig] = cls.Config
    try:
        config = config_cls.model_validate(keys)
    except ValidationError as exc:
        allowed = ["type", *config_cls.model_fields]
        raise ConfigError(_explain(exc, f"{where} (type {type_name})", allowed)) from None
    return RankerSpec(type=type_name, config=config)


def _section(model: type[_M], table: Any, where: str) -> _M:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where, list(model.model_fields))) from None


def _explain(exc: ValidationError, where: str, allowed: list[str]) -> str:
    """Pydantic's errors, said in config terms: the key, what is wrong, the allowed keys."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(table)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        else:
            lines.append(f"{where}: key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _check_layout(layout: DeviceLayout, device: str, source: str) -> None:
    if layout.visible_rows > layout.rows or layout.visible_titles > layout.titles_per_row:
        raise ConfigError(
            f"{source}: [layouts.{device}] shows more than it holds: {asdict(layout)}"
        )
    if layout.min_row_length > layout.titles_per_row:
        raise ConfigError(
            f"{source}: [layouts.{device}] min_row_length {layout.min_row_length} exceeds "
            f"titles_per_row {layout.titles_per_row}"
        )
