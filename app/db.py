"""Engine, pool, sessions, and the one executor every statement of a request runs through.

Services express their SQL once, as SQLAlchemy Core/ORM statements. `run` executes one: a
statement built once per shape (`statement`) is compiled once per dialect and set of parameter
names, and then runs straight on the driver's connection (asyncpg, or aiosqlite) under
SQLAlchemy's pool, with each value converted by its SQLAlchemy type's own bind and result
processors; any other statement runs through SQLAlchemy on the same connection. Why: SQLAlchemy's
async execution costs several times a short query's own time (bench/README.md), and the hottest
statements (a record by id, a list page, a write and its change row) are few and fixed in shape.
"""

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event, literal_column
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

# The driver's own integrity errors, raised as SQLAlchemy's so callers handle one kind.
_INTEGRITY = (asyncpg.exceptions.IntegrityConstraintViolationError, sqlite3.IntegrityError)
# `session.info` key of a session's `Executor`.
EXECUTOR = "executor"
# Statements kept compiled (each shape of list query is one): bounded, oldest dropped first.
MAX_STATEMENTS = 2048


class Record(dict[str, Any]):
    """A row by column name, as an item (`row["id"]`) or an attribute (`row.id`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


class Prepared:
    """A statement built once per shape, and its compiled forms (see `_Form`)."""

    __slots__ = ("forms", "stmt")

    def __init__(self, stmt: Any) -> None:
        self.stmt = stmt
        self.forms: dict[tuple[str, frozenset[str]], _Form | None] = {}


_STATEMENTS: dict[tuple[Any, ...], Prepared] = {}


def statement(key: tuple[Any, ...], build: Callable[[], Any]) -> Prepared:
    """The statement of this shape (`key`), built on first use and kept; run it with `run`
    and new parameters."""
    prepared = _STATEMENTS.get(key)
    if prepared is None:
        prepared = _STATEMENTS[key] = Prepared(build())
        if len(_STATEMENTS) > MAX_STATEMENTS:
            del _STATEMENTS[next(iter(_STATEMENTS))]
    return prepared


class _Form:
    """A statement compiled for one dialect and set of parameter names: its SQL text, each
    positional parameter's bind processor, and (once the first result is described) each
    column's result processor — what SQLAlchemy's execution works out per statement, done once."""

    def __init__(self, stmt: Any, compiled: Any, dialect: Dialect) -> None:
        self.compiled = compiled
        self.sql: str = compiled.string
        self.names: list[str] = list(compiled.positiontup or ())
        self.binds = [
            compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self.names
        ]
        self.columns = list(getattr(stmt, "exported_columns", ()))
        self.keys = [c.key for c in self.columns]
        self.dialect = dialect
        self.results: list[Any] | None = None

    def args(self, params: dict[str, Any]) -> list[Any]:
        values = self.compiled.construct_params(params)
        return [
            value if proc is None or value is None else proc(value)
            for proc, value in zip(self.binds, (values[n] for n in self.names), strict=True)
        ]

    def processors(self, oids: Iterable[Any]) -> list[Any]:
        return [
            c.type.dialect_impl(self.dialect).result_processor(self.dialect, oid)
            for c, oid in zip(self.columns, oids, strict=True)
        ]

    def records(self, rows: Iterable[Any]) -> list[Record]:
        keys = self.keys
        converted = [(k, p) for k, p in zip(keys, self.results or (), strict=False) if p]
        out = []
        for row in rows:
            record = Record(zip(keys, row, strict=True))
            for key, proc in converted:
                if (value := record[key]) is not None:
                    record[key] = proc(value)
            out.append(record)
        return out


def _form(prepared: Prepared, params: dict[str, Any], dialect: Dialect) -> "_Form | None":
    """The driver form of a prepared statement for these parameter names, or None where
    SQLAlchemy must run it: columns with Python-side defaults computed at execution, or
    parameters expanded at execution (IN lists)."""
    key = (dialect.name, frozenset(params))
    if key in prepared.forms:
        return prepared.forms[key]
    stmt = prepared.stmt
    compiled = stmt.compile(dialect=dialect, column_keys=list(params))
    deferred = any(
        getattr(compiled, name, None)
        for name in (
            "insert_prefetch",
            "update_prefetch",
            "postfetch",
            "post_compile_params",
            "literal_execute_params",
        )
    )
    form = prepared.forms[key] = None if deferred else _Form(stmt, compiled, dialect)
    return form


class Executor:
    """Runs statements on one pooled connection: on its driver where a statement is prepared,
    else through SQLAlchemy. Its transaction, where it has one, is the driver's own
    (`Database.writing`): SQLAlchemy's connection is in autocommit mode and never begins one.

    It starts on SQLAlchemy's connection (`conn`), or, for `Database.reading`, on the pool's
    connection alone (`raw`), which costs a fraction of SQLAlchemy's to check out and return;
    the first statement SQLAlchemy must run swaps that for SQLAlchemy's connection (reads run
    in autocommit, so nothing lies between the two), so a request never holds two."""

    def __init__(
        self, db: "Database", *, raw: Any = None, conn: AsyncConnection | None = None
    ) -> None:
        self.db = db
        self.raw = raw
        self.conn = conn
        self.owns_conn = False
        self.driver: Any = raw.driver_connection if raw is not None else None
        self.dialect: Dialect = db.engine.dialect
        self.sqlite = self.dialect.name == "sqlite"
        self.failed = False  # a statement failed other than by a constraint: discard it

    async def connection(self) -> AsyncConnection:
        """SQLAlchemy's connection, for the statements it runs."""
        if self.conn is None:
            await self._release_raw(None)
            self.conn = await self.db.autocommit.connect()
            self.owns_conn = True
            self.driver = (await self.conn.get_raw_connection()).driver_connection
        return self.conn

    async def run(self, stmt: Any, params: dict[str, Any] | None = None) -> list[Record]:
        params = params or {}
        form = _form(stmt, params, self.dialect) if isinstance(stmt, Prepared) else None
        if form is None:
            conn = await self.connection()
            try:
                return await _through_sqlalchemy(conn, stmt, params)
            except IntegrityError:
                raise
            except BaseException:
                self.failed = True
                raise
        args = form.args(params)
        try:
            if self.sqlite:
                if form.results is None:
                    form.results = form.processors([None] * len(form.columns))
                rows = await self.driver.execute_fetchall(form.sql, args)
            else:
                if form.results is None and form.columns:
                    described = (await self.driver.prepare(form.sql)).get_attributes()
                    form.results = form.processors(a.type.oid for a in described)
                rows = await self.driver.fetch(form.sql, *args)
        except _INTEGRITY as exc:
            raise IntegrityError(form.sql, args, exc) from exc
        except BaseException:
            self.failed = True
            raise
        return form.records(rows)

    async def command(self, sql: str) -> None:
        """A statement of the transaction's own (BEGIN, COMMIT, ROLLBACK) on the driver."""
        try:
            if self.sqlite:
                await self.driver.execute_fetchall(sql)
            else:
                await self.driver.execute(sql)
        except _INTEGRITY:
            raise
        except BaseException:
            self.failed = True
            raise

    def in_transaction(self) -> bool:
        if self.sqlite:
            return bool(self.driver.in_transaction)
        return bool(self.driver.is_in_transaction())

    def closed(self) -> bool:
        if self.sqlite:
            try:
                self.driver.in_transaction  # noqa: B018 (raises once the connection is closed)
            except ValueError:
                return True
            return False
        return bool(self.driver.is_closed())

    def doubtful(self, failure: BaseException | None) -> bool:
        """Whether the connection must not serve another request: a statement on it failed
        other than by a constraint (whatever the driver calls it: a server going down surfaces
        as several kinds, and a connection left mid-operation fails the next request), the
        request was cancelled while holding it, or it is closed, or still in a transaction.
        A refusal of the request itself (bad input, a missing record) leaves it as good."""
        return (
            self.failed
            or (failure is not None and not isinstance(failure, Exception))
            or self.closed()
            or self.in_transaction()
        )

    async def _release_raw(self, failure: BaseException | None) -> None:
        if self.raw is not None:
            raw, self.raw = self.raw, None
            if not self.doubtful(failure):
                raw.close()
                return
            # Closed by its driver first: aiosqlite's thread then ends with this event loop
            # still there to hear of it (the pool's own discard, outside SQLAlchemy's
            # greenlet, can only stop it).
            with contextlib.suppress(Exception):
                await (self.driver.close() if self.sqlite else self.driver.close(timeout=2))
            raw.invalidate()

    async def release(self, failure: BaseException | None) -> None:
        """Hands the connection back to the pool, or discards it if it is in doubt."""
        await self._release_raw(failure)
        if self.conn is not None and self.owns_conn:
            conn, self.conn = self.conn, None
            if self.doubtful(failure):
                await conn.invalidate()
            await conn.close()


def executor(session: AsyncSession) -> Executor | None:
    found: Executor | None = session.info.get(EXECUTOR)
    return found


async def run(
    session: AsyncSession, stmt: Any, params: dict[str, Any] | None = None
) -> list[Record]:
    """A statement on the session's connection, in its transaction: through its `Executor`
    (sessions of `Database.reader` and `Database.writing`), or through SQLAlchemy (the
    sessions of `Database.writer`, whose transactions SQLAlchemy runs)."""
    found = executor(session)
    if found is not None:
        return await found.run(stmt, params)
    return await _through_sqlalchemy(await session.connection(), stmt, params or {})


async def _through_sqlalchemy(
    conn: AsyncConnection, stmt: Any, params: dict[str, Any]
) -> list[Record]:
    """A statement run by SQLAlchemy's own execution, its rows as `Record`s."""
    result = await conn.execute(stmt.stmt if isinstance(stmt, Prepared) else stmt, params)
    return [Record(m) for m in result.mappings()] if result.returns_rows else []


async def commit(session: AsyncSession) -> None:
    """Commits the session's work where the session owns its transaction (`Database.writer`);
    a `Database.writing` transaction is the block's, committed when it ends, so here its
    pending ORM changes are only flushed into it."""
    if executor(session) is None:
        await session.commit()
    else:
        await session.flush()


def constants(ids: Iterable[int]) -> list[Any]:
    """Ids written into a statement as the constants they are (a park scope, part of the
    statement's shape), in order: `column.in_(constants(ids))`."""
    return [literal_column(str(int(i))) for i in sorted(ids)]


def one(rows: list[Record]) -> Record | None:
    return rows[0] if rows else None


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
    and most connections come back with none."""
    if not state.asyncio_safe:
        return  # as SQLAlchemy's own reset: not outside the event loop
    try:
        open_transaction = dbapi_connection.driver_connection.in_transaction
    except ValueError:  # aiosqlite: the connection is closed
        return
    if open_transaction:
        dbapi_connection.rollback()


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
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": "park-registry", "timezone": "UTC"}},
    )


class _Turns:
    """First-come-first-served queues of this process, one per event loop: for pool checkouts
    (a `Semaphore` of the pool's size: SQLAlchemy's asyncio pool lets a newcomer take a
    connection just returned while older requests wait, which stretched the bench's p99) and
    for SQLite's one writer (a `Lock`: SQLite's busy handler sleeps and retries, so a waiting
    writer could sleep on while the lock was free)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

        self.queued: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
            weakref.WeakKeyDictionary()
        )

    def here(self) -> Any:
        loop = asyncio.get_running_loop()
        turn = self.by_loop.get(loop)
        if turn is None:
            turn = self.by_loop[loop] = self.make()
        return turn

    async def take(self, turn: Any) -> None:
        """`turn.acquire()`, counted in `waiting()` for as long as it waits."""
        loop = asyncio.get_running_loop()
        self.queued[loop] = self.queued.get(loop, 0) + 1
        try:
            await turn.acquire()
        finally:
            self.queued[loop] -= 1

    def waiting(self) -> int:
        """How many tasks of this event loop wait for their turn now."""
        return self.queued.get(asyncio.get_running_loop(), 0)


class Database:
    """The engine and the sessions on it.

    - `reader()`: reads, in autocommit (no BEGIN/ROLLBACK around a SELECT), through an
      `Executor`.
    - `writing()`: a write transaction run on the driver (BEGIN, or BEGIN IMMEDIATE on SQLite;
      COMMIT when the block ends, ROLLBACK if it raises), through an `Executor`: the request
      path's writes.
    - `writer()`: a write session whose transactions SQLAlchemy runs (`session.commit()`,
      savepoints, rollbacks mid-way): for work that commits more than once or rolls back on
      purpose (imports, idempotency keys, accounts, the command line).
    On SQLite, writers of this process take turns, first come first served; between processes
    SQLite's busy timeout decides."""

    def __init__(self, engine: AsyncEngine, *, pool_timeout: float = 30.0) -> None:
        self.engine = engine
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.immediate = engine.execution_options(sqlite_immediate=True)
        self.pool_timeout = pool_timeout
        size = engine.pool.size() if hasattr(engine.pool, "size") else 1
        self.checkouts = _Turns(lambda: asyncio.Semaphore(max(1, size)))
        self.writers = _Turns(asyncio.Lock)
        # Set while this task holds the SQLite writer's turn (a nested writer does not queue
        # behind itself; SQLite's busy timeout answers it, as before).
        self.writing_task: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def _checkout(self) -> AsyncIterator[None]:
        gate: asyncio.Semaphore = self.checkouts.here()
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self.checkouts.take(gate)
        except TimeoutError as exc:
            raise PoolTimeout("no database connection came free in time") from exc
        try:
            yield
        finally:
            gate.release()

    @asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if not self.is_sqlite or task in self.writing_task:
            yield
            return
        turn = self.writers.here()
        await self.writers.take(turn)
        try:
            assert task is not None
            self.writing_task.add(task)
            try:
                yield
            finally:
                self.writing_task.discard(task)
        finally:
            turn.release()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """The resource routes' reads: an `Executor` on a pooled connection, in autocommit,
        behind a session bound to nothing (its statements go through `run`)."""
        async with self._checkout():
            runner = Executor(self, raw=await self.engine.raw_connection())
            failure: BaseException | None = None
            try:
                yield AsyncSession(info={EXECUTOR: runner})
            except BaseException as exc:
                failure = exc
                raise
            finally:
                await runner.release(failure)

    @asynccontextmanager
    async def _driven(self) -> AsyncIterator[AsyncSession]:
        """A session on one pooled connection in autocommit mode, with its `Executor`. A
        connection left in doubt is discarded rather than handed to the next request."""
        async with self._checkout(), self.autocommit.connect() as conn:
            runner = Executor(self, conn=conn)
            runner.driver = (await conn.get_raw_connection()).driver_connection
            failure: BaseException | None = None
            try:
                async with AsyncSession(
                    bind=conn, expire_on_commit=False, autoflush=False, info={EXECUTOR: runner}
                ) as session:
                    yield session
            except BaseException as exc:
                failure = exc
                raise
            finally:
                if runner.doubtful(failure):
                    await conn.invalidate()

    def reader(self) -> Any:
        """Reads of FastAPI's own routes and the command line: the session's ORM statements
        run through SQLAlchemy, `run`'s prepared ones on the same connection's driver."""
        return self._driven()

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncSession]:
        async with self._writer_turn(), self._driven() as session:
            runner = session.info[EXECUTOR]
            await runner.command("BEGIN IMMEDIATE" if runner.sqlite else "BEGIN")
            try:
                yield session
                await session.flush()
            except BaseException:
                if not runner.closed():
                    # Refused or failed: nothing of it is kept. Where even the ROLLBACK fails,
                    # `_driven` discards the connection, still in its transaction.
                    with contextlib.suppress(Exception):
                        await runner.command("ROLLBACK")
                raise
            try:
                await runner.command("COMMIT")
            except _INTEGRITY as exc:
                raise IntegrityError("COMMIT", [], exc) from exc

    @asynccontextmanager
    async def writer(self) -> AsyncIterator[AsyncSession]:
        async with (
            self._writer_turn(),
            self._checkout(),
            AsyncSession(self.immediate, expire_on_commit=False, autoflush=False) as session,
        ):
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
