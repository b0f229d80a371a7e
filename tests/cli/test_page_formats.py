"""`rowrank page --format`, `rowrank users`, and the warning a stale request prints."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from engine.cli import EXIT_OK, EXIT_USAGE
from engine.cli.show import page_table, shorten
from engine.pipeline import Engine

RunCli = Callable[..., tuple[int, str, str]]  # the `run_cli` fixture (tests/conftest.py)


def test_formats_json_pretty_and_table(
    tiny_model: Path, eng: Engine, member: str, at: str, run_cli: RunCli
) -> None:
    argv = ["page", str(tiny_model), "--user", member, "--at", at]
    page = eng.page(member, "tv", at)
    code, out, err = run_cli(*argv)
    assert code == EXIT_OK and err == "" and out.encode() == page.to_json() + b"\n"
    code, pretty, _ = run_cli(*argv, "--format", "pretty")
    assert (
        code == EXIT_OK and pretty.startswith("{\n  ") and orjson.loads(pretty) == orjson.loads(out)
    )
    code, table, _ = run_cli(*argv, "--format", "table")
    assert code == EXIT_OK and table == page_table(page)
    lines = table.splitlines()
    assert lines[0].startswith(f"{member} on tv at ") and f"{len(page.rows)} rows" in lines[0]
    assert len(lines) == 1 + len(page.rows)
    for line, row in zip(lines[1:], page.rows, strict=True):
        assert line.split("  ")[1].rstrip("…").strip() in row.title
        assert row.items[0].name in line
    with pytest.raises(SystemExit) as info:
        run_cli(*argv, "--format", "yaml")
    assert info.value.code == EXIT_USAGE


def test_row_labels_are_cut_between_words() -> None:
    assert shorten("Trending Now", 28) == "Trending Now"
    cut = shorten("Because you watched The Unbearable Lightness", 28)
    assert cut == "Because you watched The…" and len(cut) <= 28
    assert shorten("Supercalifragilisticexpialidocious", 10) == "Supercali…"  # one long word


def test_a_stale_request_warns_on_stderr(
    tiny_model: Path, eng: Engine, member: str, run_cli: RunCli
) -> None:
    cut = datetime.fromtimestamp(eng.history.cutoff_us // 1_000_000, UTC)
    late = (cut + timedelta(days=40)).isoformat()
    code, out, err = run_cli("page", str(tiny_model), "--user", member, "--at", late)
    assert code == EXIT_OK and orjson.loads(out)["data_cutoff"] == cut.isoformat()
    (line,) = err.splitlines()
    assert line.startswith("warning: the request is 40 days past the model's data cut-off")
    soon = (cut + timedelta(days=2)).isoformat()
    assert run_cli("page", str(tiny_model), "--user", member, "--at", soon)[2] == ""


def test_users_lists_member_ids(
    tiny_model: Path, eng: Engine, run_cli: RunCli, tmp_path: Path
) -> None:
    code, out, err = run_cli("users", str(tiny_model))
    assert code == EXIT_OK and err == ""
    assert out.splitlines() == [str(u) for u in eng.history.user_ids]
    code, out, _ = run_cli("users", str(tiny_model), "--limit", "3")
    assert out.splitlines() == [str(u) for u in eng.history.user_ids[:3]]
    code, _, err = run_cli("users", str(tmp_path / "nope"))
    assert code == EXIT_USAGE and "does not exist" in err
    with pytest.raises(SystemExit) as info:
        run_cli("users", str(tiny_model), "--limit", "-1")
    assert info.value.code == EXIT_USAGE
