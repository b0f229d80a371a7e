"""The service's Prometheus metrics: requests, page latency, ranker failures, reloads, model.

prometheus-client, in its multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set: `rowrank
serve --workers N` sets it (a fresh directory per server, engine.serving.runner) before the
workers start, every worker writes its values to its own files there, and any worker's GET
/metrics reads them all, so one scrape sums the workers whichever worker answers it. Without
the variable (one process, or the app embedded in tests) each `Metrics` has its own registry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import disable_created_metrics

if TYPE_CHECKING:
    from engine.serving.impression_log import ImpressionLogger
    from engine.serving.model_holder import ModelHolder

ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable

# Page build + serialization, seconds. The target is p99 < 50 ms, so resolution sits below it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# The `_created` series would differ between one process and several (the multiprocess
# collector has none): leave them out everywhere.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The directory workers share their values in, or None in single-process mode."""
    return os.environ.get(ENV_MULTIPROC_DIR) or None


class Metrics:
    """One worker's Prometheus metrics. `attach` gives it the worker's model holder and impression
    logger, whose state (model loaded and its version, impressions logged) it mirrors when the
    first model is loaded, at every reload, request the worker answers and scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rowrank_http_requests_total",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.page_seconds = Histogram(
            "rowrank_page_seconds",
            "Time to build and serialize one page (engine + JSON), fallbacks included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ranker_failures = Counter(
            "rowrank_ranker_failures_total",
            "Rankers that raised while building a page (their rows were dropped).",
            ["ranker"],
            registry=r,
        )
        self.fallback_pages = Counter(
            "rowrank_fallback_pages_total",
            "Fallback pages served (the ranked page failed, or no ranker had a row).",
            registry=r,
        )
        self.failed_pages = Counter(
            "rowrank_page_failures_total",
            "Requests answered 503 because neither the page nor the fallback could be built.",
            registry=r,
        )
        self.reloads = Counter(
            "rowrank_model_reloads_total", "Model reloads by result.", ["result"], registry=r
        )
        # Per worker (a `pid` label in multiprocess mode; a dead worker's series go with it).
        self.model_info = Gauge(
            "rowrank_model_info",
            "The model a worker serves (value 1; one series per worker with several workers).",
            ["model_version", "model_dir"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.model_ready = Gauge(
            "rowrank_model_ready",
            "Workers with a model loaded and serving pages (1 for one process).",
            multiprocess_mode="livesum",
            registry=r,
        )
        # Pages by worker (all series kept, dead workers' too): how the kernel spread the load.
        self.worker_pages = Gauge(
            "rowrank_worker_pages",
            "Pages built by each worker process (a pid label with several workers).",
            multiprocess_mode="all",
            registry=r,
        )
        self._holder: ModelHolder | None = None
        self._logger: ImpressionLogger | None = None
        self._model: tuple[str, str] | None = None
        self._impressions: tuple[Counter, Counter, Counter] | None = None
        self._logged = (0, 0, 0, 0)  # logged, dropped, rows, write errors: as last counted

    def attach(self, holder: ModelHolder, logger: ImpressionLogger | None) -> None:
        """Mirror this worker's model and impression logger in the metrics from now on."""
        self._holder, self._logger = holder, logger
        if logger is not None and self._impressions is None:
            r = self.registry
            self._impressions = (
                Counter(
                    "rowrank_impression_pages_total",
                    "Served pages by impression outcome.",
                    ["outcome"],
                    registry=r,
                ),
                Counter(
                    "rowrank_impression_rows_total",
                    "Impression rows written to Parquet.",
                    registry=r,
                ),
                Counter(
                    "rowrank_impression_write_errors_total",
                    "Part files not written.",
                    registry=r,
                ),
            )
            for outcome in ("logged", "dropped"):  # both series from the start, at 0
                self._impressions[0].labels(outcome)
        self.sync()
        if holder.engine is None:  # the model loads in the background: mark it ready then
            threading.Thread(
                target=self._sync_once_loaded, args=(holder,), name="metrics-ready", daemon=True
            ).start()

    def _sync_once_loaded(self, holder: ModelHolder, poll: float = 0.2) -> None:
        """Wait (bounded) for the initial load to end, then sync: a worker that has answered no
        request yet still shows as ready."""
        deadline = time.monotonic() + 3600
        while holder.engine is None and holder.load_error is None:
            if time.monotonic() > deadline:
                return
            time.sleep(poll)
        self.sync()

    def sync(self) -> None:
        """Copy the attached holder's and logger's state into the metrics (cheap: a few reads,
        a write only when something changed)."""
        with self._lock:
            holder = self._holder
            if holder is not None:
                eng = holder.engine
                model = None if eng is None else (str(eng.model_version), str(holder.model_dir))
                if model != self._model:
                    if self._model is not None:
                        self.model_info.labels(*self._model).set(0)
                    if model is not None:
                        self.model_info.labels(*model).set(1)
                    self.model_ready.set(int(model is not None))
                    self._model = model
            logger = self._logger
            if logger is not None and self._impressions is not None:
                now = (
                    logger.pages_logged,
                    logger.pages_dropped,
                    logger.rows_written,
                    logger.write_errors,
                )
                if now != self._logged:
                    pages, rows, errors = self._impressions
                    d = [a - b for a, b in zip(now, self._logged, strict=True)]
                    if d[0] > 0:
                        pages.labels("logged").inc(d[0])
                    if d[1] > 0:
                        pages.labels("dropped").inc(d[1])
                    if d[2] > 0:
                        rows.inc(d[2])
                    if d[3] > 0:
                        errors.inc(d[3])
                    self._logged = now

    def count_request(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.sync()

    def observe_page(self, seconds: float, failed_rankers: Iterable[str], fallback: bool) -> None:
        self.page_seconds.observe(seconds)
        self.worker_pages.inc()
        if fallback:
            self.fallback_pages.inc()
        for name in failed_rankers:
            self.ranker_failures.labels(name).inc()

    def count_failed_page(self) -> None:
        self.failed_pages.inc()

    def count_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()
        self.sync()  # a reload (this worker's, or one it followed) changes the model

    def render(
        self, holder: ModelHolder | None = None, logger: ImpressionLogger | None = None
    ) -> str:
        """The exposition (text format 0.0.4): every worker's values summed in multiprocess
        mode, this process's otherwise. `holder` / `logger` attach them if not attached yet."""
        if holder is not None and self._holder is None:
            self.attach(holder, logger)
        self.sync()
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry).decode()
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=path)
        return generate_latest(merged).decode()


def mark_worker_dead(pid: int) -> None:
    """The supervisor's bookkeeping when a worker exits: its per-worker series (model info,
    ready) leave the exposition; its counters stay in the sums, so totals never go back."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def failed_rankers(page: Any) -> list[str]:
    """Ranker instance names the page trace records as failed (a trace without them: none)."""
    trace = getattr(page, "trace", None) or {}
    failed = trace.get("failed_rankers") or trace.get("rankers_failed") or ()
    if isinstance(failed, Mapping):
        return [str(k) for k in failed]
    return [str(f.get("ranker", f)) if isinstance(f, Mapping) else str(f) for f in failed]
