from decimal import Decimal
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field

from app.db_types import ExactDecimal
from app.models.common import (
    CreateModel,
    DecimalString,
    Name,
    RecordColumns,
    RecordPublic,
    Ref,
    Year,
)
from app.models.provenance import Provenance


class Metric(StrEnum):
    """key_projects 重点项目数, leading_enterprises 招引落地头部企业数,
    projects_over_100m 过亿元项目数, output_scale 产业规模, high_tech_enterprises 高新技术企业数,
    above_scale_enterprises 规上企业数, other 其他"""

    key_projects = "key_projects"
    leading_enterprises = "leading_enterprises"
    projects_over_100m = "projects_over_100m"
    output_scale = "output_scale"
    high_tech_enterprises = "high_tech_enterprises"
    above_scale_enterprises = "above_scale_enterprises"
    other = "other"


class Recurrence(StrEnum):
    """annual 每年, by_end 期末达到"""

    annual = "annual"
    by_end = "by_end"


class TargetBase(Provenance):
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
        description="所属产业链编号；园区级目标为空 (chain id; null for a park-level target)",
        schema_extra={"examples": [1]},
    )
    metric: Metric = Field(
        sa_type=String(40),
        description=(
            "指标: key_projects 重点项目 / leading_enterprises 头部企业 / projects_over_100m 过亿元项目 / "
            "output_scale 产业规模 / high_tech_enterprises 高新技术企业 / above_scale_enterprises 规上企业 / "
            "other 其他"
        ),
        schema_extra={"examples": ["projects_over_100m"]},
    )
    unit: Name = Field(description="单位", schema_extra={"examples": ["个"]})
    period_start_year: Year | None = Field(
        default=None, description="起始年份", schema_extra={"examples": [2021]}
    )
    period_end_year: Year | None = Field(
        default=None,
        description="截止年份；空表示未限定 (last year; null when open-ended)",
        schema_extra={"examples": [None, 2023]},
    )
    period_end_year_earliest: Year | None = Field(
        default=None,
        description=(
            "最早截止年份：来源只给出范围时（如「力争通过3—5年」）填范围的下限，period_end_year 为上限；"
            "截止年份确定时为空 (earliest end year when the source gives a range)"
        ),
        schema_extra={"examples": [None, 2023]},
    )
    recurrence: Recurrence = Field(
        sa_type=String(10),
        description="周期: annual 每年 / by_end 期末达到",
        schema_extra={"examples": ["annual"]},
    )


class Target(TargetBase, RecordColumns, table=True):
    __tablename__ = "target"

    value: Decimal = Field(sa_type=ExactDecimal(18, 2))


class TargetCreate(TargetBase, CreateModel):
    value: Decimal = Field(
        ge=0,
        max_digits=18,
        decimal_places=2,
        description="目标值",
        schema_extra={"examples": ["10"]},
    )


class TargetPublic(TargetBase, RecordPublic):
    value: DecimalString = Field(description="目标值", schema_extra={"examples": ["10.00"]})
