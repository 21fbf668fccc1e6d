"""Engine and sessions: one async path for both engines (asyncpg, aiosqlite)."""

import asyncio
import functools
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import IntegrityError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_, greenlet_spawn
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty, Full

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


# `session.info` key: the asyncpg connection under a session whose transaction the caller runs
# on that connection itself (see `Database.driven_session`).
DRIVER = "driver"


async def execute_core(session: AsyncSession, stmt: Any, params: dict[str, Any]) -> Any:
    """A Core statement on the session's connection: the same transaction, without the ORM's
    execution layer, which a statement that loads no ORM object does not need. Under
    `Database.driven_session`, a statement built once (`statement`) runs on the driver itself."""
    driver = session.info.get(DRIVER)
    if driver is not None:
        compiled = _driver_form(stmt, params, session.get_bind().dialect)
        if compiled is not None:
            return await compiled.run(driver, params)
    return await (await session.connection()).execute(stmt, params)


class _Row(dict[str, Any]):
    """A result row by column name, as an item (`row["id"]`, `row._mapping`) or an attribute."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> "_Row":
        return self


class _Rows:
    """The part of SQLAlchemy's `Result` that the callers of `execute_core` use."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def one(self) -> _Row:
        if len(self.rows) != 1:
            raise (NoResultFound if not self.rows else MultipleResultsFound)()
        return self.rows[0]

    def one_or_none(self) -> _Row | None:
        return None if not self.rows else self.one()

    def scalar(self) -> Any:
        return next(iter(self.rows[0].values())) if self.rows else None

    def all(self) -> list[_Row]:
        return self.rows


class _DriverForm:
    """A statement compiled once for asyncpg, with its parameters' bind processors and its
    columns' result processors: what SQLAlchemy's execution does per statement, done once."""

    def __init__(self, stmt: Any, compiled: Any, dialect: Any) -> None:
        self.compiled = compiled
        self.sql: str = compiled.string
        self.names: list[str] = list(compiled.positiontup or ())
        self.binds = [compiled.binds[n].type._cached_bind_processor(dialect) for n in self.names]
        self.columns = list(getattr(stmt, "exported_columns", ()))
        self.keys = [c.key for c in self.columns]
        self.dialect = dialect
        self.results: list[Any] | None = None  # known once the server has described the result

    async def run(self, driver: Any, params: dict[str, Any]) -> _Rows:
        values = self.compiled.construct_params(params)
        args = [
            value if proc is None or value is None else proc(value)
            for proc, value in zip(self.binds, (values[n] for n in self.names), strict=True)
        ]
        if self.results is None and self.keys:
            described = (await driver.prepare(self.sql)).get_attributes()
            self.results = [
                c.type._cached_result_processor(self.dialect, a.type.oid)
                for c, a in zip(self.columns, described, strict=True)
            ]
        try:
            found = await driver.fetch(self.sql, *args)
        except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
            # As SQLAlchemy would raise it, so callers handle both paths alike.
            raise IntegrityError(self.sql, args, exc) from exc
        procs = self.results or []
        return _Rows(
            [
                _Row(
                    (key, value if proc is None or value is None else proc(value))
                    for key, proc, value in zip(self.keys, procs, row, strict=True)
                )
                for row in found
            ]
        )


_DRIVER_FORMS: dict[tuple[Any, frozenset[str]], _DriverForm | None] = {}


def _driver_form(stmt: Any, params: dict[str, Any], dialect: Any) -> _DriverForm | None:
    """The driver form of a statement built by `statement` for these parameter names, or None
    where SQLAlchemy must run it: a statement built elsewhere, or one whose columns take
    Python-side defaults that SQLAlchemy computes at execution."""
    key = (stmt, frozenset(params))
    if key in _DRIVER_FORMS:
        return _DRIVER_FORMS[key]
    if not any(s is stmt for s in _STATEMENTS.values()):
        return None  # not kept for the process's life: not worth compiling, nor keeping alive
    compiled = stmt.compile(dialect=dialect, column_keys=list(params))
    prefetch = any(
        getattr(compiled, name, None)
        for name in ("insert_prefetch", "update_prefetch", "postfetch")
    )
    form = _DRIVER_FORMS[key] = None if prefetch else _DriverForm(stmt, compiled, dialect)
    return form


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


def _sqlite_on_reset(dbapi_connection: Any, _record: Any, state: Any) -> None:
    """The pool's rollback of a connection handed back (`reset_on_return` is off for SQLite),
    only when a transaction is open: each rollback is a hand-off to the connection's thread,
    and most connections come back with none (reads run in autocommit, writes have committed)."""
    if not state.asyncio_safe:
        return  # as SQLAlchemy's own reset: not outside the event loop
    try:
        open_transaction = dbapi_connection.driver_connection.in_transaction
    except ValueError:  # aiosqlite: the connection is closed
        return
    if open_transaction:
        dbapi_connection.rollback()


class SqliteDriver:
    """asyncpg's `fetch` and `fetchrow`, and `is_closed`, on an aiosqlite connection, for the
    statements the fast paths send to the driver (written for asyncpg, `$1` placeholders).
    Rows are tuples in the statement's column order. Each statement, rows and all, is one
    hand-off to the connection's thread: through SQLAlchemy a read took some 18 (a cursor, the
    statement, the rows, closing the cursor, two rollbacks, for the token and the record)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return list(await self.conn.execute_fetchall(_qmark(sql), args))

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    def is_closed(self) -> bool:
        try:
            self.conn.in_transaction  # noqa: B018 (raises once the connection is closed)
        except ValueError:
            return True
        return False


@functools.cache
def _qmark(sql: str) -> str:
    """asyncpg's `$1` placeholders as SQLite's numbered `?1`: the same statement text serves
    both (the fast paths' SQL uses no `$` otherwise)."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


class FairQueue(AsyncAdaptedQueue):  # type: ignore[type-arg]
    """The pool's queue of idle connections, first come first served. SQLAlchemy's asyncio
    queue lets a newcomer take a connection that was just returned while older requests wait,
    and a waiter that loses that race queues again at the back, so under load a few requests
    wait many turns: the long tail of the bench's p99 (issue 6). Here a returned connection
    goes straight to the oldest waiter, and a newcomer waits behind those already waiting."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._idle: deque[Any] = deque()
        self._waiters: deque[asyncio.Future[Any]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def put_nowait(self, item: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._idle.append(item)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.put_nowait(item)  # the pool never holds more than it made: a put never waits

    def get_nowait(self) -> Any:
        if not self._idle:
            raise Empty()
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._idle or not block:
            return self.get_nowait()  # with connections idle, nobody is waiting
        return await_(self._wait(seconds=timeout))

    async def _wait(self, seconds: float | None) -> Any:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as exc:
            handed = waiter.done() and not waiter.cancelled()
            if isinstance(exc, TimeoutError):
                if handed:  # handed over just as the time ran out: it is ours
                    return waiter.result()
                raise Empty() from exc
            if handed:  # cancelled after a connection was handed over: pass it on
                self.put_nowait(waiter.result())
            raise


class FairPool(AsyncAdaptedQueuePool):
    _queue_class = FairQueue


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
            poolclass=FairPool,
            pool_reset_on_return=None,  # `_sqlite_on_reset` rolls back what is open
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        event.listen(engine.sync_engine, "reset", _sqlite_on_reset)
        return engine
    return create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=max_overflow,
        poolclass=FairPool,
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": "park-registry", "timezone": "UTC"}},
    )


# Set while this task holds `OneWriterAtATime`'s turn.
_WRITING: ContextVar[bool] = ContextVar("writing", default=False)


class OneWriterAtATime:
    """SQLite's writer sessions, one at a time in this process, in the order they were asked
    for. SQLite lets one transaction write; the others wait in its busy handler, which sleeps
    and tries again (1, 2, 5 … 100 ms), so a writer can sleep on while the lock is free and a
    newcomer takes it: the bench's SQLite create had a p99 of 1.3 s at 32 connections. Here
    they queue on an asyncio lock (first come, first served) instead; between processes the busy
    timeout still decides. A task that already holds its turn opens another session without
    queueing behind itself (SQLite's busy timeout then answers, as before)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        if _WRITING.get():
            async with self.sessions() as session:
                yield session
            return
        loop = asyncio.get_running_loop()
        turn = self.turns.get(loop) or self.turns.setdefault(loop, asyncio.Lock())
        async with turn:
            token = _WRITING.set(True)
            try:
                async with self.sessions() as session:
                    yield session
            finally:
                _WRITING.reset(token)


class Database:
    """The engine and its two session factories: reads, and writes (which lock up front)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLAlchemy neither begins nor commits on these connections. Reads run so: no
        # BEGIN/ROLLBACK round trips around a single SELECT (the bench measured 10-20% of a
        # GET's CPU there); so do `driven_session`s, whose transaction is run on the driver.
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.reader = async_sessionmaker(
            self.autocommit,
            expire_on_commit=False,
            autoflush=False,
        )
        writer = async_sessionmaker(
            engine.execution_options(sqlite_immediate=True),
            expire_on_commit=False,
            autoflush=False,
        )
        self.writer: Callable[[], AbstractAsyncContextManager[AsyncSession]] = (
            OneWriterAtATime(writer) if self.is_sqlite else writer
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
        """The driver's own connection under one of the pool's connections, for the few hot
        statements where SQLAlchemy's execution machinery costs more than the query: the fast
        reads and the service-token check. asyncpg's connection, or on SQLite a `SqliteDriver`
        with the same `fetch` / `fetchrow`. Autocommit, as the driver is outside a
        transaction. A connection that failed or was abandoned mid-statement is discarded
        rather than handed to the next request."""
        fairy = await greenlet_spawn(self.engine.sync_engine.pool.connect)
        conn = fairy.driver_connection
        if self.is_sqlite:
            conn = SqliteDriver(conn)
        try:
            yield conn
        except BaseException as exc:
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

    @asynccontextmanager
    async def driven_session(self) -> AsyncIterator[AsyncSession]:
        """A session (PostgreSQL) whose transaction is run on its asyncpg connection, held for
        the session's life and in `session.info[DRIVER]`: `driven_transaction` sends BEGIN and
        COMMIT, `execute_core` sends the statements built once straight to the driver, and
        everything else goes through SQLAlchemy on the same connection, in autocommit mode so
        that SQLAlchemy neither begins nor commits (the session's own `commit()` is then a
        no-op). Per write this saves SQLAlchemy's execution of BEGIN, COMMIT and every hot
        statement: most of a create's CPU after FastAPI's (issue 6)."""
        async with self.autocommit.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            failure: BaseException | None = None
            try:
                async with AsyncSession(
                    bind=conn, expire_on_commit=False, autoflush=False, info={DRIVER: driver}
                ) as session:
                    yield session
            except BaseException as exc:
                failure = exc
                raise
            finally:
                if (
                    driver.is_closed()
                    or driver.is_in_transaction()
                    or isinstance(failure, BROKEN)
                    or (failure is not None and not isinstance(failure, Exception))
                ):
                    await conn.invalidate()

    @staticmethod
    @asynccontextmanager
    async def driven_transaction(session: AsyncSession) -> AsyncIterator[None]:
        """BEGIN … COMMIT on a `driven_session`'s connection; ROLLBACK if the block raises. A
        connection left in doubt (cancelled, broken, or failing to roll back) is discarded by
        `driven_session`, not handed to the next request mid-transaction."""
        driver = session.info[DRIVER]
        await driver.execute("BEGIN")
        try:
            yield
        except Exception:
            await driver.execute("ROLLBACK")
            raise
        await driver.execute("COMMIT")

    async def dispose(self) -> None:
        await self.engine.dispose()
