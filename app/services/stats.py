"""Investment statistics: counts and exact sums of headline investment."""

from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import context
from app.models.chain import Chain
from app.models.project import Project


class GroupBy(StrEnum):
    chain = "chain"
    stage = "stage"
    year = "year"


async def investment(
    session: AsyncSession, group_by: GroupBy, park_id: int | None = None
) -> list[dict[str, Any]]:
    key: Any = {
        GroupBy.chain: Project.chain_id,
        GroupBy.stage: Project.stage,
        GroupBy.year: Project.year,
    }[group_by]
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
        .where(col(Project.deleted_at).is_(None))
        .group_by(key)
        .order_by(key.asc().nulls_last())
    )
    if park_id is not None:
        stmt = stmt.where(col(Project.park_id) == park_id)
    if (parks := context.parks.get()) is not None:  # a park-scoped caller: its parks only
        stmt = stmt.where(col(Project.park_id).in_(sorted(parks)))
    rows = (await session.execute(stmt)).all()
    labels: dict[Any, str] = {}
    if group_by == GroupBy.chain:
        ids = [r.key for r in rows if r.key is not None]
        chains = select(col(Chain.id), col(Chain.name)).where(col(Chain.id).in_(ids))
        if (parks := context.parks.get()) is not None:
            chains = chains.where(col(Chain.park_id).in_(sorted(parks)))
        found = await session.execute(chains)
        labels = {chain_id: name for chain_id, name in found}
    return [
        {
            "key": r.key,
            "label": labels.get(r.key, "未分类") if group_by == GroupBy.chain else r.key,
            "project_count": r.projects,
            "projects_with_investment": r.with_investment,
            "total_investment": r.total if r.total is not None else Decimal("0.00"),
            "conflicting_projects": int(r.conflicting or 0),
        }
        for r in rows
    ]
