"""Engine and sessions: one async path for both engines (asyncpg, aiosqlite)."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import greenlet_spawn

# Errors after which a driver connection is not reused.
BROKEN = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
)

_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def statement(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """A statement built once per shape (`key`) and run again with new bind parameters: that
    skips SQLAlchemy's construction and cache-key work, most of a short statement's cost."""
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build()
    return stmt


async def execute_core(session: AsyncSession, stmt: Any, params: dict[str, Any]) -> Any:
    """A Core statement on the session's connection: the same transaction, without the ORM's
    execution layer, which a statement that loads no ORM object does not need."""
    return await (await session.connection()).execute(stmt, params)


ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}


def async_url(url: str | URL) -> URL:
    """The same database, addressed through its async driver (`postgresql://` → asyncpg)."""
    parsed = make_url(url)
    backend = "postgresql" if parsed.get_backend_name() in ("postgresql", "postgres") else None
    backend = backend or parsed.get_backend_name()
    if backend not in ASYNC_DRIVERS:
        raise ValueError(f"unsupported database: {backend} (use postgresql or sqlite)")
    return parsed.set(drivername=f"{backend}+{ASYNC_DRIVERS[backend]}")


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" hook, not the driver, decide how a transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that later upgrades to a write is not rescued by the busy timeout,
    # so write transactions take the write lock up front.
    options = conn.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


def make_engine(url: str | URL, *, pool_size: int = 20, max_overflow: int = 0) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        if target.database and target.database != ":memory:":
            Path(target.database).parent.mkdir(parents=True, exist_ok=True)
        # The same pool bounds as PostgreSQL: SQLAlchemy's default (5 + 10) made the 16th
        # concurrent writer in a process wait for a connection, and time out as a 503 under load.
        engine = create_async_engine(
            target,
            connect_args={"timeout": 30},
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    return create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": "park-registry", "timezone": "UTC"}},
    )


class Database:
    """The engine and its two session factories: reads, and writes (which lock up front)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips around a single SELECT
        # (the bench measured 10-20% of a GET's CPU there).
        self.reader = async_sessionmaker(
            engine.execution_options(isolation_level="AUTOCOMMIT"),
            expire_on_commit=False,
            autoflush=False,
        )
        self.writer = async_sessionmaker(
            engine.execution_options(sqlite_immediate=True),
            expire_on_commit=False,
            autoflush=False,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    async def read_session(self) -> AsyncIterator[AsyncSession]:
        async with self.reader() as session:
            yield session

    async def write_session(self) -> AsyncIterator[AsyncSession]:
        async with self.writer() as session:
            yield session

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        """The driver's own connection (asyncpg's) under one of the pool's connections, for
        the few hot statements where SQLAlchemy's execution machinery costs more than the
        query: the fast reads and the service-token check. Autocommit, as the driver is
        outside a transaction. A connection that failed or was abandoned mid-statement is
        discarded rather than handed to the next request."""
        fairy = await greenlet_spawn(self.engine.sync_engine.pool.connect)
        try:
            yield fairy.driver_connection
        except BaseException as exc:
            conn = fairy.driver_connection
            if (
                not isinstance(exc, Exception)  # cancelled mid-statement
                or isinstance(exc, BROKEN)
                or conn is None
                or conn.is_closed()
            ):
                await greenlet_spawn(fairy.invalidate, exc)
            raise
        finally:
            await greenlet_spawn(fairy.close)

    async def dispose(self) -> None:
        await self.engine.dispose()
