"""Load with faults: pages served without a failure while the model is hot-swapped 10 times
(one of them to a broken directory) and one ranker raises on a share of requests.

    .venv/bin/python bench/bench_faults.py                       # simulate + train the small world
    .venv/bin/python bench/bench_faults.py --model models/demo --seconds 20 --connections 8

The server is the real app (engine.serving.http.create_app on uvicorn, 127.0.0.1, one worker, in
this process, run by tests/servers.py's ServerThread). Its loader wraps the real engine and
makes one ranker instance (`--ranker`, default trending_24h) raise RuntimeError on a seeded
share of its calls (`--fail-share`, a numpy Generator seeded with `--seed`): the engine drops
that ranker's rows (fail open) and the service counts it in /metrics. The load is wrk (Debian
`apt-get install -y wrk`) for `--seconds` (at most 30) or, without wrk or with `--client
python`, a bounded Python client; each request is another member in turn. While it runs,
`--reloads` hot swaps alternate between two model directories (`a`, and `b`: the same files
under another model_version), and one of them, at a seeded position, points at `broken`: a copy
with one byte of title_model.txt flipped, which the checksum check must refuse (422) while the
old model keeps serving.

It prints the figures and exits 1 unless: zero failed requests (non-2xx, socket errors,
timeouts), every reload but the broken one accepted, the broken one refused, and the ranker
failures in /metrics equal to the failures injected (and more than zero).
tests/serving/test_faults.py runs the same scenario for a few seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before LightGBM loads (page_model.py)

import numpy as np
import orjson
import requests

import engine
from engine.serving.http import create_app

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))  # tests/servers.py (ServerThread) and tests/conftest.py
from servers import ServerThread  # noqa: E402

TOKEN = "bench-faults-token"
MAX_SECONDS = 30


# ----- the faults -------------------------------------------------------------------------------


@dataclass
class FlakyLoader:
    """engine.load, with ranker `ranker` raising on a seeded share of its calls. One Generator
    and one counter shared by every engine it loads (reloads included)."""

    ranker: str
    share: float
    seed: int
    injected: int = 0
    calls: int = 0
    loads: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._lock = threading.Lock()

    def __call__(self, model_dir: Path) -> Any:
        eng = engine.load(model_dir)
        if self.ranker not in eng.rankers:
            raise KeyError(f"no ranker {self.ranker!r} in {model_dir}: {sorted(eng.rankers)}")
        target = eng.rankers[self.ranker]
        real = target.propose

        def propose(request: Any, history: Any) -> Any:
            with self._lock:
                self.calls += 1
                fail = bool(self._rng.random() < self.share)
                self.injected += fail
            if fail:
                raise RuntimeError(f"injected fault in {self.ranker}")
            return real(request, history)

        target.propose = propose  # type: ignore[method-assign]
        self.loads.append(str(eng.model_version))
        return eng


def prepare_root(model: Path, root: Path) -> dict[str, str]:
    """`a`: the model; `b`: the same files under another model_version; `broken`: one byte
    of title_model.txt flipped (its checksum no longer matches). Returns name -> version."""
    shutil.copytree(model, root / "a")
    shutil.copytree(model, root / "b")
    manifest = orjson.loads((root / "b" / "manifest.json").read_bytes())
    manifest["model_version"] = manifest["model_version"] + "-b"
    (root / "b" / "manifest.json").write_bytes(orjson.dumps(manifest))
    shutil.copytree(model, root / "broken")
    victim = root / "broken" / "title_model.txt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    version_a = orjson.loads((root / "a" / "manifest.json").read_bytes())["model_version"]
    return {"a": version_a, "b": manifest["model_version"]}


def reload_plan(n: int, seed: int) -> list[str]:
    """`n` reload targets alternating b, a, ...; one, at a seeded position, is `broken`."""
    plan = ["b" if i % 2 == 0 else "a" for i in range(n)]
    if n:
        plan[int(np.random.default_rng(seed).integers(n))] = "broken"
    return plan


# ----- clients ----------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    failed: int  # non-2xx answers + socket errors + timeouts
    seconds: float
    p50_ms: float
    p99_ms: float
    client: str
    versions: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def python_load(
    url: str, users: Sequence[str], connections: int, stop: threading.Event, max_seconds: float
) -> Load:
    """A closed loop of `connections` threads, each request the next member, until `stop` is set
    (or `max_seconds` pass)."""
    lock = threading.Lock()
    latencies: list[float] = []
    versions: Counter[str] = Counter()
    failures: list[str] = []
    counter = iter(range(10**9))
    t0 = time.perf_counter()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with requests.Session() as session:
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    i = next(counter)
                user = users[i % len(users)]
                start = time.perf_counter()
                try:
                    r = session.get(f"{url}/v1/users/{user}/page", timeout=30)
                    ok = r.status_code == 200
                    problem = "" if ok else f"{r.status_code} {r.text[:200]}"
                    version = r.headers.get("x-model-version", "?")
                except requests.RequestException as exc:
                    ok, problem, version = False, f"{type(exc).__name__}: {exc}", "?"
                with lock:
                    latencies.append(time.perf_counter() - start)
                    versions[version] += ok
                    if not ok:
                        failures.append(problem)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies) or [0.0]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return Load(
        len(latencies), len(failures), elapsed, statistics.median(ms), p99, "python",
        versions, failures,
    )  # fmt: skip


def wrk_load(url: str, users: Sequence[str], connections: int, seconds: int, work: Path) -> Load:
    """wrk for `seconds` (it stops by itself); non-2xx and socket errors read from its report."""
    script = work / "users.lua"
    ids = ",".join(orjson.dumps(u).decode() for u in users)
    script.write_text(
        f"local users = {{{ids}}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        '  return wrk.format("GET", "/v1/users/" .. users[(i % #users) + 1] .. "/page")\nend\n'
    )
    argv = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    argv += ["--timeout", "20s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, out, re.M)

    total = int(find(r"(\d+) requests in")[1])  # type: ignore[index]
    seconds_m = find(r"requests in ([\d.]+)(m?s)")
    assert seconds_m is not None
    elapsed = float(seconds_m[1]) / (1000 if seconds_m[2] == "ms" else 1)
    non_2xx = int(m[1]) if (m := find(r"Non-2xx or 3xx responses:\s+(\d+)")) else 0
    sock = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    socket_errors = sum(int(g) for g in sock.groups()) if sock else 0
    p50 = ms(find(r"^\s+50%\s+(\S+)")[1])  # type: ignore[index]
    p99 = ms(find(r"^\s+99%\s+(\S+)")[1])  # type: ignore[index]
    failures = [f"{non_2xx} non-2xx"] * bool(non_2xx) + [f"socket errors: {sock}"] * bool(
        socket_errors
    )
    return Load(total, non_2xx + socket_errors, elapsed, p50, p99, "wrk", Counter(), failures)


# ----- the scenario -----------------------------------------------------------------------------


@dataclass
class Figures:
    load: Load
    reloads: list[tuple[str, int, str]]  # (target, status, error code or model_version)
    reloads_under_load: int
    injected: int
    ranker_calls: int
    metric_ranker_failures: float
    metric_reloads: dict[str, float]
    metric_fallback_pages: float
    metric_pages: float
    versions: dict[str, str]

    def problems(self) -> list[str]:
        """Why the run fails its targets (empty: it meets them)."""
        out = []
        if self.load.failed:
            out.append(f"{self.load.failed} failed request(s): {self.load.failures[:3]}")
        for target, status, detail in self.reloads:
            want = 422 if target == "broken" else 200
            if status != want:
                out.append(f"reload of {target}: {status} {detail}, expected {want}")
        if self.injected == 0:
            out.append("no ranker failure was injected: raise --fail-share or the load")
        if self.metric_ranker_failures != self.injected:
            out.append(
                f"/metrics counts {self.metric_ranker_failures:.0f} ranker failures, "
                f"{self.injected} were injected"
            )
        if self.metric_reloads.get("failed") != 1:
            out.append(f"/metrics reloads {self.metric_reloads}: expected exactly 1 failed")
        return out

    def report(self) -> str:
        ld = self.load
        ok = sum(1 for t, s, _ in self.reloads if s == 200)
        refused = [f"{t} -> {s} {d}" for t, s, d in self.reloads if s != 200]
        lines = [
            f"client {ld.client}: {ld.requests:,} requests in {ld.seconds:.1f} s = "
            f"{ld.rps:,.1f} pages/s, p50 {ld.p50_ms:.0f} ms, p99 {ld.p99_ms:.0f} ms",
            f"failed requests (non-2xx, socket errors, timeouts): {ld.failed}",
            f"reloads: {len(self.reloads)} ({self.reloads_under_load} while the load ran), "
            f"{ok} accepted, refused: {', '.join(refused) or 'none'}",
            f"/metrics rowrank_model_reloads_total: {self.metric_reloads}",
            f"ranker faults injected: {self.injected} of {self.ranker_calls} calls "
            f"({self.injected / max(self.ranker_calls, 1):.1%}); /metrics "
            f"rowrank_ranker_failures_total: {self.metric_ranker_failures:.0f}",
            f"pages built: {self.metric_pages:.0f}, fallback pages: "
            f"{self.metric_fallback_pages:.0f}",
        ]
        if ld.versions:
            named = {v: n for v, n in ld.versions.items()}
            lines.append(f"pages per model version (a={self.versions['a']}): {named}")
        return "\n".join(lines)


def metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def settled_metrics(url: str, timeout: float = 30.0) -> dict[str, float]:
    """/metrics once the pages in flight when the client stopped are finished (a client that
    hangs up does not stop a page being built, and counted, in the threadpool)."""
    last = metrics(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = metrics(url)
        if now.get("rowrank_page_seconds_count") == last.get("rowrank_page_seconds_count"):
            return now
        last = now
    return last


def scenario(
    model: Path,
    *,
    seconds: float,
    connections: int,
    reloads: int = 10,
    share: float = 0.2,
    seed: int = 0,
    ranker: str = "trending_24h",
    client: str = "auto",
    users: int = 200,
    log: Callable[[str], None] = lambda s: None,
) -> Figures:
    """Serve `model` under load while reloading and injecting ranker faults; return figures."""
    seconds = min(seconds, MAX_SECONDS)
    use_wrk = client == "wrk" or (client == "auto" and shutil.which("wrk") is not None)
    with tempfile.TemporaryDirectory(prefix="rowrank-faults-") as tmp:
        work = Path(tmp)
        root = work / "models"
        root.mkdir()
        versions = prepare_root(model, root)
        loader = FlakyLoader(ranker, share, seed)
        app = create_app(root / "a", admin_token=TOKEN, models_root=root, loader=loader)
        member_ids = [str(u) for u in engine.load(root / "a").history.user_ids[:users]]
        plan = reload_plan(reloads, seed)
        done: list[tuple[str, int, str]] = []
        load_over = threading.Event()
        under_load = [0]

        with ServerThread(app) as url:
            _wait_ready(url)
            requests.get(f"{url}/v1/users/{member_ids[0]}/page", timeout=60)  # warm up
            before = metrics(url)

            def reloader() -> None:
                # Spread over 5%-75% of the run: a reload under load takes ~1-2 s (measured),
                # so the last one still ends before the load does. Each waits for the previous.
                gap = seconds * 0.7 / max(len(plan), 1)
                time.sleep(seconds * 0.05)
                for target in plan:
                    t = time.monotonic()
                    r = requests.post(
                        f"{url}/v1/admin/reload",
                        json={"model_dir": target},
                        headers={"authorization": f"Bearer {TOKEN}"},
                        timeout=60,
                    )
                    doc = r.json()
                    detail = doc.get("model_version") or doc.get("error", {}).get("code", "")
                    done.append((target, r.status_code, str(detail)))
                    under_load[0] += not load_over.is_set()
                    log(f"reload {target}: {r.status_code} {detail}")
                    time.sleep(max(0.0, gap - (time.monotonic() - t)))

            thread = threading.Thread(target=reloader, name="reloads")
            thread.start()
            if use_wrk:
                result = wrk_load(url, member_ids, connections, max(1, round(seconds)), work)
            else:
                # The Python client runs until the reloads are done (at least `seconds`).
                stop = threading.Event()

                def stopper() -> None:
                    time.sleep(seconds)
                    thread.join()
                    stop.set()

                threading.Thread(target=stopper, daemon=True).start()
                result = python_load(url, member_ids, connections, stop, MAX_SECONDS * 2)
            load_over.set()
            thread.join()
            after = settled_metrics(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return Figures(
        load=result,
        reloads=done,
        reloads_under_load=under_load[0],
        injected=loader.injected,
        ranker_calls=loader.calls,
        metric_ranker_failures=after.get(f'rowrank_ranker_failures_total{{ranker="{ranker}"}}', 0),
        metric_reloads={
            k.split('"')[1]: v for k, v in after.items() if k.startswith("rowrank_model_reloads")
        },
        metric_fallback_pages=delta("rowrank_fallback_pages_total"),
        metric_pages=delta("rowrank_page_seconds_count"),
        versions=versions,
    )


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s")


def _small_model(work: Path) -> Path:
    """The test suite's tiny world (300 members, 300 titles, 28 days), simulated and trained."""
    from conftest import TINY_DAYS, TINY_SEED, TINY_TITLES, TINY_USERS, tiny_engine_config

    from engine.sim.simulate import simulate
    from engine.training.train import train

    data, model = work / "world", work / "model"
    simulate(data, users=TINY_USERS, titles=TINY_TITLES, days=TINY_DAYS, seed=TINY_SEED)
    train(data, model, engine_config=tiny_engine_config(), progress=False)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: train the small world)")
    ap.add_argument("--seconds", type=float, default=20, help=f"load duration (<= {MAX_SECONDS})")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument(
        "--fail-share", type=float, default=0.2, help="share of ranker calls that raise"
    )
    ap.add_argument("--ranker", default="trending_24h", help="the ranker instance that fails")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rowrank-faults-model-") as tmp:
        model = args.model
        if model is None:
            print("simulating and training the small world ...", file=sys.stderr)
            model = _small_model(Path(tmp))
        figures = scenario(
            model,
            seconds=args.seconds,
            connections=args.connections,
            reloads=args.reloads,
            share=args.fail_share,
            seed=args.seed,
            ranker=args.ranker,
            client=args.client,
            log=lambda s: print(s, file=sys.stderr),
        )
    print(figures.report())
    problems = figures.problems()
    for p in problems:
        print(f"FAILED: {p}")
    if not problems:
        print("OK: zero failed requests, the broken model refused, ranker failures counted")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
