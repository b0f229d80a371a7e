"""Batch precompute (engine/serving/precompute.py): users-file parsing, the context grid, and,
against the real trained `tiny_model`, byte equality with `rowrank page`, kill-and-resume,
refusals, Dask."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest
from conftest import rowrank_cmd, run_rowrank

import engine
from engine.cli import main as cli_main
from engine.errors import BadRequestError
from engine.serving.precompute import (
    DONE_DIR,
    EXIT_INTERRUPTED,
    MANIFEST,
    MAX_USER_ID_LEN,
    BadLine,
    GridContext,
    PrecomputeConflictError,
    auto_shard_size,
    build_contexts,
    default_at,
    parse_users_file,
    pick_users,
    resolve_users,
    run_precompute,
)


def _us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000)


def test_users_file_reports_bad_lines_by_number_and_keeps_the_good(tmp_path: Path) -> None:
    lines = [
        b"u1",  # 1 ok
        b"",  # 2 empty
        b"u2\r",  # 3 ok: CRLF line ending
        b"   ",  # 4 blank
        b"u 3",  # 5 inner space
        b"u1",  # 6 repeats line 1
        b"\xff\xfeu4",  # 7 not UTF-8
        b"x" * (MAX_USER_ID_LEN + 1),  # 8 too long
        b"x" * MAX_USER_ID_LEN,  # 9 ok: exactly the limit
        b"u\x075",  # 10 control character
        b" u6",  # 11 leading space
        "ユーザー7".encode(),  # 12 ok: any printable UTF-8
        b"cold-start-user",  # 13 ok: unknown to any model is not bad
    ]
    f = tmp_path / "users.txt"
    f.write_bytes(b"\n".join(lines) + b"\n")
    users, bad = parse_users_file(f)
    assert users == ["u1", "u2", "x" * MAX_USER_ID_LEN, "ユーザー7", "cold-start-user"]
    assert [b.line for b in bad] == [2, 4, 5, 6, 7, 8, 10, 11]
    by_line = {b.line: b.reason for b in bad}
    assert "empty" in by_line[2] and "empty" in by_line[4]
    assert "repeats line 1" in by_line[6]
    assert "UTF-8" in by_line[7]
    assert "longer than" in by_line[8]
    assert "whitespace or control" in by_line[5] and "whitespace or control" in by_line[10]
    assert all(isinstance(b, BadLine) for b in bad)


def test_users_file_without_final_newline(tmp_path: Path) -> None:
    f = tmp_path / "users.txt"
    f.write_bytes(b"a\nb")
    assert parse_users_file(f) == (["a", "b"], [])


def test_default_time_is_the_first_prime_time_after_the_cutoff() -> None:
    morning = datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    assert default_at(_us(morning)) == datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
    late = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    assert default_at(_us(late)) == datetime(2026, 3, 2, 20, 0, tzinfo=UTC)
    exact = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
    assert default_at(_us(exact)) == exact


def test_context_grid_is_devices_by_times_in_order_without_repeats() -> None:
    grid = build_contexts(
        ["web", "tv", "web"], ["2026-03-01T20:00:00+01:00", "2026-03-01T08:00"], None
    )
    assert grid == (
        GridContext("web", "2026-03-01T20:00:00+01:00"),
        GridContext("web", "2026-03-01T08:00:00+00:00"),
        GridContext("tv", "2026-03-01T20:00:00+01:00"),
        GridContext("tv", "2026-03-01T08:00:00+00:00"),
    )
    default = build_contexts(None, None, _us(datetime(2026, 3, 1, 6, 0, tzinfo=UTC)))
    assert [(c.device, c.at) for c in default] == [
        ("tv", "2026-03-01T20:00:00+00:00"),
        ("mobile", "2026-03-01T20:00:00+00:00"),
    ]
    with pytest.raises(BadRequestError, match="unknown device"):
        build_contexts(["fridge"], ["2026-03-01T20:00"], None)
    with pytest.raises(BadRequestError, match="malformed time"):
        build_contexts(["tv"], ["tonight"], None)


# ----- against the real trained model ---------------------------------------------------------

# One context keeps the end-to-end runs short; the grid itself is tested above and in
# test_two_contexts_and_parquet_hold_the_same_pages.
AT = "2030-01-07T20:00:00+00:00"
ONE_CONTEXT = ("--device", "tv", "--at", AT)


def _tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes), hidden ones included."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _lines(out: Path) -> list[bytes]:
    return [line for p in sorted(out.glob("shard-*.jsonl")) for line in p.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def model_users(tiny_model: Path) -> list[str]:
    return [str(u) for u in engine.load(tiny_model).history.user_ids.tolist()]


# The end-to-end runs use the first N_USERS users in SHARD_SIZE-user shards: a dozen shards,
# enough to kill a run between two of them, in a few seconds.
N_USERS, SHARD_SIZE = 24, 2


@pytest.fixture(scope="module")
def users_file(model_users: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("users") / "users.txt"
    f.write_text("\n".join(model_users[:N_USERS]) + "\n")
    return f


def _run_users_file(model: Path, users_file: Path, out: Path, workers: int) -> Any:
    """The users file's pages in the one context, SHARD_SIZE users a shard."""
    return run_precompute(
        model,
        out,
        users_file=users_file,
        devices=["tv"],
        times=[AT],
        workers=workers,
        shard_size=SHARD_SIZE,
        progress=False,
    )


@pytest.fixture(scope="module")
def reference(tiny_model: Path, users_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run in one process, one context."""
    out = tmp_path_factory.mktemp("reference") / "pages"
    result = _run_users_file(tiny_model, users_file, out, workers=1)
    assert result.exit_code == 0 and result.completed
    return out


def test_shards_are_user_slices_and_the_manifest_adds_up(
    reference: Path, model_users: list[str], tiny_model: Path
) -> None:
    users = model_users[:N_USERS]
    pages = [orjson.loads(line) for line in _lines(reference)]
    assert [p["user_id"] for p in pages] == users
    assert {(p["context"]["device"], p["context"]["local_time"]) for p in pages} == {("tv", AT)}
    manifest = orjson.loads((reference / MANIFEST).read_bytes())
    assert manifest["completed"] is True
    assert manifest["model_version"] == engine.load(tiny_model).model_version
    assert manifest["pages"] == len(users) == sum(s["pages"] for s in manifest["shards"])
    assert manifest["users"]["count"] == len(users)
    assert manifest["n_shards"] == len(manifest["shards"]) == -(-len(users) // SHARD_SIZE)
    assert manifest["contexts"] == [{"device": "tv", "at": AT}]
    for s in manifest["shards"]:
        data = (reference / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        lo, hi = s["user_range"]
        assert [orjson.loads(line)["user_id"] for line in data.splitlines()] == users[lo:hi]
        assert s["rows"] == sum(len(orjson.loads(line)["rows"]) for line in data.splitlines())
    assert not [p for p in reference.rglob("*") if ".tmp." in p.name]


def test_defaults_every_known_user_on_tv_and_mobile_at_prime_time(
    tiny_model: Path, model_users: list[str], users_file: Path, tmp_path: Path
) -> None:
    history = engine.load(tiny_model).history
    users, bad, unknown = resolve_users(history, None)
    assert list(users) == model_users and not bad and unknown == 0
    at = default_at(history.cutoff_us).isoformat()
    assert datetime.fromisoformat(at) >= datetime.fromtimestamp(history.cutoff_us / 1e6, UTC)
    # Default contexts and shard size (the users file keeps it short).
    result = run_precompute(
        tiny_model, tmp_path / "pages", users_file=users_file, workers=1, progress=False
    )
    assert result.exit_code == 0 and result.shards_run == result.spec.n_shards == 1
    pages = [orjson.loads(line) for line in _lines(tmp_path / "pages")]
    assert [(p["user_id"], p["context"]["device"], p["context"]["local_time"]) for p in pages] == [
        (u, d, at) for u in model_users[:N_USERS] for d in ("tv", "mobile")
    ]


def test_pages_are_byte_equal_to_rowrank_page(
    reference: Path, model_users: list[str], tiny_model: Path, capsysbinary: Any
) -> None:
    lines = _lines(reference)
    rng = np.random.default_rng(7)
    sample = sorted(rng.choice(len(lines), size=min(3, len(lines)), replace=False).tolist())
    for i in sample:
        argv = ["page", str(tiny_model), "--user", model_users[i], "--device", "tv", "--at", AT]
        assert cli_main(argv) == 0
        assert capsysbinary.readouterr().out == lines[i] + b"\n"
    # Once through a real `rowrank page` process too.
    printed = run_rowrank(*argv)
    assert printed.returncode == 0 and printed.stdout == lines[sample[-1]] + b"\n"


def _count_done(out: Path) -> int:
    done = out / DONE_DIR
    return len([p for p in done.iterdir() if p.suffix == ".json"]) if done.exists() else 0


def _start_and_kill(cmd: list[str], out: Path, after_shards: int) -> int:
    """Start a real `rowrank precompute`, SIGKILL its whole process group (parent and workers)
    once `after_shards` shards are done; return how many were done at the kill."""
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while _count_done(out) < after_shards and proc.poll() is None:
            assert time.monotonic() < deadline, "precompute made no progress"
            time.sleep(0.002)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: add shards"
    return _count_done(out)


@pytest.mark.slow
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_output(
    reference: Path, tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pages"
    args = ["precompute", str(tiny_model), str(out), *ONE_CONTEXT]
    args += ["--users", str(users_file), "--workers", "2", "--shard-size", str(SHARD_SIZE)]
    n_shards = orjson.loads((reference / MANIFEST).read_bytes())["n_shards"]
    killed_at = _start_and_kill(rowrank_cmd(*args), out, after_shards=2)
    assert 2 <= killed_at < n_shards
    assert orjson.loads((out / MANIFEST).read_bytes())["completed"] is False
    final = run_rowrank(*args)
    assert final.returncode == 0, final.stderr.decode()
    assert f"{killed_at} already done, {n_shards - killed_at} run now" in final.stdout.decode()
    # Byte for byte the same files (shards, markers, manifest), no temporary file left over.
    assert _tree(out) == _tree(reference)


def test_two_local_workers_write_the_same_files_without_an_engine_in_the_parent(
    reference: Path,
    tiny_model: Path,
    users_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parent reads the manifest and the History; only the (spawned, unpatched) workers
    load engines, and their pages are the single process's, byte for byte."""

    def no_engine_here(model_dir: Path) -> Any:
        raise AssertionError(f"the parent loaded an engine from {model_dir}")

    monkeypatch.setattr(engine, "load", no_engine_here)
    out = tmp_path / "pages"
    result = _run_users_file(tiny_model, users_file, out, workers=2)
    assert result.exit_code == 0 and result.shards_run == result.spec.n_shards
    assert _tree(out) == _tree(reference)


def test_refuses_an_out_dir_of_another_job_and_touches_nothing(
    reference: Path, tiny_model: Path, users_file: Path, tmp_path: Path, run_cli: Any
) -> None:
    out = tmp_path / "pages"
    shutil.copytree(reference, out)
    before = _snapshot(out)
    code, _, err = run_cli(
        "precompute", str(tiny_model), str(out), "--device", "web", "--at", AT,
        "--users", str(users_file), "--shard-size", str(SHARD_SIZE), "--workers", "1",
    )  # fmt: skip
    assert code == 2
    assert "different precompute run" in err and "contexts" in err and "Nothing was changed" in err
    assert _snapshot(out) == before

    # Another model: the manifest of the existing run names another model version.
    manifest = orjson.loads((out / MANIFEST).read_bytes())
    (out / MANIFEST).write_bytes(orjson.dumps({**manifest, "model_version": "someone-else"}))
    before = _snapshot(out)
    with pytest.raises(PrecomputeConflictError, match="model_version"):
        run_precompute(
            tiny_model, out, users_file=users_file, devices=["tv"], times=[AT], workers=1,
            shard_size=SHARD_SIZE, progress=False,
        )  # fmt: skip
    assert _snapshot(out) == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    code, _, err = run_cli("precompute", str(tiny_model), str(foreign), *ONE_CONTEXT)
    assert code == 2 and "holds no manifest.json" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_bad_users_lines_are_reported_and_the_good_ones_run(
    reference: Path, model_users: list[str], tiny_model: Path, tmp_path: Path, run_cli: Any
) -> None:
    known = model_users[:3]
    users = tmp_path / "users.txt"
    users.write_bytes(
        b"\n".join(
            [
                known[0].encode(),  # 1
                b"",  # 2 bad: empty
                known[1].encode(),  # 3
                b"never-seen-user",  # 4 good: a user id the model does not know
                known[0].encode(),  # 5 bad: duplicate of line 1
                b"\xc3\x28",  # 6 bad: not UTF-8
                known[2].encode() + b" extra",  # 7 bad: whitespace
            ]
        )
        + b"\n"
    )
    out = tmp_path / "pages"
    args = ["precompute", str(tiny_model), str(out), "--users", str(users), *ONE_CONTEXT]
    args += ["--shard-size", "2"]  # the known users in shard 0, the unknown one in shard 1
    code, _, err = run_cli(*args, "--workers", "1")
    assert code == 1, err
    for line in (2, 5, 6, 7):
        assert f"{users}:{line}: skipped" in err
    assert f"{users}:1:" not in err and f"{users}:4:" not in err
    assert "repeats line 1" in err and "1 listed user(s) unknown to the model" in err
    # The tiny model's config names no default country and the member has none: their page
    # is refused (a country is needed, not an empty page), which fails their shard only.
    assert "shard 1" in err and "a country is needed" in err and "never-seen-user" in err
    pages = [orjson.loads(line) for line in _lines(out)]
    assert [p["user_id"] for p in pages] == [known[0], known[1]]
    # The known users' pages are the ones the full run wrote.
    ref = {orjson.loads(line)["user_id"]: line for line in _lines(reference)}
    assert _lines(out) == [ref[known[0]], ref[known[1]]]
    # Rerun: still exit 1, the finished shard not recomputed.
    code, out_text, _ = run_cli(*args)
    assert code == 1 and "1 already done, 0 run now" in out_text


@pytest.mark.slow
def test_dask_engine_writes_the_same_files(
    reference: Path, tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pages"
    result = run_precompute(
        tiny_model,
        out,
        users_file=users_file,
        devices=["tv"],
        times=[AT],
        workers=2,
        engine="dask",
        shard_size=SHARD_SIZE,
        progress=False,
    )
    assert result.exit_code == 0 and result.shards_run == result.spec.n_shards
    assert _tree(out) == _tree(reference)
    # Each worker's peak: it loaded the model, so above an idle interpreter's ~30 MB.
    assert len(result.worker_peak_rss_mb) == 2
    assert all(60 < mb < 4096 for mb in result.worker_peak_rss_mb)


def test_two_contexts_and_parquet_hold_the_same_pages(
    model_users: list[str], tiny_model: Path, tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("\n".join(model_users[:5]) + "\n")
    grid = {"devices": ["tv", "mobile"], "times": [AT, "2030-01-08T08:00:00+01:00"]}
    runs = {}
    for fmt in ("jsonl", "parquet"):
        runs[fmt] = run_precompute(
            tiny_model, tmp_path / fmt, users_file=users, workers=1, fmt=fmt, shard_size=2,
            progress=False, **grid,
        )  # fmt: skip
        assert runs[fmt].exit_code == 0
    jsonl = _lines(tmp_path / "jsonl")
    frame = pl.read_parquet(tmp_path / "parquet" / "shard-*.parquet")
    assert frame.columns == [
        "user_id", "device", "at", "n_rows", "n_titles", "row_ids", "fallback", "page_json"
    ]  # fmt: skip
    assert [s.encode() for s in frame["page_json"]] == jsonl
    # User-major, contexts in grid order: devices x times.
    expected = [
        (u, d, t) for u in model_users[:5] for d in grid["devices"] for t in
        ("2030-01-07T20:00:00+00:00", "2030-01-08T08:00:00+01:00")
    ]  # fmt: skip
    assert list(zip(frame["user_id"], frame["device"], frame["at"], strict=True)) == expected
    for rec, line in zip(frame.iter_rows(named=True), jsonl, strict=True):
        page = orjson.loads(line)
        assert (page["user_id"], page["context"]["device"]) == (rec["user_id"], rec["device"])
        assert rec["row_ids"] == [r["row_id"] for r in page["rows"]]
        assert rec["n_rows"] == len(page["rows"])
        assert rec["n_titles"] == sum(len(r["items"]) for r in page["rows"])
        assert rec["fallback"] == page["fallback"]


def test_items_parquet_has_one_typed_row_per_title_shown(
    model_users: list[str], tiny_model: Path, tmp_path: Path
) -> None:
    """--format items: per shard a Parquet file, one row per title shown, typed columns, and
    every row of it what the jsonl pages show (read back with polars, no JSON parsed)."""
    users = tmp_path / "users.txt"
    users.write_text("\n".join(model_users[:5]) + "\n")
    grid = {"devices": ["tv", "mobile"], "times": [AT, "2030-01-08T08:00:00+01:00"]}
    for fmt in ("jsonl", "items"):
        result = run_precompute(
            tiny_model, tmp_path / fmt, users_file=users, workers=1, fmt=fmt, shard_size=2,
            progress=False, **grid,
        )  # fmt: skip
        assert result.exit_code == 0 and result.spec.n_shards == 3
    files = sorted((tmp_path / "items").glob("shard-*.items.parquet"))
    manifest = orjson.loads((tmp_path / "items" / MANIFEST).read_bytes())
    assert [s["file"] for s in manifest["shards"]] == [f.name for f in files]
    for shard, f in zip(manifest["shards"], files, strict=True):
        assert shard["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    items = pl.scan_parquet(tmp_path / "items" / "shard-*.items.parquet").collect()
    schema = items.schema
    for col, dtype in {
        "user_id": pl.String, "device": pl.String, "hour": pl.Int8, "page_id": pl.String,
        "at": pl.String, "row_index": pl.Int32, "row_id": pl.String, "kind": pl.String,
        "position": pl.Int32, "title_id": pl.String, "score": pl.Float64,
        "progress": pl.Float64,
    }.items():  # fmt: skip
        assert schema[col] == dtype, col
    want = []
    for line in _lines(tmp_path / "jsonl"):
        page = orjson.loads(line)
        page_id = hashlib.sha256(line).hexdigest()[:16]
        for r, row in enumerate(page["rows"]):
            for k, item in enumerate(row["items"]):
                want.append(
                    (page["user_id"], page["context"]["device"], page["context"]["hour"],
                     page_id, r, row["row_id"], row["kind"], k, item["title_id"],
                     item["score"], item["progress"])
                )  # fmt: skip
    cols = ["user_id", "device", "hour", "page_id", "row_index", "row_id", "kind", "position"]
    got = items.select(*cols, "title_id", "score", "progress").rows()
    assert len(got) == len(want) > 5 * 4 * 10
    assert [g[:9] for g in got] == [w[:9] for w in want]
    # The JSON carries 6 significant digits; the column the engine's float.
    for g, w in zip(got, want, strict=True):
        assert g[9] == pytest.approx(w[9], rel=1e-5)
        assert (g[10] is None) == (w[10] is None)
    assert items["page_id"].n_unique() == 5 * 4


@pytest.mark.slow
def test_a_killed_items_run_resumes_to_exactly_the_uninterrupted_output(
    tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    args = ["precompute", str(tiny_model), "", *ONE_CONTEXT, "--format", "items"]
    args += ["--users", str(users_file), "--workers", "2", "--shard-size", str(SHARD_SIZE)]
    ref, out = tmp_path / "reference", tmp_path / "pages"
    args[2] = str(ref)
    assert run_rowrank(*args).returncode == 0
    args[2] = str(out)
    killed_at = _start_and_kill(rowrank_cmd(*args), out, after_shards=2)
    assert 2 <= killed_at < orjson.loads((ref / MANIFEST).read_bytes())["n_shards"]
    final = run_rowrank(*args)
    assert final.returncode == 0, final.stderr.decode()
    assert _tree(out) == _tree(ref)


class _FailsFor:
    """The real engine, except that one user's page raises (a bug hit by one member)."""

    def __init__(self, inner: Any, user: str) -> None:
        self._inner, self._user = inner, user
        self.model_version, self.history = inner.model_version, inner.history

    def page(self, user_id: str, **kw: Any) -> Any:
        if user_id == self._user:
            raise RuntimeError("boom")
        return self._inner.page(user_id, **kw)


class _BlockFailsAt(_FailsFor):
    """The real engine with its block path, whose block fails when it reaches one user's page;
    that user's page alone fails too when `alone` is set."""

    def __init__(self, inner: Any, user: str, *, alone: bool) -> None:
        super().__init__(inner, user)
        self._alone = alone

    def context(self, user_id: str, **kw: Any) -> Any:
        return self._inner.context(user_id, **kw)

    def page(self, user_id: str, **kw: Any) -> Any:
        return super().page(user_id, **kw) if self._alone else self._inner.page(user_id, **kw)

    def iter_pages(self, requests: Any) -> Any:
        for ctx, page in zip(requests, self._inner.iter_pages(requests), strict=True):
            if ctx.user_id == self._user:
                raise RuntimeError("the block broke")
            yield page


def test_a_block_that_fails_midway_goes_on_a_page_at_a_time(
    reference: Path, model_users: list[str], tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    victim = model_users[5]  # the second page of its shard (users 4 and 5), one block
    kw: dict[str, Any] = {
        "users_file": users_file, "devices": ["tv"], "times": [AT], "workers": 1,
        "shard_size": SHARD_SIZE, "progress": False,
    }  # fmt: skip
    out = tmp_path / "recovered"
    result = run_precompute(
        tiny_model, out, loader=lambda d: _BlockFailsAt(engine.load(d), victim, alone=False), **kw
    )
    assert result.exit_code == 0 and _tree(out) == _tree(reference)  # no page lost or doubled
    out = tmp_path / "failed"
    failed = run_precompute(
        tiny_model, out, loader=lambda d: _BlockFailsAt(engine.load(d), victim, alone=True), **kw
    )
    assert failed.exit_code == 1 and len(failed.failures) == 1
    assert f"page for user {victim!r}" in failed.failures[0] and "boom" in failed.failures[0]


def test_a_failing_page_fails_its_shard_only_and_a_rerun_completes(
    reference: Path, model_users: list[str], tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pages"
    victim = model_users[2 * SHARD_SIZE]  # in shard 2
    kw: dict[str, Any] = {
        "users_file": users_file, "devices": ["tv"], "times": [AT], "workers": 1,
        "shard_size": SHARD_SIZE, "progress": False,
    }  # fmt: skip
    failed = run_precompute(
        tiny_model, out, loader=lambda d: _FailsFor(engine.load(d), victim), **kw
    )
    assert failed.exit_code == 1 and not failed.completed
    assert (
        len(failed.failures) == 1 and victim in failed.failures[0] and "boom" in failed.failures[0]
    )
    assert failed.shards_run == 2  # shards 0 and 1; nothing after the failure (fail closed)
    assert not (out / "shard-00002.jsonl").exists() and _count_done(out) == 2

    # A finished shard damaged on disk is redone too.
    damaged = out / "shard-00001.jsonl"
    damaged.write_bytes(damaged.read_bytes()[:-2] + b"x\n")
    done = run_precompute(tiny_model, out, **kw)
    assert done.exit_code == 0 and done.shards_resumed == 1
    assert _tree(out) == _tree(reference)


@pytest.mark.slow
def test_workers_exit_when_the_parent_is_killed(
    tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    """SIGKILL of the `rowrank precompute` process alone (not its group): its pool workers exit
    too instead of idling forever with the model in memory
    (engine.serving.processes.exit_with_parent)."""
    import psutil

    out = tmp_path / "pages"
    cmd = rowrank_cmd("precompute", tiny_model, out, *ONE_CONTEXT, "--users", users_file)
    cmd += ["--workers", "2", "--shard-size", str(SHARD_SIZE)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        workers: list[psutil.Process] = []
        while len(workers) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no worker processes appeared"
            workers = [c for c in parent.children(recursive=True) if _is_pool_worker(c)]
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before the kill: add shards"
        proc.kill()
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived their parent: {[p.pid for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _is_pool_worker(p: Any) -> bool:
    """A multiprocessing spawn child (not the resource tracker); False once it is gone."""
    import psutil

    try:
        return any("spawn_main" in a for a in p.cmdline())
    except psutil.Error:
        return False


# ----- progress, interrupt, shard size, quick runs ---------------------------------------------


def test_default_shard_size_gives_every_worker_several_shards() -> None:
    assert auto_shard_size(300, 2) == 38  # 8 shards: no worker idles on a few hundred members
    assert auto_shard_size(300, 1) == 1_000  # one worker: shards only bound a resume's loss
    assert auto_shard_size(100_000, 2) == 1_000
    assert auto_shard_size(30, 2) == 10  # never tiny shards


def test_a_resume_keeps_the_shard_size_of_the_run_it_resumes(
    tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pages"
    kw: dict[str, Any] = {"users_file": users_file, "devices": ["tv"], "times": [AT]}
    first = run_precompute(tiny_model, out, workers=2, progress=False, **kw)
    assert first.spec.shard_size == auto_shard_size(N_USERS, 2) == 10
    assert first.spec.n_shards == 3
    # With another number of workers the default would differ; the resume keeps 10.
    again = run_precompute(tiny_model, out, workers=1, progress=False, **kw)
    assert again.exit_code == 0 and again.spec.shard_size == 10 and again.shards_resumed == 3


def test_limit_and_sample_pick_users_for_a_quick_run(
    tiny_model: Path, model_users: list[str], tmp_path: Path
) -> None:
    users = np.array(model_users)
    assert list(pick_users(users, 5, None, 0)) == model_users[:5]
    drawn = list(pick_users(users, None, 5, seed=3))
    assert drawn == list(pick_users(model_users, None, 5, seed=3))  # array or list alike
    assert len(set(drawn)) == 5 and drawn == sorted(drawn, key=model_users.index)
    assert drawn != list(pick_users(users, None, 5, seed=4))
    assert list(pick_users(users, None, 10**6, seed=3)) == model_users  # more than there are
    out = tmp_path / "sample"
    result = run_precompute(
        tiny_model, out, devices=["tv"], times=[AT], workers=1, sample=5, seed=3, progress=False
    )
    assert result.exit_code == 0 and result.spec.n_users == 5
    assert [orjson.loads(line)["user_id"] for line in _lines(out)] == drawn
    with pytest.raises(BadRequestError, match="not both"):
        run_precompute(tiny_model, tmp_path / "x", limit=2, sample=2, progress=False)
    with pytest.raises(BadRequestError, match="--limit must be at least 1"):
        run_precompute(tiny_model, tmp_path / "x", limit=0, progress=False)
    code = cli_main(["precompute", str(tiny_model), str(tmp_path / "cli"), *ONE_CONTEXT,
                     "--limit", "3", "--workers", "1"])  # fmt: skip
    assert code == 0
    assert orjson.loads((tmp_path / "cli" / MANIFEST).read_bytes())["users"]["count"] == 3


def test_progress_off_a_terminal_is_plain_lines_that_move_per_page(
    tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    """One shard of 24 pages: the progress still moves page by page (not a shard at a time),
    as plain lines without a carriage return, the last one at 100%."""
    log = io.StringIO()  # not a terminal
    result = run_precompute(
        tiny_model,
        tmp_path / "pages",
        users_file=users_file,
        devices=["tv"],
        times=[AT],
        workers=1,
        shard_size=N_USERS,
        log=log,
        progress_seconds=0.001,
    )
    assert result.exit_code == 0
    text = log.getvalue()
    assert "\r" not in text
    counts = [int(n) for n in re.findall(r"^precompute: (\d+)/24 pages", text, re.M)]
    assert counts and counts[-1] == 24 and text.rstrip().splitlines()[-1].count("(100%)") == 1
    assert any(0 < n < N_USERS for n in counts), text  # inside the only shard
    assert counts == sorted(counts)


@pytest.mark.slow
def test_sigint_stops_within_seconds_and_the_resume_is_identical(
    reference: Path, tiny_model: Path, users_file: Path, tmp_path: Path
) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group, workers included):
    the run stops within a few seconds, exit 130, the manifest lists exactly the shards that
    are complete, no temporary file is left, and the same command then finishes the job with
    the bytes of an uninterrupted run."""
    out = tmp_path / "pages"
    args = ["precompute", str(tiny_model), str(out), *ONE_CONTEXT]
    args += ["--users", str(users_file), "--workers", "2", "--shard-size", str(SHARD_SIZE)]
    n_shards = orjson.loads((reference / MANIFEST).read_bytes())["n_shards"]
    proc = subprocess.Popen(
        rowrank_cmd(*args),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while _count_done(out) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "precompute made no progress"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_INTERRUPTED, stderr.decode()[-2000:]
    assert took < 5, f"took {took:.1f} s to stop"
    manifest = orjson.loads((out / MANIFEST).read_bytes())
    assert manifest["completed"] is False
    listed = {s["shard"] for s in manifest["shards"]}
    assert 2 <= len(listed) < n_shards, "the run finished before the interrupt: add shards"
    assert listed == {int(p.stem.split("-")[1]) for p in (out / DONE_DIR).glob("*.json")}
    for s in manifest["shards"]:
        assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    assert len(list(out.glob("shard-*"))) == len(listed)  # no shard file beyond the listed
    assert not [p for p in out.rglob("*") if ".tmp." in p.name]
    assert f"interrupted: {len(listed)} of {n_shards} shard(s) complete" in stdout.decode()
    final = run_rowrank(*args)
    assert final.returncode == 0, final.stderr.decode()
    assert f"{len(listed)} already done" in final.stdout.decode()
    assert _tree(out) == _tree(reference)
