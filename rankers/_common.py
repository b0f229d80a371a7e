"""Small helpers shared by the built-in rankers: top-k, row building, fitted checks and saving
learned state without pickle. Kept small and stable on purpose: several rankers depend on it.

State layout written by `save_state` inside a ranker's directory:
  state.json  {"format": 1, "type": ..., "version": ..., "history": {...}, "meta": {...}}
  state.npz   the arrays (numpy, loaded with allow_pickle=False)
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.candidates import CandidateRow
from engine.data.history import History
from engine.errors import ModelLoadError, NotFittedError

STATE_JSON = "state.json"
STATE_NPZ = "state.npz"
_FORMAT = 1


def check_fitted(ranker: Any, attr: str) -> None:
    """Raise NotFittedError("<name>: call fit() first") unless `ranker` has the fitted `attr`."""
    if not hasattr(ranker, attr):
        name = getattr(ranker, "name", type(ranker).__name__)
        raise NotFittedError(f"{name}: call fit() first")


def top_k(scores: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `k` largest finite scores, best first; ties go to the lower index.

    `candidates` (int indices into `scores`) restricts the choice; default: every index.
    Uses argpartition, so it is O(n) plus O(k log k) for the final sort.
    """
    idx = np.arange(len(scores)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    s = scores[idx]
    finite = np.isfinite(s)
    if not finite.all():
        idx, s = idx[finite], s[finite]
    if k <= 0 or len(idx) == 0:
        return np.empty(0, dtype=np.int64)
    # Below a few hundred items one sort beats partition + sort (numpy call overhead).
    if len(idx) > max(4 * k, 256):
        kth = np.partition(s, len(s) - k)[len(s) - k]  # the k-th largest value
        above = np.flatnonzero(s > kth)
        # `idx` is increasing when `candidates` is None or sorted, so the first tied ones are
        # the lowest indices: a deterministic cut through a tie.
        tied = np.flatnonzero(s == kth)[: k - len(above)]
        keep = np.concatenate([above, tied])
        idx, s = idx[keep], s[keep]
    return idx[np.lexsort((idx, -s))[:k]]


def make_row(
    *,
    ranker: str,
    kind: str,
    title: str,
    titles: np.ndarray,
    scores: np.ndarray,
    key: str | None = None,
    evidence: dict[str, Any] | None = None,
    progress: np.ndarray | None = None,
) -> CandidateRow:
    """A CandidateRow with the protocol's dtypes: ids "<ranker>" or "<ranker>:<key>", int32
    titles, float32 scores. Titles must already be unique and ordered by non-increasing score."""
    return CandidateRow(
        row_id=ranker if key is None else f"{ranker}:{key}",
        ranker=ranker,
        kind=kind,
        title=title,
        evidence=evidence,
        titles=np.ascontiguousarray(titles, dtype=np.int32),
        # float64 -> float32 rounding is monotone, so a sorted row stays non-increasing.
        scores=np.ascontiguousarray(scores, dtype=np.float32),
        progress=None if progress is None else np.ascontiguousarray(progress, dtype=np.float32),
    )


def history_fingerprint(history: History) -> dict[str, int]:
    """What a saved state must agree on with the History it is loaded with."""
    return {
        "cutoff_us": int(history.cutoff_us),
        "n_titles": int(history.n_titles),
        "n_users": int(history.n_users),
    }


def save_state(
    directory: Path,
    *,
    type_name: str,
    version: int,
    history: History | Mapping[str, int],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write a ranker's learned state: JSON metadata plus an `.npz` of arrays (no pickle).

    `history` is the History fitted on, or its `history_fingerprint` kept at fit time (save
    does not get the History)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if arr.dtype.kind == "O":
            raise TypeError(f"array {name!r} has dtype object: it would need pickle")
    # Object arrays were refused above, so the file loads with allow_pickle=False.
    payload: dict[str, Any] = dict(arrays)
    np.savez(directory / STATE_NPZ, **payload)
    doc = {
        "format": _FORMAT,
        "type": type_name,
        "version": version,
        "history": history_fingerprint(history)
        if isinstance(history, History)
        else {k: int(v) for k, v in history.items()},
        "meta": dict(meta or {}),
    }
    (directory / STATE_JSON).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def load_state(
    directory: Path,
    *,
    type_name: str,
    version: int,
    history: History,
    arrays: tuple[str, ...],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read what `save_state` wrote and check type, version, history and the array names.

    Raises ModelLoadError saying what is wrong and how to fix it."""
    path = directory / STATE_JSON
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ModelLoadError(f"{path} is not a rowrank ranker state (format {_FORMAT})")
    if doc.get("type") != type_name:
        raise ModelLoadError(
            f"{path} holds a {doc.get('type')!r} ranker, not {type_name!r}: "
            "the config and the model directory disagree; retrain with `rowrank train`."
        )
    if doc.get("version") != version:
        raise ModelLoadError(
            f"{path} is {type_name} state version {doc.get('version')}, this rowrank reads "
            f"version {version}: retrain with `rowrank train`."
        )
    want = history_fingerprint(history)
    if doc.get("history") != want:
        raise ModelLoadError(
            f"{path} was fitted on a history {doc.get('history')}, but is loaded with {want}: "
            "load it with the history saved beside it."
        )
    npz_path = directory / STATE_NPZ
    try:
        # Our own handle: np.load leaks its handle when the archive is corrupt.
        with npz_path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            missing = [a for a in arrays if a not in npz.files]
            if missing:
                raise ModelLoadError(f"{npz_path} lacks array(s) {', '.join(missing)}")
            out = {a: npz[a] for a in arrays}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        # A truncated .npz is a bad zip archive: the same "corrupt model" error as any other.
        raise ModelLoadError(f"cannot read {npz_path}: {exc}") from exc
    return out, dict(doc.get("meta") or {})


def first_per_series(history: History, titles: np.ndarray) -> np.ndarray:
    """Bool mask over `titles` (in order of preference) keeping movies and, for each series,
    only its first episode in that order: one tile per series."""
    series = history.series[titles].astype(np.int64)
    # Movies get unique negative keys so np.unique never merges them.
    key = np.where(series >= 0, series, -1 - np.arange(len(titles), dtype=np.int64))
    keep = np.zeros(len(titles), dtype=bool)
    keep[np.unique(key, return_index=True)[1]] = True
    return keep


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Bool mask: True where a run of equal keys begins (keys sorted or at least grouped)."""
    first = np.empty(len(sorted_keys), dtype=bool)
    if len(sorted_keys):
        first[0] = True
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    return first


def group_bounds(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal keys, `ends` exclusive. Cheaper than np.r_ tricks,
    which cost tens of microseconds a call on the request path."""
    starts = np.flatnonzero(group_starts(sorted_keys))
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    if len(ends):
        ends[-1] = len(sorted_keys)
    return starts, ends


class PlayTimes:
    """Per title, the times of its plays sorted, to count the plays before any time T in
    O(log n): what a request at T may know of popularity. Resolution: one second (a play in
    the same second as T is not counted)."""

    def __init__(self, titles: np.ndarray, ts_us: np.ndarray, n_titles: int) -> None:
        sec = np.asarray(ts_us) // 1_000_000
        self.t0 = int(sec.min()) if len(sec) else 0
        # seconds since t0 fit in 32 bits for 136 years, titles in the other 31
        self.span = int(sec.max()) - self.t0 + 2 if len(sec) else 2
        self.keys = np.sort(np.asarray(titles, dtype=np.int64) * self.span + (sec - self.t0))
        self.base = np.arange(n_titles, dtype=np.int64) * self.span
        self.starts = np.searchsorted(self.keys, self.base)
        # every play: the answer for any time after the last play, i.e. most served requests
        self.totals = np.diff(np.append(self.starts, len(self.keys)))

    @classmethod
    def of_plays(cls, history: History) -> PlayTimes:
        return cls(history.play_title, history.play_ts, history.n_titles)

    @classmethod
    def of_first_plays(cls, history: History) -> PlayTimes:
        """Each member's first play of each title: counts are distinct players."""
        key = history.play_user.astype(np.int64) * max(history.n_titles, 1) + history.play_title
        _, first = np.unique(key, return_index=True)  # plays are sorted by (user, time)
        return cls(history.play_title[first], history.play_ts[first], history.n_titles)

    def before(self, at_us: int, titles: np.ndarray | None = None) -> np.ndarray:
        """Plays strictly before `at_us` of every title, or of `titles`."""
        s = min(max(at_us // 1_000_000 - self.t0, 0), self.span - 1)
        if s == self.span - 1:
            return self.totals if titles is None else self.totals[titles]
        base = self.base if titles is None else self.base[titles]
        start = self.starts if titles is None else self.starts[titles]
        return np.searchsorted(self.keys, base + s, side="left") - start
