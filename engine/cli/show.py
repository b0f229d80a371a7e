"""A page as text for people: the `table` format of `rowrank page` and what `rowrank demo`
prints (a row a line: its label, then its first titles)."""

from __future__ import annotations

from engine.request.page import Page

LABEL_WIDTH = 28
LINE_WIDTH = 100


def page_table(
    page: Page, *, max_rows: int | None = None, titles: int | None = None, indent: str = ""
) -> str:
    """A line of context, then a line per row: the row's label (shortened at a word, never
    inside one) and as many of its titles as fit in LINE_WIDTH (or the first `titles`)."""
    ctx = page.context
    head = (
        f"{indent}{page.user_id} on {ctx.device} at {ctx.local_time:%Y-%m-%d %H:%M}"
        f"{'' if ctx.country is None else ' in ' + ctx.country}: {len(page.rows)} rows"
        f"{' (fallback page)' if page.fallback else ''}, model {page.model_version}"
    )
    lines = [head]
    shown = page.rows if max_rows is None else page.rows[:max_rows]
    for row in shown:
        label = f"{indent}  {shorten(row.title, LABEL_WIDTH):<{LABEL_WIDTH}} "
        names = [i.name for i in row.items[:titles]]
        text = ""
        for k, name in enumerate(names):
            more = len(row.items) - k
            candidate = f"{text}, {name}" if text else name
            if titles is None and len(label) + len(candidate) > LINE_WIDTH and text:
                text += f" (+{more} more)"
                break
            text = candidate
        lines.append(label + text)
    if len(page.rows) > len(shown):
        lines.append(f"{indent}  ... {len(page.rows) - len(shown)} more rows")
    return "\n".join(lines) + "\n"


def shorten(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut at a space with "…", never inside a word
    (a single word longer than `width` is the one exception: it has nowhere else to break)."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    head = cut[:space] if space > 0 else cut
    return head.rstrip(" ,;:-") + "…"
