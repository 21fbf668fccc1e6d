"""Small SVG chart helpers: horizontal bars, and target-versus-actual bullet bars.

Every chart is one self-contained `<svg>` (colours and sizes as presentation attributes, no
`style` attributes, so a strict Content-Security-Policy allows it), readable without colour:
each row names its label and writes its figures as text. For assistive technology the `<svg>` is
one image (`role="img"`) labelled by its `<title>` and a `<desc>` that reads out every row.

The `<svg>` has no viewBox: it is as wide as its container, positions across are percentages
and everything else is in CSS pixels. So its text keeps its size at any width (a phone does not
shrink it to a few pixels) and only the bars stretch. A row stacks its label, its text (lines
short enough for a phone, wrapped if need be) and its bar:

    label
    value text
    [██████████████████████░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░░]   ← bar on a light track
"""

from dataclasses import dataclass
from decimal import Decimal
from html import escape

LABEL_SIZE = 17  # px: the row's label (bold)
TEXT_SIZE = 15  # px: the row's figures
LABEL_H = 22  # the label's line
LINE_H = 20  # each line of text
BAR_GAP = 7  # between the last line of text and the bar
BAR_H = 22
ROW_GAP = 16  # below the bar
# The widest a line may be, in px: a phone 390 px wide leaves a chart about 340 px.
WRAP = 300.0

INK = "#0f172a"
MUTED = "#334155"
TRACK = "#eef2f7"
TARGET = "#bcd0ee"
ACTUAL = "#1d4ed8"
ACHIEVED = "#15803d"
HATCH_BG = "#e5e7eb"
HATCH_LINE = "#94a3b8"
RANGE_BG = "#ffffff"


@dataclass(frozen=True)
class Bar:
    """One row of a bar chart: its length is `value` (None: not known, no bar); `text` is
    written under the label ("\\n" starts a new line). `low`–`high`, when given, is the range the
    value may lie in: solid up to `low`, hatched from `low` to `high`."""

    label: str
    value: Decimal | None
    text: str
    key: str = ""  # a stable handle for tests and scripts (data-key)
    low: Decimal | None = None
    high: Decimal | None = None
    state: str = ""  # data-state: complete / partial / no_data / conflict / empty


@dataclass(frozen=True)
class Bullet:
    """One target-versus-actual row. `actual` None means there is no actual to draw (no data,
    or not computable); `upper`, when above `actual`, is how high the actual may be (records
    whose facts are unknown), drawn hatched after the solid lower bound."""

    label: str
    target: Decimal
    actual: Decimal | None
    text: str
    key: str = ""
    upper: Decimal | None = None
    state: str = ""  # data-state: complete / partial / no_data / not_computable
    note: str = ""  # more for the row's tooltip and the chart's description (e.g. inferences)


def text_width(text: str, size: float) -> float:
    """A fair estimate of a text's width: CJK characters are square, Latin ones about half."""
    return sum(size if ord(c) >= 0x2E80 else size * 0.56 for c in text)


def wrap(text: str, size: float = TEXT_SIZE, width: float = WRAP) -> list[str]:
    """`text` as lines no wider than `width`: at its own line breaks, then between its ` · `
    parts, and only then inside a part."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        if not paragraph:
            continue
        line = ""
        for n, part in enumerate(paragraph.split(" · ")):
            joined = part if n == 0 else f"{line} · {part}" if line else part
            if text_width(joined, size) <= width:
                line = joined
                continue
            if line:
                lines.append(line)
            line = ""
            for char in part:
                if line and text_width(line + char, size) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def _pct(value: Decimal | None, scale: Decimal) -> float:
    """A length as a percentage of the width; a non-zero value stays visible."""
    if value is None or scale <= 0 or value <= 0:
        return 0.0
    return max(0.6, round(float(value / scale) * 100, 2))


def _attrs(**attrs: object) -> str:
    return " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items() if v != ""
    )


def _text(y: float, text: str, *, bold: bool = False) -> str:
    if bold:
        look = f'font-size="{LABEL_SIZE}" fill="{INK}" font-weight="600" class="label"'
    else:
        look = f'font-size="{TEXT_SIZE}" fill="{MUTED}" class="figures"'
    return f'<text x="0" y="{y}" {look}>{escape(text)}</text>'


def _rect(x: float, y: float, w: float, h: float, fill: str, cls: str = "", rx: int = 3) -> str:
    """A rect whose x and width are percentages of the chart's width."""
    klass = f' class="{cls}"' if cls else ""
    return f'<rect{klass} x="{x}%" y="{y}" width="{w}%" height="{h}" rx="{rx}" fill="{fill}"/>'


def _pattern(pattern_id: str, background: str, line: str) -> str:
    return (
        f'<pattern id="{escape(pattern_id)}" width="8" height="8" '
        'patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="8" height="8" fill="{background}"/>'
        f'<line x1="0" y1="0" x2="0" y2="8" stroke="{line}" stroke-width="3"/></pattern>'
    )


def _svg(chart_id: str, title: str, desc: str, height: int, body: str, kind: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="100%" height="{height}" '
        f'role="img" '
        f"{_attrs(aria_labelledby=f'{chart_id}-title {chart_id}-desc', data_chart=chart_id, data_kind=kind)}>"
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>'
        f"{body}</svg>"
    )


def _one_line(text: str) -> str:
    return text.replace("\n", " · ")


def _row_open(bar: Bar | Bullet, top: int, summary: str) -> tuple[str, int]:
    """The row's group, label and text; and the y of its bar within the row."""
    lines = wrap(bar.text)
    out = [
        f'<g class="bar" {_attrs(data_label=bar.label, data_key=bar.key, data_state=bar.state)} '
        f'transform="translate(0 {top})"><title>{escape(summary)}</title>',
        _text(LABEL_SIZE, bar.label, bold=True),
    ]
    y = LABEL_H
    for line in lines:
        y += LINE_H
        out.append(_text(y - 4, line))
    bar_y = y + BAR_GAP
    out.append(_rect(0, bar_y, 100, BAR_H, TRACK, "track"))
    return "".join(out), bar_y


def _row_height(bar: Bar | Bullet) -> int:
    return LABEL_H + LINE_H * len(wrap(bar.text)) + BAR_GAP + BAR_H + ROW_GAP


def bar_chart(chart_id: str, title: str, bars: list[Bar], color: str) -> str:
    """Horizontal bars on one scale (the largest value, or top of a range, spans the width)."""
    scale = max((b.high or b.value or Decimal(0) for b in bars), default=Decimal(0))
    defs = f"<defs>{_pattern(f'{chart_id}-range', RANGE_BG, color)}</defs>"
    rows = [defs]
    top = 0
    for bar in bars:
        summary = f"{bar.label}：{_one_line(bar.text)}"
        row, bar_y = _row_open(bar, top, summary)
        rows.append(row)
        if bar.low is not None and bar.high is not None:
            low, high = _pct(bar.low, scale), _pct(bar.high, scale)
            rows.append(_rect(0, bar_y, low, BAR_H, color, "value"))
            rows.append(
                _rect(low, bar_y, round(high - low, 2), BAR_H, f"url(#{chart_id}-range)", "range")
            )
        elif bar.value is not None:
            rows.append(_rect(0, bar_y, _pct(bar.value, scale), BAR_H, color, "value"))
        rows.append("</g>")
        top += _row_height(bar)
    desc = "；".join(f"{b.label}：{_one_line(b.text)}" for b in bars) or "无数据 No data"
    return _svg(chart_id, title, desc, max(top, 1), "".join(rows), "bars")


def bullet_chart(chart_id: str, title: str, rows: list[Bullet]) -> str:
    """Targets (light bars) with actuals (dark inner bars) on one scale per chart; a tick marks
    each target's end, and an actual that meets its target turns green. Without an actual the
    target bar is hatched grey; an actual only partly known is solid up to what is certain and
    hatched up to what it may be."""
    scale = max(
        (max(r.target, r.actual or Decimal(0), r.upper or Decimal(0)) for r in rows),
        default=Decimal(0),
    )
    defs = (
        "<defs>"
        + _pattern(f"{chart_id}-hatch", HATCH_BG, HATCH_LINE)
        + _pattern(f"{chart_id}-range", RANGE_BG, ACTUAL)
        + "</defs>"
    )
    out = [defs]
    top = 0
    for row in rows:
        summary = f"{row.label}：{_one_line(row.text)}" + (f"（{row.note}）" if row.note else "")
        opened, bar_y = _row_open(row, top, summary)
        out.append(opened)
        target_w = _pct(row.target, scale)
        if row.actual is None:
            out.append(_rect(0, bar_y, target_w, BAR_H, f"url(#{chart_id}-hatch)", "target"))
        else:
            out.append(_rect(0, bar_y, target_w, BAR_H, TARGET, "target"))
            met = row.target > 0 and row.actual >= row.target
            actual_w = _pct(row.actual, scale) if row.actual > 0 else 0.0
            if actual_w:
                out.append(
                    _rect(0, bar_y + 6, actual_w, BAR_H - 12, ACHIEVED if met else ACTUAL,
                          "actual", rx=2)
                )  # fmt: skip
            if row.upper is not None and row.upper > row.actual:
                upper_w = _pct(row.upper, scale)
                out.append(
                    _rect(actual_w, bar_y + 6, round(upper_w - actual_w, 2), BAR_H - 12,
                          f"url(#{chart_id}-range)", "upper", rx=2)
                )  # fmt: skip
        if target_w:
            # Drawn just inside the target's end, so a tick at 100% is not cut in half.
            out.append(
                f'<line class="tick" x1="{target_w}%" y1="{bar_y - 3}" x2="{target_w}%" '
                f'y2="{bar_y + BAR_H + 3}" stroke="{INK}" stroke-width="2" '
                'transform="translate(-1 0)"/>'
            )
        out.append("</g>")
        top += _row_height(row)
    desc = (
        "；".join(
            f"{r.label}：{_one_line(r.text)}" + (f"（{r.note}）" if r.note else "") for r in rows
        )
        or "无数据 No data"
    )
    return _svg(chart_id, title, desc, max(top, 1), "".join(out), "bullets")
