"""Many records at once: what `records.insert` and `records.apply_update` write for one record
(the same columns, versions, times and change-feed entries, through the same functions), in a
few statements per chunk of rows. The caller runs the rules and hooks (`records.check_rules`)."""

import json
import pickle
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import SQLModel

from app.db import Record
from app.models.change import Change
from app.services import changes, records
from app.services.records import ResourceSpec

Row = dict[str, Any]  # a record's column values, by column name


def _table(model: type[SQLModel]) -> Any:
    return model.__table__  # type: ignore[attr-defined]


def updated_row(spec: ResourceSpec, record: Any, changed: dict[str, Any], now: datetime) -> Row:
    """The record's columns as `records.apply_update` leaves them (`records.next_version`)."""
    row = {column.key: getattr(record, column.key) for column in spec.table.columns}
    row.update(records.next_version(record, changed, now))
    return row


async def insert_rows(session: AsyncSession, spec: ResourceSpec, rows: list[Row]) -> None:
    """Inserts rows made by `records.new_row` (multi-row statements) and sets their `id`."""
    if not rows:
        return
    table = spec.table
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        result = await connection.execute(statement, rows)
        for row, new_id in zip(rows, result.scalars(), strict=True):
            row["id"] = new_id
        return
    # SQLite: the transaction holds the database's write lock, so the next ids are the ones
    # SQLite would pick (max + 1, ...); given them, the rows go in by one executemany (asking
    # for the ids back in order makes SQLAlchemy insert row by row there).
    last = await connection.scalar(select(func.coalesce(func.max(table.c.id), 0)))
    for new_id, row in enumerate(rows, start=last + 1):
        row["id"] = new_id
    await connection.execute(insert(table), rows)


async def update_rows(
    session: AsyncSession, spec: ResourceSpec, rows: list[Row], fields: set[str]
) -> None:
    """Writes `fields`, the version and `updated_at` of each row, by id."""
    if not rows:
        return
    table = spec.table
    names = sorted(fields | {"version", "updated_at"})
    statement = (
        update(table)
        .where(table.c.id == bindparam("_id"))
        .values({name: bindparam(f"_{name}") for name in names})
    )
    params = [{"_id": row["id"], **{f"_{n}": row[n] for n in names}} for row in rows]
    connection = await session.connection()
    await connection.execute(statement, params)


# The change table's columns as `changes.record` fills them (the sequence gives `seq`).
_FEED = changes.COLUMNS[1:]


def change_row(
    spec: ResourceSpec,
    row: Row,
    op: str,
    audit: tuple[str | None, str | None],
    previous_park_id: int | None = None,
) -> tuple[Any, ...]:
    """The change-feed entry `records.log_change` writes for this record (`records.change_entry`),
    in `_FEED` order; `audit` is (`context.actor`, `context.request_id`) of the write. Its data
    is already the JSON text the JSON column would store (`json.dumps`, as SQLAlchemy encodes
    it)."""
    actor, request_id = audit
    entry = records.change_entry(spec, Record(row), op, previous_park_id)
    entry.update(actor=actor, request_id=request_id, data=json.dumps(entry["data"]))
    return tuple(entry[name] for name in _FEED)


class ChangeLog:
    """Change-feed entries for many writes. The feed's lock (see `changes`) is held from the
    first entry to commit and blocks every other writer, so on PostgreSQL the entries wait in
    a temporary file and go into the feed at the end, under the lock, by one COPY (inserted as
    they came, they held the lock for the whole import). SQLite has one writer at a time, and
    takes them as they come."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.spool: Any = None

    async def add(self, entries: list[tuple[Any, ...]]) -> None:
        if not entries:
            return
        connection = await self.session.connection()
        if connection.dialect.name == "postgresql":
            if self.spool is None:
                self.spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/discard)
            pickle.dump(entries, self.spool, protocol=pickle.HIGHEST_PROTOCOL)
            return
        # The data is JSON text already: bound as text, not encoded again by the JSON type.
        statement = insert(_table(Change)).values(data=bindparam("data_text", type_=String()))
        keys = [("data_text" if name == "data" else name) for name in _FEED]
        await connection.execute(statement, [dict(zip(keys, e, strict=True)) for e in entries])

    async def close(self) -> None:
        """Moves spooled entries into the feed, in the order they were added."""
        if self.spool is None:
            return
        spool, self.spool = self.spool, None
        connection = await self.session.connection()
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:k)"), {"k": changes._FEED_LOCK}
        )

        async def entries() -> AsyncIterator[tuple[Any, ...]]:
            spool.seek(0)
            while True:
                try:
                    chunk = pickle.load(spool)
                except EOFError:
                    return
                for entry in chunk:
                    yield entry

        # COPY on the asyncpg connection under the session's, inside its transaction.
        driver: Any = (await connection.get_raw_connection()).driver_connection
        table = _table(Change)
        try:
            await driver.copy_records_to_table(
                table.name, records=entries(), columns=_FEED, schema_name=table.schema
            )
        finally:
            spool.close()

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
