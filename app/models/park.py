from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field

from app.models.common import CreateModel, Name, RecordColumns, RecordPublic, Text
from app.models.provenance import Provenance


class ParkLevel(StrEnum):
    """national 国家级, provincial 省级, municipal 市级, other 其他"""

    national = "national"
    provincial = "provincial"
    municipal = "municipal"
    other = "other"


class ParkBase(Provenance):
    name: Name = Field(
        sa_type=String(200),
        unique=True,
        description="园区名称",
        schema_extra={"examples": ["枣庄高新区"]},
    )
    level: ParkLevel = Field(
        sa_type=String(20),
        description="级别: national 国家级 / provincial 省级 / municipal 市级 / other 其他",
        schema_extra={"examples": ["national"]},
    )
    province: Name | None = Field(
        default=None, description="省份", schema_extra={"examples": ["山东省"]}
    )
    city: Name | None = Field(
        default=None, description="城市", schema_extra={"examples": ["枣庄市"]}
    )
    positioning: Text | None = Field(
        default=None,
        description="功能定位",
        schema_extra={"examples": ["全市高质量发展重要引擎、产城融合示范片区、中心城区发展高地"]},
    )


class Park(ParkBase, RecordColumns, table=True):
    __tablename__ = "park"


class ParkCreate(ParkBase, CreateModel):
    pass


class ParkPublic(ParkBase, RecordPublic):
    pass
