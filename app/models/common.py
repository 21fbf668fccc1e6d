"""What every resource shares: record columns, validated field types, the public envelope."""

import re
from copy import copy
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from annotated_types import MaxLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError
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

# PostgreSQL cannot store a NUL character in text (a 500 from the driver before this).
NO_NUL = r"^[^\x00]*$"


def _strip(min_length: int) -> Any:
    def strip(value: str) -> str:
        value = value.strip()
        if len(value) < min_length:
            raise PydanticCustomError(
                "string_too_short",
                "String should have at least {min_length} character",
                {"min_length": min_length},
            )
        return value

    return strip


# Limits apply to the text as the client sent it, as the OpenAPI document states them
# (pydantic's strip_whitespace strips first, so 4,010 characters with trailing blanks passed a
# 4,000 limit); surrounding whitespace is dropped after, and what remains may not be blank.
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL), AfterValidator(_strip(1))
]
Code = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL), AfterValidator(_strip(1))
]
ShortName = Annotated[  # for VARCHAR(100) columns
    str, StringConstraints(min_length=1, max_length=100, pattern=NO_NUL), AfterValidator(_strip(1))
]
Text = Annotated[str, StringConstraints(max_length=4000, pattern=NO_NUL), AfterValidator(_strip(0))]
# No slash (it is a path segment of PUT …/by-external-id/{key}), no control character and no
# whitespace, and nothing stripped: what the document's pattern refuses, the API refuses, and the
# reverse. Whitespace is spelt out because `\s` differs between regex engines (NEL, BOM).
EXTERNAL_ID_PATTERN = (
    r"^[^/\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+$"
)
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=EXTERNAL_ID_PATTERN)
]
# Which fields of a record are inferences or readings, each with its reason (`Provenance.inferred`).
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
Reason = Annotated[
    str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL), AfterValidator(_strip(1))
]
Inferred = Annotated[dict[FieldName, Reason], MaxLen(50)]
# What `inferred` may not name: the provenance itself, the caller's own key, and input that is
# not kept (an amount's unit: the amount is stored in 元).
NOT_INFERABLE = frozenset({"external_id", "source_id", "quote", "note", "inferred", "unit"})
# A text query parameter: any text but NUL.
QueryText = Annotated[str, StringConstraints(pattern=NO_NUL)]


def _json_integer(value: Any) -> Any:
    """A JSON body's integer is a JSON number (5, or 5.0, which JSON Schema counts as the same
    integer), never "5" or true: the OpenAPI document says integer, so pydantic's lax reading
    of text and booleans as numbers would accept what the contract refuses. Body booleans are
    StrictBool for the same reason (no 0 or "yes")."""
    if isinstance(value, str | bool):
        raise ValueError("expected an integer")
    return value


YEAR_MIN, YEAR_MAX = 1949, 2100
# Bounds before the validator: after it, pydantic would write `ge`/`le` into the OpenAPI
# document, which JSON Schema (and every client generator) does not read as bounds.
Year = Annotated[int, Field(ge=YEAR_MIN, le=YEAR_MAX), BeforeValidator(_json_integer)]
# Ids are INTEGER columns (int4 on PostgreSQL): a larger number names no record, and the
# drivers refuse to bind it (a 500 before this bound existed).
MAX_ID = 2**31 - 1
# An id in a path or query string (text, so parsed as a number) ...
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# ... and a reference to another record in a JSON body.
Ref = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_json_integer)]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time zone offset is required (e.g. 2026-01-01T00:00:00+08:00)")
    try:
        return value.astimezone(UTC)  # stored, compared and answered in UTC
    except OverflowError:  # e.g. 0001-01-01T00:00:00+00:04 is before year 1 in UTC
        raise ValueError("this time is outside the years 1-9999 in UTC") from None


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _iso_text(value: Any) -> Any:
    """Pydantic would read a number (or a numeric string, as in a query) as a Unix timestamp;
    the OpenAPI document promises ISO 8601 text, so only that is taken."""
    if isinstance(value, int | float | Decimal) or (
        isinstance(value, str) and _NUMBER.fullmatch(value)
    ):
        raise ValueError("expected ISO 8601 text (e.g. 2026-01-01T00:00:00+08:00), not a number")
    return value


def _iso_date(value: Any) -> Any:
    # Same reason: pydantic also reads 0 or "2021-03-25T00:00:00" as a date.
    if isinstance(value, date) or (
        isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)
    ):
        return value
    raise ValueError("expected a date as YYYY-MM-DD")


AwareDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_aware)]
IsoDate = Annotated[date, BeforeValidator(_iso_date)]
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

    @field_validator("inferred", check_fields=False)
    @classmethod
    def _inferred_names_own_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        """`inferred` names fields of this resource that a caller writes (on every resource
        with provenance; the PATCH models inherit this check with their base)."""
        if value:
            allowed = set(cls.model_fields) - NOT_INFERABLE
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise PydanticCustomError(
                    "inferred_field",
                    "{unknown} 不能标为推断：推断说明只能针对本资源的数据字段，可用: {allowed} "
                    "(inferred names a data field of this resource)",
                    {"unknown": "、".join(unknown), "allowed": "、".join(sorted(allowed))},
                )
        return value


class UpdateModel(CreateModel):
    pass


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T] = Field(description="本页记录 (the records of this page)")
    next_cursor: str | None = Field(
        description="下一页游标；为空表示已到末页 (opaque keyset cursor; null on the last page)"
    )


@dataclass(frozen=True)
class After:
    """Marks a shared list parameter as a filter: rows whose `column` is later than its value
    (`records.filter_conditions` applies every parameter so marked, on every resource)."""

    column: str


class ListParams(BaseModel):
    """Query parameters every list accepts; unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(
        default=50, ge=1, le=500, description="每页条数，默认 50，最多 500；超过返回 422"
    )
    cursor: QueryText | None = Field(default=None, description="上一页返回的 next_cursor")
    sort: QueryText | None = Field(
        default=None,
        description=(
            "排序字段，逗号分隔，前缀 - 表示降序，如 `-updated_at,name`；升序时空值在后，降序时空值在前；"
            "最后总以 id 兜底，方向同最后一个字段 (ties broken by id in the last key's direction)"
        ),
    )
    q: QueryText | None = Field(
        default=None, min_length=1, max_length=100, description="名称模糊搜索，支持中文子串"
    )
    external_id: QueryText | None = Field(
        default=None, description="按外部系统编号精确查找 (exact external_id)"
    )
    updated_after: Annotated[AwareDatetime | None, After("updated_at")] = Field(
        default=None, description="只列出此时间之后更新的记录 (for catch-up sync)"
    )
    created_after: Annotated[AwareDatetime | None, After("created_at")] = Field(
        default=None, description="只列出此时间之后新建的记录 (created after)"
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
