"""`rowrank demo [--out DIR] [--quick]`: the main job end to end, offline.

1. Simulate a streaming world (`rowrank simulate`'s model). The default world (5,000 members x
   2,000 titles x 60 days) takes several minutes to simulate and train on a 2-core machine, so
   the demo uses a smaller one: DEMO_WORLD members x titles x days (about a minute in all);
   `--quick` uses the test suite's 300 x 300 x 28 world with small models (a few seconds).
2. Train the rankers and the page model on it (`rowrank train`).
3. Print one member's homepage on two devices at two times of day, compactly (row labels and
   their first titles), with a line per page on what the visible part holds (length, kids,
   thrillers/horror), so the context effect of the page model shows.
4. Print the commands that go on from there (a full page, the HTTP preview, the member ids),
   each of which works as printed: the world and the model stay in `--out` (default
   ./rowrank-demo/), and a second run reuses them instead of simulating and training again.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from engine.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from engine.pipeline import Engine

DEMO_WORLD = (1500, 800, 42)  # members, titles, days
QUICK_WORLD = (300, 300, 28)
QUICK_PAGE = {
    "windows": 3,
    "window_days": 5.0,
    "max_pages_per_window": 1500,
    "title_trees": 40,
    "title_leaves": 15,
    "row_trees": 30,
    "row_leaves": 7,
    "min_data_in_leaf": 20,
}
# (device, hour of the day after the cut-off): two devices at two times of day.
CONTEXTS = (("tv", 21), ("tv", 9), ("mobile", 21), ("mobile", 9))
SHOWN_ROWS, SHOWN_TITLES = 5, 4


MARKER = "demo.json"  # what world the directory holds, so a second run can reuse it


def run_demo(out: Path, *, quick: bool = False) -> int:
    """Simulate, train, print pages and the commands that go on; returns the exit code. The
    world and the model are kept in `out` and reused by the next run with the same settings."""
    import engine
    from engine.config import load_config, parse_config
    from engine.sim.simulate import simulate
    from engine.training.train import summary, train

    users, titles, days = QUICK_WORLD if quick else DEMO_WORLD
    settings: dict[str, object] = {"users": users, "titles": titles, "days": days, "quick": quick}
    _claim(out, settings)
    world, model = out / "world", out / "model"
    t0 = time.perf_counter()
    if (world / "dataset.json").exists():
        print(f"reusing the world in {world}")
    else:
        s = simulate(world, users=users, titles=titles, days=days, seed=0)
        print(s.describe())
    eng = _reuse_model(model)
    if eng is None:
        doc = load_config(None).to_document()
        if quick:
            doc["page"] = {**doc.get("page", {}), **QUICK_PAGE}
        cfg = parse_config(doc, source="rowrank demo")
        manifest = train(world, model, engine_config=cfg, progress=sys.stderr.isatty())
        print(summary(manifest))
        eng = engine.load(model)
    else:
        print(f"reusing the model in {model} (model {eng.model_version})")
    h = eng.history
    # The member with the most plays: a page with every kind of row.
    user = str(h.user_ids[int(np.argmax(np.diff(h.user_offsets)))])
    day = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=1)
    print(f"\nhomepages of member {user} on {day:%A %Y-%m-%d} (model {eng.model_version}):")
    genre = {g: i for i, g in enumerate(h.genre_names)}
    from engine.cli.show import page_table

    for device, hour in CONTEXTS:
        page = eng.page(user, device, day + timedelta(hours=hour))
        layout = eng.layout(device)
        print(f"\n  {device} at {hour:02d}:00")
        table = page_table(page, max_rows=SHOWN_ROWS, titles=SHOWN_TITLES, indent="  ")
        print(table.split("\n", 1)[1], end="")  # the rows; the heading line is said above
        visible = [
            h.title_index(i.title_id)
            for r in page.rows[: layout.visible_rows]
            for i in r.items[: layout.visible_titles]
        ]
        v = np.array(visible, dtype=np.int64)
        minutes = float(np.nanmean(h.duration_min[v])) if len(v) else float("nan")

        def count(*names: str, v: np.ndarray = v) -> int:
            cols = np.array([genre[n] for n in names if n in genre], dtype=np.int64)
            return int(h.title_genres[v][:, cols].any(axis=1).sum()) if len(cols) else 0

        print(
            f"    visible ({layout.visible_rows} rows x {layout.visible_titles}): "
            f"{len(v)} titles, mean {minutes:.0f} min, {count('Kids')} kids, "
            f"{count('Thriller', 'Horror')} thriller/horror"
        )
    at = f"{day:%Y-%m-%d}T21:00"
    print(f"\nfiles in {out} (kept: a second `rowrank demo` reuses them). Next:")
    for line in next_commands(model, user, at):
        print(f"  {line}")
    rowrank = _rowrank_hint()
    if rowrank:
        print(rowrank)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def next_commands(model: Path, user: str, at: str) -> list[str]:
    """The commands the demo prints at its end, each of which works as printed."""
    return [
        f"rowrank page {model} --user {user} --device mobile --at {at} --format table",
        f"rowrank page {model} --user {user} --device mobile --at {at}   # the JSON",
        f"rowrank users {model} --limit 5",
        f"rowrank serve {model}   # then http://127.0.0.1:8000/preview/{user}?at={at}",
    ]


def _claim(out: Path, settings: dict[str, object]) -> None:
    """Make `out` the demo's directory for these settings: new, empty, or holding the same
    demo. Another demo's world, or files that are not a demo's, are never overwritten."""
    marker = out / MARKER
    if marker.is_file():
        held = orjson.loads(marker.read_bytes())
        if held != settings:
            raise ConfigError(
                f"{out} holds another demo world ({_describe(held)}, not {_describe(settings)}): "
                f"pass --out DIR to keep both, or delete {out}"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"{out} exists and is not a rowrank demo directory (no {MARKER}): pass --out DIR "
            "with a new or empty directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps(settings))


def _describe(settings: dict[str, object]) -> str:
    quick = " --quick" if settings.get("quick") else ""
    return f"{settings.get('users')} x {settings.get('titles')} x {settings.get('days')}{quick}"


def _reuse_model(model: Path) -> Engine | None:
    """The Engine in `model` when a previous run finished training it, else None."""
    import engine

    if not (model / "manifest.json").is_file():
        return None
    try:
        return engine.load(model)
    except ModelLoadError as exc:
        print(f"retraining: the model in {model} cannot be used ({exc})")
        return None


def _rowrank_hint() -> str:
    """How to run `rowrank` when it is not on the PATH (the demo ran as .venv/bin/rowrank)."""
    if shutil.which("rowrank"):
        return ""
    script = Path(sys.executable).parent / "rowrank"
    if not script.exists():
        return ""
    try:
        shown = os.path.relpath(script)
    except ValueError:  # another drive (Windows)
        shown = str(script)
    activate = Path(shown).parent / "activate"
    return f"(rowrank is not on your PATH: run `. {activate}` first, or call {shown})"
