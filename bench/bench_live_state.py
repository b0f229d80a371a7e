"""What a large live state costs a serving process: full garbage collections and page latency.

    PYTHONPATH=. .venv/bin/python bench/bench_live_state.py --model M [--events 150000]

Loads the model as `rowrank serve` does (frozen out of the cyclic garbage collector), fills a
live state (engine.events.state.LiveState, a fresh log in a temporary directory) with --events
play events of random members and titles after the cut-off, then for --seconds builds pages of
500 members in turn while a thread appends 100 events every 20 ms (5,000 a second, the ingest
target of issue 23). Prints the time of one full collection with the state in memory, the
objects the collector tracks, the pages' p50 / p99 / max, and every full (generation 2)
collection that ran during the pages with its pause.

The bench uses only public calls, so it runs against an older rowrank too: put that tree first
on PYTHONPATH to measure it side by side.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import threading
import time
from typing import Any

import numpy as np

import engine
from engine.events.schema import PlayEvent
from engine.events.state import LiveState
from engine.serving.processes import load_frozen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model directory (e.g. bench_events.py's)")
    ap.add_argument("--events", type=int, default=150_000, help="live events before the pages")
    ap.add_argument("--seconds", type=float, default=30.0, help="time spent building pages")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    eng = load_frozen(engine.load, args.model)
    h = eng.history
    rng = np.random.default_rng(args.seed)
    pool = 1_000_000
    users = h.user_ids[rng.integers(0, h.n_users, pool)].astype(str)
    titles = h.title_ids[rng.integers(0, h.n_titles, pool)].astype(str)
    made = [0]

    def batch(n: int) -> list[PlayEvent]:
        k0 = made[0]
        made[0] += n
        return [
            PlayEvent(
                f"e{k}", users[k % pool], titles[k % pool], h.cutoff_us + k * 20, "tv", 60.0, 0.5
            )
            for k in range(k0, k0 + n)
        ]

    with tempfile.TemporaryDirectory() as state:
        live = LiveState(state)
        eng.live = live
        while made[0] < args.events:
            live.append(batch(1000))
        at = f"{np.datetime64(h.cutoff_us + made[0] * 20 + 10**9, 'us')}Z"
        members = [str(u) for u in h.user_ids[:500]]
        eng.page(members[0], "tv", at)  # compiles what compiles on a first page
        gc.collect()
        t0 = time.perf_counter()
        gc.collect()
        full_ms = 1e3 * (time.perf_counter() - t0)
        tracked = len(gc.get_objects())

        pauses: list[float] = []
        started = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            elif info["generation"] == 2:
                pauses.append(1e3 * (time.perf_counter() - started[0]))

        gc.callbacks.append(on_gc)
        stop = threading.Event()

        def feed() -> None:
            while not stop.is_set():
                live.append(batch(100))
                time.sleep(0.02)

        feeder = threading.Thread(target=feed)
        feeder.start()
        lat = []
        end = time.perf_counter() + args.seconds
        i = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            eng.page(members[i % len(members)], "tv", at).to_json()
            lat.append(1e3 * (time.perf_counter() - t))
            i += 1
        stop.set()
        feeder.join()
        gc.callbacks.remove(on_gc)
        kept = live.live_plays()
        eng.live = None
        live.close()

    ms = np.array(lat)
    print(
        f"live state: {args.events:,} events appended first, {kept:,} kept at the end; one full "
        f"collection {full_ms:.1f} ms with {tracked:,} tracked objects"
    )
    print(
        f"pages with 5,000 events/s appended: {len(ms):,} in {args.seconds:g} s, p50 "
        f"{np.median(ms):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms; "
        f"full collections {len(pauses)}: {', '.join(f'{p:.0f}' for p in pauses)} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
