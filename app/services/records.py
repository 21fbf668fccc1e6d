"""The mechanics every resource shares, written once: read, list (keyset), versioned writes,
soft deletes, parent and child checks, and the change log. A resource opts in by declaring a
`ResourceSpec`; its own rules plug in as hooks."""

import base64
import binascii
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Annotated, Any, Protocol, get_args

import pydantic_core
from pydantic import BaseModel, ConfigDict, PlainSerializer, WrapSerializer, computed_field
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Date,
    Integer,
    String,
    and_,
    bindparam,
    false,
    or_,
    select,
)
from sqlalchemy import insert as sa_insert
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from app import context, db
from app.db import Record, one, run, statement
from app.db_types import ExactDecimal, UTCDateTime, utcnow
from app.errors import Conflict, FieldError, Invalid, NotFound, PreconditionFailed
from app.models.common import MAX_ID, After, DecimalString, ListParams
from app.security import Forbidden
from app.services import changes

Hook = Callable[[AsyncSession, Any, dict[str, Any]], Awaitable[None]]
AfterHook = Callable[[AsyncSession, Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class Child:
    resource: str
    model: type[SQLModel]
    fk: str


@dataclass(frozen=True)
class ResourceSpec:
    name: str  # path segment and change-feed name, e.g. "projects"
    singular: str
    title_zh: str
    model: type[SQLModel]
    public: type[SQLModel]
    create: type[SQLModel]
    update: type[BaseModel]
    filters: type[ListParams]
    sort_fields: tuple[str, ...]
    search_fields: tuple[str, ...] = ("name",)
    parents: dict[str, type[SQLModel]] = field(default_factory=dict)
    children: tuple[Child, ...] = ()
    unique: tuple[tuple[str, ...], ...] = (("external_id",),)
    # Filters that are not "column = value": name → builder of the condition.
    filter_ops: dict[str, Callable[[Any], ColumnElement[bool]]] = field(default_factory=dict)
    # Turns validated input into column values (e.g. 30 亿元 → 3000000000.00); may raise Invalid.
    prepare: Hook | None = None
    # Checks that need the database (e.g. a chain of the same park).
    validate: Hook | None = None
    # Runs after a write is flushed: (session, record, previous values or None).
    after_write: AfterHook | None = None
    # The column that names a record's park (a park's own `id`); None: shared by every park.
    park: str | None = "park_id"
    # Whether its children move with it to another park (a project's investments do, by its
    # `after_write`); if not, it may move only without live children.
    children_follow: bool = False
    # A small PATCH body (one or two fields) for Swagger's "Try it out": the body it fills in,
    # so that changing one field never sends every other field with made-up values.
    edit_example: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> Any:
        return getattr(self.model, name)

    @property
    def table(self) -> Any:
        return self.model.__table__  # type: ignore[attr-defined]

    def to_public(self, record: Any) -> dict[str, Any]:
        return self.public_of(record).model_dump(mode="json")

    def public_of(self, record: Any) -> BaseModel:
        """The public representation of a row, a `Record` or an ORM record."""
        out = plain_model(self.public)
        validated: BaseModel = out.__pydantic_validator__.validate_python(
            record, from_attributes=True
        )
        return validated

    @functools.cached_property
    def plain_fields(self) -> tuple[list[str], list[tuple[str, Callable[[Any], Any]]]] | None:
        return plain_fields(self.public, frozenset(self.table.c.keys()))

    def plain_data(self, record: Any) -> dict[str, Any] | None:
        """A row's public form as plain data, written by `pydantic_core.to_json` as the public
        model would write it (see `plain_fields`); None where it must go through the model."""
        fields = self.plain_fields
        if fields is None or not isinstance(record, Record):
            return None
        names, computed = fields
        out = {name: record[name] for name in names}
        if computed:
            view = SimpleNamespace(**out)
            for name, compute in computed:
                out[name] = compute(view)
        return out

    def public_json(self, record: Any) -> bytes:
        data = self.plain_data(record)
        if data is not None:
            return pydantic_core.to_json(data)
        public = self.public_of(record)
        return public.__pydantic_serializer__.to_json(public)


# Serialisers that write a value as pydantic-core writes it unannotated (`str()` of a Decimal).
_AS_PLAIN = {id(m) for m in get_args(DecimalString)[1:]}


def plain_fields(
    public: type[BaseModel], columns: frozenset[str]
) -> tuple[list[str], list[tuple[str, Callable[[Any], Any]]]] | None:
    """The public model's fields and computed fields, where writing a row's own values as plain
    data (`pydantic_core.to_json`: Decimal and datetime as pydantic writes them, an enum column's
    text as it is) gives the model's JSON: no alias, no serialiser of its own, every field a
    column. Validating each row into a model first was most of a list page's CPU and changes
    nothing in values the database gives back; a test holds the two to the same bytes for every
    resource. None: write through the model (`plain_model`)."""
    decorators = public.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers:
        return None
    names = []
    for name, info in public.model_fields.items():
        if info.alias or info.serialization_alias or info.exclude or name not in columns:
            return None
        writers = [m for m in info.metadata if isinstance(m, PlainSerializer | WrapSerializer)]
        if any(id(m) not in _AS_PLAIN for m in writers):
            return None
        names.append(name)
    computed = []
    for name, computed_info in public.__pydantic_computed_fields__.items():
        compute = computed_info.wrapped_property.fget
        if compute is None or (computed_info.alias and computed_info.alias != name):
            return None
        computed.append((name, compute))
    return names, computed


@functools.cache
def plain_model(public: type[BaseModel]) -> type[BaseModel]:
    """`public` as a plain pydantic model for writing records out: the same fields, types,
    serialisers and computed fields, so the same JSON, without SQLModel's own `__init__`
    (which validated each record twice) and without input validators: these were most of a
    list page's CPU (bench/README.md). The public model stays what OpenAPI documents, and a
    test holds the two to the same JSON for every resource."""
    namespace: dict[str, Any] = {
        "__annotations__": {},
        "__module__": public.__module__,
        "model_config": ConfigDict(from_attributes=True),
    }
    for name, info in public.model_fields.items():
        # Only how a field is written out: the values come from the database, already of their
        # type, and the input validators (stripping, range checks) were paid for on the way in.
        writers = [m for m in info.metadata if isinstance(m, PlainSerializer | WrapSerializer)]
        annotation = Annotated[info.annotation, *writers] if writers else info.annotation
        namespace["__annotations__"][name] = annotation
        namespace[name] = None
    for name, computed in public.__pydantic_computed_fields__.items():
        namespace[name] = computed_field(computed.wrapped_property)
    return type(f"{public.__name__}Out", (BaseModel,), namespace)


# ---------------------------------------------------------------- reading


# ---------------------------------------------------------------- park scope


def scope_of(spec: ResourceSpec) -> tuple[int, ...] | None:
    """The parks the caller is confined to (`context.parks`, set with its role) if they bound
    this resource's records; None for an unscoped caller, and for records every park shares.
    Part of each statement's shape: the ids are written into it, as the constants they are."""
    parks = context.parks.get()
    if parks is None or spec.park is None:
        return None
    return tuple(sorted(parks))


def in_scope(spec: ResourceSpec, scope: tuple[int, ...]) -> ColumnElement[bool]:
    assert spec.park is not None
    condition: ColumnElement[bool] = spec.table.c[spec.park].in_(db.constants(scope))
    return condition


def sees_park(park_id: Any) -> bool:
    parks = context.parks.get()
    return parks is None or park_id in parks


async def read_row(session: AsyncSession, spec: ResourceSpec, record_id: int) -> Any:
    """One live record as a Core row (no ORM identity map or instance): the read path."""
    if not 1 <= record_id <= MAX_ID:
        raise NotFound(f"{spec.singular} {record_id} does not exist")
    table = spec.table
    scope = scope_of(spec)

    def build() -> Any:
        stmt = select(table).where(table.c.id == bindparam("id"), table.c.deleted_at.is_(None))
        return stmt if scope is None else stmt.where(in_scope(spec, scope))

    stmt = statement(("row", spec.name, scope), build)
    row = one(await run(session, stmt, {"id": record_id}))
    if row is None:
        raise NotFound(f"{spec.singular} {record_id} does not exist")
    return row


async def get_live(
    session: AsyncSession, spec: ResourceSpec, record_id: int, *, lock: bool = False
) -> Any:
    if not 1 <= record_id <= MAX_ID:
        # No record has such an id, and the drivers refuse to bind one beyond INTEGER
        # (a 500 on /projects/{huge}/investments, /chains/{huge}/scorecard, batch items).
        raise NotFound(f"{spec.singular} {record_id} does not exist")

    scope = scope_of(spec)

    def build() -> Any:
        table = spec.table
        stmt = select(table).where(table.c.id == bindparam("id"), table.c.deleted_at.is_(None))
        if scope is not None:
            stmt = stmt.where(in_scope(spec, scope))
        return stmt.with_for_update() if lock else stmt

    stmt = statement(("live", spec.name, lock, scope), build)
    record = one(await run(session, stmt, {"id": record_id}))
    if record is None:
        raise NotFound(f"{spec.singular} {record_id} does not exist")
    return record


def _parse_sort(spec: ResourceSpec, sort: str | None) -> list[tuple[str, bool]]:
    keys: list[tuple[str, bool]] = []
    for raw in (sort or "id").split(","):
        part = raw.strip()
        desc = part.startswith("-")
        name = part.lstrip("-+")
        if name not in spec.sort_fields:
            allowed = ", ".join(spec.sort_fields)
            raise Invalid.field(
                "sort", f"cannot sort by '{name}'; sortable fields: {allowed}", "query"
            )
        if any(k == name for k, _ in keys):
            raise Invalid.field("sort", f"'{name}' appears twice", "query")
        keys.append((name, desc))
    if not any(k == "id" for k, _ in keys):
        # A unique last key makes the order total. It runs in the direction of the key before
        # it, so that `ORDER BY total_investment DESC, id DESC` is one backward scan of an index
        # on (…, total_investment, id) rather than a sort.
        keys.append(("id", keys[-1][1]))
    return keys


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


_CURSOR_TYPES = ((Boolean, bool), (Integer, int), (String, str))


def _decode_value(column: Any, value: Any) -> Any:
    """A cursor value back to its column's type; anything else is a forged cursor."""
    if value is None:
        return None
    column_type = column.type
    if isinstance(column_type, UTCDateTime):
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        if parsed is None or parsed.tzinfo is None:
            raise ValueError("bad datetime")
        # In UTC here, as the column binds it: 9999-12-31T23:59:59-23:00 is past year 9999 in
        # UTC (an OverflowError at the driver, a 500, before this).
        return parsed.astimezone(UTC)
    if isinstance(column_type, ExactDecimal):
        number = Decimal(value) if isinstance(value, str) else None
        if number is None or not number.is_finite():
            raise ValueError("bad decimal")
        scale = Decimal(1).scaleb(-column_type.scale)
        if number != number.quantize(scale) or abs(number) >= Decimal(10) ** (
            column_type.precision - column_type.scale
        ):
            raise ValueError("bad decimal")  # ExactDecimal would refuse to bind it
        return number
    base = column_type.impl if isinstance(column_type, TypeDecorator) else column_type
    if isinstance(base, Date):
        return date.fromisoformat(value)
    expected = next(t for cls, t in _CURSOR_TYPES if isinstance(base, cls))
    if type(value) is not expected:  # bool is not an int here, nor an int a str
        raise ValueError("bad value")
    # Values no row can hold would reach the driver and fail there (a 500, not a 422).
    if isinstance(value, int) and not -(2**31) <= value < 2**31:
        raise ValueError("bad integer")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("bad text")
    return value


def _encode_cursor(sort: str, values: list[Any]) -> str:
    raw = json.dumps({"s": sort, "v": [_encode_value(v) for v in values]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(
    spec: ResourceSpec, cursor: str, sort: str, keys: list[tuple[str, bool]]
) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if raw["s"] != sort or len(raw["v"]) != len(keys):
            raise Invalid.field(
                "cursor",
                "游标属于另一种排序，请用同一 sort 翻页 (this cursor belongs to another sort order)",
                "query",
            )
        return [
            _decode_value(spec.column(k).expression, v)
            for (k, _), v in zip(keys, raw["v"], strict=True)
        ]
    # RecursionError: JSON nested deeper than the parser goes (`[[[[…`).
    except (
        ValueError,
        KeyError,
        TypeError,
        ArithmeticError,
        RecursionError,
        binascii.Error,
    ) as exc:
        raise Invalid.field(
            "cursor",
            "游标无效，须为上一页返回的 next_cursor (not a cursor this API issued)",
            "query",
        ) from exc


def _order(column: Any, desc: bool) -> UnaryExpression[Any]:
    # desc is the exact reverse of asc (nulls last), so the keyset below is one formula.
    order: UnaryExpression[Any] = column.desc().nulls_first() if desc else column.asc().nulls_last()
    return order


def _after(column: Any, desc: bool, value: Any) -> ColumnElement[bool]:
    """Rows strictly after `value` (a bind parameter, or None) in this key's order."""
    if value is None:
        return column.is_not(None) if desc else false()
    after: ColumnElement[bool] = column < value if desc else or_(column > value, column.is_(None))
    return after


def _equal(column: Any, value: Any) -> ColumnElement[bool]:
    equal: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return equal


def _leading_bound(column: Any, desc: bool, value: Any) -> ColumnElement[bool] | None:
    """A condition on the first sort key alone that every row after the cursor meets: implied by
    the keyset below, but in a form the database can use as an index bound, so a page from the
    middle starts there instead of scanning and discarding every row before it. Where the rows
    after the cursor include the NULLs at the far end (ascending, cursor on a value) no single
    range says that, and none is added."""
    if value is None:
        return None if desc else column.is_(None)
    return column <= value if desc else None


def _keyset(spec: ResourceSpec, keys: list[tuple[str, bool]], nulls: tuple[bool, ...]) -> Any:
    """Rows after the cursor, its values bound as `:k0`, `:k1`, …; a NULL value (`nulls`) is
    part of the statement's shape, as SQL compares NULL only with IS."""
    values: list[Any] = [None if null else bindparam(f"k{i}") for i, null in enumerate(nulls)]
    clauses = []
    for i, (name, desc) in enumerate(keys):
        same = [_equal(spec.column(k), v) for (k, _), v in zip(keys[:i], values[:i], strict=True)]
        clauses.append(and_(*same, _after(spec.column(name), desc, values[i])))
    keyset = or_(*clauses)
    bound = _leading_bound(spec.column(keys[0][0]), keys[0][1], values[0])
    return keyset if bound is None else and_(bound, keyset)


def _like(text: str) -> str:
    """`q` as a LIKE pattern matching it anywhere, its own `%`, `_` and `/` taken literally."""
    return "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


# The list parameters every resource shares; the others are per-resource column filters.
SHARED_PARAMS = frozenset(ListParams.model_fields) - {"external_id"}
# The shared ones that filter by time: parameter → column (declared on `ListParams`).
AFTER = {
    name: marker.column
    for name, info in ListParams.model_fields.items()
    for marker in info.metadata
    if isinstance(marker, After)
}


def _is_null(spec: ResourceSpec, name: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = spec.column(name).is_(None)
    return condition


def _equals(spec: ResourceSpec, name: str, key: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = spec.column(name) == bindparam(key)
    return condition


def _later(spec: ResourceSpec, column: str, key: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = spec.column(column) > bindparam(key)
    return condition


def _search(spec: ResourceSpec) -> ColumnElement[bool]:
    return or_(*(spec.column(c).ilike(bindparam("q"), escape="/") for c in spec.search_fields))


def filter_conditions(
    spec: ResourceSpec, params: ListParams, within: Mapping[str, Any] | None = None
) -> tuple[list[Callable[[], ColumnElement[bool]]], dict[str, Any]]:
    """The list's conditions, each as a builder of its expression with bind parameters, and the
    values to bind: the builders make the statement once per shape, the values vary per call.
    Every list parameter is read here (the shared ones, then the resource's own filters, then
    `within`, a caller's fixed column equalities), so a new filter is added in this one place."""
    built: list[Callable[[], ColumnElement[bool]]] = []
    values: dict[str, Any] = {}
    if (scope := scope_of(spec)) is not None:
        built.append(functools.partial(in_scope, spec, scope))
    if not params.include_deleted:
        built.append(functools.partial(_is_null, spec, "deleted_at"))
    for name, column in AFTER.items():
        if (value := getattr(params, name)) is not None:
            built.append(functools.partial(_later, spec, column, name))
            values[name] = value
    if params.q:
        built.append(functools.partial(_search, spec))
        values["q"] = _like(params.q)
    for name in sorted(params.model_fields_set - SHARED_PARAMS):
        value = getattr(params, name)
        if value is None:
            continue
        op = spec.filter_ops.get(name)
        key = f"f_{name}"
        built.append(
            functools.partial(op, bindparam(key))
            if op
            else functools.partial(_equals, spec, name, key)
        )
        values[key] = value
    for name, value in sorted((within or {}).items()):
        if value is None:
            built.append(functools.partial(_is_null, spec, name))
            continue
        key = f"w_{name}"
        built.append(functools.partial(_equals, spec, name, key))
        values[key] = value
    return built, values


async def list_page(
    session: AsyncSession,
    spec: ResourceSpec,
    params: ListParams,
    within: Mapping[str, Any] | None = None,
) -> tuple[list[Record], str | None]:
    """A page in keyset order. The statement is built once per shape of request (which
    filters, which sort, whether and where a cursor sits) and run with this request's values."""
    keys = _parse_sort(spec, params.sort)
    sort = ",".join(("-" if d else "") + k for k, d in keys)
    conditions, values = filter_conditions(spec, params, within)
    nulls: tuple[bool, ...] | None = None
    if params.cursor:
        after = _decode_cursor(spec, params.cursor, sort, keys)
        nulls = tuple(v is None for v in after)
        values.update({f"k{i}": v for i, v in enumerate(after) if v is not None})
    values["limit"] = params.limit + 1

    def build() -> Any:
        stmt = select(spec.table).where(*(c() for c in conditions))
        if nulls is not None:
            stmt = stmt.where(_keyset(spec, keys, nulls))
        return stmt.order_by(*(_order(spec.column(k), d) for k, d in keys)).limit(
            bindparam("limit", type_=Integer)
        )

    unset = tuple(sorted(k for k, v in (within or {}).items() if v is None))
    scope = scope_of(spec)
    shape = (
        "page",
        spec.name,
        sort,
        tuple(sorted(values)),
        unset,
        nulls,
        params.include_deleted,
        scope,
    )
    rows = await run(session, statement(shape, build), values)
    if len(rows) <= params.limit:
        return rows, None
    rows = rows[: params.limit]
    return rows, _encode_cursor(sort, [rows[-1][k] for k, _ in keys])


# ---------------------------------------------------------------- writing


def check_version(record: Any, if_match: list[str] | None) -> None:
    """`If-Match` holds the ETags the client is willing to overwrite; `*` matches any."""
    if if_match is None or "*" in if_match:
        return
    if etag(record) not in if_match:
        raise PreconditionFailed(
            f"version {record.version} is current; the request was made against {', '.join(if_match)}",
            headers={"ETag": etag(record)},
        )


def etag(record: Any) -> str:
    return f'"{record.version}"'


ONE_WRITE = "one_write"  # session.info key: True while a write's rules run one record at a time
PARKS_OF = "parks_of"  # session.info key: (table, id) → park_id of the parents just checked


def _parents_statement(spec: ResourceSpec, fks: tuple[str, ...]) -> Any:
    """The parent check's query for the parents named (`:fk` parameters)."""
    columns = []
    for fk in fks:
        model: Any = spec.parents[fk]
        live = and_(model.id == bindparam(fk), model.deleted_at.is_(None))
        columns.append(select(model.id).where(live).scalar_subquery().label(fk))
        if "park_id" in model.__table__.c:
            columns.append(select(model.park_id).where(live).scalar_subquery().label(f"{fk}:park"))
    return select(*columns)


class Known(Protocol):
    """What a set-based writer (the spreadsheet import) has read of the registry for many rows
    at once, so that `check_rules` asks the database nothing per row."""

    @property
    def parks(self) -> dict[tuple[str, int], Any]:
        """(table, id) → the park of each parent read."""

    def live(self, table: str, record_id: int) -> bool:
        """Whether that record exists and is not deleted."""

    def holder(self, name: str, value: Any) -> Any:
        """The record that holds this value of a unique field, as the rows before leave it."""


async def check_rules(
    session: AsyncSession,
    spec: ResourceSpec,
    record: Any,
    data: dict[str, Any],
    known: Known | None = None,
) -> None:
    """What a write must pass before it is written, in this order: every parent it names
    exists and is live, the resource's own `validate` hook, and no other record holds one of
    its unique values. `record` is None for a new record; `data` holds what is written (a new
    record's fields, an update's changes, already through `prepare`). Every write checks
    these, one at a time (`insert`, `apply_update`) or many at once (`known`: the import)."""
    given = [
        (fk, parent, data[fk]) for fk, parent in spec.parents.items() if data.get(fk) is not None
    ]
    if known is None:
        live, parks = await _parents(session, spec, given)
    else:
        live = {fk: known.live(str(parent.__tablename__), ref) for fk, parent, ref in given}
        parks = known.parks
    # For this write's `validate` hook, which then need not ask again (see `same_park`); and
    # whether the hook may ask the database (one write at a time) or not (the import's rows).
    session.info[PARKS_OF] = parks
    session.info[ONE_WRITE] = known is None
    missing = [
        FieldError(
            field=fk, location="body", message=f"{parent.__tablename__} {ref} does not exist"
        )
        for fk, parent, ref in given
        if not live[fk]
    ]
    if missing:
        raise Invalid("; ".join(e.message for e in missing), errors=missing)
    _check_scope(spec, record, data, given, parks)
    if (
        record is not None
        and spec.park in data
        and data[spec.park] != getattr(record, spec.park)
        and spec.children
        and not spec.children_follow
        and (blocking := await live_children(session, spec, record.id))
    ):
        raise Conflict(
            f"{spec.singular} {record.id} still has live records in its park "
            f"({', '.join(blocking)}); move or delete them first",
            extra={"children": blocking},
        )
    if spec.validate:
        await spec.validate(session, record, data)
    record_id = None if record is None else record.id
    for fields in spec.unique:
        values = {f: data.get(f) for f in fields}
        if not any(f in data for f in fields) or any(v is None for v in values.values()):
            continue
        if known is None:
            other = await _holder(session, spec, values, record_id)
        else:
            ((name, value),) = values.items()  # the import takes single-field keys only
            holder = known.holder(name, value)
            other = None if holder is None or holder.id == record_id else holder.id
        if other is not None:
            shown = ", ".join(f"{f}={v}" for f, v in values.items())
            # Its id only for a caller of every park: the holder may lie in another park.
            which = f" ({other})" if context.parks.get() is None else ""
            raise Conflict(
                f"another {spec.singular}{which} already has {shown}",
                errors=[FieldError(field=fields[-1], location="body", message="already taken")],
            )


SHARED = "来源为各园区共用，只有不限园区的账号可以修改或删除 (a shared source is changed by city-wide accounts only)"


def _check_scope(
    spec: ResourceSpec,
    record: Any,
    data: dict[str, Any],
    given: list[tuple[str, Any, int]],
    parks: Mapping[tuple[str, int], Any],
) -> None:
    """A caller confined to some parks writes only in them: a park, parent or record of another
    park is refused as if it did not exist (its ids tell nothing), and only a caller of every
    park makes a park. Moving a record takes scope on both parks: the old one let it be read.
    Sources, which every park shares, it may add but not change."""
    if context.parks.get() is None:
        return
    if spec.park is None:
        if record is not None:
            raise Forbidden(SHARED)
        return
    if spec.park == "id":
        if record is None:
            raise Forbidden(
                "只有不限园区的账号可以新建园区 (only a city-wide account creates parks)"
            )
        return
    outside = [
        FieldError(
            field=fk, location="body", message=f"{parent.__tablename__} {ref} does not exist"
        )
        for fk, parent, ref in given
        if (str(parent.__tablename__), ref) in parks
        and not sees_park(parks[(str(parent.__tablename__), ref)])
    ]
    park_id = data.get(spec.park, None if record is None else getattr(record, spec.park))
    if spec.park in data and not sees_park(park_id):
        outside.append(
            FieldError(field=spec.park, location="body", message=f"park {park_id} does not exist")
        )
    if outside:
        raise Invalid("; ".join(e.message for e in outside), errors=outside)


async def _parents(
    session: AsyncSession, spec: ResourceSpec, given: list[tuple[str, Any, int]]
) -> tuple[dict[str, bool], dict[tuple[str, int], Any]]:
    """Which of the parents named are live (fk → bool), and the park of each live one, read by
    one query for all of them."""
    if not given:
        return {}, {}
    fks = tuple(fk for fk, _, _ in given)
    stmt = statement(("parents", spec.name, fks), lambda: _parents_statement(spec, fks))
    row = (await run(session, stmt, {fk: value for fk, _, value in given}))[0]
    live = {fk: row[fk] is not None for fk in fks}
    parks = {
        (str(parent.__tablename__), ref): row[f"{fk}:park"]
        for fk, parent, ref in given
        if live[fk] and f"{fk}:park" in row
    }
    return live, parks


async def _holder(
    session: AsyncSession, spec: ResourceSpec, values: dict[str, Any], record_id: int | None
) -> int | None:
    """The id of another record holding these values of a unique key, if any."""
    fields = tuple(values)

    def build() -> Any:
        stmt = select(spec.column("id")).where(
            *(spec.column(f) == bindparam(f"u_{f}") for f in fields)
        )
        if record_id is not None:
            stmt = stmt.where(spec.column("id") != bindparam("u_id"))
        return stmt.limit(1)

    bound = {f"u_{f}": v for f, v in values.items()}
    if record_id is not None:
        bound["u_id"] = record_id
    shape = ("unique", spec.name, fields, record_id is not None)
    found = one(await run(session, statement(shape, build), bound))
    return None if found is None else int(found.id)


def change_entry(
    spec: ResourceSpec, record: Any, op: str, previous_park_id: int | None = None
) -> dict[str, Any]:
    """The change-feed entry of a write to `record`, bar who made it and under which request
    (`changes.record` adds those); `previous_park_id` when the write moved it to another park."""
    park_id = None if spec.park is None else getattr(record, spec.park)
    return {
        "resource": spec.name,
        "record_id": record.id,
        "external_id": record.external_id,
        "op": op,
        "version": record.version,
        # The record's own updated_at, so a mirror can restore a tombstone's deleted_at exactly.
        "changed_at": record.updated_at,
        "park_id": park_id,
        "previous_park_id": None if previous_park_id == park_id else previous_park_id,
        "data": None if op == "delete" else spec.to_public(record),
    }


def next_version(record: Any, changed: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The columns an update writes: what changed, the next version, the time."""
    return {**changed, "version": record.version + 1, "updated_at": now}


async def log_change(
    session: AsyncSession,
    spec: ResourceSpec,
    record: Any,
    op: str,
    previous_park_id: int | None = None,
) -> None:
    await changes.record(session, **change_entry(spec, record, op, previous_park_id))


async def _execute_write(
    session: AsyncSession, spec: ResourceSpec, stmt: Any, params: dict[str, Any]
) -> Any:
    """An INSERT or UPDATE of the record's row. A concurrent writer can take a unique key
    between the pre-check and this statement: PostgreSQL refuses the statement itself (and
    aborts the transaction), which is the same conflict as one found at commit."""
    try:
        return await run(session, stmt, params)
    except IntegrityError as exc:
        raise _conflict(spec) from exc


def _conflict(spec: ResourceSpec) -> Conflict:
    return Conflict(f"the {spec.singular} conflicts with a record written at the same time")


async def commit(session: AsyncSession, spec: ResourceSpec) -> None:
    """`db.commit`, a unique key taken meanwhile by a concurrent writer answered as a conflict."""
    try:
        await db.commit(session)
    except IntegrityError as exc:
        # Pre-checks catch what they can; a concurrent writer can still win the race.
        await session.rollback()
        raise _conflict(spec) from exc


@functools.cache
def _defaults(model: type[SQLModel]) -> dict[str, Any]:
    """The values a new record takes for columns its data leaves out (the model's defaults)."""
    fields = model.model_fields
    return {
        column.key: fields[column.key].get_default(call_default_factory=True)
        for column in model.__table__.columns  # type: ignore[attr-defined]
        if column.key != "id" and not fields[column.key].is_required()
    }


def new_row(spec: ResourceSpec, data: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The columns a new record is written with: the model's defaults, the data, version 1."""
    return {**_defaults(spec.model), **data, "version": 1, "created_at": now, "updated_at": now}


async def insert(
    session: AsyncSession, spec: ResourceSpec, data: dict[str, Any], op: str = "create"
) -> Any:
    """Adds a record from validated input; the caller owns the transaction. The record comes
    back as a Core row (`INSERT … RETURNING`): nothing in the write changes it afterwards, and
    the ORM's unit of work cost more than the statement (issue 6)."""
    if spec.prepare:
        await spec.prepare(session, None, data)
    await check_rules(session, spec, None, data)
    # `INSERT … RETURNING` every column; the columns written are the parameters given.
    table = spec.table
    stmt = statement(("insert", spec.name), lambda: sa_insert(table).returning(*table.c))
    record = (await _execute_write(session, spec, stmt, new_row(spec, data, utcnow())))[0]
    # The write's own entry first, then what its hook changes: a reader of the feed meets a
    # cause before its effects (a moved project before its investments).
    await log_change(session, spec, record, op)
    if spec.after_write:
        await spec.after_write(session, record, None)
    return record


def _snapshot(record: Record) -> Record:
    return Record(record)


def settle_inferences(record: Any, changed: dict[str, Any]) -> None:
    """A field given a new value is what its writer entered, no longer an inference: its mark
    in `inferred` goes with the change, unless the same write sends `inferred` itself."""
    marks = getattr(record, "inferred", None)
    if not marks or "inferred" in changed or marks.keys().isdisjoint(changed):
        return
    changed["inferred"] = {k: v for k, v in marks.items() if k not in changed}


async def apply_update(
    session: AsyncSession, spec: ResourceSpec, record: Any, data: dict[str, Any]
) -> bool:
    """Writes what differs as a new version; False (and nothing written) when nothing does."""
    if spec.prepare:
        await spec.prepare(session, record, data)
    changed = {k: v for k, v in data.items() if getattr(record, k) != v}
    if not changed:
        return False
    settle_inferences(record, changed)
    await check_rules(session, spec, record, changed)
    before = _snapshot(record) if spec.after_write else None
    previous_park = None if spec.park is None else getattr(record, spec.park)
    await _write(session, spec, record, next_version(record, changed, utcnow()))
    await log_change(session, spec, record, "update", previous_park)
    if spec.after_write:
        await spec.after_write(session, record, before)
    return True


async def _write(
    session: AsyncSession, spec: ResourceSpec, record: Any, values: dict[str, Any]
) -> None:
    """Writes `values` (a new version and `updated_at` among them) to the record's row with one
    Core UPDATE, and gives the loaded record the same values as stored."""
    table = spec.table
    # Without `.values()`, the columns set are the parameters given; `_id` binds the WHERE.
    stmt = statement(
        ("update", spec.name), lambda: sa_update(table).where(table.c.id == bindparam("_id"))
    )
    await _execute_write(session, spec, stmt, {**values, "_id": record.id})
    record.update(values)


async def live_children(
    session: AsyncSession, spec: ResourceSpec, record_id: int
) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for child in spec.children:

        def build(child: Child = child) -> Any:
            table = child.model.__table__  # type: ignore[attr-defined]
            live = table.c[child.fk] == bindparam("parent"), table.c.deleted_at.is_(None)
            return select(table.c.id).where(*live).order_by(table.c.id).limit(20)

        stmt = statement(("children", spec.name, child.resource, child.fk), build)
        ids = [row.id for row in await run(session, stmt, {"parent": record_id})]
        if ids:
            found[child.resource] = ids
    return found


async def soft_delete(session: AsyncSession, spec: ResourceSpec, record: Any) -> None:
    if spec.park is None and context.parks.get() is not None:
        raise Forbidden(SHARED)  # its records may lie in parks the caller cannot see
    blocking = await live_children(session, spec, record.id)
    if blocking:
        named = "; ".join(f"{name}: {', '.join(map(str, ids))}" for name, ids in blocking.items())
        raise Conflict(
            f"{spec.singular} {record.id} still has live records ({named}); delete or move them first",
            extra={"children": blocking},
        )
    before = _snapshot(record) if spec.after_write else None
    now = utcnow()
    await _write(session, spec, record, next_version(record, {"deleted_at": now}, now))
    await log_change(session, spec, record, "delete")
    if spec.after_write:
        await spec.after_write(session, record, before)


async def _fail_fast_if_stale(
    session: AsyncSession, spec: ResourceSpec, record_id: int, if_match: list[str] | None
) -> None:
    """A stale `If-Match` is refused before queueing for the row lock: under contention most
    conditional writes are stale, and making them wait serialises everyone behind the lock.
    (The check is repeated under the lock, which is what makes it correct.)"""
    if if_match is None or "*" in if_match:
        return
    stmt = statement(
        ("version", spec.name),
        lambda: select(spec.column("version")).where(
            spec.column("id") == bindparam("id"), spec.column("deleted_at").is_(None)
        ),
    )
    row = one(await run(session, stmt, {"id": record_id}))
    version = None if row is None else row.version
    if version is not None and f'"{version}"' not in if_match:
        raise PreconditionFailed(
            f"version {version} is current; the request was made against {', '.join(if_match)}",
            headers={"ETag": f'"{version}"'},
        )


async def create(session: AsyncSession, spec: ResourceSpec, body: BaseModel) -> Any:
    record = await insert(session, spec, body.model_dump(exclude_unset=True))
    await commit(session, spec)
    return record


async def update(
    session: AsyncSession,
    spec: ResourceSpec,
    record_id: int,
    body: BaseModel,
    if_match: list[str] | None,
) -> Any:
    await _fail_fast_if_stale(session, spec, record_id, if_match)
    record = await get_live(session, spec, record_id, lock=True)
    check_version(record, if_match)
    if await apply_update(session, spec, record, body.model_dump(exclude_unset=True)):
        await commit(session, spec)
    return record


async def delete(
    session: AsyncSession, spec: ResourceSpec, record_id: int, if_match: list[str] | None
) -> Any:
    await _fail_fast_if_stale(session, spec, record_id, if_match)
    record = await get_live(session, spec, record_id, lock=True)
    check_version(record, if_match)
    await soft_delete(session, spec, record)
    await commit(session, spec)
    return record


async def put_by_external_id(
    session: AsyncSession,
    spec: ResourceSpec,
    external_id: str,
    body: BaseModel,
    if_match: list[str] | None,
) -> tuple[Any, bool]:
    """Create or replace the record the caller knows by `external_id`; (record, created).

    Replace means the body is the whole record: fields it leaves out return to their defaults.
    A repeat of the same call finds nothing to change and writes nothing. A tombstone with
    this key is brought back to life by the replacement."""
    if getattr(body, "external_id", None) not in (None, external_id):
        raise Invalid.field("external_id", "differs from the external_id in the path")
    data = body.model_dump()
    data["external_id"] = external_id
    table = spec.table
    stmt = statement(
        ("by-external-id", spec.name),
        lambda: select(table).where(table.c.external_id == bindparam("key")).with_for_update(),
    )
    record = one(await run(session, stmt, {"key": external_id}))
    if record is None:
        if if_match is not None and "*" in if_match:
            raise PreconditionFailed(f"no {spec.singular} has external_id {external_id}")
        record = await insert(session, spec, data)
        await commit(session, spec)
        return record, True
    if spec.park is not None and not sees_park(getattr(record, spec.park)):
        # Another park's record holds this key: to this caller, the key is simply taken.
        raise Conflict(
            f"external_id {external_id} is taken by a {spec.singular} outside your parks",
            errors=[FieldError(field="external_id", location="path", message="already taken")],
        )
    check_version(record, if_match)
    if record.deleted_at is not None:
        data["deleted_at"] = None
    if await apply_update(session, spec, record, data):
        await commit(session, spec)
    return record, False
