"""A dataset: Parquet tables in a directory, plus `dataset.json` naming the dataset's clock.

The clock is the moment the data was exported: nothing in the tables may be later than it.

Impressions are the one table that grows with every page served (18M rows for 100,000 members
over 30 days), so a dataset holds them as a lazy frame (a Parquet scan when read from disk):
every reader filters or aggregates them in polars, and none holds the whole table in memory.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl

from engine.data.columns import IMPRESSIONS, PLAYS, SCHEMA, TITLES, USERS, Col
from engine.errors import ConfigError, DataError

MANIFEST = "dataset.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Dataset:
    """Titles, users, plays and (optionally) impressions, all as of `clock`."""

    titles: pl.DataFrame
    users: pl.DataFrame
    plays: pl.DataFrame
    impressions: pl.LazyFrame | None
    clock: datetime
    source: str = "unknown"

    def as_of(self, cutoff: datetime) -> Dataset:
        """Everything known strictly before `cutoff`: the only view a fit "as of" a time may see."""
        cutoff = to_utc(cutoff)
        lit = pl.lit(cutoff).dt.cast_time_unit("us")
        return replace(
            self,
            titles=self.titles.filter(pl.col(Col.ADDED_AT) < lit),
            users=self.users.filter(pl.col(Col.CREATED_AT) < lit),
            plays=self.plays.filter(pl.col(Col.TS) < lit),
            impressions=None
            if self.impressions is None
            else self.impressions.filter(pl.col(Col.TS) < lit),
            clock=min(cutoff, self.clock),
        )

    def tables(self) -> dict[str, pl.DataFrame]:
        """Every table in memory, impressions included: for writing and for small data."""
        out = {TITLES: self.titles, USERS: self.users, PLAYS: self.plays}
        if self.impressions is not None:
            out[IMPRESSIONS] = self.impressions.collect()
        return out


def to_utc(ts: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def save_dataset(ds: Dataset, directory: Path) -> None:
    """Write every table as `<table>.parquet` and the manifest, byte-stable for equal input."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in ds.tables().items():
        ordered = [c.name for c in SCHEMA[name] if c.name in frame.columns]
        extra = [c for c in frame.columns if c not in ordered]
        frame.select(ordered + extra).write_parquet(directory / f"{name}.parquet", statistics=False)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "clock": ds.clock.isoformat(),
        "source": ds.source,
    }
    (directory / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def save_replacing(ds: Dataset, out: Path) -> None:
    """Write the dataset beside `out`, then swap it in: a failed import leaves `out` as it was,
    and no file of a dataset `out` held before (its impressions, say) survives into this one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory: choose a dataset directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ConfigError(
            f"{out} is not empty and is not a rowrank dataset directory (no {MANIFEST}): "
            "refusing to replace it; choose a new or empty directory"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its mode 0700 would become the dataset directory's.
    tmp = out.with_name(f".{out.name}.import-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_dataset(ds, tmp)
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: Path, out: Path) -> None:
    """Put the finished directory `tmp` (a sibling of `out`) in place of `out` by renames, so
    readers see the old directory or the new one, never a half-written one."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def load_dataset(directory: Path, *, validate: bool = True) -> Dataset:
    """Read a dataset directory; with `validate`, raise DataError listing every problem found."""
    from engine.data.validate import read_tables, validate_dataset

    ds, problems = read_tables(Path(directory))
    if validate:
        problems += validate_dataset(ds)
    if problems:
        raise DataError(problems)
    return ds
