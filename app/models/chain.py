from enum import StrEnum

from sqlalchemy import String, UniqueConstraint
from sqlmodel import Field

from app.models.common import Code, CreateModel, Name, RecordColumns, RecordPublic, Ref
from app.models.provenance import Provenance


class ChainRole(StrEnum):
    """leading 首位产业, pillar 主导产业, sector 产业板块, other 其他"""

    leading = "leading"
    pillar = "pillar"
    sector = "sector"
    other = "other"


class ChainBase(Provenance):
    park_id: Ref = Field(
        foreign_key="park.id",
        index=True,
        description="所属园区编号 (park id)",
        schema_extra={"examples": [1]},
    )
    code: Code = Field(
        sa_type=String(64), description="代码，园区内唯一", schema_extra={"examples": ["lithium"]}
    )
    name: Name = Field(description="产业链名称", schema_extra={"examples": ["锂电"]})
    name_en: Name | None = Field(
        default=None, description="英文名", schema_extra={"examples": ["Lithium battery"]}
    )
    role: ChainRole = Field(
        sa_type=String(20),
        description="定位: leading 首位产业 / pillar 主导产业 / sector 产业板块 / other 其他",
        schema_extra={"examples": ["leading"]},
    )


class Chain(ChainBase, RecordColumns, table=True):
    __tablename__ = "chain"
    __table_args__ = (UniqueConstraint("park_id", "code"),)


class ChainCreate(ChainBase, CreateModel):
    pass


class ChainPublic(ChainBase, RecordPublic):
    pass
