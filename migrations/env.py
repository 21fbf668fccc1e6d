"""Alembic environment: async engines (asyncpg / aiosqlite), batch mode for SQLite."""

import asyncio

from alembic import context
from sqlalchemy import JSON, Column
from sqlalchemy.engine import Connection

import app.models  # noqa: F401  (registers every table)
from app.config import get_settings
from app.db import make_engine
from app.models.common import metadata

config = context.config
# `alembic …` from the shell reads DATABASE_URL like the app does; app.migrate passes its own.
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def _driver(connection: Connection, sql: str) -> list[tuple[object, ...]]:
    """A statement on the driver's own connection, outside SQLAlchemy's transaction (SQLite
    ignores `PRAGMA foreign_keys` inside one)."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def compare_server_default(
    context: object,
    inspected_column: object,
    metadata_column: Column[object],
    inspected_default: str | None,
    metadata_default: object,
    rendered_metadata_default: str | None,
) -> bool | None:
    """PostgreSQL cannot compare two `json` values, which Alembic's own comparison asks it to:
    a JSON column's default is compared as text, without the cast PostgreSQL reports it with.
    None: Alembic's comparison, for every other column."""
    if not isinstance(metadata_column.type, JSON):
        return None
    inspected = (inspected_default or "").removesuffix("::json").removesuffix("::jsonb")
    return inspected != (rendered_metadata_default or "")


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=compare_server_default,
    )
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a SQLite table by copy, drop and rename; with foreign keys
        # enforced, dropping a table that other rows refer to fails. Alembic's batch docs: turn
        # them off for the migration, and check every reference once it is done.
        _driver(connection, "PRAGMA foreign_keys=OFF")
    try:
        with context.begin_transaction():
            context.run_migrations()
            # Inside the transaction: a migration that broke a reference is rolled back.
            if sqlite and (broken := _driver(connection, "PRAGMA foreign_key_check")):
                raise RuntimeError(f"the migration left rows referring to nothing: {broken[:10]}")
    finally:
        if sqlite:
            _driver(connection, "PRAGMA foreign_keys=ON")


async def run_async_migrations() -> None:
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())
