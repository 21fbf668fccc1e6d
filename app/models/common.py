"""What every resource shares: record columns, validated field types, the public envelope."""

from copy import copy
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
    create_model,
)
from sqlalchemy import MetaData
from sqlmodel import Field, SQLModel

from app.db_types import UTCDateTime

# Constraint names that Alembic can rely on, on both engines.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]
ExternalId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^/\s]+$"),
]
Year = Annotated[int, Field(ge=1949, le=2100)]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time zone offset is required (e.g. 2026-01-01T00:00:00+08:00)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
# Pydantic would write a Decimal as a string anyway; saying so keeps the OpenAPI schema honest.
DecimalString = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str)]


class RecordColumns(SQLModel):
    """Columns every table has; clients never set them (bar external_id)."""

    id: int | None = Field(default=None, primary_key=True)
    external_id: str | None = Field(default=None, max_length=100, unique=True)
    version: int = Field(default=1)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime, index=True)
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RecordPublic(SQLModel):
    id: int = Field(description="编号 (id)", schema_extra={"examples": [1]})
    external_id: str | None = Field(
        default=None, description="外部系统编号，每类资源唯一 (caller's own key)"
    )
    version: int = Field(
        description="版本号，每次写入加一 (bumped on every write)", schema_extra={"examples": [1]}
    )
    created_at: datetime = Field(description="创建时间 (UTC)")
    updated_at: datetime = Field(description="更新时间 (UTC)")
    deleted_at: datetime | None = Field(
        default=None, description="删除时间；未删除为空 (tombstone)"
    )


class CreateModel(SQLModel):
    """Input: unknown or read-only fields are refused, never ignored."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    external_id: ExternalId | None = Field(
        default=None, description="外部系统编号 (caller's own key, unique per resource)"
    )


class UpdateModel(CreateModel):
    pass


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="下一页游标；为空表示已到末页 (opaque keyset cursor; null on the last page)"
    )


class ListParams(BaseModel):
    """Query parameters every list accepts; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(
        default=50, ge=1, le=500, description="每页条数，默认 50，最多 500；超过返回 422"
    )
    cursor: str | None = Field(default=None, description="上一页返回的 next_cursor")
    sort: str | None = Field(
        default=None,
        description="排序字段，逗号分隔，前缀 - 表示降序，如 `-updated_at,name`；总以 id 兜底",
    )
    q: str | None = Field(
        default=None, min_length=1, max_length=100, description="名称模糊搜索，支持中文子串"
    )
    external_id: str | None = None
    updated_after: AwareDatetime | None = Field(
        default=None, description="只列出此时间之后更新的记录 (for catch-up sync)"
    )
    include_deleted: bool = Field(default=False, description="包含已删除的记录 (tombstones)")


def partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The PATCH body of `model`: every field optional, but a field that may not be null still
    refuses an explicit null (absent means "leave as is")."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        optional = copy(info)
        optional.default = None
        optional.default_factory = None
        fields[field_name] = (info.annotation, optional)
    return create_model(
        name,
        __base__=UpdateModel,
        __doc__=f"部分更新 (partial update of {model.__name__})",
        **fields,
    )
