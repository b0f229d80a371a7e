"""The engine config: which ranker instances exist and how the page is assembled, from TOML.

    [rankers.trending_24h]      # the instance name: row ids, logs, traces, a model feature
    type = "trending"           # a registered ranker type (engine.registry)
    half_life_hours = 24        # the type's own keys, checked by its Config

    [assembly]                  # how rows become a page (see AssemblyConfig)
    pinned = ["continue_watching"]

    [layouts.mobile]            # per-device overrides of engine.request.layout.DEFAULT_LAYOUTS
    rows = 6

    [page]                      # page-model settings (typed by the page-model code)

    [serving]                   # how requests are answered (ServingConfig)
    default_country = "US"

A user's file layers over the built-in config (`load_config(path)`): tables merge key by key,
any other value replaces, and a ranker instance leaves only when the file says so
(`[rankers.trending_7d] enabled = false`). A typo anywhere fails at start-up with the section
and key named, and the closest allowed name when one is close (ConfigError).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from engine.candidates import Ranker, RankerConfig
from engine.data.columns import COUNTRY_CODE, DEVICES
from engine.errors import ConfigError
from engine.registry import ranker_entry_points, ranker_type
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


class ServingConfig(_Section):
    """How requests are answered: the `[serving]` table."""

    # The country of a request that names none, for a member without one (an unknown member, a
    # mistyped id). Without it such a request is refused when titles are licensed per country:
    # only titles licensed everywhere could be shown, and an empty homepage is never right.
    default_country: str | None = Field(default=None, pattern=COUNTRY_CODE)
    # A request this many days past the model's data cut-off gets a warning (page trace, the
    # CLI's stderr, an HTTP header): rows that depend on recent plays (Continue Watching, New
    # Releases) quietly thin out as the data ages. 0 turns the warning off.
    stale_after_days: float = Field(default=7.0, ge=0)
    # With play events (`POST /v1/events`, `--state`), Trending's counts take the members' new
    # plays at most this often: a refresh rebuilds every Trending instance's short lists, too
    # much for every page. 0 turns it off (Trending then moves only with the next training).
    nearline_seconds: float = Field(default=60.0, ge=0)


class EngineConfig(_Section):
    """The whole engine config. Build with `load_config` / `parse_config`."""

    rankers: dict[str, RankerSpec]
    assembly: AssemblyConfig = Field(default_factory=lambda: AssemblyConfig())
    layouts: dict[str, LayoutOverride] = Field(default_factory=dict)
    # Page-model settings: left open here, typed by the page-model code that reads them.
    page: dict[str, Any] = Field(default_factory=dict)
    serving: ServingConfig = Field(default_factory=lambda: ServingConfig())

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
            "serving": self.serving.model_dump(mode="json", exclude_none=True),
        }

    def to_toml(self) -> str:
        """The config as a TOML document `load_config` reads back to an equal config."""
        return to_toml(self.to_document())


_SECTIONS = ("rankers", "assembly", "layouts", "page", "serving")


def builtin_document() -> dict[str, Any]:
    """The built-in config (default_config.toml) as a TOML-shaped dict."""
    text = resources.files("engine").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_config(path: str | PathLike[str] | None = None) -> EngineConfig:
    """The built-in config, with the TOML file at `path` layered over it (`layer_config`);
    None gives the built-in config alone."""
    doc = builtin_document()
    if path is None:
        return parse_config(doc, source=f"built-in {DEFAULT_CONFIG}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read engine config {path}: {exc}") from exc
    try:
        over = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    _check_sections(over, str(path))
    return parse_config(layer_config(doc, over), source=f"{path} (over the built-in config)")


def layer_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` layered on `base` (TOML-shaped dicts; neither is changed): tables merge key by
    key and any other value replaces, except a `[rankers.<name>]` table naming another `type`,
    which replaces that instance whole (the old type's keys would not fit the new one)."""
    out = deep_merge(base, over)
    base_rankers, over_rankers = base.get("rankers"), over.get("rankers")
    if isinstance(base_rankers, Mapping) and isinstance(over_rankers, Mapping):
        for name, table in over_rankers.items():
            old = base_rankers.get(name)
            if (
                isinstance(table, Mapping)
                and isinstance(old, Mapping)
                and "type" in table
                and table["type"] != old.get("type")
            ):
                out["rankers"][name] = dict(table)
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `over` merged in: tables key by key, any other value replaces."""
    out = {k: deep_merge(v, {}) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in over.items():
        if isinstance(value, Mapping):
            old = out.get(key)
            out[key] = deep_merge(old if isinstance(old, Mapping) else {}, value)
        else:
            out[key] = value
    return out


def _check_sections(doc: Mapping[str, Any], source: str) -> None:
    unknown = sorted(set(doc) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(unknown)}"
            f"{_did_you_mean(unknown[0], _SECTIONS)}; allowed: {', '.join(_SECTIONS)}"
        )


def parse_config(doc: dict[str, Any], *, source: str = "engine config") -> EngineConfig:
    """Validate a TOML-shaped dict: every ranker instance against its type's Config. A ranker
    table with `enabled = false` is left out (and out of `[assembly] pinned`)."""
    _check_sections(doc, source)
    raw_rankers = doc.get("rankers")
    if not isinstance(raw_rankers, dict):
        raise ConfigError(f"{source}: needs at least one [rankers.<name>] table with a `type`")
    disabled = {name for name, table in raw_rankers.items() if _disabled(name, table, source)}
    rankers = {
        name: _parse_ranker(name, table, source, [n for n in raw_rankers if n != name])
        for name, table in raw_rankers.items()
        if name not in disabled
    }
    if not rankers:
        raise ConfigError(
            f"{source}: needs at least one enabled [rankers.<name>] table with a `type`"
        )
    layouts = doc.get("layouts", {})
    if not isinstance(layouts, dict):
        raise ConfigError(f"{source}: [layouts] must be tables named by device")
    bad_devices = sorted(set(layouts) - set(DEVICES))
    if bad_devices:
        raise ConfigError(
            f"{source}: [layouts.{bad_devices[0]}] is not a device"
            f"{_did_you_mean(bad_devices[0], DEVICES)}; use one of {', '.join(DEVICES)}"
        )
    assembly_doc = doc.get("assembly", {})
    if isinstance(assembly_doc, dict) and isinstance(assembly_doc.get("pinned"), list):
        # A disabled ranker never has a row, so a pin of it has nothing to pin.
        pinned = [p for p in assembly_doc["pinned"] if p not in disabled]
        assembly_doc = {**assembly_doc, "pinned": pinned}
    assembly = _section(AssemblyConfig, assembly_doc, f"{source}: [assembly]")
    parsed_layouts = {
        device: _section(LayoutOverride, table, f"{source}: [layouts.{device}]")
        for device, table in layouts.items()
    }
    page = doc.get("page", {})
    if not isinstance(page, dict):
        raise ConfigError(f"{source}: [page] must be a table")
    serving = _section(ServingConfig, doc.get("serving", {}), f"{source}: [serving]")
    cfg = EngineConfig(
        rankers=rankers, assembly=assembly, layouts=parsed_layouts, page=page, serving=serving
    )
    missing = [p for p in cfg.assembly.pinned if p not in cfg.rankers]
    if missing:
        raise ConfigError(
            f"{source}: [assembly] pinned names {', '.join(missing)}, which is not a configured "
            f"ranker{_did_you_mean(missing[0], cfg.rankers)}; configured: {', '.join(cfg.rankers)}"
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


def _disabled(name: str, table: Any, source: str) -> bool:
    """True for a ranker table saying `enabled = false`."""
    if not isinstance(table, dict) or "enabled" not in table:
        return False
    enabled = table["enabled"]
    if not isinstance(enabled, bool):
        raise ConfigError(
            f"{source}: [rankers.{name}]: key 'enabled' must be true or false, got {enabled!r}"
        )
    return not enabled


def _parse_ranker(name: str, table: Any, source: str, others: list[str]) -> RankerSpec:
    where = f"{source}: [rankers.{name}]"
    if not _INSTANCE_NAME.match(name):
        raise ConfigError(
            f"{where}: instance names are lower_snake_case (letters, digits, _), "
            "because they become row ids"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    keys = dict(table)
    keys.pop("enabled", None)
    type_name = keys.pop("type", None)
    if not isinstance(type_name, str):
        # Most often a misspelt instance: `[rankers.top_pick] row_length = 30` is a new one.
        raise ConfigError(f'{where} needs `type = "<ranker type>"`{_did_you_mean(name, others)}')
    try:
        cls = ranker_type(type_name)
    except ConfigError as exc:
        hint = _did_you_mean(type_name, ranker_entry_points())
        raise ConfigError(f"{where}: {exc}{hint}") from None
    config_cls: type[RankerConfig] = cls.Config
    try:
        config = config_cls.model_validate(keys)
    except ValidationError as exc:
        allowed = ["type", "enabled", *config_cls.model_fields]
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
            hint = _did_you_mean(str(err["loc"][-1]), allowed)
            lines.append(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
        else:
            lines.append(f"{where}: key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest allowed name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


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


def to_toml(doc: Mapping[str, Any]) -> str:
    """A TOML-shaped dict as TOML text (None values left out: TOML has no null)."""
    return tomli_w.dumps(_without_none(doc))


def _without_none(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _without_none(v) if isinstance(v, Mapping) else v
        for k, v in doc.items()
        if v is not None
    }
