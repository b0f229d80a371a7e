"""The preview: a member's page as HTML, for people (/preview/{user_id}, /preview, /preview.css).

A preview is not an impression; every error is the HTML form with the message."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from functools import partial
from string import Template
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engine.data.columns import DEVICES
from engine.serving.api_errors import ApiError
from engine.serving.model_holder import EngineLike
from engine.serving.params import check_user_id, parse_fields, parse_query
from engine.serving.service import Built, build_in_thread, service_of
from engine.serving.static_files import static_file


async def preview_css(request: Request) -> Response:
    return Response(static_file("preview.css"), media_type="text/css; charset=utf-8")


async def preview_form(request: Request) -> Response:
    """The preview form's target: `/preview?user=U&device=..` redirects to `/preview/U?..`."""
    q = parse_query(request, blank_is_absent=True)
    user = q.pop("user", None)
    if user is None:
        return _html(_render_preview_page(None, None, {}, None), 200)
    check_user_id(user, "user")
    target = f"/preview/{quote(user, safe='')}"
    if q:
        target += "?" + urlencode(q)
    return RedirectResponse(target, status_code=303)


async def preview(request: Request) -> Response:
    svc = service_of(request)
    user_id = request.path_params["user_id"]
    q: dict[str, str] = {}
    try:  # every error of this route is the HTML form with the message (openapi.json)
        q = parse_query(request, blank_is_absent=True)
        req = parse_fields(user_id, q, "query")
        eng = svc.holder.require()
        built: Built = await build_in_thread(
            svc, partial(svc.build, eng, req, log_impression=False)
        )
    except ApiError as exc:
        return _html(_render_preview_page(user_id, None, q, exc.message, eng=None), exc.status)
    return _html(_render_preview_page(user_id, built, q, None, eng=eng), 200)


def _html(text: str, status: int) -> Response:
    return Response(text.encode(), status, media_type="text/html; charset=utf-8")


TIMES_OF_DAY = (("morning", 8), ("afternoon", 14), ("evening", 20), ("late night", 23))


def _render_preview_page(
    user_id: str | None,
    built: Built | None,
    query: Mapping[str, str],
    error: str | None,
    *,
    eng: EngineLike | None = None,
) -> str:
    e = html.escape
    device = query.get("device", "tv")
    at_text = query.get("at", "")
    country = query.get("country", "")
    page = built.page if built is not None else None
    if page is not None:
        local = page.context.local_time
        device = page.context.device
        at_text = local.strftime("%Y-%m-%dT%H:%M")
    options = "".join(
        f'<option value="{e(d)}"{" selected" if d == device else ""}>{e(d)}</option>'
        for d in DEVICES
    )
    presets = ""
    if page is not None and user_id is not None:
        links = []
        day = page.context.local_time
        for label, hour in TIMES_OF_DAY:
            at = day.replace(hour=hour, minute=0, second=0, microsecond=0).isoformat()
            params = {"device": device, "at": at, **({"country": country} if country else {})}
            href = f"/preview/{quote(user_id, safe='')}?{urlencode(params)}"
            links.append(f'<a class="preset" href="{e(href)}">{e(label)}</a>')
        presets = '<nav class="presets">Time of day: ' + " ".join(links) + "</nav>"
    body = _render_rows(page, eng) if page is not None else ""
    summary = ""
    if page is not None:
        ctx = page.context
        summary = (
            f'<p class="summary">{len(page.rows)} rows for <b>{e(page.user_id)}</b> on '
            f"<b>{e(ctx.device)}</b> at <b>{e(ctx.local_time.isoformat())}</b> "
            f"(weekday {ctx.weekday}, hour {ctx.hour})"
            f"{'' if ctx.country is None else f' in <b>{e(ctx.country)}</b>'}, "
            f"model {e(str(page.model_version))}"
            f"{' — <b>fallback page</b>' if page.fallback else ''}</p>"
        )
        summary += "".join(
            f'<p class="warning" role="status">{e(w)}</p>' for w in getattr(page, "warnings", ())
        )
    return Template(static_file("preview.html").decode()).substitute(
        title=e(f"rowrank preview — {user_id}" if user_id else "rowrank preview"),
        user=e(user_id or ""),
        device_options=options,
        at=e(at_text),
        country=e(country),
        presets=presets,
        error=f'<p class="error" role="alert">{e(error)}</p>' if error else "",
        summary=summary,
        rows=body,
    )


def _title_meta(eng: EngineLike | None, title_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(genres, year) per title from the engine's History; blanks when it has none."""
    history = getattr(eng, "history", None)
    if history is None:
        return [("", "")] * len(title_ids)
    out = []
    for tid in title_ids:
        i = history.title_index(tid)
        if i < 0:
            out.append(("", ""))
            continue
        genres = ", ".join(
            g for g, on in zip(history.genre_names, history.title_genres[i], strict=True) if on
        )
        year = history.release_year[i]
        out.append((genres, "" if year != year else str(int(year))))  # NaN: unknown year
    return out


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _render_rows(page: Any, eng: EngineLike | None) -> str:
    e = html.escape
    parts = []
    for r, row in enumerate(page.rows):
        meta = _title_meta(eng, [it.title_id for it in row.items])
        cards = []
        for pos, (it, (genres, year)) in enumerate(zip(row.items, meta, strict=True)):
            tip = f"score {it.score:.4g} · {it.title_id} · position {pos}"
            progress = ""
            if it.progress is not None:
                pct = max(0.0, min(1.0, float(it.progress))) * 100
                tip += f" · {pct:.0f}% watched"
                progress = f'<div class="progress"><span style="width:{pct:.0f}%"></span></div>'
            cards.append(
                f'<li class="card" title="{e(tip)}" data-title-id="{e(it.title_id)}">'
                f'<span class="name">{e(it.name)}</span>'
                f'<span class="meta"><span class="genres">{e(genres)}</span>'
                f'<span class="year">{e(year)}</span></span>{progress}</li>'
            )
        evidence = ""
        if row.evidence:
            pairs = "; ".join(f"{k}: {_short(v)}" for k, v in row.evidence.items())
            evidence = f'<span class="evidence">{e(pairs)}</span>'
        parts.append(
            f'<section class="row" data-row-id="{e(row.row_id)}" data-kind="{e(row.kind)}">'
            f'<h2 title="{e(f"row score {row.score:.4g} · ranker {row.ranker} · row {r}")}">'
            f'{e(row.title)} <span class="kind">{e(row.kind)}</span></h2>{evidence}'
            f'<ol class="cards">{"".join(cards)}</ol></section>'
        )
    if not parts:
        return '<p class="empty">This page has no rows.</p>'
    return "\n".join(parts)
