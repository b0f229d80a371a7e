"""Helpers for the worker processes rowrank starts (`rowrank serve --workers`, precompute)."""

from __future__ import annotations

import contextlib
import ctypes
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
