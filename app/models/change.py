from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PydanticField
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
    # The record's park after the write (none for sources, which every park shares), and the
    # one it left, when the write moved it: a park-scoped reader sees that as a deletion.
    park_id: int | None = Field(default=None)
    previous_park_id: int | None = Field(default=None)
    data: dict[str, Any] | None = Field(default=None, sa_type=JSON)


class ChangePublic(BaseModel):
    """One entry of the change feed, or of a record's history."""

    seq: int = PydanticField(description="序号，严格递增 (strictly increasing)")
    resource: str = PydanticField(description="资源名，如 projects", examples=["projects"])
    id: int = PydanticField(description="记录编号")
    external_id: str | None = PydanticField(
        default=None, description="记录的外部系统编号 (the record's external_id)"
    )
    op: str = PydanticField(
        description="操作: create 新建 / update 修改 / delete 删除", examples=["update"]
    )
    version: int = PydanticField(description="变更后的版本号 (version after the change)")
    changed_at: datetime = PydanticField(description="变更时间 (UTC)")
    actor: str | None = PydanticField(description="写入者 (who made the change)")
    request_id: str | None = PydanticField(
        default=None, description="请求编号，对应日志中的 X-Request-ID (request id)"
    )
    data: dict[str, Any] | None = PydanticField(description="变更后的记录；删除时为空 (tombstone)")

    @classmethod
    def from_row(cls, row: Any) -> "ChangePublic":
        """From a `Change`, or a row of the change table (`db.Record`)."""
        return cls(
            seq=row.seq or 0,
            resource=row.resource,
            id=row.record_id,
            external_id=row.external_id,
            op=row.op,
            version=row.version,
            changed_at=row.changed_at,
            actor=row.actor,
            request_id=row.request_id,
            data=row.data,
        )


class ChangePage(BaseModel):
    items: list[ChangePublic] = PydanticField(description="按 seq 升序的变更 (changes, by seq)")
    last_seq: int = PydanticField(description="本页最后一个 seq；下次以 after=last_seq 继续")


class MirrorState(SQLModel, table=True):
    """How far `python -m app mirror` has followed another registry's change feed."""

    __tablename__ = "mirror_state"

    source: str = Field(sa_type=String(500), primary_key=True)
    last_seq: int = Field(sa_type=BigInteger)
    updated_at: datetime = Field(sa_type=UTCDateTime)
