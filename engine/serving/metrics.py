"""The service's Prometheus metrics: requests, page latency, ranker failures, reloads, model.

Counters written by hand in the text format 0.0.4 (no client library), one set per worker
process, rendered by GET /metrics.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.serving.impression_log import ImpressionLogger
    from engine.serving.model_holder import ModelHolder

# Page build + serialization, seconds. The target is p99 < 50 ms, so resolution sits below it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Prometheus counters, written by hand (text format 0.0.4). One set per worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.ranker_failures: Counter[str] = Counter()
        self.reloads: Counter[str] = Counter()
        self.fallback_pages = 0
        self.failed_pages = 0  # neither the page nor the fallback could be built: 503
        self.pages = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def count_request(self, route: str, method: str, status: int) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1

    def observe_page(self, seconds: float, failed_rankers: Iterable[str], fallback: bool) -> None:
        i = 0
        while i < len(LATENCY_BUCKETS) and seconds > LATENCY_BUCKETS[i]:
            i += 1
        with self._lock:
            self.pages += 1
            self.latency_counts[i] += 1
            self.latency_sum += seconds
            self.fallback_pages += fallback
            for name in failed_rankers:
                self.ranker_failures[name] += 1

    def count_failed_page(self) -> None:
        with self._lock:
            self.failed_pages += 1

    def count_reload(self, result: str) -> None:
        with self._lock:
            self.reloads[result] += 1

    def render(self, holder: ModelHolder, logger: ImpressionLogger | None) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("rowrank_http_requests_total", "counter", "HTTP requests by route and status.")
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(
                    f'rowrank_http_requests_total{{route="{_label(route)}",method="{method}",'
                    f'status="{status}"}} {n}'
                )
            head(
                "rowrank_page_seconds",
                "histogram",
                "Time to build and serialize one page (engine + JSON), fallbacks included.",
            )
            cumulative = 0
            for le, n in zip((*LATENCY_BUCKETS, "+Inf"), self.latency_counts, strict=True):
                cumulative += n
                out.append(f'rowrank_page_seconds_bucket{{le="{le}"}} {cumulative}')
            out.append(f"rowrank_page_seconds_sum {self.latency_sum:.6f}")
            out.append(f"rowrank_page_seconds_count {self.pages}")
            head(
                "rowrank_ranker_failures_total",
                "counter",
                "Rankers that raised while building a page (their rows were dropped).",
            )
            for name, n in sorted(self.ranker_failures.items()):
                out.append(f'rowrank_ranker_failures_total{{ranker="{_label(name)}"}} {n}')
            head(
                "rowrank_fallback_pages_total",
                "counter",
                "Fallback pages served (the ranked page failed, or no ranker had a row).",
            )
            out.append(f"rowrank_fallback_pages_total {self.fallback_pages}")
            head(
                "rowrank_page_failures_total",
                "counter",
                "Requests answered 503 because neither the page nor the fallback could be built.",
            )
            out.append(f"rowrank_page_failures_total {self.failed_pages}")
            head("rowrank_model_reloads_total", "counter", "Model reloads by result.")
            for result, n in sorted(self.reloads.items()):
                out.append(f'rowrank_model_reloads_total{{result="{result}"}} {n}')
        head("rowrank_model_info", "gauge", "The model this worker serves (value always 1).")
        eng = holder.engine
        if eng is not None:
            out.append(
                f'rowrank_model_info{{model_version="{_label(str(eng.model_version))}",'
                f'model_dir="{_label(str(holder.model_dir))}"}} 1'
            )
        head("rowrank_model_ready", "gauge", "1 when a model is loaded and pages are served.")
        out.append(f"rowrank_model_ready {int(eng is not None)}")
        if logger is not None:
            head("rowrank_impression_pages_total", "counter", "Served pages by impression outcome.")
            out.append(f'rowrank_impression_pages_total{{outcome="logged"}} {logger.pages_logged}')
            out.append(
                f'rowrank_impression_pages_total{{outcome="dropped"}} {logger.pages_dropped}'
            )
            head("rowrank_impression_rows_total", "counter", "Impression rows written to Parquet.")
            out.append(f"rowrank_impression_rows_total {logger.rows_written}")
            head("rowrank_impression_write_errors_total", "counter", "Part files not written.")
            out.append(f"rowrank_impression_write_errors_total {logger.write_errors}")
        return "\n".join(out) + "\n"


def failed_rankers(page: Any) -> list[str]:
    """Ranker instance names the page trace records as failed (a trace without them: none)."""
    trace = getattr(page, "trace", None) or {}
    failed = trace.get("failed_rankers") or trace.get("rankers_failed") or ()
    if isinstance(failed, Mapping):
        return [str(k) for k in failed]
    return [str(f.get("ranker", f)) if isinstance(f, Mapping) else str(f) for f in failed]
