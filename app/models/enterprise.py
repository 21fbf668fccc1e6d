from typing import Annotated

from pydantic import AfterValidator
from sqlalchemy import String
from sqlmodel import Field

from app import credit_code
from app.models.common import CreateModel, Name, RecordColumns, RecordPublic, Year
from app.models.provenance import Provenance

CreditCode = Annotated[str, AfterValidator(credit_code.validate)]


class EnterpriseBase(Provenance):
    park_id: int = Field(foreign_key="park.id", index=True, description="所属园区编号")
    chain_id: int | None = Field(
        default=None, foreign_key="chain.id", index=True, description="所属产业链编号"
    )
    name: Name = Field(
        description="企业名称", schema_extra={"examples": ["交大智邦（枣庄）数字科技有限公司"]}
    )
    credit_code: CreditCode | None = Field(
        default=None,
        sa_type=String(18),
        unique=True,
        description="统一社会信用代码 (18 位，按 GB 32100 校验；可空)",
        schema_extra={"examples": ["91350100M000100Y43"]},
    )
    is_high_tech: bool = Field(default=False, description="高新技术企业")
    is_above_scale: bool = Field(default=False, description="规上企业")
    is_leading: bool = Field(default=False, description="头部企业 / 链主企业")
    landed_year: Year | None = Field(
        default=None, description="落地年份 (year the enterprise landed)"
    )


class Enterprise(EnterpriseBase, RecordColumns, table=True):
    __tablename__ = "enterprise"


class EnterpriseCreate(EnterpriseBase, CreateModel):
    pass


class EnterprisePublic(EnterpriseBase, RecordPublic):
    pass
