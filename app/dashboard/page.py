"""The dashboard as HTML: the page shell, and the panel of charts (server-rendered SVG).

What it shows is only what the registry knows: a target whose actual cannot be judged says
数据不足 (with the records it skipped and why) and never "0 / 0%"; a group of projects without
amounts says 未填 and never 0元; figures that disagree show as a range with each figure and its
source; and every field that is an inference or a reading (`inferred`) carries （推断）, with its
reason under the table it appears in."""

from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any

from app.dashboard import svg
from app.dashboard.data import DashboardData, TargetRow
from app.models.investment import InvestmentKind
from app.models.park import ParkLevel
from app.models.project import STAGE_ZH
from app.models.target import Metric, Recurrence
from app.money import display
from app.services import stats as stats_service
from app.services.project import HEADLINE_RULE
from app.services.target import RULES, STATUS_ZH, Progress, Status

HERE = Path(__file__).parent
CSS = (HERE / "dashboard.css").read_text(encoding="utf-8")
JS = (HERE / "dashboard.js").read_text(encoding="utf-8")

# In the order the charts appear: the per-chain targets first.
METRICS: dict[Metric, tuple[str, str]] = {
    Metric.projects_over_100m: ("过亿元项目", "Projects of 1亿元 or more"),
    Metric.leading_enterprises: ("招引落地头部企业", "Leading enterprises landed"),
    Metric.output_scale: ("产业规模", "Industry scale"),
    Metric.key_projects: ("重点项目", "Key projects"),
    Metric.high_tech_enterprises: ("高新技术企业", "High-tech enterprises"),
    Metric.above_scale_enterprises: ("规上企业", "Above-scale enterprises"),
    Metric.other: ("其他指标", "Other targets"),
}
LEVELS: dict[ParkLevel, str] = {
    ParkLevel.national: "国家级",
    ParkLevel.provincial: "省级",
    ParkLevel.municipal: "市级",
    ParkLevel.other: "其他",
}
RECURRENCES = {Recurrence.annual: "每年 annual", Recurrence.by_end: "期末达到 by end of period"}
KINDS = {
    InvestmentKind.planned_total: "计划总投资 planned_total",
    InvestmentKind.annual_plan: "年度计划 annual_plan",
    InvestmentKind.completed: "已完成 completed",
    InvestmentKind.reported: "报道额 reported",
}
# What an inferred field is called where the page names it.
FIELDS = {
    "period_start_year": "起始年份",
    "period_end_year_earliest": "最早截止年份",
    "period_end_year": "截止年份",
    "value": "目标值",
    "metric": "指标",
    "recurrence": "周期",
    "unit": "单位",
    "chain_id": "所属产业链",
    "stage": "阶段",
    "year": "年度",
    "is_key": "是否重点项目",
}
PERIOD_FIELDS = ("period_start_year", "period_end_year_earliest", "period_end_year")
INFERRED = "（推断）"
BREAK = "\u200b"  # where a table cell's line may break (a zero-width space)
CHAIN_COLOR = "#0f766e"
STAGE_COLOR = "#6d28d9"

# A table cell: its text, or its text and a tooltip (`title`).
Cell = str | tuple[str, str]


def num(value: Decimal) -> str:
    """`10.00` → `10`, `2.50` → `2.5` (never `1E+2`)."""
    return format(value.normalize(), "f")


def en(text: str) -> str:
    return f'<span lang="en">{escape(text)}</span>'


def _table(
    head: list[str],
    rows: list[list[Cell]],
    numeric: set[int],
    note: str = "",
    *,
    caption: str,
    notes: list[str] | None = None,
    widths: dict[int, str] | None = None,
) -> str:
    """A data table in a `<details>`, in a box that scrolls sideways on a narrow screen;
    `widths` gives columns a least width (`mid`, `long` in the CSS)."""

    def cells(values: list[Cell], tag: str) -> str:
        out = []
        for i, value in enumerate(values):
            text, title = (value, "") if isinstance(value, str) else value
            classes = ["num"] * (i in numeric) + [(widths or {}).get(i, "")]
            classes = [c for c in classes if c]
            attrs = (f' class="{" ".join(classes)}"' if classes else "") + (
                f' title="{escape(title)}"' if title else ""
            )
            shown = "<br>".join(_parts(line) for line in text.split("\n"))
            out.append(f"<{tag}{attrs}>{shown}</{tag}>")
        return "".join(out)

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    footnotes = "".join(f"<li>{escape(n)}</li>" for n in notes or [])
    return (
        "<details><summary>数据表 Data table</summary>"
        + _scroll(
            caption, f"<thead><tr>{cells(list(head), 'th')}</tr></thead><tbody>{body}</tbody>"
        )
        + (f'<ul class="footnotes">{footnotes}</ul>' if footnotes else "")
        + (f'<p class="note">{escape(note)}</p>' if note else "")
        + "</details>"
    )


def _parts(line: str) -> str:
    """A line of a cell, broken only between its parts (` · `, or a zero-width space) when it
    has several: `跳过 2` or `2021（推断）` never breaks inside."""
    parts = [p.split(BREAK) for p in line.split(" · ")]
    if len(parts) == 1 and len(parts[0]) == 1:
        return escape(line)
    return " · ".join(
        "<wbr>".join(
            f'<span class="nowrap">{escape(piece)}</span>' if len(piece) <= 16 else escape(piece)
            for piece in part
        )
        for part in parts
    )


def _scroll(caption: str, inner: str, cls: str = "") -> str:
    """A table in a box of its own that scrolls sideways (keyboard too) when it is wider than
    the screen, so the page itself never is."""
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<div class="table-wrap" role="region" tabindex="0" aria-label="{escape(caption)}">'
        f"<table{klass}><caption>{escape(caption)}</caption>{inner}</table></div>"
    )


def _figure(heading: str, sub: str, chart: str, table: str, more: str = "") -> str:
    return (
        f'<figure class="card"><h3>{heading}</h3><p class="sub">{escape(sub)}</p>'
        f"{more}{chart}{table}</figure>"
    )


def _legend(items: list[tuple[str, str]]) -> str:
    """The chart's key, as HTML so that it wraps on a narrow screen."""
    return (
        '<ul class="legend">'
        + "".join(
            f'<li><span class="swatch {cls}"></span>{escape(label)}</li>' for cls, label in items
        )
        + "</ul>"
    )


# ---------------------------------------------------------------- inferences


def inferred(record: Any) -> dict[str, str]:
    """The record's inferred fields and why (`Provenance.inferred`)."""
    return dict(getattr(record, "inferred", None) or {})


def mark(text: str, record: Any, *fields: str) -> str:
    """`text`, marked （推断） when any of `fields` of `record` is an inference."""
    found = inferred(record)
    return text + INFERRED if any(f in found for f in fields) else text


def _field(name: str) -> str:
    return f"{FIELDS.get(name, name)}（{name}）"


def _why(record: Any, *fields: str) -> str:
    """The reasons of the inferred `fields` (all of them when none is named), for a tooltip."""
    found = inferred(record)
    return "；".join(
        f"{FIELDS.get(k, k)}为推断：{v}" for k, v in found.items() if not fields or k in fields
    )


def _footnotes(scoped: list[tuple[str, Any]]) -> list[str]:
    """Every inference of these records, once per field and reason, naming the records it
    concerns unless it concerns them all."""
    by_reason: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, record in scoped:
        for key, reason in inferred(record).items():
            by_reason[(key, reason)].append(name)
    notes = []
    for (key, reason), names in by_reason.items():
        whom = "" if len(names) == len(scoped) else f"（{'、'.join(names)}）"
        notes.append(f"{INFERRED} {_field(key)}{whom}：{reason}")
    return notes


# ---------------------------------------------------------------- targets against actuals


def period(target: Any) -> str:
    """`2021（推断）起`, `2021（推断）至 2023—2025年（推断）`: a range of end years stays a range."""
    start = target.period_start_year
    first = "" if start is None else mark(str(start), target, "period_start_year")
    end = _end(target)
    if first and end:
        return f"{first}{BREAK}至{end}"
    if first:
        return f"{first}{BREAK}起"
    return f"至{end}" if end else "未限定"


def _end(target: Any) -> str:
    end = target.period_end_year
    if end is None:
        return ""
    earliest = getattr(target, "period_end_year_earliest", None)
    span = f"{earliest}—{end}年" if earliest is not None and earliest != end else f"{end}年"
    return mark(span, target, "period_end_year", "period_end_year_earliest")


def _goal(target: Any) -> str:
    return mark(f"{num(target.value)}{target.unit}", target, "value")


def _ratio(p: Progress) -> str:
    if p.ratio is None:
        return "—"
    percent = f"{num((p.ratio * 100).quantize(Decimal(1)))}%"
    return f"至少 {percent}" if p.status == Status.partial else percent


def _skipped_short(p: Progress) -> str:
    """`2 条记录未填项目年度（跳过）`: the skipped records, by their first reason."""
    if not p.records_skipped:
        return ""
    first = next(iter(p.skipped.values()))
    if first.count == p.records_skipped:
        return f"{p.records_skipped} 条记录{first.label}（跳过）"
    return f"跳过 {p.records_skipped} 条记录（{first.label} {first.count} 条等）"


def _skipped_full(p: Progress) -> str:
    parts = []
    for s in p.skipped.values():
        names = "、".join(r["name"] for r in s.records) + ("等" if s.count > len(s.records) else "")
        parts.append(f"{s.label} {s.count}（{names}）")
    return "；".join(parts)


def target_text(p: Progress) -> str:
    """What a target's row says, by the state of its actual ("\\n" between the figures and what
    explains them)."""
    target = p.target
    goal = f"目标 {_goal(target)}"
    if target.recurrence == Recurrence.by_end and target.period_end_year:
        goal += f" · 至{_end(target)}"
    if p.status == Status.not_computable:
        return f"无法计算 · {goal}\n{_why_not_computable(p)}"
    if p.status == Status.no_data:
        why = _skipped_short(p) or (
            f"{p.records_excluded} 条记录已知不符合（排除）"
            if p.records_excluded
            else "登记册中没有可判断的记录"
        )
        return f"数据不足 · {goal}\n{why}"
    assert p.actual is not None
    if p.status == Status.partial:
        assert p.actual_upper is not None
        return (
            f"至少 {num(p.actual)}（最多 {num(p.actual_upper)}）/ {goal} · {_ratio(p)}\n"
            + _skipped_short(p)
        )
    return f"实际 {num(p.actual)} / {goal} · {_ratio(p)}"


def _why_not_computable(p: Progress) -> str:
    if Metric(p.target.metric) == Metric.output_scale:
        return "产业规模不在登记册中"
    return "不能由登记册计算"


def _actual(p: Progress) -> str:
    """The state and, when there is one, the actual: `数据不足`, `3 · 30%`,
    `部分数据 / 至少 3，最多 5 / 至少 30%` (on three lines)."""
    if p.actual is None:
        return STATUS_ZH[p.status]
    if p.status == Status.partial and p.actual_upper is not None:
        return f"部分数据\n至少 {num(p.actual)}，最多 {num(p.actual_upper)}\n{_ratio(p)}"
    return f"{num(p.actual)} · {_ratio(p)}"


def _records(p: Progress) -> str:
    """What the actual counted, skipped (why, and which) and excluded, one per line."""
    if p.status == Status.not_computable:
        return "—"
    lines = [f"计入 {len(p.counted)} · 跳过 {p.records_skipped} · 排除 {p.records_excluded}"]
    if p.counted:
        lines.append("计入：" + "、".join(c["name"] for c in p.counted))
    if p.skipped:
        lines.append("跳过：" + _skipped_full(p))
    return "\n".join(lines)


def target_charts(data: DashboardData) -> str:
    groups: dict[tuple[str, str], list[TargetRow]] = defaultdict(list)
    order = list(METRICS)
    for row in sorted(data.targets, key=lambda r: order.index(Metric(r.progress.target.metric))):
        groups[(row.progress.target.metric, row.progress.target.unit)].append(row)
    figures = []
    for n, ((metric_value, unit), rows) in enumerate(groups.items()):
        metric = Metric(metric_value)
        zh, english = METRICS[metric]
        counts: dict[str, int] = defaultdict(int)
        for r in rows:
            counts[r.scope] += 1
        bullets = []
        for r in rows:
            p = r.progress
            target = p.target
            label = r.scope if r.chain_id is not None else f"{r.scope}（全园区）"
            if counts[r.scope] > 1:
                label += f" · #{target.id}"
            notes = []
            if p.skipped:
                notes.append("跳过：" + _skipped_full(p))
            if inferred(target):
                notes.append("推断：" + "、".join(FIELDS.get(k, k) for k in inferred(target)))
            bullets.append(
                svg.Bullet(
                    label=label,
                    target=Decimal(target.value),
                    actual=p.actual,
                    upper=p.actual_upper,
                    text=target_text(p),
                    key=f"target-{target.id}",
                    state=p.status.value,
                    note="；".join(notes),
                )
            )
        chart_id = f"targets-{metric.value}-{n}"
        title = f"{data.year}年 {zh}：目标与实际（{unit}）"
        periods = sorted({period(r.progress.target) for r in rows})
        recurrences = sorted({RECURRENCES[Recurrence(r.progress.target.recurrence)] for r in rows})
        states = {r.progress.status for r in rows}
        legend = [("s-target", "目标 Target")]
        if states & {Status.complete, Status.partial}:
            legend += [("s-actual", "实际 Actual"), ("s-met", "已完成 Met")]
        if Status.partial in states:
            legend.append(("s-upper", "可能的范围（有记录数据未知）"))
        if states & {Status.no_data, Status.not_computable}:
            legend.append(("s-none", "无实际值：数据不足 / 无法计算"))
        table = _table(
            ["范围 Scope", "期限 Period", "目标 Target", "实际 Actual", "记录 Records"],
            [
                [
                    b.label,
                    (period(r.progress.target), _why(r.progress.target, *PERIOD_FIELDS)),
                    (_goal(r.progress.target), _why(r.progress.target, "value")),
                    _actual(r.progress),
                    _records(r.progress),
                ]
                for b, r in zip(bullets, rows, strict=True)
            ],
            set(),
            note=f"计算规则 Rule: {RULES[metric]}",
            caption=f"{title} 数据表",
            widths={0: "mid", 1: "mid", 2: "mid", 3: "mid", 4: "long"},
            notes=_footnotes(
                [(b.label, r.progress.target) for b, r in zip(bullets, rows, strict=True)]
            ),
        )
        found = {k for r in rows for k in inferred(r.progress.target)}
        marked = [FIELDS[k] for k in FIELDS if k in found] + sorted(found - set(FIELDS))
        more = (
            f'<p class="infer">含推断的字段：{escape("、".join(marked))}'
            f"（标为{INFERRED}，依据见数据表下的注）</p>"
            if marked
            else ""
        )
        figures.append(
            _figure(
                f"{escape(zh)}（{escape(unit)}）{en(english)}",
                "期限 " + " / ".join(periods) + " · " + " / ".join(recurrences),
                _legend(legend) + svg.bullet_chart(chart_id, title, bullets),
                table,
                more,
            )
        )
    if not figures:
        return f'<p class="empty">{data.year}年没有在期内的目标。No targets in period for {data.year}.</p>'
    return f'<div class="grid">{"".join(figures)}</div>'


def period_notes(data: DashboardData) -> str:
    """Which targets' periods are inferred, and why: the year in the heading is the year the
    figures are for, not a year the sources state."""
    by_reason: dict[tuple[str, str, int], list[TargetRow]] = defaultdict(list)
    for row in data.targets:
        target = row.progress.target
        for key in PERIOD_FIELDS:
            reason = inferred(target).get(key)
            value = getattr(target, key, None)
            if reason and value is not None:
                by_reason[(key, reason, value)].append(row)
    if not by_reason:
        return ""
    items = []
    for (key, reason, value), rows in by_reason.items():
        metrics = "、".join(sorted({METRICS[Metric(r.progress.target.metric)][0] for r in rows}))
        items.append(
            f"<li>目标{FIELDS[key]} {value} 为推断（{len(rows)} 个目标：{escape(metrics)}）："
            f"{escape(reason)}</li>"
        )
    return (
        '<div class="infer-box"><p><strong>期限含推断 Inferred periods</strong>：'
        "以下年份不是来源写明的，而是推断所得；图表与数据表中标为「（推断）」。</p>"
        f"<ul>{''.join(items)}</ul></div>"
    )


def _met(rows: list[TargetRow]) -> tuple[int, int, int]:
    """Of the targets with an actual: how many are met, decidable, and undecided (a partial
    actual whose lower bound is short of the target and upper bound is not)."""
    met = decidable = undecided = 0
    for r in rows:
        p = r.progress
        if p.actual is None:
            continue
        goal = Decimal(p.target.value)
        if p.actual >= goal:
            met += 1
            decidable += 1
        elif p.actual_upper is not None and p.actual_upper < goal:
            decidable += 1
        else:
            undecided += 1
    return met, decidable, undecided


# ---------------------------------------------------------------- investment


def amount_text(g: dict[str, Any]) -> str:
    """A group's total as the page writes it: 未填 when no project has an amount (never 0元),
    the range when figures disagree."""
    if g["project_count"] == 0:
        return "无项目"
    if g["total_investment"] is None:
        return "未填"
    if g["total_investment_low"] is not None and g["total_investment_high"] is not None:
        low, high = display(g["total_investment_low"]), display(g["total_investment_high"])
        if low != high:
            return f"{low}–{high}"
    return display(g["total_investment"]) or "未填"


def investment_text(g: dict[str, Any]) -> str:
    if g["project_count"] == 0:
        return "无项目"
    without = g["projects_without_investment"]
    if g["total_investment"] is None:
        return f"未填 · {without} 个项目未填投资额"
    text = amount_text(g)
    if g["conflicting_projects"]:
        text += f"（{g['conflicting_projects']} 个项目记录不一致）"
    text += f" · {g['project_count']} 个项目"
    if without:
        text += f" · 另有 {without} 个项目未填"
    return text


def _state(g: dict[str, Any]) -> str:
    if g["project_count"] == 0:
        return "empty"
    return "conflict" if g["conflicting_projects"] else str(g["status"])


def _total_cell(g: dict[str, Any]) -> str:
    if g["project_count"] == 0:
        return "—"
    if g["total_investment"] is None:
        return f"未填（{g['projects_without_investment']} 个项目未填投资额）"
    exact = f"{display(g['total_investment'])}，{g['total_investment']} 元"
    if g["conflicting_projects"]:
        text = f"{amount_text(g)}（按总投资规则合计 {exact}）"
    else:
        text = f"{amount_text(g)}（{g['total_investment']} 元）"
    if g["projects_without_investment"]:
        text += f"；另有 {g['projects_without_investment']} 个项目未填，未计入"
    return text


def _investment_table(label: str, title: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    return _table(
        [
            label,
            "项目数 Projects",
            "有投资额 With figure",
            "未填 Without",
            "总投资 Total",
            "不一致 Conflicting",
        ],
        [
            [
                name,
                str(g["project_count"]),
                str(g["projects_with_investment"]),
                str(g["projects_without_investment"]),
                _total_cell(g),
                str(g["conflicting_projects"]),
            ]
            for name, g in rows
        ],
        {1, 2, 3, 5},
        caption=f"{title} 数据表",
        widths={4: "long"},
    )


def _empty_group(key: Any, label: str) -> dict[str, Any]:
    return stats_service.group(key, label, 0, 0, None)


def _bars(rows: list[tuple[str, dict[str, Any]]], prefix: str) -> list[svg.Bar]:
    return [
        svg.Bar(
            name,
            g["total_investment"],
            investment_text(g),
            key=f"{prefix}-{g['key']}",
            low=g["total_investment_low"],
            high=g["total_investment_high"],
            state=_state(g),
        )
        for name, g in rows
    ]


def _investment_legend(rows: list[tuple[str, dict[str, Any]]], cls: str) -> str:
    items = [(cls, "总投资（每个项目按其总投资计一次）")]
    if any(g["conflicting_projects"] for _, g in rows):
        items.append((f"{cls}-range", "记录不一致的范围"))
    return _legend(items)


def investment_charts(data: DashboardData) -> str:
    found = {g["key"]: g for g in data.by_chain}
    chain_rows = [(c.name, found.get(c.id, _empty_group(c.id, c.name))) for c in data.chains]
    if None in found:
        chain_rows.append(("未分类 (no chain)", found[None]))
    chain_title = "按产业链的总投资 Investment by chain"
    by_chain = svg.bar_chart(
        "investment-by-chain", chain_title, _bars(chain_rows, "chain"), CHAIN_COLOR
    )
    staged = {g["key"]: g for g in data.by_stage}
    stage_rows = [
        (f"{zh} {stage.value}", staged.get(stage.value, _empty_group(stage.value, zh)))
        for stage, zh in STAGE_ZH.items()
    ]
    if None in staged:
        stage_rows.append(("阶段未知 unknown", staged[None]))
    stage_title = "按阶段的总投资 Investment by stage"
    by_stage = svg.bar_chart(
        "investment-by-stage", stage_title, _bars(stage_rows, "stage"), STAGE_COLOR
    )
    return (
        '<div class="grid">'
        + _figure(
            f"按产业链 {en('By chain')}",
            "每个项目按其总投资计一次；条长为总投资，未填的项目单独计数，不按零计入。",
            _investment_legend(chain_rows, "s-chain") + by_chain,
            _investment_table("产业链 Chain", chain_title, chain_rows),
        )
        + _figure(
            f"按阶段 {en('By stage')}",
            "签约及之后的阶段视为已落地；终止的项目不计入目标。",
            _investment_legend(stage_rows, "s-stage") + by_stage,
            _investment_table("阶段 Stage", stage_title, stage_rows),
        )
        + "</div>"
    )


def _headline_why(figures: list[dict[str, Any]]) -> str:
    """Why the headline figure is the one the total takes, by the headline rule."""
    best = next(f for f in figures if f["headline"])
    others = [f for f in figures if not f["headline"]]
    if best["kind"] == InvestmentKind.planned_total and any(
        f["kind"] != InvestmentKind.planned_total for f in others
    ):
        return "计划总投资优先于报道额"
    if best["kind"] == InvestmentKind.reported:
        return "没有计划总投资，取报道额"
    return "同类中截至日期最新（日期相同取最后录入）"


def _range_html(low: Decimal, high: Decimal) -> str:
    return (
        f'<span class="nowrap">{escape(display(low) or "")}</span>–<wbr>'
        f'<span class="nowrap">{escape(display(high) or "")}</span>'
    )


def _source_text(data: DashboardData, source_id: int | None) -> str:
    if source_id is None:
        return "未注明来源"
    source = data.sources.get(source_id)
    if source is None:
        return f"来源 #{source_id}（已不在登记册中）"
    publisher = f"（{source.publisher}）" if source.publisher else ""
    return f"《{source.title}》{publisher} #{source_id}"


def conflict_table(data: DashboardData) -> str:
    """Each project whose records disagree, each figure with its source, and which one the
    total takes and why: a visible rule, not a silent pick."""
    if not data.conflicts:
        return ""
    chains = {c.id: c.name for c in data.chains}
    body = []
    for project in data.conflicts:
        figures = list(project.investment_figures or [])
        if not figures:
            continue
        amounts = [Decimal(f["amount"]) for f in figures]
        chain = mark(chains.get(project.chain_id, "未分类"), project, "chain_id")
        name = (
            f"<th scope=row rowspan={len(figures)}>{escape(project.name)}"
            f'<span class="cell-more">产业链 {escape(chain)}</span></th>'
            f'<td rowspan={len(figures)} data-label="范围">{_range_html(min(amounts), max(amounts))}'
            f'<span class="cell-more">{len(figures)}条记录不一致</span></td>'
        )
        why = _headline_why(figures)
        for i, f in enumerate(figures):
            kind = KINDS[InvestmentKind(f["kind"])] if f["kind"] in KINDS else f["kind"]
            headline = f"✔ 取此条：{why}" if f["headline"] else "—（只计入范围）"
            body.append(
                "<tr>"
                + (name if i == 0 else "")
                + '<td class="num" data-label="金额">'
                + f'<span class="nowrap">{escape(f["amount_display"])}</span>'
                + f'<span class="cell-more nowrap">{escape(f["amount"])} 元</span></td>'
                + f'<td data-label="类型">{escape(kind)}</td>'
                + f'<td data-label="来源">{escape(_source_text(data, f["source_id"]))}</td>'
                + f'<td data-label="截至">{escape(f["as_of_date"] or "未写")}</td>'
                + f'<td data-label="总投资取用"{" class=headline" if f["headline"] else ""}>'
                + f"{escape(headline)}</td>"
                + "</tr>"
            )
    head = "".join(
        f"<th scope=col>{h}</th>"
        for h in (
            "项目 Project",
            "范围 Range",
            "金额 Figure",
            "类型 Kind",
            "来源 Source",
            "截至 As of",
            "总投资取用 Headline",
        )
    )
    return (
        '<section class="card conflicts" aria-labelledby="h-conflicts">'
        f'<h3 id="h-conflicts">投资额不一致 {en("Conflicting figures")}</h3>'
        '<p class="sub">同一项目的投资额记录金额不同：各条都保留，不择其一；合计显示为范围。'
        "总投资取哪一条按本节末的「总投资规则」，见「总投资取用」一栏。</p>"
        + _scroll(
            "投资额不一致的项目、各笔金额及来源",
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>",
            "wide stack",
        )
        + "</section>"
    )


# ---------------------------------------------------------------- the panel and the page


def _kpi(value: str, label: str, more: str = "", warn: bool = False) -> str:
    extra = f'<span class="more">{escape(more)}</span>' if more else ""
    size = " long" if svg.text_width(value, 1) > 5 else ""
    # A range breaks only between its ends: 20亿元–<wbr>30亿元.
    shown = "–<wbr>".join(f'<span class="nowrap">{escape(v)}</span>' for v in value.split("–"))
    return (
        f'<div class="kpi{" warn" if warn else ""}"><span class="value{size}">{shown}</span>'
        f'<span class="label">{label}</span>{extra}</div>'
    )


def _filters(data: DashboardData) -> str:
    years = "".join(
        f'<option value="{y}"{" selected" if y == data.year else ""}>{y}年</option>'
        for y in data.years
    )
    parks = ""
    if len(data.parks) > 1 and data.park is not None:
        options = "".join(
            f'<option value="{p.id}"{" selected" if p.id == data.park.id else ""}>'
            f"{escape(p.name)}</option>"
            for p in data.parks
        )
        parks = f'<label>园区 Park<select name="park_id">{options}</select></label>'
    return (
        '<form class="filters" method="get" action="/dashboard">'
        f'{parks}<label>年份 Year<select name="year">{years}</select></label>'
        '<button class="btn" type="submit">查看 View</button></form>'
    )


def panel(data: DashboardData) -> str:
    """The charts, for the page itself or for the signed-in page to fetch."""
    if data.park is None:
        return '<p class="empty">登记册中还没有园区。The registry holds no park yet.</p>'
    park = data.park
    about = " · ".join(
        x
        for x in (
            LEVELS.get(ParkLevel(park.level), park.level),
            park.province or "",
            park.city or "",
        )
        if x
    )
    if park.positioning:
        about += f"｜{park.positioning}"
    everything = data.overall
    projects = everything["project_count"]
    conflicts = everything["conflicting_projects"]
    without = everything["projects_without_investment"]
    invested = f"{everything['projects_with_investment']} 个项目有投资额"
    if without:
        invested += f"，{without} 个未填（不计入）"
    if conflicts:
        invested += f"；{conflicts} 个项目记录不一致，按总投资规则合计 {display(everything['total_investment'])}"
    states = Counter(r.progress.status for r in data.targets)
    met, decidable, undecided = _met(data.targets)
    others = [
        f"{states[s]} 个{STATUS_ZH[s]}"
        for s in (Status.no_data, Status.not_computable)
        if states[s]
    ]
    if undecided:
        others.append(f"{undecided} 个部分数据尚不能判断")
    kpis = "".join(
        [
            _kpi(str(projects), f"项目 {en('Projects')}"),
            _kpi(amount_text(everything), f"总投资 {en('Total investment')}", invested),
            _kpi(str(len(data.chains)), f"产业链 / 板块 {en('Chains')}"),
            _kpi(
                f"{met} / {decidable}" if decidable else "数据不足",
                f"已完成目标 / 可判断 {en('Targets met / decidable')}",
                f"{data.year}年 {decidable} 个可判断"
                + (f"；另有 {'、'.join(others)}" if others else ""),
            ),
            _kpi(
                str(conflicts),
                f"投资额不一致 {en('Conflicting figures')}",
                "项目的投资额记录相互矛盾，见下文" if conflicts else "",
                warn=bool(conflicts),
            ),
        ]
    )
    conflict_note = (
        f'<p class="note"><span class="warn-text">⚠ {conflicts} 个项目的投资额记录不一致</span>：'
        "各条都保留，合计显示为范围；每笔金额及其来源见「投资额不一致」。</p>"
        if conflicts
        else ""
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<section class="intro" aria-labelledby="h-park"><div>'
        f'<h1 id="h-park">{escape(park.name)} 招商看板 {en("Investment dashboard")}</h1>'
        f'<p class="sub">{escape(about)}</p></div>{_filters(data)}</section>'
        f'<section class="kpis" aria-label="概览 Overview">{kpis}</section>'
        '<section aria-labelledby="h-targets">'
        f'<h2 id="h-targets">{data.year}年 目标与实际 {en(f"Targets vs actuals, {data.year}")}</h2>'
        f'<p class="hint">只列出 {data.year} 年在目标期内的目标。实际值由登记册计算，从不手工填写；'
        "项目自签约起视为落地，终止的不计入。浅色长条为目标，深色为实际，竖线标出目标位置。"
        "「数据不足」表示该年没有可判断的记录（年份、是否重点等未登记的记录被跳过），不是 0；"
        "「部分数据」的实际值是下限。</p>"
        f"{period_notes(data)}{target_charts(data)}</section>"
        '<section aria-labelledby="h-investment">'
        f'<h2 id="h-investment">投资分布 {en("Investment")}</h2>'
        '<p class="hint">金额为各项目总投资之和，按 亿元 / 万元 显示；未填投资额的项目单独计数，'
        f"不按零计入。</p>{conflict_note}"
        f"{investment_charts(data)}{conflict_table(data)}"
        f'<p class="note">总投资规则：{escape(HEADLINE_RULE)}</p></section>'
        f"<footer>生成于 {generated} · 只读 Read-only · 数据来自 /api/v1 同一服务</footer>"
    )


def page(nonce: str, content: str | None) -> str:
    """The whole page: with the panel inside (`content`), or, when reading needs a login, a
    sign-in form and the script that fetches the panel with the staff member's token."""
    login = ""
    script = ""
    mode = "server"
    if content is None:
        mode = "token"
        content = '<p class="loading">正在加载… Loading…</p>'
        script = f'<script nonce="{nonce}">{JS}</script>'
        login = (
            '<section id="login-box" class="card login" aria-labelledby="h-login" hidden>'
            f'<h1 id="h-login">登录后查看 {en("Sign in to view")}</h1>'
            '<p class="note">使用招商登记系统的账号（与接口文档 /docs 的 Authorize 相同）。'
            "登录令牌只保存在本标签页，关闭即失效。</p>"
            '<form id="login" method="post" action="/api/v1/auth/token">'
            '<label for="username">用户名 Username</label>'
            '<input id="username" name="username" autocomplete="username" required>'
            '<label for="password">密码 Password</label>'
            '<input id="password" name="password" type="password" '
            'autocomplete="current-password" required>'
            '<button class="btn" type="submit">登录 Sign in</button>'
            '<p id="login-msg" class="msg" role="alert"></p></form></section>'
            '<noscript><p class="empty">登录需要启用 JavaScript。'
            "Signing in needs JavaScript.</p></noscript>"
        )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light">'
        "<title>招商看板 Investment dashboard · 园区招商项目登记</title>"
        '<link rel="icon" href="data:,">'
        f'<style nonce="{nonce}">{CSS}</style></head><body>'
        '<a class="skip" href="#panel">跳到图表 Skip to the charts</a>'
        '<header class="top"><div class="brand">园区招商项目登记 '
        f'{en("Park Investment Registry")}</div><nav><a href="/docs">接口文档 API docs</a>'
        '<button id="logout" type="button" hidden>退出 Sign out</button></nav></header>'
        f'<main id="main">{login}<div id="panel" data-auth="{mode}" aria-live="polite">'
        f"{content}</div></main>{script}</body></html>"
    )
