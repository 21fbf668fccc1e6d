from sqlalchemy import JSON, text
from sqlmodel import Field, SQLModel

from app.models.common import Inferred, Ref, Text


class Provenance(SQLModel):
    """Where a fact comes from: a source and the sentence that states it, and which of the
    record's fields that sentence does not state but were inferred or read into it, and why."""

    source_id: Ref | None = Field(
        default=None, foreign_key="source.id", index=True, description="来源编号 (source id)"
    )
    quote: Text | None = Field(default=None, description="来源原文引述 (verbatim quote)")
    note: Text | None = Field(default=None, description="备注 (note)")
    inferred: Inferred = Field(
        default_factory=dict,
        sa_type=JSON,
        sa_column_kwargs={"server_default": text("'{}'")},
        description=(
            "推断的字段：键为本资源可写的字段名，值为依据，如 "
            '`{"period_start_year": "文章未写年份，公开记录显示会议于2021年3月召开"}`。'
            "列在这里的字段不是来源直接写明的，而是推断或解读所得；未列出的字段为来源写明或录入者确认"
            "；PATCH 时整体替换 (fields that are inferences or readings, and why; replaced whole)"
        ),
        # No example value: one naming a field would be refused by every resource without it,
        # and Swagger's example bodies (`crud.model_example`) leave the field out.
    )
