"""`rowrank events export MODEL_DIR OUT.parquet`: the event log as a `plays` table (the dataset
schema of engine.data.columns), for the next `rowrank train`: concatenate it with the dataset's
plays.parquet. Every event in the log, once per `event_id` (the first), sorted by member and
time; the per-member memory bound of the live state does not apply here.
"""

from __future__ import annotations

import os

import polars as pl

from engine.data.columns import PLAYS, SCHEMA, Col
from engine.events.log import open_log


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
