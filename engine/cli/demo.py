"""`rowrank demo [--out DIR] [--quick]`: the main job end to end, offline.

1. Simulate a streaming world (`rowrank simulate`'s model). The default world (5,000 members x
   2,000 titles x 60 days) takes several minutes to simulate and train on a 2-core machine, so
   the demo uses a smaller one: DEMO_WORLD members x titles x days (about a minute in all);
   `--quick` uses the test suite's 300 x 300 x 28 world with small models (a few seconds).
2. Train the rankers and the page model on it (`rowrank train`).
3. Print one member's homepage on two devices at two times of day, compactly (row labels and
   their first titles), with a line per page on what the visible part holds (length, kids,
   thrillers/horror), so the context effect of the page model shows.

With `--out DIR` the world and the model directory are kept there (`rowrank page DIR/model
--user ...` prints full JSON pages); otherwise they go to a temporary directory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

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


def run_demo(out: Path | None = None, *, quick: bool = False) -> int:
    """Simulate, train, print pages; returns the process exit code."""
    if out is not None:
        return _run(Path(out), quick)
    with tempfile.TemporaryDirectory(prefix="rowrank-demo-") as tmp:
        return _run(Path(tmp), quick)


def _run(out: Path, quick: bool) -> int:
    import engine
    from engine.config import load_config, parse_config
    from engine.sim.simulate import simulate
    from engine.training.train import summary, train

    users, titles, days = QUICK_WORLD if quick else DEMO_WORLD
    world, model = out / "world", out / "model"
    t0 = time.perf_counter()
    if not (world / "dataset.json").exists():
        s = simulate(world, users=users, titles=titles, days=days, seed=0)
        print(s.describe())
    doc = load_config(None).to_document()
    if quick:
        doc["page"] = {**doc.get("page", {}), **QUICK_PAGE}
    cfg = parse_config(doc, source="rowrank demo")
    manifest = train(world, model, engine_config=cfg, progress=sys.stderr.isatty())
    print(summary(manifest))
    eng = engine.load(model)
    h = eng.history
    # The member with the most plays: a page with every kind of row.
    user = str(h.user_ids[int(np.argmax(np.diff(h.user_offsets)))])
    day = datetime.fromtimestamp(h.cutoff_us / 1e6, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=1)
    print(f"\nhomepages of member {user} on {day:%A %Y-%m-%d} (model {eng.model_version}):")
    genre = {g: i for i, g in enumerate(h.genre_names)}
    for device, hour in CONTEXTS:
        page = eng.page(user, device, day + timedelta(hours=hour))
        layout = eng.layout(device)
        print(f"\n  {device} at {hour:02d}:00")
        for row in page.rows[:SHOWN_ROWS]:
            names = ", ".join(i.name for i in row.items[:SHOWN_TITLES])
            print(f"    {row.title[:28]:<28} {names}")
        if len(page.rows) > SHOWN_ROWS:
            print(f"    ... {len(page.rows) - SHOWN_ROWS} more rows")
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
    print(
        f"\nfull JSON: rowrank page {model} --user {user} --device mobile --at {day:%Y-%m-%d}T21:00"
    )
    print(
        f"done in {time.perf_counter() - t0:.0f} s" + ("" if out is None else f"; files in {out}")
    )
    return 0
