from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlmodel import Field, SQLModel

from app.db_types import UTCDateTime


class Change(SQLModel, table=True):
    """One row per create, update or delete, written in the same transaction as the change."""

    __tablename__ = "change"
    __table_args__ = (Index(None, "resource", "record_id"),)

    # BIGINT on PostgreSQL; SQLite only autoincrements a column declared INTEGER.
    seq: int | None = Field(
        default=None, sa_type=BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )
    resource: str = Field(sa_type=String(32))
    record_id: int
    external_id: str | None = Field(default=None, max_length=100)
    op: str = Field(sa_type=String(10))
    version: int
    changed_at: datetime = Field(sa_type=UTCDateTime)
    actor: str | None = Field(default=None, max_length=200)
    request_id: str | None = Field(default=None, max_length=100)
    data: dict[str, Any] | None = Field(default=None, sa_type=JSON)
