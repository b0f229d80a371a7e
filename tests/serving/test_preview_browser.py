"""The HTML preview in a real browser: Debian's headless Chromium driven by Playwright (never
Playwright's own browser download), against a real uvicorn server on the trained `tiny_model`.

Loads /preview/<member>, checks that rows and title cards rendered (names, genres, year, scores
on hover), switches the device through the form, checks the page changed, saves a screenshot."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from servers import ServerThread

import engine
from engine.request.layout import DEFAULT_LAYOUTS
from engine.serving.http import create_app

CHROMIUM = os.environ.get("ROWRANK_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set ROWRANK_CHROMIUM)",
        allow_module_level=True,
    )
# The browser is there, so the driver must be too (a test dependency): no skip past this line.
from playwright import sync_api  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[str]:
    srv = ServerThread(create_app(tiny_model))
    url = srv.start()
    deadline = time.monotonic() + 30
    while requests.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "model did not load"
        time.sleep(0.05)
    yield url
    srv.stop()


@pytest.fixture(scope="module")
def member(tiny_model: Path) -> str:
    """The member with the most plays: a full page on every device."""
    h = engine.load(tiny_model).history
    counts = h.user_offsets[1:] - h.user_offsets[:-1]
    return str(h.user_ids[int(counts.argmax())])


@pytest.fixture(scope="module")
def at(tiny_model: Path) -> str:
    """8 pm on the day after the model's cut-off, as the form's datetime-local writes it."""
    cutoff = datetime.fromtimestamp(engine.load(tiny_model).history.cutoff_us / 1e6, UTC)
    return (cutoff + timedelta(days=1)).replace(hour=20, minute=0).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _cards_per_row(page: Any) -> list[int]:
    counts: list[int] = page.eval_on_selector_all(
        "section.row", "rows => rows.map(r => r.querySelectorAll('li.card').length)"
    )
    return counts


def test_preview_renders_rows_and_switches_device(
    server: str, member: str, at: str, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/preview/{member}?device=tv&at={at}")
    assert f"rowrank preview — {member}" in page.title()

    tv_cards = _cards_per_row(page)
    assert len(tv_cards) >= 3 and all(n >= 1 for n in tv_cards)
    assert max(tv_cards) <= DEFAULT_LAYOUTS["tv"].titles_per_row
    first = page.locator("section.row").first
    assert first.locator("h2").inner_text().strip()
    assert "row score" in (first.locator("h2").get_attribute("title") or "")
    card = first.locator("li.card").first
    assert card.locator(".name").inner_text().strip()
    assert (card.get_attribute("title") or "").startswith("score ")
    years = page.eval_on_selector_all("li.card .year", "e => e.map(x => x.textContent)")
    genres = page.eval_on_selector_all("li.card .genres", "e => e.map(x => x.textContent)")
    assert any(y.isdigit() and len(y) == 4 for y in years)
    assert any(g.strip() for g in genres)
    assert "on tv" in page.locator(".summary").inner_text()
    page.screenshot(path=str(tmp_path / "preview_tv.png"), full_page=True)

    # Switch the device through the form, as a person would.
    page.select_option("select[name=device]", "mobile")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert f"/preview/{member}?" in page.url and "device=mobile" in page.url
    assert "on mobile" in page.locator(".summary").inner_text()
    mobile_cards = _cards_per_row(page)
    assert mobile_cards and max(mobile_cards) <= DEFAULT_LAYOUTS["mobile"].titles_per_row
    assert mobile_cards != tv_cards
    assert page.locator("select[name=device]").input_value() == "mobile"
    shot = tmp_path / "preview_mobile.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("ROWRANK_KEEP_SCREENSHOTS")
    if keep:  # for a person to look at
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(keep) / png.name)

    # A time-of-day preset link changes the context's hour.
    page.click("a.preset >> text=morning")
    page.wait_for_load_state()
    assert "hour 8" in page.locator(".summary").inner_text()
    page.close()


def test_preview_escapes_html_and_shows_bad_input(server: str, at: str, browser: Any) -> None:
    page = browser.new_page()
    evil = '<img src=x onerror="window.pwned=1">'  # no "/": ids cannot contain one
    page.goto(f"{server}/preview/{requests.utils.quote(evil, safe='')}?device=tv&at={at}")
    assert page.evaluate("window.pwned === undefined")
    assert evil in page.locator("input[name=user]").input_value()
    response = page.goto(f"{server}/preview/x?device=toaster")
    assert response is not None and response.status == 400
    assert "toaster" in page.locator(".error").inner_text()
    page.close()
