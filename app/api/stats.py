"""Investment statistics by chain, stage or year."""

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, computed_field

from app.api.deps import CanRead, ReadSession
from app.errors import responses
from app.models.common import MAX_ID, DecimalString
from app.money import display
from app.services import stats as stats_service
from app.services.project import HEADLINE_RULE
from app.services.stats import GroupBy

router = APIRouter()


class InvestmentGroup(BaseModel):
    key: Any = Field(description="分组键：产业链编号 / 阶段 / 年份；空表示未填写")
    label: Any = Field(description="分组名称", examples=["大数据"])
    project_count: int = Field(description="项目数")
    projects_with_investment: int = Field(description="有总投资的项目数")
    total_investment: DecimalString = Field(
        description="总投资合计（元，精确）", examples=["3000000000.00"]
    )
    conflicting_projects: int = Field(
        description="投资额冲突的项目数（每个项目只按其总投资计一次）"
    )

    @computed_field(description="显示形式", examples=["30亿元"])  # type: ignore[prop-decorator]
    @property
    def total_investment_display(self) -> str | None:
        return display(self.total_investment)


class InvestmentStats(BaseModel):
    group_by: GroupBy = Field(description="分组方式: chain 产业链 / stage 阶段 / year 年份")
    items: list[InvestmentGroup] = Field(description="每组一行；未填写的分组（空）排在最后")


@router.get(
    "/stats/investment",
    response_model=InvestmentStats,
    tags=["统计 Statistics"],
    summary="投资统计：按产业链、阶段或年份汇总",
    description="各组项目数与总投资精确合计；冲突项目只按其总投资计一次并单独计数。"
    + HEADLINE_RULE,
    operation_id="get_investment_stats",
    dependencies=[CanRead],
    responses=responses(422),
)
async def investment_stats(
    session: ReadSession,
    group_by: Annotated[GroupBy, Query(description="chain 产业链 / stage 阶段 / year 年份")],
    park_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="只统计某园区")] = None,
) -> InvestmentStats:
    rows = await stats_service.investment(session, group_by, park_id)
    return InvestmentStats(group_by=group_by, items=[InvestmentGroup(**r) for r in rows])
