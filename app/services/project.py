"""Project rules: the headline investment and its conflict flag, derived from the records."""

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db_types import utcnow
from app.models.investment import Investment, InvestmentKind
from app.models.project import InvestmentFigure, Project
from app.money import display

# Records that each claim to state the project's total; annual plans and completed amounts
# measure something else and never conflict with them.
TOTAL_KINDS = (InvestmentKind.planned_total, InvestmentKind.reported)

HEADLINE_RULE = (
    "总投资 total_investment = 计划总投资 planned_total 记录的金额；没有 planned_total 时取报道额 reported。"
    "同类多条时取 as_of_date 最新的一条（无日期视为最早），日期相同取最后录入的一条。"
    "investment_conflict = 这两类记录中出现不止一个不同金额；冲突时各条记录都保留，"
    "项目的 investment_figures 列出每个金额及其来源（headline 标出总投资所取的一条），"
    "total_investment_range_display 给出范围。"
    " — Headline: the planned_total record, else the reported one; among several, the latest "
    "as_of_date (undated counts as oldest), then the last entered. Conflict: the planned_total "
    "and reported records state more than one distinct amount; then investment_figures lists each "
    "figure with its source (headline marks the one the total takes) and "
    "total_investment_range_display the range."
)


def headline_record(records: list[Investment]) -> Investment | None:
    """The record the headline total takes: a planned total, else a reported figure; among
    several, the latest as_of_date (undated counts as oldest), then the last entered."""
    for kind in TOTAL_KINDS:
        of_kind = [r for r in records if r.kind == kind]
        if of_kind:
            return max(of_kind, key=lambda r: (r.as_of_date or date.min, r.id or 0))
    return None


def derived(records: list[Investment]) -> tuple[Decimal | None, list[dict[str, Any]] | None]:
    """The headline total, and when the records claiming a total disagree, each of their
    figures as `InvestmentFigure` writes it (in the order of the headline rule's preference)."""
    claims = [r for r in records if r.kind in TOTAL_KINDS]
    best = headline_record(claims)
    if len({r.amount for r in claims}) < 2:
        return (best.amount if best else None), None
    order = sorted(
        claims,
        key=lambda r: (
            TOTAL_KINDS.index(r.kind),
            -(r.as_of_date or date.min).toordinal(),
            -(r.id or 0),
        ),
    )
    figures = [
        InvestmentFigure(
            investment_id=r.id or 0,
            kind=str(r.kind),
            amount=r.amount,
            amount_display=display(r.amount) or "",
            as_of_date=r.as_of_date,
            source_id=r.source_id,
            headline=r is best,
        ).model_dump(mode="json")
        for r in order
    ]
    assert best is not None
    return best.amount, figures


async def refresh_totals(session: AsyncSession, project_id: int) -> Project | None:
    """Recompute the project's derived figures; returns the project if they changed."""
    project = await session.scalar(
        select(Project).where(col(Project.id) == project_id).with_for_update()
    )
    if project is None:
        return None
    records = list(
        await session.scalars(
            select(Investment).where(
                col(Investment.project_id) == project_id, col(Investment.deleted_at).is_(None)
            )
        )
    )
    total, figures = derived(records)
    conflict = figures is not None
    now = (project.total_investment, project.investment_conflict, project.investment_figures)
    if now == (total, conflict, figures):
        return None
    project.total_investment = total
    project.investment_conflict = conflict
    project.investment_figures = figures
    project.version += 1
    project.updated_at = utcnow()
    await session.flush()
    return project
