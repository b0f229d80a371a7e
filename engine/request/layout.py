"""Device layouts: how many rows a page has, how many titles each row carries, and how much of
it the screen shows before the member scrolls. The simulator's browsing model, the page
assembly and the page metrics all read these, so they agree on what "visible" means."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceLayout:
    rows: int  # rows on a full page
    titles_per_row: int  # titles carried by each row
    min_row_length: int  # a row shorter than this after dedup is dropped
    visible_rows: int  # rows on screen without scrolling
    visible_titles: int  # titles on screen per row without scrolling sideways


DEFAULT_LAYOUTS: dict[str, DeviceLayout] = {
    "tv": DeviceLayout(
        rows=10, titles_per_row=20, min_row_length=5, visible_rows=3, visible_titles=6
    ),
    "web": DeviceLayout(
        rows=12, titles_per_row=25, min_row_length=5, visible_rows=4, visible_titles=7
    ),
    "tablet": DeviceLayout(
        rows=10, titles_per_row=20, min_row_length=4, visible_rows=4, visible_titles=5
    ),
    "mobile": DeviceLayout(
        rows=8, titles_per_row=15, min_row_length=3, visible_rows=5, visible_titles=3
    ),
}
