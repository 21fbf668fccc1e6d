from decimal import Decimal
from enum import StrEnum

from pydantic import StrictBool, computed_field
from sqlalchemy import Index, String
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
    stage: Stage = Field(
        sa_type=String(20),
        index=True,
        description=(
            "阶段: planning 谋划 / negotiating 在谈 / signed 签约 / under_construction 在建 / "
            "completed 竣工 / operating 投产 / cancelled 终止"
        ),
        schema_extra={"examples": ["operating"]},
    )
    is_key: StrictBool = Field(
        default=False,
        index=True,
        description="重点项目：计入 key_projects「每年100个重点项目」目标 (key project)",
        schema_extra={"examples": [False]},
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
