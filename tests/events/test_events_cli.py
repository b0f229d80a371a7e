"""`rowrank events ingest MODEL_DIR FILE`: JSON lines and Parquet in, a rerun is a no-op, and a
bad event exits 2 naming the file, the line and the value with nothing written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from engine.events.log import LOG_FILE
from engine.training.model_dir import read_history

Cli = Callable[..., tuple[int, str, str]]


def _jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


def _lines(state: Path) -> int:
    return len((state / LOG_FILE).read_bytes().splitlines()) if (state / LOG_FILE).exists() else 0


def test_ingest_jsonl_then_a_rerun_is_a_no_op(
    run_cli: Cli, tiny_model: Path, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    src = _jsonl(tmp_path / "plays.jsonl", events)
    state = tmp_path / "state"
    code, out, err = run_cli("events", "ingest", tiny_model, src, "--state", state)
    assert code == 0, err
    assert "ingested 3 events (0 duplicates" in out
    code, out, _ = run_cli("events", "ingest", tiny_model, src, "--state", state)
    assert code == 0 and "ingested 0 events (3 duplicates" in out
    assert _lines(state) == 3


def test_ingest_parquet(
    run_cli: Cli, tiny_model: Path, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    frame = pl.DataFrame(
        [{**e, "ts": datetime.fromisoformat(e["ts"])} for e in events]
    ).with_columns(pl.col("ts").dt.convert_time_zone("UTC"))
    frame.write_parquet(tmp_path / "plays.parquet")
    state = tmp_path / "state"
    code, _, err = run_cli(
        "events", "ingest", tiny_model, tmp_path / "plays.parquet", "--state", state
    )
    assert code == 0, err
    assert _lines(state) == 3


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"progress": 2.0}, "progress = 2.0"),
        ({"title_id": "t-unknown"}, "title_id = 't-unknown'"),
        ({"device": "watch"}, "device = 'watch'"),
    ],
)
def test_a_bad_line_exits_2_naming_file_line_and_value(
    run_cli: Cli,
    tiny_model: Path,
    events: list[dict[str, Any]],
    tmp_path: Path,
    change: dict[str, Any],
    needle: str,
) -> None:
    src = _jsonl(tmp_path / "plays.jsonl", [events[0], {**events[1], **change}, events[2]])
    state = tmp_path / "state"
    code, _, err = run_cli("events", "ingest", tiny_model, src, "--state", state)
    assert code == 2
    assert f"{src}:2:" in err and needle in err
    assert _lines(state) == 0


def test_a_line_that_is_not_json_exits_2(
    run_cli: Cli, tiny_model: Path, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    src = tmp_path / "plays.jsonl"
    src.write_bytes(orjson.dumps(events[0]) + b"\n{oops\n")
    code, _, err = run_cli("events", "ingest", tiny_model, src, "--state", tmp_path / "s")
    assert code == 2 and f"{src}:2: not JSON" in err


def test_a_bad_parquet_row_exits_2(
    run_cli: Cli, tiny_model: Path, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    rows = [{**e, "ts": datetime.fromisoformat(e["ts"])} for e in events]
    rows[2]["progress"] = -0.5
    pl.DataFrame(rows).write_parquet(tmp_path / "bad.parquet")
    code, _, err = run_cli(
        "events", "ingest", tiny_model, tmp_path / "bad.parquet", "--state", tmp_path / "s"
    )
    assert code == 2 and "bad.parquet: row 3: progress = -0.5" in err


def test_export_writes_the_log_as_plays(
    run_cli: Cli, tiny_model: Path, events: list[dict[str, Any]], tmp_path: Path
) -> None:
    from engine.data.columns import PLAYS, SCHEMA

    src = _jsonl(tmp_path / "plays.jsonl", events)
    state = tmp_path / "state"
    assert run_cli("events", "ingest", tiny_model, src, "--state", state)[0] == 0
    out = tmp_path / "plays.parquet"
    code, stdout, err = run_cli("events", "export", tiny_model, out, "--state", state)
    assert code == 0, err
    assert "exported 3 plays" in stdout
    plays = pl.read_parquet(out)
    assert plays.columns == [c.name for c in SCHEMA[PLAYS]]
    assert sorted(plays["user_id"].to_list()) == sorted(e["user_id"] for e in events)
    first = plays.filter(pl.col("title_id") == events[0]["title_id"]).row(0, named=True)
    assert first["ts"] == datetime.fromisoformat(events[0]["ts"])
    assert first["progress"] == pytest.approx(0.25)


def test_rowrank_page_reads_what_ingest_wrote(
    run_cli: Cli, tiny_model: Path, tmp_path: Path
) -> None:
    """`rowrank page --state` shows the page a server of the model would: three films a member
    started after the cut-off in their Continue Watching row."""
    _, h = read_history(tiny_model)
    u = 1
    member = str(h.user_ids[u])
    played = set(h.play_title[h.user_plays(u)].tolist())
    country = str(h.user_country[u])
    films = [
        t
        for t in range(h.n_titles)
        if h.series[t] < 0
        and t not in played
        and h.maturity[t] <= h.user_maturity_max[u]
        and (not h.title_countries[t] or country in h.title_countries[t])
    ][:3]
    start = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC) + timedelta(hours=3)
    events = [
        {
            "event_id": f"cw-{k}",
            "user_id": member,
            "title_id": str(h.title_ids[t]),
            "ts": (start + timedelta(minutes=k)).isoformat(),
            "device": "mobile",
            "seconds_watched": 900.0,
            "progress": 0.4,
        }
        for k, t in enumerate(films)
    ]
    state = tmp_path / "state"
    at = (start + timedelta(hours=1)).isoformat()
    ask = ("page", tiny_model, "--user", member, "--device", "mobile", "--at", at)

    def continue_watching() -> str:
        code, out, err = run_cli(*ask, "--format", "table", "--state", state)
        assert code == 0, err
        return next((line for line in out.splitlines() if "Continue Watching" in line), "")

    names = [str(h.title_names[t]) for t in films]
    assert len(names) == 3 and not any(n in continue_watching() for n in names)  # the snapshot
    code, _, err = run_cli(
        "events", "ingest", tiny_model, _jsonl(tmp_path / "e.jsonl", events), "--state", state
    )
    assert code == 0, err
    assert all(n in continue_watching() for n in names)
