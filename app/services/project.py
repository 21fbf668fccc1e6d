"""Project rules: the headline investment and its conflict flag, derived from the records."""

from datetime import date
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db_types import utcnow
from app.models.investment import Investment, InvestmentKind
from app.models.project import Project

# Records that each claim to state the project's total; annual plans and completed amounts
# measure something else and never conflict with them.
TOTAL_KINDS = (InvestmentKind.planned_total, InvestmentKind.reported)

HEADLINE_RULE = (
    "总投资 total_investment = 计划总投资 planned_total 记录的金额；没有 planned_total 时取报道额 reported。"
    "同类多条时取 as_of_date 最新的一条（无日期视为最早），日期相同取最后录入的一条。"
    "investment_conflict = 这两类记录中出现不止一个不同金额；冲突时两条记录都保留，"
    "可在 /projects/{id}/investments 查看。"
    " — Headline: the planned_total record, else the reported one; among several, the latest "
    "as_of_date (undated counts as oldest), then the last entered. Conflict: the planned_total "
    "and reported records state more than one distinct amount."
)


def headline(records: list[Investment]) -> tuple[Decimal | None, bool]:
    claims = [r for r in records if r.kind in TOTAL_KINDS]
    conflict = len({r.amount for r in claims}) > 1
    for kind in TOTAL_KINDS:
        of_kind = [r for r in claims if r.kind == kind]
        if of_kind:
            best = max(of_kind, key=lambda r: (r.as_of_date or date.min, r.id or 0))
            return best.amount, conflict
    return None, conflict


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
    total, conflict = headline(records)
    if (project.total_investment, project.investment_conflict) == (total, conflict):
        return None
    project.total_investment = total
    project.investment_conflict = conflict
    project.version += 1
    project.updated_at = utcnow()
    await session.flush()
    return project
