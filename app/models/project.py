from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, StrictBool, computed_field
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Index, String
from sqlmodel import Field

from app.db_types import ExactDecimal
from app.models.common import (
    Code,
    CreateModel,
    DecimalString,
    Name,
    RecordColumns,
    RecordPublic,
    Ref,
    Year,
)
from app.models.investment import InvestmentKind
from app.models.provenance import Provenance
from app.money import display


class Stage(StrEnum):
    """planning 谋划, negotiating 在谈, signed 签约, under_construction 在建, completed 竣工,
    operating 投产, cancelled 终止"""

    planning = "planning"
    negotiating = "negotiating"
    signed = "signed"
    under_construction = "under_construction"
    completed = "completed"
    operating = "operating"
    cancelled = "cancelled"


# The stages' Chinese names: exports and imports write them, the dashboard shows them.
STAGE_ZH: dict[Stage, str] = {
    Stage.planning: "谋划",
    Stage.negotiating: "在谈",
    Stage.signed: "签约",
    Stage.under_construction: "在建",
    Stage.completed: "竣工",
    Stage.operating: "投产",
    Stage.cancelled: "终止",
}

# A project has landed (落地) once signed, and stays landed unless cancelled.
LANDED_STAGES = (Stage.signed, Stage.under_construction, Stage.completed, Stage.operating)


class ProjectBase(Provenance):
    park_id: Ref = Field(
        foreign_key="park.id",
        index=True,
        description="所属园区编号 (park id)",
        schema_extra={"examples": [1]},
    )
    chain_id: Ref | None = Field(
        default=None,
        foreign_key="chain.id",
        index=True,
        description="所属产业链编号；空表示未归入产业链 (chain id)",
        schema_extra={"examples": [5]},
    )
    enterprise_id: Ref | None = Field(
        default=None,
        foreign_key="enterprise.id",
        index=True,
        description="所属企业编号；运营主体未知时为空 (enterprise id)",
        schema_extra={"examples": [None, 1]},
    )
    code: Code | None = Field(
        default=None,
        sa_type=String(64),
        unique=True,
        description="项目代码（如发改委项目代码）；可空，全局唯一 (project code)",
    )
    name: Name = Field(description="项目名称", schema_extra={"examples": ["鲁南大数据中心"]})
    stage: Stage | None = Field(
        default=None,
        sa_type=String(20),
        index=True,
        description=(
            "阶段: planning 谋划 / negotiating 在谈 / signed 签约 / under_construction 在建 / "
            "completed 竣工 / operating 投产 / cancelled 终止；null 未知 (null = unknown)"
        ),
        schema_extra={"examples": ["operating"]},
    )
    is_key: StrictBool | None = Field(
        default=None,
        index=True,
        description=(
            "重点项目，计入 key_projects「每年100个重点项目」目标：true 是 / false 否 / null 未知，"
            "默认未知 (key project; null = unknown)"
        ),
        schema_extra={"examples": [None, True]},
    )
    year: Year | None = Field(
        default=None,
        index=True,
        description="项目年度：按此年计入当年目标；未知为空 (project year)",
        schema_extra={"examples": [2021]},
    )


class Project(ProjectBase, RecordColumns, table=True):
    __tablename__ = "project"
    # The list's busiest shape: a stage or a chain, sorted by total investment, paged by keyset
    # (the sort's tie-break is id, in the same direction; see records._parse_sort).
    __table_args__ = (
        Index("ix_project_total_investment_id", "total_investment", "id"),
        Index("ix_project_stage_total_investment_id", "stage", "total_investment", "id"),
        Index("ix_project_chain_id_total_investment_id", "chain_id", "total_investment", "id"),
        # Sorting the whole list by name or creation time: an ordered scan instead of a sort.
        Index("ix_project_name_id", "name", "id"),
        Index("ix_project_created_at_id", "created_at", "id"),
    )

    total_investment: Decimal | None = Field(default=None, sa_type=ExactDecimal(18, 2))
    investment_conflict: bool = Field(default=False)
    # When the records disagree: each figure as `InvestmentFigure` writes it (derived).
    investment_figures: list[dict[str, Any]] | None = Field(
        default=None,
        sa_type=JSON(none_as_null=True),  # None is SQL NULL, never JSON 'null'
    )


class InvestmentFigure(BaseModel):
    """One investment record's figure for the project's total, shown when the figures disagree."""

    investment_id: int = PydanticField(description="投资额记录编号 (investment id)", examples=[1])
    kind: InvestmentKind = PydanticField(
        description="类型: planned_total 计划总投资 / reported 报道", examples=["planned_total"]
    )
    amount: DecimalString = PydanticField(description="金额（元）", examples=["3000000000.00"])
    amount_display: str = PydanticField(description="显示形式", examples=["30亿元"])
    as_of_date: date | None = PydanticField(description="截至日期；未知为空")
    source_id: int | None = PydanticField(description="来源编号；未知为空", examples=[1])
    headline: bool = PydanticField(
        description="是否为总投资 total_investment 所取的一条（按总投资规则）"
    )


def range_display(figures: list[Any] | None) -> str | None:
    """Disagreeing figures as staff read them: `20亿元–30亿元，2条记录不一致` (None without any).
    A figure is a stored dict (the plain path, exports) or an `InvestmentFigure`."""
    if not figures:
        return None
    amounts = [Decimal(f["amount"] if isinstance(f, dict) else f.amount) for f in figures]
    return f"{display(min(amounts))}–{display(max(amounts))}，{len(amounts)}条记录不一致"


class ProjectCreate(ProjectBase, CreateModel):
    pass


class ProjectPublic(ProjectBase, RecordPublic):
    total_investment: DecimalString | None = Field(
        default=None,
        description=(
            "总投资（元，只读，由投资记录推得）: 取 planned_total 计划总投资，没有则取 reported 报道额；"
            "同类多条时取 as_of_date 最新者（无日期视为最早），再取最后录入者"
        ),
        schema_extra={"examples": ["3000000000.00"]},
    )

    @computed_field(description="总投资显示形式", examples=["30亿元"])  # type: ignore[prop-decorator]
    @property
    def total_investment_display(self) -> str | None:
        return display(self.total_investment)

    investment_conflict: bool = Field(
        default=False,
        description="投资额冲突：计划总投资与报道额记录的金额不一致 (records disagree)",
        schema_extra={"examples": [True]},
    )
    investment_figures: list[InvestmentFigure] | None = Field(
        default=None,
        description=(
            "投资额冲突时，各条记录的金额与来源（只读）；headline 标出总投资所取的一条。不冲突时为空 "
            "(each disagreeing figure with its source; null when they agree)"
        ),
    )

    @computed_field(  # type: ignore[prop-decorator]
        description="投资额冲突时的范围，如「20亿元–30亿元，2条记录不一致」；不冲突时为空",
        examples=["20亿元–30亿元，2条记录不一致"],
    )
    @property
    def total_investment_range_display(self) -> str | None:
        return range_display(self.investment_figures)
