"""Investment statistics: counts and exact sums of headline investment, saying what they
counted: projects without an amount are counted apart (a group with none has no total, never
"0元"), and projects whose records disagree widen the total into a range."""

from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import context
from app.models.chain import Chain
from app.models.project import Project


class GroupBy(StrEnum):
    """chain 按产业链, stage 按项目阶段, year 按年度"""

    chain = "chain"
    stage = "stage"
    year = "year"


# The label of the group whose key is unknown.
UNKNOWN_LABEL = {GroupBy.stage: "阶段未知", GroupBy.year: "未填年度"}


async def investment(
    session: AsyncSession, group_by: GroupBy, park_id: int | None = None
) -> list[dict[str, Any]]:
    key: Any = {
        GroupBy.chain: Project.chain_id,
        GroupBy.stage: Project.stage,
        GroupBy.year: Project.year,
    }[group_by]
    where: list[ColumnElement[bool]] = [col(Project.deleted_at).is_(None)]
    if park_id is not None:
        where.append(col(Project.park_id) == park_id)
    if (parks := context.parks.get()) is not None:  # a park-scoped caller: its parks only
        where.append(col(Project.park_id).in_(sorted(parks)))
    stmt = (
        select(
            key.label("key"),
            func.count(col(Project.id)).label("projects"),
            func.count(col(Project.total_investment)).label("with_investment"),
            func.sum(col(Project.total_investment)).label("total"),
            func.sum(case((col(Project.investment_conflict).is_(True), 1), else_=0)).label(
                "conflicting"
            ),
        )
        .where(*where)
        .group_by(key)
        .order_by(key.asc().nulls_last())
    )
    rows = (await session.execute(stmt)).all()
    ranges = await _conflict_ranges(session, where, key)
    labels: dict[Any, str] = {}
    if group_by == GroupBy.chain:
        ids = [r.key for r in rows if r.key is not None]
        chains = select(col(Chain.id), col(Chain.name)).where(col(Chain.id).in_(ids))
        if (parks := context.parks.get()) is not None:
            chains = chains.where(col(Chain.park_id).in_(sorted(parks)))
        found = await session.execute(chains)
        labels = {chain_id: name for chain_id, name in found}
    return [
        group(
            r.key,
            labels.get(r.key, "未分类")
            if group_by == GroupBy.chain
            else r.key
            if r.key is not None
            else UNKNOWN_LABEL[group_by],
            r.projects,
            r.with_investment,
            r.total,
            int(r.conflicting or 0),
            ranges.get(r.key),
        )
        for r in rows
    ]


def group(
    key: Any,
    label: Any,
    projects: int,
    with_investment: int,
    total: Decimal | None,
    conflicting: int = 0,
    spread: tuple[Decimal, Decimal] | None = None,
) -> dict[str, Any]:
    """One group's figures: what was counted, what was not, and the state of its total."""
    low = high = total
    if spread is not None and total is not None:
        low, high = total - spread[0], total + spread[1]
    return {
        "key": key,
        "label": label,
        "project_count": projects,
        "projects_with_investment": with_investment,
        "projects_without_investment": projects - with_investment,
        "status": (
            "no_data"
            if with_investment == 0
            else "partial"
            if with_investment < projects
            else "complete"
        ),
        "total_investment": total,
        "total_investment_low": low if conflicting else None,
        "total_investment_high": high if conflicting else None,
        "conflicting_projects": conflicting,
    }


async def _conflict_ranges(
    session: AsyncSession, where: list[Any], key: Any
) -> dict[Any, tuple[Decimal, Decimal]]:
    """Per group, how far its total could lie below and above, by the projects whose figures
    disagree (each between its lowest and highest figure, the headline in between)."""
    stmt = select(
        key.label("key"), col(Project.total_investment), col(Project.investment_figures)
    ).where(*where, col(Project.investment_conflict).is_(True))
    spreads: dict[Any, tuple[Decimal, Decimal]] = {}
    for row in (await session.execute(stmt)).all():
        if row.total_investment is None or not row.investment_figures:
            continue
        amounts = [Decimal(f["amount"]) for f in row.investment_figures]
        below, above = spreads.get(row.key, (Decimal(0), Decimal(0)))
        spreads[row.key] = (
            below + row.total_investment - min(amounts),
            above + max(amounts) - row.total_investment,
        )
    return spreads
