"""Target progress: actuals computed from the registry, never typed in."""

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models.enterprise import Enterprise
from app.models.project import LANDED_STAGES, Project, Stage
from app.models.target import Metric, Target

OVER_100M = Decimal(100_000_000)

RULES: dict[Metric, str] = {
    Metric.key_projects: (
        "重点项目：园区（或产业链）内 is_key 为真、year 为该年、阶段不是 cancelled 终止的项目数。"
        " Key projects of the park (or chain) in that year, any stage but cancelled."
    ),
    Metric.leading_enterprises: (
        "头部企业：产业链（或园区）内 is_leading 为真、landed_year 落地年份为该年的企业数。"
        " Leading enterprises that landed in that year."
    ),
    Metric.projects_over_100m: (
        "过亿元项目：产业链（或园区）内 year 为该年、已落地（signed 签约及之后，不含 cancelled）、"
        "总投资 total_investment ≥ 100,000,000 元的项目数。"
        " Landed projects (signed or later, never cancelled) of that year with a headline of at least 1亿元."
    ),
    Metric.high_tech_enterprises: (
        "高新技术企业：当前 is_high_tech 为真的企业数（登记册不记录认定年份）。"
        " Enterprises flagged high-tech now (the registry keeps no certification year)."
    ),
    Metric.above_scale_enterprises: (
        "规上企业：当前 is_above_scale 为真的企业数。 Enterprises flagged above-scale now."
    ),
    Metric.output_scale: (
        "产业规模（产值）不在登记册中，无法计算。 Output is not recorded in the registry: not computable."
    ),
    Metric.other: "其他指标无法从登记册计算。 Not computable from the registry.",
}


@dataclass
class Progress:
    target: Target
    year: int
    rule: str
    computable: bool
    actual: Decimal | None = None
    counted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ratio(self) -> Decimal | None:
        if self.actual is None or not self.target.value:
            return None
        return (self.actual / self.target.value).quantize(Decimal("0.0001"))

    @property
    def in_period(self) -> bool:
        start, end = self.target.period_start_year, self.target.period_end_year
        return (start is None or self.year >= start) and (end is None or self.year <= end)


def _scope(model: Any, target: Target) -> list[ColumnElement[bool]]:
    conditions = [model.park_id == target.park_id, model.deleted_at.is_(None)]
    if target.chain_id is not None:
        conditions.append(model.chain_id == target.chain_id)
    return conditions


async def progress(session: AsyncSession, target: Target, year: int) -> Progress:
    metric = Metric(target.metric)
    result = Progress(target=target, year=year, rule=RULES[metric], computable=True)
    stmt: Any
    if metric == Metric.key_projects:
        stmt = select(col(Project.id), col(Project.name)).where(
            *_scope(Project, target),
            col(Project.is_key).is_(True),
            col(Project.year) == year,
            col(Project.stage) != Stage.cancelled,
        )
        kind = "projects"
    elif metric == Metric.projects_over_100m:
        stmt = select(col(Project.id), col(Project.name)).where(
            *_scope(Project, target),
            col(Project.year) == year,
            col(Project.stage).in_(LANDED_STAGES),
            col(Project.total_investment) >= OVER_100M,
        )
        kind = "projects"
    elif metric == Metric.leading_enterprises:
        stmt = select(col(Enterprise.id), col(Enterprise.name)).where(
            *_scope(Enterprise, target),
            col(Enterprise.is_leading).is_(True),
            col(Enterprise.landed_year) == year,
        )
        kind = "enterprises"
    elif metric in (Metric.high_tech_enterprises, Metric.above_scale_enterprises):
        flag = (
            col(Enterprise.is_high_tech)
            if metric == Metric.high_tech_enterprises
            else col(Enterprise.is_above_scale)
        )
        stmt = select(col(Enterprise.id), col(Enterprise.name)).where(
            *_scope(Enterprise, target), flag.is_(True)
        )
        kind = "enterprises"
    else:
        result.computable = False
        return result
    rows = (await session.execute(stmt.order_by("id"))).all()
    result.actual = Decimal(len(rows))
    result.counted = [{"resource": kind, "id": r.id, "name": r.name} for r in rows]
    return result


async def chain_targets(session: AsyncSession, chain_id: int) -> list[Target]:
    stmt = (
        select(Target)
        .where(col(Target.chain_id) == chain_id, col(Target.deleted_at).is_(None))
        .order_by(col(Target.id))
    )
    return list(await session.scalars(stmt))
