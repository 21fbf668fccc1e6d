from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from app.models.common import CreateModel, IsoDate, Name, RecordColumns, RecordPublic, Text


class SourceBase(SQLModel):
    title: Name = Field(
        description="标题 (title)",
        schema_extra={"examples": ["枣庄高新区将率先突破攻坚，领跑“工业强市”"]},
    )
    publisher: Name | None = Field(
        default=None,
        description="发布者 (publisher)",
        schema_extra={"examples": ["齐鲁晚报·齐鲁壹点"]},
    )
    authors: list[Name] = Field(
        default_factory=list,
        sa_type=JSON,
        description="作者 (authors)",
        schema_extra={"examples": [["赵健健", "秦政", "姚冲"]]},
    )
    published_date: IsoDate | None = Field(default=None, description="发布日期 (publication date)")
    url: Text | None = Field(default=None, description="链接 (URL)")
    note: Text | None = Field(default=None, description="备注 (note)")


class Source(SourceBase, RecordColumns, table=True):
    __tablename__ = "source"


class SourceCreate(SourceBase, CreateModel):
    pass


class SourcePublic(SourceBase, RecordPublic):
    pass
