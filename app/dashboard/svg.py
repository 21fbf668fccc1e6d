"""Small SVG chart helpers: horizontal bars, and target-versus-actual bullet bars.

Every chart is one self-contained `<svg>` (colours and sizes as presentation attributes, no
`style` attributes, so a strict Content-Security-Policy allows it), readable without colour:
each row names its label and writes its figures as text. For assistive technology the `<svg>` is
one image (`role="img"`) labelled by its `<title>` and a `<desc>` that reads out every row.

Layout of one row (viewBox units; the chart scales to its container's width):

    label ......................................... value text
    [██████████████████████░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░]   ← bar on a light track
"""

from dataclasses import dataclass
from decimal import Decimal
from html import escape

WIDTH = 640
PAD = 8
BAR_W = WIDTH - 2 * PAD
ROW_H = 66
LABEL_Y = 22  # baseline of the row's label and value text
BAR_Y = 32  # top of the bar
BAR_H = 24
LEGEND_H = 34

INK = "#0f172a"
MUTED = "#334155"
TRACK = "#eef2f7"
TARGET = "#bcd0ee"
ACTUAL = "#1d4ed8"
ACHIEVED = "#15803d"
HATCH_BG = "#e5e7eb"
HATCH_LINE = "#94a3b8"


@dataclass(frozen=True)
class Bar:
    """One row of a bar chart: its length is `value`; `text` is what is written beside it."""

    label: str
    value: Decimal
    text: str
    key: str = ""  # a stable handle for tests and scripts (data-key)


@dataclass(frozen=True)
class Bullet:
    """One target-versus-actual row; `actual` None means the registry cannot compute it."""

    label: str
    target: Decimal
    actual: Decimal | None
    text: str
    key: str = ""


def text_width(text: str, size: float) -> float:
    """A fair estimate of a text's width: CJK characters are square, Latin ones about half."""
    return sum(size if ord(c) >= 0x2E80 else size * 0.56 for c in text)


def _x(value: Decimal, scale: Decimal) -> float:
    """A bar's length in viewBox units; a non-zero value stays visible (at least 2 units)."""
    if scale <= 0 or value <= 0:
        return 0.0
    return max(2.0, round(float(value / scale) * BAR_W, 1))


def _attrs(**attrs: object) -> str:
    return " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items()
    )


def _text(x: float, y: float, text: str, *, anchor: str = "start", bold: bool = False) -> str:
    weight = ' font-weight="600"' if bold else ""
    fill = INK if bold else MUTED
    size = 18 if bold else 17
    return (
        f'<text x="{x}" y="{y}" font-size="{size}" fill="{fill}" text-anchor="{anchor}"{weight}>'
        f"{escape(text)}</text>"
    )


def _rect(x: float, y: float, w: float, h: float, fill: str, cls: str = "", rx: int = 3) -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<rect{klass} x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}"/>'


def _svg(chart_id: str, title: str, desc: str, height: int, body: str, kind: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" '
        f"{_attrs(aria_labelledby=f'{chart_id}-title {chart_id}-desc', data_chart=chart_id, data_kind=kind)}>"
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>'
        f"{body}</svg>"
    )


def _row_open(bar: Bar | Bullet, index: int, summary: str) -> str:
    top = index * ROW_H
    return (
        f'<g class="bar" {_attrs(data_label=bar.label, data_key=bar.key)} '
        f'transform="translate(0 {top})"><title>{escape(summary)}</title>'
        + _text(PAD, LABEL_Y, bar.label, bold=True)
        + _text(WIDTH - PAD, LABEL_Y, bar.text, anchor="end")
        + _rect(PAD, BAR_Y, BAR_W, BAR_H, TRACK, "track")
    )


def bar_chart(chart_id: str, title: str, bars: list[Bar], color: str) -> str:
    """Horizontal bars on one scale (the largest value spans the width)."""
    scale = max((b.value for b in bars), default=Decimal(0))
    rows = []
    for i, bar in enumerate(bars):
        summary = f"{bar.label}：{bar.text}"
        rows.append(
            _row_open(bar, i, summary)
            + _rect(PAD, BAR_Y, _x(bar.value, scale), BAR_H, color, "value")
            + "</g>"
        )
    desc = "；".join(f"{b.label}：{b.text}" for b in bars) or "无数据 No data"
    height = max(len(bars), 1) * ROW_H + 4
    return _svg(chart_id, title, desc, height, "".join(rows), "bars")


def _legend(chart_id: str, hatched: bool) -> str:
    items = [("目标 Target", TARGET), ("实际 Actual", ACTUAL), ("已完成 Met", ACHIEVED)]
    if hatched:
        items = [
            ("目标 Target", TARGET),
            ("无法由登记册计算 Not computable", f"url(#{chart_id}-hatch)"),
        ]
    out: list[str] = []
    x = float(PAD)
    for label, fill in items:
        out.append(_rect(x, 8, 18, 18, fill, rx=2))
        out.append(
            f'<text x="{round(x + 26, 1)}" y="23" font-size="15" fill="{MUTED}">'
            f"{escape(label)}</text>"
        )
        x += 26 + text_width(label, 15) + 22
    return f'<g class="legend">{"".join(out)}</g>'


def bullet_chart(chart_id: str, title: str, rows: list[Bullet]) -> str:
    """Targets (light bars) with actuals (dark inner bars) on one scale per chart; a tick marks
    each target's end, and an actual that meets its target turns green."""
    scale = max((max(r.target, r.actual or Decimal(0)) for r in rows), default=Decimal(0))
    hatched = any(r.actual is None for r in rows)
    defs = (
        f'<defs><pattern id="{escape(chart_id)}-hatch" width="8" height="8" '
        'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="8" height="8" fill="{HATCH_BG}"/>'
        f'<line x1="0" y1="0" x2="0" y2="8" stroke="{HATCH_LINE}" stroke-width="3"/>'
        "</pattern></defs>"
    )
    out = [defs, _legend(chart_id, hatched), f'<g transform="translate(0 {LEGEND_H})">']
    for i, row in enumerate(rows):
        out.append(_row_open(row, i, f"{row.label}：{row.text}"))
        target_w = _x(row.target, scale)
        if row.actual is None:
            out.append(_rect(PAD, BAR_Y, target_w, BAR_H, f"url(#{chart_id}-hatch)", "target"))
        else:
            out.append(_rect(PAD, BAR_Y, target_w, BAR_H, TARGET, "target"))
            met = row.target > 0 and row.actual >= row.target
            out.append(
                _rect(
                    PAD, BAR_Y + 7, _x(row.actual, scale), BAR_H - 14,
                    ACHIEVED if met else ACTUAL, "actual", rx=2,
                )
            )  # fmt: skip
        if target_w:
            tick = PAD + target_w
            out.append(
                f'<line class="tick" x1="{tick}" y1="{BAR_Y - 3}" x2="{tick}" '
                f'y2="{BAR_Y + BAR_H + 3}" stroke="{INK}" stroke-width="2"/>'
            )
        out.append("</g>")
    out.append("</g>")
    desc = "；".join(f"{r.label}：{r.text}" for r in rows) or "无数据 No data"
    height = LEGEND_H + max(len(rows), 1) * ROW_H + 6
    return _svg(chart_id, title, desc, height, "".join(out), "bullets")
