"""Time and peak memory of each training step, for the training summary and the manifest.

Peak memory is the process's resident-set high-water mark. On Linux it is reset at the start of
each step (writing 5 to /proc/self/clear_refs), so each step reports its own peak rather than
the largest of the steps before it; elsewhere the figure is the peak so far (getrusage), which
the manifest says. The reset also lowers what the kernel reports as the whole process's peak
(getrusage, wait4) to the peak since the last reset: the process's peak is the largest step's."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak() -> bool:
    """Reset the resident-set high-water mark; False where the OS does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark in MB (since the last reset, on Linux)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # macOS reports bytes


@dataclass
class StepMeter:
    """`meter.step("windows")` after each step: the seconds since the previous step and the
    peak memory during it."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    per_step_peak: bool = field(default_factory=_reset_peak)
    _last: float = field(default_factory=time.perf_counter)

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self.peak_mb[name] = round(peak_rss_mb(), 1)
        self._last = now
        if self.per_step_peak:
            _reset_peak()

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": dict(self.seconds),
            "peak_rss_mb": dict(self.peak_mb),
            "peak_is_per_step": self.per_step_peak,
        }
