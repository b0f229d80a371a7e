"""A ranker defined outside the package is discovered through its entry point, configured from
TOML, fitted, proposes rows and passes the same contract as the built-ins. And the contract is
not a formality: rankers that break it fail it."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ranker_contract import CUTOFF, check_contract, make_dataset, requests

from engine.config import build_rankers, load_config
from engine.data.history import History
from engine.errors import ConfigError
from engine.registry import ranker_type, ranker_types

PLUGIN_SOURCE = '''
"""Short films: the most played titles under a length limit. A third-party ranker."""

from pathlib import Path

import numpy as np
import orjson
from pydantic import Field

from engine.candidates import CandidateRow, RankerConfig
from engine.errors import ModelLoadError, NotFittedError


class ShortFilmsConfig(RankerConfig):
    max_minutes: float = Field(default=95.0, gt=0)
    max_titles: int = Field(default=20, ge=1)


class ShortFilmsRanker:
    type_name = "short_films"
    Config = ShortFilmsConfig
    keeps_finished = False

    def __init__(self, name, config):
        self.name = name
        self.config = config

    def fit(self, history):
        self.plays_ = np.bincount(history.play_title, minlength=history.n_titles).astype(float)
        self.stamp_ = [int(history.cutoff_us), int(history.n_titles)]
        return self

    def propose(self, request, history):
        if not hasattr(self, "plays_"):
            raise NotFittedError(f"{self.name}: call fit() first")
        short = history.duration_min <= self.config.max_minutes
        cand = np.flatnonzero(short & (self.plays_ > 0))
        order = np.lexsort((cand, -self.plays_[cand]))[: self.config.max_titles]
        return [
            CandidateRow(
                self.name, self.name, self.type_name, "Short Films", None,
                cand[order].astype(np.int32), self.plays_[cand][order].astype(np.float32),
            )
        ]

    def save(self, directory):
        if not hasattr(self, "plays_"):
            raise NotFittedError(f"{self.name}: call fit() first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "plays.npy", self.plays_)
        (directory / "meta.json").write_bytes(orjson.dumps({"v": 1, "stamp": self.stamp_}))

    def load(self, directory, history):
        try:
            meta = orjson.loads((Path(directory) / "meta.json").read_bytes())
            plays = np.load(Path(directory) / "plays.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.name}: cannot read {directory}: {exc}") from exc
        if meta != {"v": 1, "stamp": [int(history.cutoff_us), int(history.n_titles)]}:
            raise ModelLoadError(f"{self.name}: {directory} was fitted on another history")
        self.plays_, self.stamp_ = plays, meta["stamp"]
        return self


class NotARanker:
    type_name = "not_a_ranker"
'''


def _install(root: Path, dist: str, module: str, source: str, entry_points: str) -> None:
    """A module plus a minimal installed distribution declaring entry points, under `root`."""
    (root / f"{module}.py").write_text(source, encoding="utf-8")
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[rowrank.rankers]\n" + textwrap.dedent(entry_points), encoding="utf-8"
    )


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    _install(
        root, "rowrank_short_films", "rowrank_short_films", PLUGIN_SOURCE,
        "short_films = rowrank_short_films:ShortFilmsRanker\n",
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(root))  # also clears importlib's finder caches
    importlib.invalidate_caches()
    yield root
    sys.modules.pop("rowrank_short_films", None)
    importlib.invalidate_caches()


def test_plugin_is_discovered_configured_and_passes_the_contract(
    plugin_dir: Path, tmp_path: Path
) -> None:
    types = ranker_types()
    assert "short_films" in types and "trending" in types
    cls = types["short_films"]
    assert cls.__module__ == "rowrank_short_films"

    config_path = tmp_path / "engine.toml"
    config_path.write_text(
        '[rankers.my_plugin]\ntype = "short_films"\nmax_minutes = 100\n'
        '[rankers.trending_24h]\ntype = "trending"\n',
        encoding="utf-8",
    )
    cfg = load_config(config_path)
    rankers = build_rankers(cfg)
    plugin = rankers["my_plugin"]
    assert isinstance(plugin, cls)
    ds = make_dataset(seed=11)
    history = History.from_dataset(ds, CUTOFF)
    plugin.fit(history)
    rows = plugin.propose(requests(history)[0], history)
    assert [r.row_id for r in rows] == ["my_plugin"]
    assert len(rows[0].titles) > 0
    assert (history.duration_min[rows[0].titles] <= 100).all()

    check_contract(cls, cfg.rankers["my_plugin"].config, ds, tmp_path / "contract", "my_plugin")

    with pytest.raises(ConfigError, match=r"\[rankers\.p\].*unknown key 'max_minute'"):
        config_path.write_text('[rankers.p]\ntype = "short_films"\nmax_minute = 1\n')
        load_config(config_path)


def test_the_plugin_is_gone_once_uninstalled() -> None:
    with pytest.raises(ConfigError, match="unknown ranker type 'short_films'"):
        ranker_type("short_films")


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        ("rowrank_missing_module:Ranker", "cannot be loaded: ModuleNotFoundError"),
        ("rowrank_short_films:NoSuchClass", "cannot be loaded: AttributeError"),
        ("rowrank_short_films:NotARanker", "not a valid ranker: .*Config.*keeps_finished"),
        ("rowrank_short_films:ShortFilmsRanker", "type_name='short_films'"),
    ],
)
def test_a_broken_plugin_is_a_config_error_naming_its_entry_point(
    plugin_dir: Path, target: str, pattern: str
) -> None:
    _install(plugin_dir, "rowrank_broken", "rowrank_broken", "", f"broken = {target}\n")
    importlib.invalidate_caches()
    with pytest.raises(ConfigError, match=f"ranker plug-in 'broken' \\({target}.*{pattern}"):
        ranker_types()
    # Other types still load one by one: a config that does not use the broken one works.
    assert ranker_type("short_films").type_name == "short_films"


# ----- the contract can fail ---------------------------------------------------------------------


def _variant(body: str) -> type[Any]:
    """A subclass of the plug-in ranker with the methods defined in `body` replaced."""
    base = ranker_type("short_films")
    namespace: dict[str, Any] = {"np": np, "replace": replace}
    exec(textwrap.dedent(body), namespace)  # the test's own source, not user input
    methods = {k: v for k, v in namespace.items() if callable(v) and k in ("propose", "load")}
    return type("Broken", (base,), methods)


BROKEN = {
    "scores increase": """
        def propose(self, request, history):
            rows = super(type(self), self).propose(request, history)
            return [r.take(np.arange(len(r.titles))[::-1]) for r in rows]
    """,
    "not deterministic": """
        CALLS = [0]  # shared by every instance, like a clock or a global random state

        def propose(self, request, history):
            CALLS[0] += 1
            rows = super(type(self), self).propose(request, history)
            return [replace(r, scores=r.scores + np.float32(CALLS[0])) for r in rows]
    """,
    "no NotFittedError": """
        def propose(self, request, history):
            if not hasattr(self, "plays_"):
                return []
            return super(type(self), self).propose(request, history)
    """,
    "row id without the instance name": """
        def propose(self, request, history):
            rows = super(type(self), self).propose(request, history)
            return [replace(r, row_id="short") for r in rows]
    """,
    "load ignores the saved state": """
        def load(self, directory, history):
            self.plays_, self.stamp_ = np.ones(history.n_titles), [0, 0]
            return self
    """,
}


@pytest.mark.parametrize("flaw", sorted(BROKEN))
def test_the_contract_catches_a_broken_ranker(plugin_dir: Path, tmp_path: Path, flaw: str) -> None:
    cls = _variant(BROKEN[flaw])
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check_contract(cls, cls.Config(), make_dataset(seed=11), tmp_path, "broken")
