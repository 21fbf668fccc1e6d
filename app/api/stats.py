"""Investment statistics by chain, stage or year."""

from typing import Annotated, Any, Literal

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
    projects_with_investment: int = Field(description="有总投资的项目数（计入合计）")
    projects_without_investment: int = Field(
        description="未填投资额的项目数（不计入合计，合计因此偏低）"
    )
    status: Literal["complete", "partial", "no_data"] = Field(
        description=(
            "合计的数据状态: complete 每个项目都有投资额 / partial 部分项目未填 / "
            "no_data 都未填（total_investment 为空，不是 0 元）"
        ),
        examples=["partial"],
    )
    total_investment: DecimalString | None = Field(
        description="总投资合计（元，精确）：只合计有投资额的项目；都未填时为空",
        examples=["3000000000.00"],
    )
    total_investment_low: DecimalString | None = Field(
        description="有投资额冲突时合计的下限：冲突项目取其最低一笔；无冲突为空",
        examples=["2000000000.00"],
    )
    total_investment_high: DecimalString | None = Field(
        description="有投资额冲突时合计的上限：冲突项目取其最高一笔；无冲突为空",
        examples=["3000000000.00"],
    )
    conflicting_projects: int = Field(
        description="投资额冲突的项目数（合计按每个项目的总投资计一次，范围见 low / high）"
    )

    @computed_field(description="显示形式；都未填时为空", examples=["30亿元"])  # type: ignore[prop-decorator]
    @property
    def total_investment_display(self) -> str | None:
        return display(self.total_investment)

    @computed_field(  # type: ignore[prop-decorator]
        description="有冲突时合计的范围，如「20亿元–30亿元」；无冲突为空",
        examples=["20亿元–30亿元"],
    )
    @property
    def total_investment_range_display(self) -> str | None:
        if self.total_investment_low is None or self.total_investment_high is None:
            return None
        return f"{display(self.total_investment_low)}–{display(self.total_investment_high)}"


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
