"""Engine config: TOML in, validated instances out; every mistake named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import build_rankers, layer_config, load_config, parse_config
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
    assert cfg.assembly.max_rows_per_kind == {"because_you_watched": 3, "pvr_genre": 8}
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
    assert "did you mean 'half_life_hours'?" in msg
    assert "allowed keys: type, enabled, half_life_hours, max_titles" in msg
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
        ('[ranker.x]\ntype = "trending"\n', r"unknown section\(s\) ranker; did you mean 'rankers'"),
        ("[rankers.top_pick]\nrow_length = 30\n", r"needs `type.*did you mean 'top_picks'"),
        (
            '[rankers.x]\ntype = "trendng"\n',
            r"unknown ranker type 'trendng'.*did you mean 'trending'",
        ),
        (
            "[layouts.mobil]\nrows = 3\n",
            r"\[layouts\.mobil\] is not a device; did you mean 'mobile'",
        ),
        ('[serving]\ndefault_country = "usa"\n', r"\[serving\]: key 'default_country'"),
        ('[serving]\ndefault_contry = "US"\n', r"did you mean 'default_country'"),
        ("[serving]\nstale_after_days = -1\n", r"\[serving\]: key 'stale_after_days'"),
        (
            '[rankers.pvr]\nenabled = "no"\n',
            r"\[rankers\.pvr\]: key 'enabled' must be true or false",
        ),
        ('[rankers.x]\ntype = "trending"\n[assembly]\npinned = ["y"]\n', r"pinned names y"),
        (
            '[rankers.x]\ntype = "trending"\n[assembly]\ndedup = true\n',
            r"\[assembly\]: unknown key 'dedup'; did you mean 'dedupe'\?; allowed keys: pinned",
        ),
        (
            '[rankers.x]\ntype = "trending"\n[assembly]\nmax_rows_per_kind = {a = "b"}\n',
            r"max_rows_per_kind\.a",
        ),
        ('[rankers.x]\ntype = "trending"\n[layouts.phone]\nrows = 3\n', r"not a device"),
        ('[rankers.x]\ntype = "trending"\n[layouts.tv]\nvisible_rows = 99\n', r"shows more"),
        (
            '[rankers.x]\ntype = "trending"\n[layouts.tv]\nrow = 3\n',
            r"\[layouts\.tv\]: unknown key 'row'; did you mean 'rows'\?; allowed keys: rows",
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


# ----- a user's file layers over the built-in config ------------------------------------------


def test_a_file_changes_only_what_it_names(tmp_path: Path) -> None:
    builtin = load_config(None)
    cfg = load_config(_write(tmp_path, "[rankers.top_picks]\nrow_length = 30\n"))
    assert list(cfg.rankers) == list(builtin.rankers)  # no ranker dropped
    assert cfg.rankers["top_picks"].config.row_length == 30  # type: ignore[attr-defined]
    assert (
        cfg.rankers["top_picks"].config.candidates
        == builtin.rankers[  # type: ignore[attr-defined]
            "top_picks"
        ].config.candidates
    )
    assert cfg.assembly == builtin.assembly  # the Top Picks pin is still there
    assert cfg.assembly.pinned == ["top_picks"]


def test_a_ranker_leaves_only_when_disabled(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            "[rankers.trending_7d]\nenabled = false\n"
            "[rankers.top_picks]\nenabled = false\n"
            '[rankers.short]\ntype = "trending"\nhalf_life_hours = 6.0\n',
        )
    )
    assert "trending_7d" not in cfg.rankers and "top_picks" not in cfg.rankers
    assert cfg.rankers["short"].config.half_life_hours == 6.0  # type: ignore[attr-defined]
    assert "pvr" in cfg.rankers and "trending_24h" in cfg.rankers
    assert cfg.assembly.pinned == []  # a disabled ranker has no row to pin
    assert "enabled" not in cfg.to_document()["rankers"]["short"]


def test_another_type_replaces_the_instance_whole(tmp_path: Path) -> None:
    # trending_24h's built-in keys (half_life_hours, label) do not belong to new_releases.
    cfg = load_config(_write(tmp_path, '[rankers.trending_24h]\ntype = "new_releases"\n'))
    assert cfg.rankers["trending_24h"].type == "new_releases"


def test_tables_merge_and_other_values_replace(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            '[assembly]\npinned = ["pvr"]\nmax_rows_per_kind = { trending = 1 }\n'
            '[serving]\ndefault_country = "DE"\n',
        )
    )
    assert cfg.assembly.pinned == ["pvr"]  # a list replaces
    assert cfg.assembly.max_rows_per_kind == {  # a table merges
        "because_you_watched": 3,
        "pvr_genre": 8,
        "trending": 1,
    }
    assert cfg.serving.default_country == "DE" and cfg.serving.stale_after_days == 7.0


def test_layer_config_changes_neither_input() -> None:
    base = {"rankers": {"a": {"type": "trending", "label": "A"}}, "page": {"x": 1}}
    over = {"rankers": {"a": {"label": "B"}, "b": {"type": "new_releases"}}, "page": {"y": 2}}
    merged = layer_config(base, over)
    assert merged == {
        "rankers": {"a": {"type": "trending", "label": "B"}, "b": {"type": "new_releases"}},
        "page": {"x": 1, "y": 2},
    }
    assert base["rankers"]["a"]["label"] == "A" and "b" not in base["rankers"]
    assert "y" not in base["page"]


def test_to_toml_reads_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            '[serving]\ndefault_country = "US"\n[layouts.mobile]\nrows = 6\n'
            "[page]\nwindows = 3\nrow_titles_scored_by_kind = { trending = 20 }\n"
            '[rankers."trending_7d"]\nlabel = "Popular \\"now\\" — ünïcode"\n',
        )
    )
    text = cfg.to_toml()
    assert "[rankers.pvr]" in text and "[serving]" in text and 'default_country = "US"' in text
    assert parse_config(tomllib.loads(text)) == cfg
    again = _write(tmp_path, text)
    assert load_config(again) == cfg  # layered over the built-in again: nothing changes


def test_config_show_prints_the_effective_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "[rankers.top_picks]\nrow_length = 30\n")
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# the effective engine config: built-in default_config.toml + {path}")
    doc = tomllib.loads(out)
    assert doc["rankers"]["top_picks"]["row_length"] == 30
    assert parse_config(doc) == load_config(path)
    assert main(["config", "show"]) == 0
    assert parse_config(tomllib.loads(capsys.readouterr().out)) == load_config(None)
    bad = _write(tmp_path, "[rankers.top_picks]\nrow_lenght = 30\n")
    assert main(["config", "show", "--config", str(bad)]) == 2
    assert "did you mean 'row_length'?" in capsys.readouterr().err
