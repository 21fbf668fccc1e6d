from sqlmodel import Field, SQLModel

from app.models.common import Ref, Text


class Provenance(SQLModel):
    """Where a fact comes from: a source and the sentence that states it."""

    source_id: Ref | None = Field(
        default=None, foreign_key="source.id", index=True, description="来源编号 (source id)"
    )
    quote: Text | None = Field(default=None, description="来源原文引述 (verbatim quote)")
    note: Text | None = Field(default=None, description="备注，含推断说明 (note, e.g. inferences)")
