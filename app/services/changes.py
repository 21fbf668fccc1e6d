"""The change log: one row per write, in the write's own transaction, in commit order."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pydantic_core
from sqlalchemy import Integer, Text, bindparam, cast, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app import context
from app.db import Record, constants, run, statement
from app.models.change import Change

# PostgreSQL hands out sequence values at insert but makes rows visible at commit, so a poller
# could pass seq 10 before seq 9 commits. Holding this transaction-scoped lock from the first
# change row to commit makes seq order equal commit order. SQLite writers are serial anyway.
_FEED_LOCK = 0x5EED


async def record(
    session: AsyncSession,
    *,
    resource: str,
    record_id: int,
    external_id: str | None,
    op: str,
    version: int,
    changed_at: datetime,
    park_id: int | None,
    previous_park_id: int | None,
    data: dict[str, Any] | None,
) -> None:
    """Appends the change row with one Core INSERT (no ORM instance: nothing reads it back in
    this transaction). On PostgreSQL the same statement first takes the feed lock, so the row's
    seq is drawn under it: `INSERT … SELECT … FROM pg_advisory_xact_lock(k)`."""
    values = {
        "resource": resource,
        "record_id": record_id,
        "external_id": external_id,
        "op": op,
        "version": version,
        "changed_at": changed_at,
        "actor": context.actor.get(),
        "request_id": context.request_id.get(),
        "park_id": park_id,
        "previous_park_id": previous_park_id,
        "data": data,
    }
    dialect = session.get_bind().dialect.name
    await run(session, statement(("change", dialect), lambda: _insert(dialect)), values)


def _insert(dialect: str) -> Any:
    """The change row's INSERT for one dialect (built once: `db.statement`)."""
    table = Change.__table__  # type: ignore[attr-defined]
    names = [c.key for c in table.columns if c.key != "seq"]
    if dialect != "postgresql":
        stmt = insert(table).values({k: bindparam(k, type_=table.c[k].type) for k in names})
    else:
        row = select(*(bindparam(k, type_=table.c[k].type).label(k) for k in names))
        locked = row.select_from(func.pg_advisory_xact_lock(_FEED_LOCK).table_valued())
        stmt = insert(table).from_select(names, locked)
    return stmt


# The change table's columns in order: `seq`, what a write records, and the record's `data`
# last (`page_bytes` and `bulk.ChangeLog` rely on that order).
COLUMNS = tuple(c.key for c in Change.__table__.columns)  # type: ignore[attr-defined]
assert COLUMNS[0] == "seq" and COLUMNS[-1] == "data"
_AT = {name: i for i, name in enumerate(COLUMNS)}
_SEQ, _RESOURCE, _ID, _EXTERNAL_ID, _OP, _VERSION, _CHANGED_AT, _ACTOR, _REQUEST_ID, _DATA = (
    _AT[name]
    for name in (
        "seq",
        "resource",
        "record_id",
        "external_id",
        "op",
        "version",
        "changed_at",
        "actor",
        "request_id",
        "data",
    )
)


def _in_scope(table: Any, parks: frozenset[int]) -> Any:
    """Entries a caller confined to `parks` sees: its parks' records, the shared sources, and
    the records that left its parks (shown as deletions: `_as_seen`)."""
    listed = constants(parks)
    return or_(
        table.c.park_id.is_(None),
        table.c.park_id.in_(listed),
        table.c.previous_park_id.in_(listed),
    )


def _as_seen(row: Sequence[Any], parks: frozenset[int] | None) -> Sequence[Any]:
    """A feed row as a caller confined to `parks` sees it: a record moved out of its parks has
    been deleted, for all it can tell (its data, now another park's, is not shown)."""
    park_id = row[_AT["park_id"]]
    if parks is None or park_id is None or park_id in parks:
        return row
    seen = list(row)
    seen[_OP], seen[_DATA] = "delete", None
    return seen


async def page_json(
    session: AsyncSession,
    seq: int,
    limit: int,
    resource: str | None,
    records: Mapping[str, Any] | None = None,
) -> bytes:
    """A feed page as JSON (the `ChangePage` schema), with each entry's `data` passed through
    as the JSON text it was stored as: the feed is read far more often than written, and
    parsing every snapshot only to serialise it again was most of a page's cost. For anonymous
    public reads (`records`: each resource's table, to tell current versions) entries name no
    actor and no request, and hold data only as current versions (`_current_only`); for a
    caller confined to some parks (`context.parks`) only theirs, with seq numbers as they are,
    so that it resumes after its own last_seq and misses nothing of its view."""
    parks = context.parks.get()

    def build() -> Any:
        table = Change.__table__  # type: ignore[attr-defined]
        columns = [table.c[c] for c in COLUMNS[:-1]]
        stmt = select(*columns, cast(table.c.data, Text).label("data")).where(
            table.c.seq > bindparam("after")
        )
        if resource is not None:
            stmt = stmt.where(table.c.resource == bindparam("resource"))
        if parks is not None:
            stmt = stmt.where(_in_scope(table, parks))
        return stmt.order_by(table.c.seq).limit(bindparam("limit", type_=Integer))

    values: dict[str, Any] = {"after": seq, "limit": limit}
    if resource is not None:
        values["resource"] = resource
    scope = None if parks is None else tuple(sorted(parks))
    rows = await run(session, statement(("feed", resource is not None, scope), build), values)
    table: list[Sequence[Any]] = [tuple(r.values()) for r in rows]
    if parks is not None:
        table = [_as_seen(row, parks) for row in table]
    if records is not None:
        table = await _current_only(session, table, records)
    return page_bytes(table, seq, records is None)


async def _current_only(
    session: AsyncSession, rows: list[Sequence[Any]], tables: Mapping[str, Any]
) -> list[Sequence[Any]]:
    """A feed page as an anonymous public reader sees it: the registry as it is, not its past.
    An entry keeps its data only while it is its record's current version; a superseded or
    deleted record's entries keep their ids (the tombstones a consumer needs), not the data.
    `tables`: each resource's table of records, by name."""
    wanted: dict[str, set[int]] = {}
    for row in rows:
        if row[_DATA] is not None:
            wanted.setdefault(row[_RESOURCE], set()).add(row[_ID])
    current: set[tuple[str, int, int]] = set()
    for resource, ids in wanted.items():
        of = tables[resource]
        live = of.c.id.in_(sorted(ids)), of.c.deleted_at.is_(None)
        found = await run(session, select(of.c.id, of.c.version).where(*live))
        current |= {(resource, r.id, r.version) for r in found}
    out: list[Sequence[Any]] = []
    for row in rows:
        if row[_DATA] is not None and (row[_RESOURCE], row[_ID], row[_VERSION]) not in current:
            row = list(row)
            row[_DATA] = None
        out.append(row)
    return out


def page_bytes(rows: Sequence[Sequence[Any]], seq: int, staff: bool = True) -> bytes:
    """The `ChangePage` JSON of feed rows (`COLUMNS`, the data as text) after `seq`; `actor`
    and `request_id` only for `staff`."""
    items = []
    for row in rows:
        head = pydantic_core.to_json(
            {
                "seq": row[_SEQ],
                "resource": row[_RESOURCE],
                "id": row[_ID],
                "external_id": row[_EXTERNAL_ID],
                "op": row[_OP],
                "version": row[_VERSION],
                "changed_at": row[_CHANGED_AT],
                "actor": row[_ACTOR] if staff else None,
                "request_id": row[_REQUEST_ID] if staff else None,
            }
        )
        data = b"null" if row[_DATA] is None else row[_DATA].encode()
        items.append(head[:-1] + b',"data":' + data + b"}")
    last_seq = rows[-1][0] if rows else seq
    return b'{"items":[' + b",".join(items) + b'],"last_seq":' + str(last_seq).encode() + b"}"


async def history(session: AsyncSession, resource: str, record_id: int) -> list[Any]:
    """A record's changes in order, as the caller (`context.parks`) sees them: none if the
    record was never in its parks."""
    parks = context.parks.get()

    def build() -> Any:
        table = Change.__table__  # type: ignore[attr-defined]
        stmt = select(table).where(
            table.c.resource == bindparam("resource"), table.c.record_id == bindparam("id")
        )
        if parks is not None:
            stmt = stmt.where(_in_scope(table, parks))
        return stmt.order_by(table.c.seq)

    scope = None if parks is None else tuple(sorted(parks))
    rows = await run(
        session, statement(("history", scope), build), {"resource": resource, "id": record_id}
    )
    if parks is None:
        return rows
    return [
        Record(zip(COLUMNS, _as_seen([r[c] for c in COLUMNS], parks), strict=True)) for r in rows
    ]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
