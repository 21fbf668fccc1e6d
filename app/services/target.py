"""Target progress: actuals computed from the registry, never typed in, and honest about what
the registry does not know.

Each record the rule could apply to (in the target's park, of its chain or of no chain, of the
year or of unknown year) is decided in three-valued logic: it counts when every condition of the
rule is known to hold, it is excluded when one is known to fail, and otherwise it is skipped,
with the unknown facts as reasons (no year, no chain, an unknown yes/no fact or stage, no
amount, figures that disagree across the threshold). The state says what the figure is worth:
`complete` (nothing skipped), `partial` (the actual and ratio are lower bounds, `actual_upper`
the upper), `no_data` (no record of the year decided either way: no actual, no ratio, never
"0%"), `not_computable`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.models.enterprise import Enterprise
from app.models.project import LANDED_STAGES, Project, Stage
from app.models.target import Metric, Target

OVER_100M = Decimal(100_000_000)
# Records of one reason listed by name (all are counted).
LISTED = 50


class Status(StrEnum):
    """complete 完整, partial 部分（有记录缺数据）, no_data 数据不足, not_computable 无法计算"""

    complete = "complete"
    partial = "partial"
    no_data = "no_data"
    not_computable = "not_computable"


STATUS_ZH = {
    Status.complete: "完整",
    Status.partial: "部分数据",
    Status.no_data: "数据不足",
    Status.not_computable: "无法计算",
}

# Why a record the rule could apply to was left out.
REASONS: dict[str, str] = {
    "no_chain": "未归入产业链",
    "no_year": "未填项目年度",
    "no_landed_year": "未填落地年份",
    "unknown_stage": "阶段未知",
    "unknown_key": "是否重点项目未知",
    "unknown_leading": "是否头部企业未知",
    "unknown_high_tech": "是否高新技术企业未知",
    "unknown_above_scale": "是否规上企业未知",
    "no_amount": "未填投资额",
    "conflicting_amount": "投资额记录不一致，跨过1亿元",
}

RULES: dict[Metric, str] = {
    Metric.key_projects: (
        "重点项目：园区（或产业链）内 is_key 为真、year 为该年、阶段不是 cancelled 终止的项目数。"
        "年度、是否重点或阶段未知而可能计入的项目不计入，列为跳过（skipped）并注明原因。"
        " Key projects of the park (or chain) in that year, any stage but cancelled; projects whose"
        " year, key flag or stage is unknown are skipped, with the reason."
    ),
    Metric.leading_enterprises: (
        "头部企业：产业链（或园区）内 is_leading 为真、landed_year 落地年份为该年的企业数；"
        "未知的列为跳过。 Leading enterprises that landed in that year; unknowns are skipped."
    ),
    Metric.projects_over_100m: (
        "过亿元项目：产业链（或园区）内 year 为该年、已落地（signed 签约及之后，不含 cancelled）、"
        "总投资 total_investment ≥ 100,000,000 元的项目数；年度、阶段、投资额未知，或投资额记录不一致"
        "而跨过1亿元的，列为跳过。 Landed projects (signed or later, never cancelled) of that year with"
        " a headline of at least 1亿元; unknown year, stage or amount, or figures on both sides of"
        " 1亿元, are skipped."
    ),
    Metric.high_tech_enterprises: (
        "高新技术企业：当前 is_high_tech 为真的企业数（登记册不记录认定年份）；未知的列为跳过。"
        " Enterprises flagged high-tech now (no certification year is kept); unknowns are skipped."
    ),
    Metric.above_scale_enterprises: (
        "规上企业：当前 is_above_scale 为真的企业数；未知的列为跳过。"
        " Enterprises flagged above-scale now; unknowns are skipped."
    ),
    Metric.output_scale: (
        "产业规模不在登记册中，无法计算。 Industry scale is not recorded in the registry."
    ),
    Metric.other: "其他指标无法从登记册计算。 Not computable from the registry.",
}


@dataclass
class Skipped:
    reason: str
    records: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0

    @property
    def label(self) -> str:
        return REASONS[self.reason]


@dataclass
class Progress:
    target: Target
    year: int
    rule: str
    status: Status
    counted: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, Skipped] = field(default_factory=dict)
    records_skipped: int = 0
    records_excluded: int = 0

    @property
    def computable(self) -> bool:
        return self.status != Status.not_computable

    @property
    def actual(self) -> Decimal | None:
        """The records counted; a lower bound when `partial`, none when nothing is known."""
        if self.status in (Status.no_data, Status.not_computable):
            return None
        return Decimal(len(self.counted))

    @property
    def actual_upper(self) -> Decimal | None:
        """What the actual could be at most, if every skipped record turned out to count."""
        if self.status != Status.partial:
            return self.actual
        return Decimal(len(self.counted) + self.records_skipped)

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
    """The park's live records; for a chain's target, those of the chain and those of no chain
    (which might belong to it: skipped, never silently left out)."""
    conditions = [model.park_id == target.park_id, model.deleted_at.is_(None)]
    if target.chain_id is not None:
        conditions.append(or_(model.chain_id == target.chain_id, model.chain_id.is_(None)))
    return conditions


# A condition of a rule, on one row and year: True (holds), False (fails), or the reason it is
# unknown (a key of REASONS).
Condition = Callable[[Any, int], bool | str]


def _known(value: bool | None, reason: str) -> bool | str:
    return reason if value is None else value


def _year(column: str, reason: str) -> Condition:
    return lambda row, year: _known(
        None if getattr(row, column) is None else getattr(row, column) == year, reason
    )


def _flag(column: str, reason: str) -> Condition:
    return lambda row, year: _known(getattr(row, column), reason)


def _in_chain(row: Any, year: int) -> bool | str:
    return "no_chain" if row.chain_id is None else True  # the query took only this chain's


def _not_cancelled(row: Any, year: int) -> bool | str:
    return "unknown_stage" if row.stage is None else row.stage != Stage.cancelled


def _landed(row: Any, year: int) -> bool | str:
    return "unknown_stage" if row.stage is None else row.stage in LANDED_STAGES


def _over_100m(row: Any, year: int) -> bool | str:
    if row.total_investment is None:
        return "no_amount"
    if row.investment_figures:  # the records disagree: decided only if all lie on one side
        sides = {Decimal(f["amount"]) >= OVER_100M for f in row.investment_figures}
        if len(sides) > 1:
            return "conflicting_amount"
    return bool(row.total_investment >= OVER_100M)


@dataclass(frozen=True)
class Rule:
    model: Any
    resource: str
    year_column: str | None  # the records of the year (or of unknown year) are examined
    conditions: tuple[Condition, ...]
    columns: tuple[str, ...]


RULE_OF: dict[Metric, Rule] = {
    Metric.key_projects: Rule(
        Project,
        "projects",
        "year",
        (_year("year", "no_year"), _flag("is_key", "unknown_key"), _not_cancelled),
        ("year", "is_key", "stage"),
    ),
    Metric.projects_over_100m: Rule(
        Project,
        "projects",
        "year",
        (_year("year", "no_year"), _landed, _over_100m),
        ("year", "stage", "total_investment", "investment_figures"),
    ),
    Metric.leading_enterprises: Rule(
        Enterprise,
        "enterprises",
        "landed_year",
        (_year("landed_year", "no_landed_year"), _flag("is_leading", "unknown_leading")),
        ("landed_year", "is_leading"),
    ),
    Metric.high_tech_enterprises: Rule(
        Enterprise,
        "enterprises",
        None,
        (_flag("is_high_tech", "unknown_high_tech"),),
        ("is_high_tech",),
    ),
    Metric.above_scale_enterprises: Rule(
        Enterprise,
        "enterprises",
        None,
        (_flag("is_above_scale", "unknown_above_scale"),),
        ("is_above_scale",),
    ),
}


async def progress(session: AsyncSession, target: Target, year: int) -> Progress:
    metric = Metric(target.metric)
    rule = RULE_OF.get(metric)
    if rule is None:
        return Progress(target=target, year=year, rule=RULES[metric], status=Status.not_computable)
    model = rule.model
    columns = (*rule.columns, "chain_id")
    stmt = select(col(model.id), col(model.name), *(getattr(model, c) for c in columns)).where(
        *_scope(model, target)
    )
    if rule.year_column is not None:
        year_of = getattr(model, rule.year_column)
        stmt = stmt.where(or_(year_of == year, year_of.is_(None)))
    rows = (await session.execute(stmt.order_by(col(model.id)))).all()

    result = Progress(target=target, year=year, rule=RULES[metric], status=Status.complete)
    conditions = (*rule.conditions, _in_chain) if target.chain_id is not None else rule.conditions
    evidence = 0  # records decided either way that are known to be of the year (and chain)
    for row in rows:
        outcomes = [test(row, year) for test in conditions]
        entry = {"resource": rule.resource, "id": row.id, "name": row.name}
        if any(value is False for value in outcomes):
            result.records_excluded += 1
            # One of unknown year (or of no chain, for a chain's target) says nothing about
            # this year's figure, however it is ruled out.
            of_year = rule.year_column is None or getattr(row, rule.year_column) is not None
            if of_year and (target.chain_id is None or row.chain_id is not None):
                evidence += 1
        elif all(value is True for value in outcomes):
            result.counted.append(entry)
            evidence += 1
        else:
            result.records_skipped += 1
            for reason in outcomes:
                if isinstance(reason, str):
                    skipped = result.skipped.setdefault(reason, Skipped(reason))
                    skipped.count += 1
                    if len(skipped.records) < LISTED:
                        skipped.records.append(entry)
    if not evidence:
        result.status = Status.no_data
    elif result.records_skipped:
        result.status = Status.partial
    return result


async def chain_targets(session: AsyncSession, chain_id: int) -> list[Target]:
    stmt = (
        select(Target)
        .where(col(Target.chain_id) == chain_id, col(Target.deleted_at).is_(None))
        .order_by(col(Target.id))
    )
    return list(await session.scalars(stmt))
