from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, StrictBool
from sqlalchemy import Index, String
from sqlmodel import Field

from app import credit_code
from app.models.common import CreateModel, Name, RecordColumns, RecordPublic, Ref, Year
from app.models.provenance import Provenance

CreditCode = Annotated[str, AfterValidator(credit_code.validate)]


def _blank_is_none(value: object) -> object:
    """An empty credit code (as a form or a spreadsheet sends it) is no code, not a bad one."""
    return None if isinstance(value, str) and not value.strip() else value


class EnterpriseBase(Provenance):
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
        description="所属产业链编号 (chain id)",
        schema_extra={"examples": [4]},
    )
    name: Name = Field(
        description="企业名称", schema_extra={"examples": ["交大智邦（枣庄）数字科技有限公司"]}
    )
    credit_code: Annotated[CreditCode | None, BeforeValidator(_blank_is_none)] = Field(
        default=None,
        sa_type=String(18),
        unique=True,
        description=(
            "统一社会信用代码：18 位，按 GB 32100 校验位校验；不知道就留空，切勿编造。"
            "第二个示例只演示格式 (unified social credit code; null when unknown)"
        ),
        schema_extra={"examples": [None, "91350100M000100Y43"]},
    )
    is_high_tech: StrictBool | None = Field(
        default=None,
        description=(
            "高新技术企业（当前是否认定）：true 是 / false 否 / null 未知，默认未知 "
            "(certified high-tech enterprise; null = unknown)"
        ),
        schema_extra={"examples": [None, True]},
    )
    is_above_scale: StrictBool | None = Field(
        default=None,
        description=(
            "规上企业（规模以上工业企业）：true 是 / false 否 / null 未知，默认未知 "
            "(above-scale industrial enterprise; null = unknown)"
        ),
        schema_extra={"examples": [None, False]},
    )
    is_leading: StrictBool | None = Field(
        default=None,
        description=(
            "头部企业 / 链主企业，计入「每年招引落地头部企业」目标：true 是 / false 否 / null 未知，"
            "默认未知 (leading enterprise; null = unknown)"
        ),
        schema_extra={"examples": [None, True]},
    )
    landed_year: Year | None = Field(
        default=None,
        description="落地年份：头部企业按此年计入当年目标；未知为空 (year the enterprise landed)",
    )


class Enterprise(EnterpriseBase, RecordColumns, table=True):
    __tablename__ = "enterprise"
    __table_args__ = (Index("ix_enterprise_name_id", "name", "id"),)


class EnterpriseCreate(EnterpriseBase, CreateModel):
    pass


class EnterprisePublic(EnterpriseBase, RecordPublic):
    pass
