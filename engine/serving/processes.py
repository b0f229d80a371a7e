"""Helpers for the worker processes rowrank starts (`rowrank serve --workers`, precompute)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies, even by SIGKILL, so no worker outlives
    the command that started it (idle pool workers otherwise sit forever, holding the model in
    memory). Elsewhere a no-op. Call it first thing in a multiprocessing worker."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    # The parent may have died before the call above (while this process was starting up).
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signal.SIGTERM)


def freeze_loaded_objects() -> None:
    """Collect, then `gc.freeze()`: the objects alive now (a loaded model is about 148,000) leave
    the cyclic garbage collector's generations. Otherwise every full collection walks them all,
    about 0.1 s here, a pause that lands on one page in a few hundred (bench/bench_page_speed.py
    prints both figures and names such pages). Call it once a process has loaded and warmed up
    its model. Frozen objects are never collected, so a process that replaces its model calls
    `gc.unfreeze()` before and this after (engine.serving.http's ModelHolder.swap,
    engine.serving.precompute's
    _cached_engine): the cycles of the model it dropped then go at once, or at the next swap if
    requests still held it."""
    gc.collect()
    gc.freeze()
