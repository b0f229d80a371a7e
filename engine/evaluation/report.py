"""The reports of `rowrank bench`: results.json, report.md and report.html (inline SVG charts).

Everything is rendered from the results dict `engine.evaluation.benchmark.run_bench` returns, so
the three
files always agree. The HTML is one self-contained file: inline SVG drawn here, no JavaScript,
no external resources (a report opened years later, offline, still shows its charts).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

# Colour-blind-safe palette (Okabe & Ito 2008); the baseline is always the first colour.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)


def sig_note(results: Mapping[str, Any]) -> str:
    """What a `*` means in this report, naming the multiple-comparison correction applied."""
    mc = results.get("multiple_comparisons")
    what = (
        "Δ: difference with the baseline; `*` marks a difference whose 95% bootstrap interval "
        "excludes 0 (offline: paired over the same members; A/B: the two arms resampled "
        "independently)"
    )
    if not mc:
        return what + ". No correction for multiple comparisons."
    return (
        f"{what} and that stays significant after the {mc['method']} correction over all "
        f"{mc['comparisons']} comparisons of this report (false discovery rate "
        f"{mc['false_discovery_rate']:g}, adjusted p ≤ {mc['false_discovery_rate']:g}; "
        f"{mc['marks_removed']} mark(s) removed by it)."
    )


# ----- numbers ---------------------------------------------------------------------------------


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(float(x))
    if ax != 0 and (ax >= 1000 or ax < 10 ** -(digits - 1)):
        return f"{x:.3g}"
    if ax >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def _interval(d: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not d:
        return "n/a"
    return f"{_num(d['value'], digits)} [{_num(d['lo'], digits)}, {_num(d['hi'], digits)}]"


def _delta(c: Mapping[str, Any] | None) -> str:
    if not c or c.get("diff") is None:
        return ""
    rel = c.get("relative")
    body = f"{rel * 100:+.1f}%" if rel is not None else f"{c['diff']:+.4g}"
    return body + ("*" if c.get("significant") else "")


def _adjusted(c: Mapping[str, Any]) -> str:
    """ ", adjusted p = …" when the comparison was corrected for multiple comparisons."""
    q = c.get("p_adjusted")
    return "" if q is None else f", adjusted p = {_num(q, 3)}"


def _cell(value: Mapping[str, Any] | None, cmp: Mapping[str, Any] | None, digits: int = 4) -> str:
    if not value:
        return "n/a"
    d = _delta(cmp)
    return _num(value["value"], digits) + (f" ({d})" if d else "")


def _timings(t: Mapping[str, float]) -> str:
    """ "total 957 s (train 455 s, offline 127 s, ...)" from {"train_s": 454.5, ...}."""
    parts = [f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items() if k != "total_s"]
    return f"total {t.get('total_s', float('nan')):.0f} s ({', '.join(parts)})"


# ----- markdown --------------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# Columns of the headline table: (section, key, label, digits)
_HEADLINE_OFFLINE = (
    ("n2dcg", "N2DCG"),
    ("visible_recall", "Visible recall"),
    ("expected_plays", "Exp. plays"),
    ("true_take_rate", "True take-rate"),
)


def comparison_table(results: Mapping[str, Any]) -> str:
    """The headline table (markdown): one row per variant, offline and A/B columns."""
    off = results["offline"]
    ab = results.get("ab")
    k = results["bench"]["settings"]["eval"]["k"]
    cols: list[tuple[str, str]] = [
        (key, label)
        for key, label in _HEADLINE_OFFLINE
        if key in off["results"][results["baseline"]]
    ]
    cols.append((f"NDCG@{k}", f"Row NDCG@{k}"))
    header = ["variant", *(label for _, label in cols)]
    if "oracle_ratio" in off["results"][results["baseline"]]:
        header.append("÷ oracle")
    header += ["Dup. rate", "Genre div.", "Coverage", "ECS", "p50 ms"]
    if ab:
        header += ["A/B take-rate", "A/B min/session", "A/B ÷ oracle"]
    rows = []
    for name in results["variants"]:
        res = off["results"][name]
        cmp = off["vs_baseline"].get(name, {})
        row = [name + (" (baseline)" if name == results["baseline"] else "")]
        row += [_cell(res.get(key), cmp.get(key)) for key, _ in cols]
        if "oracle_ratio" in res:
            row.append(_num(res["oracle_ratio"]["value"], 3))
        row.append(_cell(res["duplicate_rate"], cmp.get("duplicate_rate"), 3))
        row.append(_cell(res["genre_diversity"], cmp.get("genre_diversity"), 3))
        cat = off["catalog"][name]
        row += [_num(cat["coverage"], 3), _num(cat["ecs_visible"], 1)]
        row.append(_num(off["latency"][name]["p50"], 1))
        if ab:
            arm = ab["arms"][name]
            acmp = ab["vs_baseline"].get(name, {})
            row.append(_cell(arm["take_rate"], acmp.get("take_rate")))
            row.append(
                _cell(arm["watch_minutes_per_session"], acmp.get("watch_minutes_per_session"), 2)
            )
            row.append(_num(arm["oracle_ratio"]["value"], 3))
        rows.append(row)
    return _md_table(header, rows)


def render_markdown(results: Mapping[str, Any]) -> str:
    b, data, off = results["bench"], results["data"], results["offline"]
    base = results["baseline"]
    lines = [
        f"# rowrank bench: {b['name']}",
        "",
        b["description"] or "",
        "",
        f"- Variants file: `{b['variants_file']}`, seed {b['seed']}, generated {b['generated_at']}",
        f"- Data: `{data['dir']}` ({data['source']}"
        f"{', simulated world' if data['simulated'] else ''}), "
        f"clock {data['clock']}, temporal cut {data['cut']}",
        f"- At the cut: {data['titles']:,} titles, {data['users_at_cut']:,} members, "
        f"{data['training_plays']:,} training plays; {data['test_users']:,} test members, "
        f"{data['evaluated_users']:,} evaluated offline "
        f"({', '.join(f'{d} {n}' for d, n in off['members_per_device'].items())})",
        f"- Wall time: {_timings(b['timings_s'])} on {b['machine']}",
        "",
        "## Variants",
        "",
        _md_table(
            ["variant", "description", "rankers", "model", "train s"],
            [
                [
                    n + (" (baseline)" if n == base else ""),
                    v["description"] + (" [pages shuffled by the bench]" if v["shuffle"] else ""),
                    ", ".join(v["rankers"]),
                    v["model_version"],
                    _num(v["train_s"], 1),
                ]
                for n, v in results["variants"].items()
            ],
        ),
        "",
        "## Headline",
        "",
        comparison_table(results),
        "",
        sig_note(results),
        "",
        "## Offline metrics (mean [95% bootstrap interval over members])",
        "",
    ]
    metrics = off["metrics"]
    header = ["metric", *results["variants"]]
    rows = []
    for m in metrics:
        row = [m["label"] + ("" if m["higher_is_better"] else " (lower is better)")]
        for n in results["variants"]:
            cell = _interval(off["results"][n][m["key"]], 1 if m["key"] == "latency_ms" else 4)
            d = _delta(off["vs_baseline"].get(n, {}).get(m["key"]))
            row.append(cell + (f" Δ {d}" if d else ""))
        rows.append(row)
    if "oracle_ratio" in off["results"][base]:
        rows.append(
            ["True take-rate ÷ oracle page"]
            + [_interval(off["results"][n]["oracle_ratio"], 3) for n in results["variants"]]
        )
    lines += [_md_table(header, rows), ""]
    lines += [
        "Catalog: "
        + "; ".join(
            f"{n}: coverage {_num(c['coverage'], 3)}, ECS {_num(c['ecs_visible'], 1)}"
            for n, c in off["catalog"].items()
        ),
        "",
        "## Per device",
        "",
    ]
    key = "true_take_rate" if data["simulated"] else "n2dcg"
    label = {m["key"]: m["label"] for m in metrics}
    for metric in ("n2dcg", key) if key != "n2dcg" else ("n2dcg", "visible_recall"):
        devs = sorted({d for n in results["variants"] for d in off["per_device"][n]})
        lines += [
            f"{label[metric]}:",
            "",
            _md_table(
                ["variant", *devs],
                [
                    [n] + [_interval(off["per_device"][n].get(d, {}).get(metric)) for d in devs]
                    for n in results["variants"]
                ],
            ),
            "",
        ]
    k = b["settings"]["eval"]["k"]
    lines += [f"## Per row kind (row metrics at k = {k}, mean over members showing the kind)", ""]
    kinds = sorted({kd for n in results["variants"] for kd in off["per_kind"][n]})
    rows = []
    for kd in kinds:
        for n in results["variants"]:
            pk = off["per_kind"][n].get(kd)
            if not pk:
                continue
            rows.append(
                [kd, n, _num(pk["rows"])]
                + [
                    _interval(pk.get(m))
                    for m in (f"Recall@{k}", f"NDCG@{k}", f"MAP@{k}", f"HitRate@{k}")
                ]
            )
    lines += [
        _md_table(
            ["kind", "variant", "rows", f"Recall@{k}", f"NDCG@{k}", f"MAP@{k}", f"HitRate@{k}"],
            rows,
        ),
        "",
    ]
    ab = results.get("ab")
    if ab:
        lines += [
            "## Simulated A/B test",
            "",
            f"{ab['sessions']:,} sessions over {ab['days']} days from the cut "
            f"({ab['sessions_per_day']} a member a day on average); members assigned to arms by "
            f"sha256 of `{ab['name']}:<user id>`. Take-rate = sessions with a play ÷ sessions, "
            "drawn through the ground-truth browsing model; expected take-rate = its exact "
            "probability; ÷ oracle = expected take-rate ÷ that of the oracle page of the same "
            "session. Intervals resample members (all of a member's sessions together).",
            "",
        ]
        header = [
            "arm",
            "members",
            "sessions",
            "take-rate",
            "watch min / session",
            "expected take-rate",
            "÷ oracle",
        ]
        rows = []
        for n, arm in ab["arms"].items():
            c = ab["vs_baseline"].get(n, {})
            rows.append(
                [
                    n,
                    _num(arm["users"]),
                    _num(arm["sessions"]),
                    _interval(arm["take_rate"]) + (f" Δ {_delta(c.get('take_rate'))}" if c else ""),
                    _interval(arm["watch_minutes_per_session"], 2)
                    + (f" Δ {_delta(c.get('watch_minutes_per_session'))}" if c else ""),
                    _interval(arm["expected_take_rate"])
                    + (f" Δ {_delta(c.get('expected_take_rate'))}" if c else ""),
                    _interval(arm["oracle_ratio"], 3),
                ]
            )
        lines += [_md_table(header, rows), ""]
    tdi = results.get("interleaving")
    if tdi:
        lines += [
            "## Team-draft interleaving (within-row title order)",
            "",
            f"Variant `{tdi['variant']}`: inside each row, the page model's title order against "
            "the ranker's own order of the same titles (Radlinski et al. 2008). "
            f"{tdi['sessions']:,} sessions, {tdi['sessions_with_play']:,} with a play: "
            f"model order won {tdi['wins_model_order']:,}, ranker order won "
            f"{tdi['wins_ranker_order']:,} (Δ = {_num(tdi['delta'], 3)}, exact binomial test "
            f"p = {_num(tdi['p_value'], 3)}{_adjusted(tdi)}"
            f"{', significant' if tdi['significant'] else ''}).",
            "",
        ]
    abl = results.get("ablation")
    if abl:
        lines += [
            f"## Ablation: each ranker's marginal value (variant `{abl['variant']}`)",
            "",
            "Each ranker instance silenced in turn (its rows withheld at serving time; the "
            "trained models and the PVR features kept). Marginal value = full page − page "
            "without it, paired over the same members; `*` as above (the interval excludes 0, "
            "after the correction for multiple comparisons).",
            "",
        ]
        header = ["ranker", "rows / page", *(label.get(m, m) for m in abl["metrics"])]
        rows = [
            [name, _num(r["rows_per_page"], 2)]
            + [
                f"{_num(r['marginal'][m]['diff'], 4)} [{_num(r['marginal'][m]['lo'], 4)}, "
                f"{_num(r['marginal'][m]['hi'], 4)}]"
                + ("*" if r["marginal"][m]["significant"] else "")
                for m in abl["metrics"]
            ]
            for name, r in abl["rankers"].items()
        ]
        lines += [_md_table(header, rows), ""]
    lines += [
        "## Definitions",
        "",
        "See docs/benchmark.md. N2DCG = Σ rel(r,c) / log2(r + c) over the page (r, c 1-based, "
        "repeats after their first appearance count 0) ÷ the ideal over the device's full grid. "
        "Visible recall: relevant titles in the first visible_rows × visible_titles slots ÷ "
        "min(|truth|, visible slots). Expected plays: P(play) under the row-by-row cascade with "
        f"attraction {b['settings']['eval']['attraction']} for relevant titles. ECS: Gomez-Uribe "
        "& Hunt (2015), over visible exposures.",
        "",
    ]
    return "\n".join(lines)


# ----- SVG charts --------------------------------------------------------------------------------


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _nice_max(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 1.0
    exp = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= x:
            return m * exp
    return 10 * exp


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[Mapping[str, Any] | None],
    *,
    marks: Sequence[str] = (),
    width: int = 420,
) -> str:
    """Horizontal bars with 95% interval whiskers, one per variant; values: Interval dicts."""
    bar_h, gap, right, top = 18, 8, 60, 28
    # Room for the longest label (about 7 px a character at 12 px).
    left = max(90, 7 * max((len(label) for label in labels), default=0) + 12)
    width = max(width, left + right + 200)
    h = top + len(labels) * (bar_h + gap) + 24
    vals = [v for v in values if v and v.get("value") is not None]
    lo_all = min([0.0] + [float(v["lo"] if v["lo"] is not None else v["value"]) for v in vals])
    hi_all = max([0.0] + [float(v["hi"] if v["hi"] is not None else v["value"]) for v in vals])
    xmax = _nice_max(hi_all)
    xmin = -_nice_max(-lo_all) if lo_all < 0 else 0.0
    span = xmax - xmin or 1.0
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + (v - xmin) / span * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" '
        f'role="img" aria-label="{_esc(title)}">',
        f'<text x="4" y="16" class="t">{_esc(title)}</text>',
        f'<line x1="{x(0):.1f}" y1="{top - 4}" x2="{x(0):.1f}" y2="{h - 20}" class="axis"/>',
    ]
    for tick in (xmin, (xmin + xmax) / 2, xmax):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{h - 6}" class="tick" text-anchor="middle">'
            f"{_esc(f'{tick:.3g}')}</text>"
        )
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = top + i * (bar_h + gap)
        color = PALETTE[i % len(PALETTE)]
        mark = marks[i] if i < len(marks) else ""
        parts.append(
            f'<text x="{left - 6}" y="{y + bar_h - 5}" class="lab" text-anchor="end">'
            f"{_esc(label)}</text>"
        )
        if not v or v.get("value") is None:
            parts.append(f'<text x="{left + 4}" y="{y + bar_h - 5}" class="lab">n/a</text>')
            continue
        val = float(v["value"])
        x0, x1 = sorted((x(0), x(val)))
        parts.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" height="{bar_h}" '
            f'fill="{color}" opacity="0.85">'
            f"<title>{_esc(label)}: {_esc(_interval(v))}</title></rect>"
        )
        if v.get("lo") is not None and v.get("hi") is not None:
            ylo = y + bar_h / 2
            xl, xh = x(float(v["lo"])), x(float(v["hi"]))
            parts.append(
                f'<line x1="{xl:.1f}" y1="{ylo}" x2="{xh:.1f}" y2="{ylo}" class="ci"/>'
                f'<line x1="{xl:.1f}" y1="{ylo - 5}" x2="{xl:.1f}" y2="{ylo + 5}" class="ci"/>'
                f'<line x1="{xh:.1f}" y1="{ylo - 5}" x2="{xh:.1f}" y2="{ylo + 5}" class="ci"/>'
            )
        parts.append(
            f'<text x="{max(x(val), x(float(v["hi"] or val))) + 4:.1f}" y="{y + bar_h - 5}" '
            f'class="val">{_esc(_num(val, 3))}{_esc(mark)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    title: str,
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    width: int = 420,
    height: int = 220,
    max_points: int | None = None,
) -> str:
    """Lines, one per series, over positions 1..n (1-based in the labels)."""
    left, right, top, bottom = 48, 110, 28, 36
    data = {k: list(v)[:max_points] if max_points else list(v) for k, v in series.items()}
    n = max((len(v) for v in data.values()), default=0)
    ymax = _nice_max(max((max(v) for v in data.values() if v), default=0.0))
    pw, ph = width - left - right, height - top - bottom

    def px(i: int) -> float:
        return left + (i / max(n - 1, 1)) * pw

    def py(v: float) -> float:
        return top + ph - (v / ymax) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="4" y="16" class="t">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 4}" class="tick" text-anchor="end">'
        f"{_esc(f'{ymax:.3g}')}</text>",
        f'<text x="{left - 4}" y="{top + ph}" class="tick" text-anchor="end">0</text>',
        f'<text x="{left + pw / 2:.1f}" y="{height - 4}" class="tick" text-anchor="middle">'
        f"{_esc(xlabel)}</text>",
    ]
    for i in range(n):
        if n <= 12 or i % max(1, n // 10) == 0:
            parts.append(
                f'<text x="{px(i):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">'
                f"{i + 1}</text>"
            )
    for j, (name, vals) in enumerate(data.items()):
        color = PALETTE[j % len(PALETTE)]
        if not vals:
            continue
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(vals))
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{_esc(name)}</title></polyline>"
        )
        parts.append(
            f'<text x="{left + pw + 6}" y="{top + 12 + 14 * j}" class="lab" fill="{color}">'
            f"{_esc(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def grouped_bar_chart(
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Mapping[str, Any] | None]],
    *,
    width: int = 640,
    height: int = 240,
) -> str:
    """Vertical bars grouped by `groups` (e.g. devices), one bar per series, with intervals."""
    left, right, top, bottom = 48, 120, 28, 30
    pw, ph = width - left - right, height - top - bottom
    all_hi = [
        float(v["hi"] if v.get("hi") is not None else v["value"])
        for vals in series.values()
        for v in vals
        if v and v.get("value") is not None
    ]
    ymax = _nice_max(max(all_hi, default=0.0))
    n_s = max(len(series), 1)
    gw = pw / max(len(groups), 1)
    bw = gw * 0.8 / n_s

    def py(v: float) -> float:
        return top + ph - (max(v, 0.0) / ymax) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="4" y="16" class="t">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" class="axis"/>',
        f'<text x="{left - 4}" y="{top + 4}" class="tick" text-anchor="end">'
        f"{_esc(f'{ymax:.3g}')}</text>",
    ]
    for g, group in enumerate(groups):
        parts.append(
            f'<text x="{left + gw * (g + 0.5):.1f}" y="{height - 10}" class="lab" '
            f'text-anchor="middle">{_esc(group)}</text>'
        )
    for j, (name, vals) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        parts.append(
            f'<text x="{left + pw + 6}" y="{top + 12 + 14 * j}" class="lab" fill="{color}">'
            f"{_esc(name)}</text>"
        )
        for g, v in enumerate(vals):
            if not v or v.get("value") is None:
                continue
            x0 = left + gw * g + gw * 0.1 + j * bw
            val = float(v["value"])
            parts.append(
                f'<rect x="{x0:.1f}" y="{py(val):.1f}" width="{bw * 0.9:.1f}" '
                f'height="{top + ph - py(val):.1f}" fill="{color}" opacity="0.85">'
                f"<title>{_esc(name)} / {_esc(groups[g])}: {_esc(_interval(v))}</title></rect>"
            )
            if v.get("lo") is not None and v.get("hi") is not None:
                xc = x0 + bw * 0.45
                parts.append(
                    f'<line x1="{xc:.1f}" y1="{py(float(v["lo"])):.1f}" x2="{xc:.1f}" '
                    f'y2="{py(float(v["hi"])):.1f}" class="ci"/>'
                )
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1300px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:14px}
svg{background:#fff;border:1px solid #eee}
svg .t{font-size:13px;font-weight:600}svg .lab{font-size:12px}svg .tick{font-size:10px;fill:#555}
svg .val{font-size:11px}svg .axis{stroke:#888;stroke-width:1}svg .ci{stroke:#222;stroke-width:1.4}
.note{color:#555;font-size:13px}
"""


def _md_to_html_table(md: str) -> str:
    lines = [line for line in md.strip().splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return ""
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cells[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in cells[2:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(results: Mapping[str, Any]) -> str:
    b, data, off = results["bench"], results["data"], results["offline"]
    names = list(results["variants"])
    base = results["baseline"]
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>rowrank bench: {_esc(b['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>rowrank bench: {_esc(b['name'])}</h1>",
        f"<p class='note'>{_esc(b['description'])}</p>",
        f"<p class='note'>Data <code>{_esc(data['dir'])}</code> ({_esc(data['source'])}), cut "
        f"{_esc(data['cut'])}; {data['evaluated_users']:,} members evaluated offline. Baseline: "
        f"<b>{_esc(base)}</b>. Seed {b['seed']}. Wall time {_esc(_timings(b['timings_s']))}.</p>",
        "<h2>Headline</h2>",
        _md_to_html_table(comparison_table(results)),
        f"<p class='note'>{_esc(sig_note(results))}</p>",
        "<h2>Offline metrics (95% bootstrap intervals over members)</h2><div class='grid'>",
    ]
    for m in off["metrics"]:
        vals = [off["results"][n][m["key"]] for n in names]
        marks = [
            "*" if off["vs_baseline"].get(n, {}).get(m["key"], {}).get("significant") else ""
            for n in names
        ]
        label = m["label"] + ("" if m["higher_is_better"] else " (lower is better)")
        out.append(bar_chart(label, names, vals, marks=marks))
    if "oracle_ratio" in off["results"][base]:
        out.append(
            bar_chart(
                "True take-rate ÷ oracle", names, [off["results"][n]["oracle_ratio"] for n in names]
            )
        )
    out.append("</div>")
    ab = results.get("ab")
    if ab:
        out.append("<h2>Simulated A/B test</h2><div class='grid'>")
        for key, label in (
            ("take_rate", "A/B take-rate"),
            ("watch_minutes_per_session", "A/B watch minutes per session"),
            ("expected_take_rate", "A/B expected take-rate"),
            ("oracle_ratio", "A/B take-rate ÷ oracle"),
        ):
            marks = [
                "*" if ab["vs_baseline"].get(n, {}).get(key, {}).get("significant") else ""
                for n in names
            ]
            out.append(bar_chart(label, names, [ab["arms"][n][key] for n in names], marks=marks))
        out.append("</div><h3>Take-rate by position (A/B plays ÷ sessions)</h3><div class='grid'>")
        out.append(
            line_chart(
                "Take-rate by row",
                {n: ab["arms"][n]["take_rate_by_row"] for n in names},
                xlabel="row (1 = top)",
            )
        )
        out.append(
            line_chart(
                "Take-rate by column",
                {n: ab["arms"][n]["take_rate_by_col"] for n in names},
                xlabel="column (1 = left)",
                max_points=10,
            )
        )
        out.append("</div>")
    out.append(
        "<h2>Play probability by position (offline cascade, relevant titles)</h2><div class='grid'>"
    )
    out.append(
        line_chart(
            "Cascade play probability by row",
            {n: off["positions"][n]["row"] for n in names},
            xlabel="row (1 = top)",
        )
    )
    out.append(
        line_chart(
            "Cascade play probability by column",
            {n: off["positions"][n]["col"] for n in names},
            xlabel="column (1 = left)",
            max_points=10,
        )
    )
    out.append("</div><h2>Per device</h2><div class='grid'>")
    devs = sorted({d for n in names for d in off["per_device"][n]})
    keys = ["n2dcg", "visible_recall", "expected_plays"]
    if data["simulated"]:
        keys.append("true_take_rate")
    labels = {m["key"]: m["label"] for m in off["metrics"]}
    for key in keys:
        out.append(
            grouped_bar_chart(
                f"{labels[key]} per device",
                devs,
                {n: [off["per_device"][n].get(d, {}).get(key) for d in devs] for n in names},
            )
        )
    out.append("</div>")
    abl = results.get("ablation")
    if abl:
        out.append(
            f"<h2>Ablation: marginal value of each ranker (variant {_esc(abl['variant'])})</h2>"
            "<p class='note'>Full page minus the page without the ranker's rows, paired over the "
            "same members; * = interval excludes 0, after the correction for multiple "
            "comparisons.</p><div class='grid'>"
        )
        rankers = list(abl["rankers"])
        for m in abl["metrics"]:
            vals = []
            for r in rankers:
                c = abl["rankers"][r]["marginal"][m]
                vals.append({"value": c["diff"], "lo": c["lo"], "hi": c["hi"]})
            marks = [
                "*" if abl["rankers"][r]["marginal"][m]["significant"] else "" for r in rankers
            ]
            out.append(bar_chart(f"Marginal {labels.get(m, m)}", rankers, vals, marks=marks))
        out.append("</div>")
    md = render_markdown(results)
    # The full tables as in report.md (per kind, per device, A/B, interleaving, ablation).
    out.append("<h2>All tables</h2>")
    for block in md.split("\n\n"):
        if block.lstrip().startswith("|"):
            out.append(_md_to_html_table(block))
        elif block.startswith("## "):
            out.append(f"<h3>{_esc(block[3:].strip())}</h3>")
        elif block.strip() and not block.startswith("#") and not block.startswith("- "):
            out.append(f"<p class='note'>{_esc(block.strip())}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _plain(x: Any) -> Any:
    """JSON-safe: non-finite floats become None on purpose (orjson would write null silently)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def write_reports(results: Mapping[str, Any], out_dir: Path) -> None:
    """results.json, report.md and report.html into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_bytes(
        orjson.dumps(_plain(results), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (out_dir / "report.md").write_text(render_markdown(results), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(results), encoding="utf-8")


__all__ = [
    "bar_chart",
    "comparison_table",
    "grouped_bar_chart",
    "line_chart",
    "render_html",
    "render_markdown",
    "write_reports",
]
