"""Engine config: TOML in, validated instances out; every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import build_rankers, load_config, parse_config
from engine.errors import ConfigError
from engine.request.layout import DEFAULT_LAYOUTS
from engine.request.selectors import AssemblyRules


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_config_has_every_builtin_ranker_and_two_trending_instances() -> None:
    cfg = load_config(None)
    assert list(cfg.rankers) == [
        "pvr",
        "top_picks",
        "trending_24h",
        "trending_7d",
        "continue_watching",
        "because_you_watched",
        "new_releases",
        "watch_again",
    ]
    t24, t7 = cfg.rankers["trending_24h"], cfg.rankers["trending_7d"]
    assert t24.type == t7.type == "trending"
    assert t24.config.half_life_hours == 24.0
    assert t7.config.half_life_hours == 168.0
    rankers = build_rankers(cfg)
    assert list(rankers) == list(cfg.rankers)
    for name, ranker in rankers.items():
        assert ranker.name == name
        assert ranker.type_name == cfg.rankers[name].type
        assert ranker.config is cfg.rankers[name].config  # type: ignore[attr-defined]
    assert cfg.assembly.max_rows_per_kind == {"because_you_watched": 3, "pvr_genre": 4}
    assert cfg.assembly.dedupe is True


def test_omitted_keys_take_the_types_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[rankers.hot]\ntype = "trending"\nmax_titles = 7\n'))
    conf = cfg.rankers["hot"].config
    assert conf.max_titles == 7
    assert conf.half_life_hours == 24.0


def test_unknown_key_names_instance_key_and_allowed_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, '[rankers.trending_24h]\ntype = "trending"\nhalf_life_hour = 24\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "[rankers.trending_24h]" in msg and "'half_life_hour'" in msg
    assert "allowed keys: type, half_life_hours, max_titles" in msg
    assert str(path) in msg


def test_wrong_type_names_instance_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[rankers.cw]\ntype = "continue_watching"\nmax_titles = "many"\n')
    with pytest.raises(ConfigError, match=r"\[rankers\.cw\].*'max_titles'.*'many'"):
        load_config(path)
    path = _write(tmp_path, '[rankers.cw]\ntype = "continue_watching"\nmodel = "magic"\n')
    with pytest.raises(ConfigError, match=r"\[rankers\.cw\].*'model'"):
        load_config(path)


@pytest.mark.parametrize(
    ("toml", "pattern"),
    [
        ('[rankers.x]\ntype = "nope"\n', r"\[rankers\.x\]: unknown ranker type 'nope'; installed"),
        ("[rankers.x]\nmax_titles = 3\n", r"\[rankers\.x\] needs `type"),
        ('[rankers."Bad:Name"]\ntype = "trending"\n', r"lower_snake_case"),
        ('[ranker.x]\ntype = "trending"\n', r"unknown section\(s\) ranker"),
        ("[page]\nx = 1\n", r"at least one \[rankers"),
        ('[rankers.x]\ntype = "trending"\n[assembly]\npinned = ["y"]\n', r"pinned names y"),
        (
            '[rankers.x]\ntype = "trending"\n[assembly]\ndedup = true\n',
            r"\[assembly\]: unknown key 'dedup'; allowed keys: pinned",
        ),
        (
            '[rankers.x]\ntype = "trending"\n[assembly]\nmax_rows_per_kind = {a = "b"}\n',
            r"max_rows_per_kind\.a",
        ),
        ('[rankers.x]\ntype = "trending"\n[layouts.phone]\nrows = 3\n', r"not a device"),
        ('[rankers.x]\ntype = "trending"\n[layouts.tv]\nvisible_rows = 99\n', r"shows more"),
        (
            '[rankers.x]\ntype = "trending"\n[layouts.tv]\nrow = 3\n',
            r"\[layouts\.tv\]: unknown key 'row'; allowed keys: rows",
        ),
        ("[rankers.x\n", r"not valid TOML"),
    ],
)
def test_config_mistakes_are_named(tmp_path: Path, toml: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(_write(tmp_path, toml))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read engine config"):
        load_config(tmp_path / "nope.toml")


def test_layout_overrides_assembly_rules_and_page_section(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            '[rankers.a]\ntype = "trending"\n[rankers.b]\ntype = "new_releases"\n'
            '[assembly]\npinned = ["b"]\nmax_rows_other_kinds = 1\n'
            "[layouts.mobile]\nrows = 6\n"
            "[page]\ntrees = 50\n",
        )
    )
    assert cfg.layout("mobile").rows == 6
    assert cfg.layout("mobile").titles_per_row == DEFAULT_LAYOUTS["mobile"].titles_per_row
    assert cfg.layout("tv") == DEFAULT_LAYOUTS["tv"]
    rules = cfg.assembly.rules()
    assert isinstance(rules, AssemblyRules)
    assert rules.pinned == ("b",) and rules.max_rows_other_kinds == 1
    assert rules.cap_for("because_you_watched") == 3
    assert cfg.page == {"trees": 50}


def test_document_round_trip() -> None:
    cfg = load_config(None)
    doc = cfg.to_document()
    assert doc["rankers"]["trending_7d"]["type"] == "trending"
    assert doc["rankers"]["trending_7d"]["half_life_hours"] == 168.0
    assert parse_config(doc) == cfg
