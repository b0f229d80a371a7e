"""Model hot swap: the live model of a server worker and the reload state its siblings follow.

`ModelHolder` holds the live model of one worker and swaps it atomically; `SharedModelState` is
the file through which the workers of one `rowrank serve` follow a reload.

The live engine is one attribute of `ModelHolder`. A request reads it once and builds its whole
page with that engine; a reload builds the new engine beside the old one and then rebinds the
attribute (a single reference assignment, atomic under the GIL). In-flight requests finish on
the old model, later ones get the new one, none sees a half-loaded model. With several workers,
the worker that took the reload writes the new model directory to a small state file and the
others follow within `STATE_POLL_SECONDS` (`follow_shared_state`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
import orjson

from engine.request.context import RequestContext
from engine.serving.api_errors import ApiError
from engine.serving.processes import load_frozen

if TYPE_CHECKING:
    from engine.serving.metrics import Metrics

log = logging.getLogger("rowrank.serve")

STATE_POLL_SECONDS = 0.5


class EngineLike(Protocol):
    """What the service needs from `engine.pipeline.Engine`."""

    model_version: str

    def page(
        self, user_id: str, device: str = ..., at: Any = ..., country: str | None = ...
    ) -> Any: ...

    def fallback_page(self, ctx: RequestContext) -> Any: ...


Loader = Callable[[Path], EngineLike]


def default_loader(model_dir: Path) -> EngineLike:
    """engine.load, then one page built and dropped (Engine.warm_up): the compiled loops are
    ready before /readyz says so, at start-up and on reload, not on a client's request."""
    import engine

    eng = engine.load(model_dir)
    eng.warm_up()
    return eng


class ModelHolder:
    """The live engine and where it came from. `engine` is rebound, never mutated."""

    def __init__(self, model_dir: Path, root: Path, loader: Loader) -> None:
        self.model_dir = model_dir.resolve()
        self.root = root.resolve()
        self.loader = loader
        self.engine: EngineLike | None = None
        self.load_error: str | None = None
        self.generation = 0  # of the shared state file; 0 = the initial model
        self._reload_lock = threading.Lock()

    def require(self) -> EngineLike:
        eng = self.engine  # read once: the whole request uses this engine
        if eng is None:
            detail = f": {self.load_error}" if self.load_error else " (still loading)"
            raise ApiError(503, "not_ready", f"no model is loaded{detail}")
        return eng

    def resolve(self, requested: str | None) -> Path:
        """A model directory inside the allowed root (relative paths are taken from the root)."""
        if requested is None:
            return self.model_dir
        if not isinstance(requested, str) or not requested or "\x00" in requested:
            raise ApiError(400, "bad_model_dir", f"model_dir must be a path, got {requested!r}")
        path = Path(requested)
        try:
            path = (path if path.is_absolute() else self.root / path).resolve()
            inside = path.is_relative_to(self.root)
            is_dir = inside and path.is_dir()  # nothing outside the root is even looked at
        except (OSError, RuntimeError) as exc:  # a name too long; a symlink loop (RuntimeError)
            shown = requested if len(requested) <= 200 else requested[:200] + "..."
            raise ApiError(
                400,
                "bad_model_dir",
                f"model_dir {shown!r} cannot be resolved: {getattr(exc, 'strerror', None) or exc}",
            ) from None
        if not inside:
            raise ApiError(
                400,
                "model_dir_outside_root",
                f"model_dir {requested!r} resolves outside the models root {self.root}; "
                "only directories inside it can be loaded",
            )
        if not is_dir:
            raise ApiError(
                422, "model_dir_not_found", f"model_dir {requested!r} is not a directory"
            )
        return path

    def load_initial(self) -> None:
        """Load the starting model (run in a background thread at start-up)."""
        try:
            self.engine = load_frozen(self.loader, self.model_dir)
            self.load_error = None
            log.info("model %s loaded from %s", self.engine.model_version, self.model_dir)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("cannot load the model in %s: %s", self.model_dir, self.load_error)

    def swap(
        self,
        path: Path,
        *,
        blocking: bool = False,
        publish: Callable[[Path], int] | None = None,
        generation: int | None = None,
    ) -> tuple[EngineLike | None, EngineLike] | None:
        """Load `path` beside the live engine, then rebind. Returns (old, new).

        `publish` (a taken reload) announces the directory to the other workers and returns
        the new generation; `generation` (a followed reload) is the one being followed, and
        the call returns None when this worker already serves it. Raises ApiError 409 while
        another reload runs, 422 when the directory does not load (the old engine serves on)."""
        if not self._reload_lock.acquire(blocking=blocking):
            raise ApiError(409, "reload_in_progress", "another reload is running; retry later")
        try:
            if generation is not None and generation <= self.generation:
                return None
            try:
                # The old engine stays frozen (requests may still use it) until the next load.
                new = load_frozen(self.loader, path)
            except Exception as exc:
                raise ApiError(
                    422,
                    "model_load_failed",
                    f"cannot load {path}: {type(exc).__name__}: {exc}; the previous model "
                    "keeps serving",
                ) from exc
            if publish is not None:
                generation = publish(path)
            old = self.engine
            # One rebinding of `engine` is the swap; readers never see a half-loaded model.
            self.engine, self.model_dir, self.load_error = new, path, None
            if generation is not None:
                self.generation = generation
            return old, new
        finally:
            self._reload_lock.release()


class SharedModelState:
    """The model directory every worker should serve: a JSON file plus a lock file, shared by
    the workers of one `rowrank serve`. Generations only grow."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "model.json"
        self.lock_path = directory / "model.lock"

    def read(self) -> tuple[int, str | None]:
        try:
            doc = orjson.loads(self.path.read_bytes())
            return int(doc["generation"]), str(doc["model_dir"])
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("unreadable model state %s: %s", self.path, exc)
            return 0, None

    def publish(self, model_dir: Path) -> int:
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.read()[0] + 1
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps({"generation": generation, "model_dir": str(model_dir)}))
            os.replace(tmp, self.path)
            return generation


async def follow_shared_state(
    holder: ModelHolder, state: SharedModelState, metrics: Metrics
) -> None:
    """Workers that did not take a reload pick it up from the shared state file."""
    attempted = holder.generation
    while True:
        await asyncio.sleep(STATE_POLL_SECONDS)
        generation, model_dir = await anyio.to_thread.run_sync(state.read)
        if model_dir is None or generation <= max(holder.generation, attempted):
            continue  # up to date, or that generation failed here already (not retried)
        if holder.engine is None:
            continue  # the initial load is still running
        attempted = generation
        try:
            follow = partial(holder.swap, Path(model_dir), blocking=True, generation=generation)
            if await anyio.to_thread.run_sync(follow) is not None:
                metrics.count_reload("followed")
                log.info("followed reload to %s (generation %d)", model_dir, generation)
        except ApiError as exc:
            metrics.count_reload("failed")
            log.error("cannot follow reload to %s: %s", model_dir, exc.message)
