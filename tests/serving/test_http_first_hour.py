"""What a newcomer meets on the HTTP server: `/` links to everything, a request with no
country anywhere is a 400 that says so (the preview too), a stale request carries
x-rowrank-warning, and the page's data_cutoff."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import requests
from damage import copy_model, edit_config, wait_ready
from servers import ServerThread

import engine
from engine.pipeline import Engine
from engine.serving.http import WARNING_HEADER, create_app

TIMEOUT = 30


@pytest.fixture(scope="module")
def eng(tiny_model: Path) -> Engine:
    return engine.load(tiny_model)


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[str]:
    with ServerThread(create_app(tiny_model)) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def cutoff(eng: Engine) -> datetime:
    return datetime.fromtimestamp(eng.history.cutoff_us // 1_000_000, UTC)


@pytest.fixture(scope="module")
def member(eng: Engine) -> str:
    return str(eng.history.user_ids[int(np.argmax(np.diff(eng.history.user_offsets)))])


def test_root_links_to_preview_openapi_and_health(server: str, eng: Engine) -> None:
    r = requests.get(f"{server}/", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for href in ("/preview", "/openapi.json", "/healthz", "/readyz", "/metrics"):
        assert f'href="{href}"' in r.text
        assert requests.get(server + href, timeout=TIMEOUT).status_code == 200
    first = str(eng.history.user_ids[0])
    assert f'href="/preview/{first}"' in r.text and eng.model_version in r.text


def test_no_country_anywhere_is_a_400_that_says_so(server: str, cutoff: datetime) -> None:
    at = (cutoff + timedelta(hours=20)).isoformat()
    r = requests.get(f"{server}/v1/users/nobody-here/page", params={"at": at}, timeout=TIMEOUT)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "a country is needed" in message and "default_country" in message
    batch = requests.post(
        f"{server}/v1/pages",
        json={"requests": [{"user_id": "nobody-here", "at": at}]},
        timeout=TIMEOUT,
    )
    assert batch.status_code == 400 and "a country is needed" in batch.text
    preview = requests.get(f"{server}/preview/nobody-here", params={"at": at}, timeout=TIMEOUT)
    assert preview.status_code == 400 and "text/html" in preview.headers["content-type"]
    assert "a country is needed" in preview.text and 'role="alert"' in preview.text
    ok = requests.get(
        f"{server}/v1/users/nobody-here/page", params={"at": at, "country": "US"}, timeout=TIMEOUT
    )
    assert ok.status_code == 200 and ok.json()["rows"]


def test_default_country_from_the_config(
    tiny_model: Path, tmp_path: Path, cutoff: datetime
) -> None:
    model = copy_model(tiny_model, tmp_path / "model")
    edit_config(model, lambda doc: doc.setdefault("serving", {}).update(default_country="DE"))
    at = (cutoff + timedelta(hours=20)).isoformat()
    with ServerThread(create_app(model)) as url:
        wait_ready(url)
        r = requests.get(f"{url}/v1/users/nobody-here/page", params={"at": at}, timeout=TIMEOUT)
    assert r.status_code == 200
    page = r.json()
    assert page["context"]["country"] == "DE" and page["rows"]


def test_stale_requests_carry_a_warning_header(server: str, member: str, cutoff: datetime) -> None:
    fresh = (cutoff + timedelta(hours=20)).isoformat()
    stale = (cutoff + timedelta(days=30)).isoformat()
    r = requests.get(f"{server}/v1/users/{member}/page", params={"at": fresh}, timeout=TIMEOUT)
    assert r.status_code == 200 and WARNING_HEADER not in r.headers
    assert r.json()["data_cutoff"] == cutoff.isoformat()
    r = requests.get(f"{server}/v1/users/{member}/page", params={"at": stale}, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers[WARNING_HEADER].startswith("the request is 30 days past the model's data")
    batch = requests.post(
        f"{server}/v1/pages",
        json={"requests": [{"user_id": member, "at": fresh}, {"user_id": member, "at": stale}]},
        timeout=TIMEOUT,
    )
    assert batch.headers[WARNING_HEADER].startswith("1 of 2 pages: the request is 30 days past")
    preview = requests.get(f"{server}/preview/{member}", params={"at": stale}, timeout=TIMEOUT)
    assert preview.status_code == 200 and "30 days past the model&#x27;s data cut-off" in (
        preview.text
    )
