"""The dashboard as HTML: the page shell, and the panel of charts (server-rendered SVG)."""

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any

from app.dashboard import svg
from app.dashboard.data import DashboardData, TargetRow, total
from app.models.park import ParkLevel
from app.models.project import STAGE_ZH
from app.models.target import Metric, Recurrence
from app.money import display
from app.services.project import HEADLINE_RULE
from app.services.target import RULES

HERE = Path(__file__).parent
CSS = (HERE / "dashboard.css").read_text(encoding="utf-8")
JS = (HERE / "dashboard.js").read_text(encoding="utf-8")

# In the order the charts appear: the per-chain targets first.
METRICS: dict[Metric, tuple[str, str]] = {
    Metric.projects_over_100m: ("过亿元项目", "Projects of 1亿元 or more"),
    Metric.leading_enterprises: ("招引落地头部企业", "Leading enterprises landed"),
    Metric.output_scale: ("产业规模", "Output scale (产值)"),
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
CHAIN_COLOR = "#0f766e"
STAGE_COLOR = "#6d28d9"


def num(value: Decimal) -> str:
    """`10.00` → `10`, `2.50` → `2.5` (never `1E+2`)."""
    return format(value.normalize(), "f")


def en(text: str) -> str:
    return f'<span lang="en">{escape(text)}</span>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int], note: str = "") -> str:
    def cells(values: list[str], tag: str) -> str:
        return "".join(
            f"<{tag}{' class=num' if i in numeric else ''}>{escape(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return (
        "<details><summary>数据表 Data table</summary>"
        f"<table><thead><tr>{cells(head, 'th')}</tr></thead><tbody>{body}</tbody></table>"
        + (f'<p class="note">{escape(note)}</p>' if note else "")
        + "</details>"
    )


def _figure(heading: str, sub: str, chart: str, table: str) -> str:
    return (
        f'<figure class="card"><h3>{heading}</h3><p class="sub">{escape(sub)}</p>'
        f"{chart}{table}</figure>"
    )


# ---------------------------------------------------------------- targets against actuals


def _target_text(row: TargetRow) -> str:
    p = row.progress
    unit = p.target.unit
    goal = f"{num(p.target.value)}{unit}"
    if p.target.recurrence == Recurrence.by_end and p.target.period_end_year:
        goal += f"（至{p.target.period_end_year}年）"
    if p.actual is None:
        return f"目标 {goal} · 无法计算"
    ratio = "—" if p.ratio is None else f"{(p.ratio * 100).quantize(Decimal(1))}%"
    return f"实际 {num(p.actual)} / 目标 {goal} · {ratio}"


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
            target = r.progress.target
            label = r.scope if r.chain_id is not None else f"{r.scope}（全园区）"
            if counts[r.scope] > 1:
                label += f" · #{target.id}"
            bullets.append(
                svg.Bullet(
                    label=label,
                    target=Decimal(target.value),
                    actual=r.progress.actual,
                    text=_target_text(r),
                    key=f"target-{target.id}",
                )
            )
        chart_id = f"targets-{metric.value}-{n}"
        title = f"{data.year}年 {zh}：目标与实际（{unit}）"
        recurrences = sorted({RECURRENCES[Recurrence(r.progress.target.recurrence)] for r in rows})
        table = _table(
            ["范围 Scope", "目标 Target", "实际 Actual", "完成率 Ratio", "计入的记录 Counted"],
            [
                [
                    b.label,
                    f"{num(r.progress.target.value)}{unit}",
                    "无法计算" if r.progress.actual is None else num(r.progress.actual),
                    "—" if r.progress.ratio is None else f"{num(r.progress.ratio * 100)}%",
                    "、".join(c["name"] for c in r.progress.counted) or "—",
                ]
                for b, r in zip(bullets, rows, strict=True)
            ],
            {1, 2, 3},
            note=f"计算规则 Rule: {RULES[metric]}",
        )
        figures.append(
            _figure(
                f"{escape(zh)}（{escape(unit)}）{en(english)}",
                "周期 " + " / ".join(recurrences),
                svg.bullet_chart(chart_id, title, bullets),
                table,
            )
        )
    if not figures:
        return f'<p class="empty">{data.year}年没有在期内的目标。No targets in period for {data.year}.</p>'
    return f'<div class="grid">{"".join(figures)}</div>'


# ---------------------------------------------------------------- investment


def _investment_text(group: dict[str, Any]) -> str:
    if group["project_count"] == 0:
        return "无项目"
    if group["projects_with_investment"] == 0:
        return f"未填投资额 · {group['project_count']} 个项目"
    text = f"{display(group['total_investment'])} · {group['project_count']} 个项目"
    if group["conflicting_projects"]:
        text += f"（{group['conflicting_projects']} 个冲突）"
    return text


def _investment_table(label: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    return _table(
        [label, "项目数 Projects", "有总投资 With figure", "总投资 Total", "冲突 Conflicts"],
        [
            [
                name,
                str(g["project_count"]),
                str(g["projects_with_investment"]),
                f"{display(g['total_investment'])}（{g['total_investment']} 元）",
                str(g["conflicting_projects"]),
            ]
            for name, g in rows
        ],
        {1, 2, 3, 4},
    )


def _empty_group(key: Any, label: str) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "project_count": 0,
        "projects_with_investment": 0,
        "total_investment": Decimal("0.00"),
        "conflicting_projects": 0,
    }


def investment_charts(data: DashboardData) -> str:
    found = {g["key"]: g for g in data.by_chain}
    chain_rows = [(c.name, found.get(c.id, _empty_group(c.id, c.name))) for c in data.chains]
    if None in found:
        chain_rows.append(("未分类 (no chain)", found[None]))
    by_chain = svg.bar_chart(
        "investment-by-chain",
        "按产业链的总投资 Investment by chain",
        [
            svg.Bar(name, g["total_investment"], _investment_text(g), key=f"chain-{g['key']}")
            for name, g in chain_rows
        ],
        CHAIN_COLOR,
    )
    staged = {g["key"]: g for g in data.by_stage}
    stage_rows = [
        (f"{zh} {stage.value}", staged.get(stage.value, _empty_group(stage.value, zh)))
        for stage, zh in STAGE_ZH.items()
    ]
    by_stage = svg.bar_chart(
        "investment-by-stage",
        "按阶段的总投资 Investment by stage",
        [
            svg.Bar(name, g["total_investment"], _investment_text(g), key=f"stage-{g['key']}")
            for name, g in stage_rows
        ],
        STAGE_COLOR,
    )
    return (
        '<div class="grid">'
        + _figure(
            f"按产业链 {en('By chain')}",
            "每个项目按其总投资计一次；条长为总投资。",
            by_chain,
            _investment_table("产业链 Chain", chain_rows),
        )
        + _figure(
            f"按阶段 {en('By stage')}",
            "签约及之后的阶段视为已落地；终止的项目不计入目标。",
            by_stage,
            _investment_table("阶段 Stage", stage_rows),
        )
        + "</div>"
    )


# ---------------------------------------------------------------- the panel and the page


def _kpi(value: str, label: str, more: str = "", warn: bool = False) -> str:
    extra = f'<span class="more">{escape(more)}</span>' if more else ""
    return (
        f'<div class="kpi{" warn" if warn else ""}"><span class="value">{escape(value)}</span>'
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
    projects = total(data.by_stage, "project_count")
    with_figure = total(data.by_stage, "projects_with_investment")
    conflicts = total(data.by_stage, "conflicting_projects")
    computable = [r for r in data.targets if r.progress.actual is not None]
    met = sum(1 for r in computable if r.progress.ratio is not None and r.progress.ratio >= 1)
    kpis = "".join(
        [
            _kpi(str(projects), f"项目 {en('Projects')}"),
            _kpi(
                display(total(data.by_stage, "total_investment")) or "0元",
                f"总投资 {en('Total investment')}",
                f"{with_figure} 个项目有投资额",
            ),
            _kpi(str(len(data.chains)), f"产业链 / 板块 {en('Chains')}"),
            _kpi(
                f"{met} / {len(computable)}",
                f"已完成目标 {en('Targets met')}",
                f"{data.year}年；另有 {len(data.targets) - len(computable)} 个无法由登记册计算",
            ),
            _kpi(
                str(conflicts),
                f"投资额冲突 {en('Conflicting figures')}",
                "项目的投资额记录相互矛盾" if conflicts else "",
                warn=bool(conflicts),
            ),
        ]
    )
    conflict_note = (
        f'<p class="note"><span class="warn-text">⚠ {conflicts} 个项目的投资额记录相互冲突</span>，'
        "两条记录都保留，每个项目只按其总投资计一次。</p>"
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
        "项目自签约起视为落地，终止的不计入。浅色长条为目标，深色为实际，竖线标出目标位置。</p>"
        f"{target_charts(data)}</section>"
        '<section aria-labelledby="h-investment">'
        f'<h2 id="h-investment">投资分布 {en("Investment")}</h2>'
        f'<p class="hint">金额为各项目总投资之和，按 亿元 / 万元 显示。</p>{conflict_note}'
        f"{investment_charts(data)}"
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
