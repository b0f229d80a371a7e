"""`rowrank events export MODEL_DIR OUT.parquet`: the event log as a `plays` table (the dataset
schema of engine.data.columns). Every event in the log, once per `event_id` (the first), sorted
by member and time; the per-member memory bound of the live state does not apply here.

`rowrank train DATA MODEL --events STATE` folds the same plays into the dataset it trains on
(`with_events`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime

import polars as pl

from engine.data.columns import PLAYS, SCHEMA, Col
from engine.data.dataset import Dataset
from engine.events.log import open_log
from engine.request.filters import UNKNOWN_USER_MATURITY_MAX


def plays_of_log(state: str | os.PathLike[str]) -> pl.DataFrame:
    """Every event of the log of `state` (a directory or a redis:// URL) as plays."""
    log = open_log(state)
    try:
        records, _ = log.read_from(0)
    finally:
        log.close()
    seen: set[str] = set()
    rows = []
    for r in records:
        if r["event_id"] in seen:
            continue
        seen.add(r["event_id"])
        rows.append(r)
    frame = pl.DataFrame(
        {
            Col.USER_ID: [r["user_id"] for r in rows],
            Col.TITLE_ID: [r["title_id"] for r in rows],
            Col.TS: pl.Series([r["ts_us"] for r in rows], dtype=pl.Int64),
            Col.DEVICE: [r["device"] for r in rows],
            Col.SECONDS_WATCHED: [r["seconds_watched"] for r in rows],
            Col.PROGRESS: [r["progress"] for r in rows],
            Col.RATING: pl.Series([r.get("rating") for r in rows], dtype=pl.Float64),
        },
        schema_overrides={Col.USER_ID: pl.String, Col.TITLE_ID: pl.String, Col.DEVICE: pl.String},
    )
    frame = frame.with_columns(pl.col(Col.TS).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    frame = frame.cast({c.name: c.dtype for c in SCHEMA[PLAYS]})
    return frame.sort([Col.USER_ID, Col.TS])


@dataclass(frozen=True)
class Folded:
    """What `with_events` took from a log."""

    plays: int  # plays added (after the dataset's clock, of known titles)
    new_members: int  # members the dataset did not have, added as users
    before_clock: int  # events up to the dataset's clock: left to the dataset
    unknown_titles: int  # events of titles the dataset does not have: skipped


def with_events(ds: Dataset, state: str | os.PathLike[str]) -> tuple[Dataset, Folded]:
    """`ds` with the log's plays after its clock, for `rowrank train --events`: the next
    model's snapshot then holds them, and the live layer over that model layers only the events
    after its cut-off, so no play is counted twice across the swap. Plays up to the clock are
    the dataset's own (a log exported into it earlier is not counted again). A member new to the
    dataset becomes a user with no country, the unknown member's maturity limit and their first
    play as their creation time, as the live layer treats them. The clock moves to the newest
    play taken."""
    plays = plays_of_log(state)
    clock = pl.lit(ds.clock).dt.cast_time_unit("us")
    # The dataset holds its clock's instant (its History's cut-off is a microsecond past it),
    # as the live layer over a model holds nothing before its cut-off.
    before = plays.filter(pl.col(Col.TS) <= clock).height
    plays = plays.filter(pl.col(Col.TS) > clock)
    known = plays[Col.TITLE_ID].is_in(ds.titles[Col.TITLE_ID].implode())
    unknown = int((~known).sum())
    plays = plays.filter(known)
    newcomers = (
        plays.filter(~pl.col(Col.USER_ID).is_in(ds.users[Col.USER_ID].implode()))
        .group_by(Col.USER_ID, maintain_order=True)
        .agg(pl.col(Col.TS).min().alias(Col.CREATED_AT))
        .select(
            Col.USER_ID,
            pl.lit(None, dtype=pl.String).alias(Col.COUNTRY),
            pl.lit(UNKNOWN_USER_MATURITY_MAX, dtype=pl.Int8).alias(Col.MATURITY_MAX),
            Col.CREATED_AT,
        )
    )
    users = pl.concat(
        [ds.users, newcomers.cast(ds.users.select(newcomers.columns).schema)], how="diagonal"
    )
    taken = plays.select([c for c in plays.columns if c in ds.plays.columns])
    all_plays = pl.concat([ds.plays, taken], how="diagonal")
    newest = plays[Col.TS].max() if plays.height else None
    folded = replace(
        ds,
        users=users,
        plays=all_plays,
        clock=max(ds.clock, newest) if isinstance(newest, datetime) else ds.clock,
    )
    return folded, Folded(plays.height, newcomers.height, before, unknown)
