from decimal import Decimal
from enum import StrEnum

from pydantic import computed_field
from sqlalchemy import String
from sqlmodel import Field

from app.db_types import ExactDecimal
from app.models.common import (
    CreateModel,
    DecimalString,
    IsoDate,
    RecordColumns,
    RecordPublic,
    Ref,
)
from app.models.provenance import Provenance
from app.money import MoneyUnit, display


class InvestmentKind(StrEnum):
    """planned_total 计划总投资, annual_plan 年度计划, completed 已完成, reported 报道"""

    planned_total = "planned_total"
    annual_plan = "annual_plan"
    completed = "completed"
    reported = "reported"


class Currency(StrEnum):
    """CNY 人民币"""

    CNY = "CNY"


KIND_DOC = (
    "类型: planned_total 计划总投资 / annual_plan 年度计划 / completed 已完成 / reported 报道"
)


class InvestmentBase(Provenance):
    project_id: Ref = Field(
        foreign_key="project.id",
        index=True,
        description="所属项目编号 (project id)",
        schema_extra={"examples": [1]},
    )
    kind: InvestmentKind = Field(
        sa_type=String(20), description=KIND_DOC, schema_extra={"examples": ["planned_total"]}
    )
    currency: Currency = Field(
        default=Currency.CNY,
        sa_type=String(3),
        description="币种：目前仅 CNY 人民币 (currency; CNY only)",
        schema_extra={"examples": ["CNY"]},
    )
    as_of_date: IsoDate | None = Field(default=None, description="截至日期")


class Investment(InvestmentBase, RecordColumns, table=True):
    __tablename__ = "investment"

    amount: Decimal = Field(sa_type=ExactDecimal(18, 2))
    # Its project's park, kept with it (set on every write, moved with the project): what
    # park-scoped access filters on, as for every other record.
    park_id: int = Field(foreign_key="park.id", index=True)


AMOUNT_IN_DOC = '金额，按 unit 换算成元后须精确到分，不可为负；可写字符串或数字，如 "30"'


class InvestmentCreate(InvestmentBase, CreateModel):
    amount: Decimal = Field(description=AMOUNT_IN_DOC, schema_extra={"examples": ["30"]})
    unit: MoneyUnit = Field(
        default=MoneyUnit.YUAN,
        description="amount 的单位: 元 / 万元 / 亿元，默认 元；存储时一律换算成元 (unit of amount)",
        schema_extra={"examples": ["亿元"]},
    )


class InvestmentPublic(InvestmentBase, RecordPublic):
    amount: DecimalString = Field(
        description="金额（元）", schema_extra={"examples": ["3000000000.00"]}
    )
    park_id: int = Field(
        description="所属园区编号，随项目（只读）(the project's park)",
        schema_extra={"examples": [1]},
    )

    @computed_field(description="显示形式", examples=["30亿元"])  # type: ignore[prop-decorator]
    @property
    def amount_display(self) -> str | None:
        return display(self.amount)
