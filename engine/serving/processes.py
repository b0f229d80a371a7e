"""Process helpers for serve and precompute: the frozen model loader, workers tied to the parent.

`load_frozen` loads a model frozen out of the cyclic garbage collector; `exit_with_parent` ties a
worker process's life to its parent's."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
M = TypeVar("M")


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
    prints both figures and names such pages). Frozen objects are never collected: a process that
    loads models loads them with `load_frozen`, which unfreezes first."""
    gc.collect()
    gc.freeze()


def load_frozen(loader: Callable[[Path], M], model_dir: Path) -> M:
    """`loader(model_dir)`, with the loaded model frozen out of the cyclic garbage collector
    (`freeze_loaded_objects`). The one way rowrank's long-lived processes load a model: the
    server at start-up and on every swap (engine.serving.model_holder), precompute's workers
    (engine.serving.precompute). A loader that warms its model up first (one page built and
    dropped) freezes the warm state.

    Everything frozen earlier is unfrozen first, so the cycles of a model the process has since
    dropped are collected now; one still referenced (a swapped-out model finishing requests in
    flight) is frozen again and goes at the next load. The freeze runs when the load fails too."""
    gc.unfreeze()
    try:
        return loader(model_dir)
    finally:
        freeze_loaded_objects()
