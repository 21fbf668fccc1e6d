"""Reliability: concurrent writers, crashes and a database restart, against real server
processes. Every figure the issue asks for is asserted and printed (`-s` shows it)."""

import asyncio
import contextlib
import csv
import io
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from app.db import EXECUTOR, Database, make_engine
from tests.conftest import DatabaseFactory
from tests.helpers import API, problem
from tests.servers import process_state, server, wait_for

pytestmark = pytest.mark.slow


INCREMENTS_DEADLINE_SECONDS = 600


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _increment(base: str, token: str, url: str, times: int, stats: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=base, headers=auth(token), timeout=60) as http:
        current = await http.get(url)
        # Bounded: a client that never gets its turn fails the test instead of hanging it.
        deadline = asyncio.get_running_loop().time() + INCREMENTS_DEADLINE_SECONDS
        for done in range(times):
            backoff = 0.05
            for tries in itertools.count(1):
                etag, value = current.headers["etag"], int(current.json()["value"].split(".")[0])
                answer = await http.patch(
                    url, json={"value": str(value + 1)}, headers={"If-Match": etag}
                )
                stats[str(answer.status_code)] = stats.get(str(answer.status_code), 0) + 1
                if answer.status_code == 200:
                    current = answer
                    break
                assert answer.status_code == 412, answer.text
                assert asyncio.get_running_loop().time() < deadline, (
                    f"a client's increment {done + 1} of {times} still lost after {tries} tries"
                    f" and {INCREMENTS_DEADLINE_SECONDS} s"
                )
                # Full jitter, growing: 32 contenders for one row soon take turns instead of
                # all re-reading and losing together.
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, 1.0)
                current = await http.get(url)


def test_32_clients_x_200_increments_lose_no_update_on_postgresql(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    if db_factory.engine != "postgresql":
        pytest.skip("SQLite serialises writers; the lost-update race is a PostgreSQL matter")
    url = db_factory.fresh()
    with server(url, workers=2) as (base, _):
        with httpx.Client(base_url=base, headers=auth(tokens["admin"])) as http:
            park = http.post(f"{API}/parks", json={"name": "园区", "level": "other"}).json()
            target = http.post(
                f"{API}/targets",
                json={
                    "park_id": park["id"],
                    "metric": "other",
                    "value": "0",
                    "unit": "次",
                    "recurrence": "annual",
                },
            ).json()
        stats: dict[str, int] = {}
        started = time.monotonic()

        async def run() -> None:
            await asyncio.gather(
                *(
                    _increment(base, tokens["admin"], f"{API}/targets/{target['id']}", 200, stats)
                    for _ in range(32)
                )
            )

        asyncio.run(run())
        with httpx.Client(base_url=base, headers=auth(tokens["admin"])) as http:
            final = http.get(f"{API}/targets/{target['id']}").json()
        print(
            f"\nincrements: final {final['value']}, version {final['version']}, answers {stats}, {time.monotonic() - started:.1f} s"
        )
        assert final["value"] == "6400.00"
        assert final["version"] == 6401
        assert set(stats) <= {"200", "412"}
    db_factory.drop(url)


def test_16_concurrent_writers_on_sqlite_never_see_database_is_locked(
    db_factory: DatabaseFactory, tokens: dict[str, str], tmp_path: Path
) -> None:
    if db_factory.engine != "sqlite":
        pytest.skip("the SQLite write lock")
    url = db_factory.fresh()
    statuses: dict[int, int] = {}
    bodies: list[str] = []
    log = tmp_path / "server.log"

    def server_log() -> str:  # why a request failed, when one does
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    with server(url, workers=2, log=log) as (base, _):  # two processes contend for one file

        async def writer(w: int) -> None:
            async with httpx.AsyncClient(
                base_url=base, headers=auth(tokens["admin"]), timeout=60
            ) as http:
                made = await http.post(f"{API}/parks", json={"name": f"并发{w}", "level": "other"})
                assert made.status_code == 201, f"{made.text}\n{server_log()}"
                park = made.json()
                for i in range(40):
                    r = await http.post(
                        f"{API}/projects",
                        json={"park_id": park["id"], "name": f"p{w}-{i}", "stage": "planning"},
                    )
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != 201:
                        bodies.append(r.text)
                    r = await http.patch(f"{API}/parks/{park['id']}", json={"city": f"c{i}"})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        async def run() -> None:
            await asyncio.gather(*(writer(w) for w in range(16)))

        asyncio.run(run())
        with httpx.Client(base_url=base, headers=auth(tokens["admin"])) as http:
            count = 0
            cursor = None
            for _ in range(10):  # 640 projects: two pages of 500
                page = http.get(
                    f"{API}/projects",
                    params={"limit": 500, **({"cursor": cursor} if cursor else {})},
                ).json()
                count += len(page["items"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
            else:
                raise AssertionError(f"the project list had no end after 10 pages ({count})")
    print(f"\nsqlite writers: {statuses}")
    assert bodies == [] and set(statuses) == {200, 201}, f"{statuses} {bodies[:3]}\n{server_log()}"
    assert count == 16 * 40
    db_factory.drop(url)


def test_the_pool_hands_connections_out_in_the_order_they_were_asked_for(
    db_factory: DatabaseFactory,
) -> None:
    """A request that waits for a pooled connection gets the next one returned: a newcomer
    does not take it first (SQLAlchemy's asyncio pool lets it, so the database's checkouts
    queue first come first served), and a waiter cancelled while it waits leaves its turn to
    the next; a wait that times out is a pool timeout (503) and leaves the pool whole."""
    url = db_factory.fresh()

    async def go() -> tuple[list[str], list[str], int]:
        db = Database(make_engine(url, pool_size=1, max_overflow=0), pool_timeout=0.3)
        order: list[str] = []

        async def use(name: str) -> None:
            async with db.reader() as session:
                order.append(name)
                await session.execute(text("SELECT 1"))

        try:
            async with db.reader():
                gate = db.checkouts
                first = asyncio.create_task(use("waiting"))
                await _queued(gate, 1, "a request waiting for the one connection")
            await use("newcomer")  # asks as the held one comes back, before `first` has run
            await first
            served = list(order)

            order.clear()
            async with db.reader():
                doomed = asyncio.create_task(use("cancelled"))
                await _queued(gate, 1, "the first of two requests waiting for the connection")
                second = asyncio.create_task(use("second"))
                await _queued(gate, 2, "the second of two requests waiting for the connection")
                doomed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await doomed
            await asyncio.wait_for(second, 10)
            await asyncio.wait_for(use("after"), 10)  # the pool still has its connection
            rescued = list(order)

            async with db.reader():
                with pytest.raises(SQLAlchemyTimeoutError):
                    await use("too late")
            async with db.reader() as session:
                left = int((await session.execute(text("SELECT 1"))).scalar_one())
        finally:
            await db.dispose()
        return served, rescued, left

    assert asyncio.run(go()) == (["waiting", "newcomer"], ["second", "after"], 1)
    db_factory.drop(url)


def test_a_sqlite_connection_handed_back_mid_transaction_is_discarded(
    db_factory: DatabaseFactory,
) -> None:
    """A connection that comes back to the pool still inside a transaction (its request was
    cancelled, or its ROLLBACK failed) is not handed to the next request: it is discarded, and
    SQLite's write lock goes with it."""
    if db_factory.engine != "sqlite":
        pytest.skip("SQLite's write lock")
    url = db_factory.fresh()

    async def go(locked: Callable[[], bool]) -> tuple[bool, bool, bool]:
        db = Database(make_engine(url, pool_size=1, max_overflow=0))
        try:
            async with db.reader() as session:
                runner = session.info[EXECUTOR]
                await runner.command("BEGIN IMMEDIATE")
                await session.execute(
                    text(
                        "INSERT INTO park (name, level, version, created_at, updated_at)"
                        " VALUES ('半途', 'other', 1, '2026-01-01', '2026-01-01')"
                    )
                )
                during = locked()
            after = locked()
            async with db.reader() as session:
                left = (
                    await session.execute(text("SELECT count(*) FROM park WHERE name = '半途'"))
                ).scalar_one()
            return during, after, left == 0
        finally:
            await db.dispose()

    with _WriteProbe(url) as probe:
        assert asyncio.run(go(probe.writing)) == (True, False, True)
    db_factory.drop(url)


def test_sqlite_writers_in_one_process_take_turns_in_the_order_they_asked(
    db_factory: DatabaseFactory,
) -> None:
    """One writer session at a time, first come first served, rather than all but one asleep
    in SQLite's busy handler; a task already writing may open another session."""
    if db_factory.engine != "sqlite":
        pytest.skip("SQLite's one writer")
    url = db_factory.fresh()

    async def go() -> tuple[list[str], int, int]:
        db = Database(make_engine(url, pool_size=8, max_overflow=0))
        order: list[str] = []
        inside = peak = 0
        others_asked = asyncio.Event()

        async def write(name: str, hold: bool = False) -> None:
            nonlocal inside, peak
            async with db.writer() as session:
                inside += 1
                peak = max(peak, inside)
                order.append(name)
                await session.execute(
                    text(
                        "INSERT INTO park (name, level, version, created_at, updated_at)"
                        " VALUES (:name, 'other', 1, '2026-01-01', '2026-01-01')"
                    ),
                    {"name": name},
                )
                if hold:  # still writing when the others ask
                    await asyncio.wait_for(others_asked.wait(), 10)
                await session.commit()
                inside -= 1

        try:
            turn = db.writers
            writers = [asyncio.create_task(write("轮0", hold=True))]
            await _until(lambda: order == ["轮0"], "the first writer writing")
            for i in range(1, 6):  # each asks once the one before is waiting its turn
                writers.append(asyncio.create_task(write(f"轮{i}")))
                await _queued(turn, i, f"writer {i} waiting for its turn")
            others_asked.set()
            await asyncio.gather(*writers)
            async with db.writer(), asyncio.timeout(5), db.writer():
                pass  # no waiting behind itself
            async with db.reader() as session:
                count = (
                    await session.execute(text("SELECT count(*) FROM park WHERE name LIKE '轮%'"))
                ).scalar_one()
        finally:
            await db.dispose()
        return order, peak, count

    assert asyncio.run(go()) == ([f"轮{i}" for i in range(6)], 1, 6)
    db_factory.drop(url)


async def _until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    """Lets the event loop run until `condition` holds; fails naming `what` after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"within {seconds:g} s: {what} did not happen"
        await asyncio.sleep(0.001)


async def _queued(turns: Any, count: int, what: str) -> None:
    """Until `count` tasks wait for their turn on `turns` (`db.checkouts`: the pool's checkout
    gate; `db.writers`: SQLite's writer lock), as the app counts them."""
    await _until(lambda: turns.waiting() >= count, what)


def _names(database_url: str, table: str) -> list[str]:
    """Every name in a table, read from the database itself rather than through the app."""
    query = f"SELECT name FROM {table}"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(make_url(database_url).database) as conn:
            return [row[0] for row in conn.execute(query)]

    async def go() -> list[str]:
        conn = await asyncpg.connect(database_url)
        try:
            return [row[0] for row in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(go())


def _count(database_url: str, name_prefix: str, table: str = "park") -> int:
    return sum(name.startswith(name_prefix) for name in _names(database_url, table))


class _WriteProbe:
    """Whether a write transaction is open right now (on PostgreSQL: one that has written rows),
    and on PostgreSQL how far it has got, seen from outside the app."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.runner = asyncio.Runner()
        self.pg: asyncpg.Connection | None = None
        if not database_url.startswith("sqlite"):
            self.pg = self.runner.run(asyncpg.connect(database_url))

    def writing(self) -> bool:
        if self.pg is None:
            # The app's writes hold SQLite's write lock (BEGIN IMMEDIATE) until they commit.
            path = make_url(self.url).database
            conn = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:  # "database is locked"
                return True
            finally:
                conn.close()
        # A transaction gets an id when it first writes.
        busy = self._fetch(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        )[0]["n"]
        return bool(busy)

    def _fetch(self, query: str) -> list[asyncpg.Record]:
        assert self.pg is not None
        return list(self.runner.run(self.pg.fetch(query)))

    def parks_numbered(self) -> int:
        """PostgreSQL: the park ids handed out so far. A sequence is not transactional: a
        transaction's inserts show here as they are made, committed or not."""
        return int(
            self._fetch(
                "SELECT coalesce(pg_sequence_last_value("
                "pg_get_serial_sequence('park', 'id')::regclass), 0) AS n"
            )[0]["n"]
        )

    def committed(self, prefix: str) -> int:
        """PostgreSQL: the parks committed whose name begins with `prefix`."""
        assert self.pg is not None
        query = "SELECT count(*) FROM park WHERE starts_with(name, $1)"
        return int(self.runner.run(self.pg.fetchval(query, prefix)))

    def statements_running(self) -> int:
        """PostgreSQL: the statements other sessions of this database are running."""
        return int(
            self._fetch(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state = 'active'"
            )[0]["n"]
        )

    def __enter__(self) -> "_WriteProbe":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pg is not None:
            self.runner.run(self.pg.close())
        self.runner.close()


def _integrity(database_url: str) -> str:
    path = make_url(database_url).database
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


class _Call(threading.Thread):
    """A request sent on a thread of its own; its answer's status, or what went wrong."""

    def __init__(self, send: Callable[[], httpx.Response]) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.status: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status = self.send().status_code
        except BaseException as exc:  # the server killed under it, or anything else: kept
            self.error = exc

    def outcome(self) -> str:
        return f"answered {self.status}" if self.error is None else repr(self.error)


def _freeze(process: subprocess.Popen[bytes]) -> None:
    """Stops the server where it stands (SIGSTOP): it sends nothing more to the database, and
    what it holds there (a transaction, SQLite's write lock) stays as it is until it is killed."""
    process.send_signal(signal.SIGSTOP)
    wait_for(lambda: process_state(process.pid) == "T", 10, "the server stopping on SIGSTOP")


def test_sigkill_in_the_middle_of_a_batch_leaves_all_or_nothing(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    """A server killed (SIGKILL) while a batch's transaction is open, with some of its items
    written, leaves none of them; every kill is shown to have come inside the transaction.

    The server is first frozen (SIGSTOP) at a random point of the batch, and the transaction seen
    open from outside: on PostgreSQL the batch's session has a transaction id, and the park id
    sequence (not transactional) shows how many items it has inserted (a random number of them
    is waited for); on SQLite the server holds the write lock (a random moment after it took
    it). A freeze that came after the commit is let go on, and the
    batch must then be all there; the attempt does not count as a kill."""
    url = db_factory.fresh()
    sqlite = url.startswith("sqlite")
    rng = random.Random(7)
    admin = auth(tokens["admin"])
    kills_wanted, attempts_allowed = 5, 10

    def batch(prefix: str) -> dict[str, Any]:
        return {
            "items": [
                {"op": "create", "data": {"name": f"{prefix}{i}", "level": "other"}}
                for i in range(1000)
            ]
        }

    def sender(base: str, prefix: str) -> _Call:
        body = batch(prefix)
        return _Call(
            lambda: httpx.post(f"{base}{API}/parks/batch", json=body, headers=admin, timeout=120)
        )

    held = 0.0  # SQLite: how long a batch holds the write lock here, to freeze anywhere in it
    outcomes: list[str] = []
    kills = 0
    with _WriteProbe(url) as probe:
        if sqlite:
            with server(url) as (base, _):
                call = sender(base, "量-")
                call.start()
                wait_for(lambda: probe.writing() or not call.is_alive(), 60, "the batch writing")
                took = time.monotonic()
                wait_for(lambda: not probe.writing(), 60, "the batch committing")
                held = time.monotonic() - took
                call.join(60)
                assert call.status == 200, call.outcome()

        def freeze_inside(process: subprocess.Popen[bytes], call: _Call, prefix: str) -> str | None:
            """Freezes the server at a random point of its batch; what of the batch's transaction
            is then seen open, or None if it has already committed."""
            call.start()
            if sqlite:
                wait_for(
                    lambda: probe.writing() or not call.is_alive(),
                    60,
                    "the batch taking the write lock",
                )
                # Where in the batch to freeze, chosen at random (what it hit is checked below).
                time.sleep(rng.uniform(0, 1) * held)
                _freeze(process)
                return "the write lock held" if probe.writing() else None
            target = rng.randint(1, 950)
            before = probe.parks_numbered()
            wait_for(
                lambda: probe.parks_numbered() - before >= target or not call.is_alive(),
                60,
                f"the batch inserting {target} of its items",
            )
            _freeze(process)
            # What the server had sent before it stopped is done; then nothing moves.
            wait_for(
                lambda: probe.statements_running() == 0,
                30,
                "the database finishing the frozen server's statement",
            )
            if not probe.writing():
                return None
            rows = probe.parks_numbered() - before - probe.committed(prefix)
            return f"its transaction open with {rows} items inserted, uncommitted"

        for attempt in range(attempts_allowed):
            if kills == kills_wanted:
                break
            prefix = f"批{attempt}-"
            # Nothing left of the last attempt's transaction (its session sees the kill).
            wait_for(lambda: not probe.writing(), 30, "the killed server's transaction ending")
            with server(url) as (base, process):
                call = sender(base, prefix)
                in_flight = freeze_inside(process, call, prefix)
                if in_flight is None:  # frozen after the commit
                    process.send_signal(signal.SIGCONT)
                    call.join(120)
                    written = _count(url, prefix)
                    outcomes.append(f"committed before the freeze: {written}, {call.outcome()}")
                    assert call.status == 200 and written == 1000, outcomes[-1]
                    continue
                process.send_signal(signal.SIGKILL)
                process.wait(30)
                call.join(60)
                assert not call.is_alive(), "the batch's request did not end with the server"
            written = _count(url, prefix)
            outcomes.append(f"killed with {in_flight}: {written} rows, {call.outcome()}")
            assert call.status is None, outcomes[-1]  # killed before it could answer
            assert written in (0, 1000), f"partial batch: {written} of 1000 rows ({outcomes})"
            assert written == 0, f"a kill inside the transaction kept its rows ({outcomes})"
            kills += 1
            if sqlite:
                assert _integrity(url) == "ok"
    print(f"\nbatch kills ({db_factory.engine}): {'; '.join(outcomes)}")
    assert kills == kills_wanted, f"only {kills} freezes came inside a batch: {outcomes}"
    db_factory.drop(url)


def _import_csv(header: list[str], park_id: int, prefix: str, rows: int) -> bytes:
    """New projects in the export's own layout (its header row), named `prefix` + a number."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for i in range(rows):
        cells = {"项目名称": f"{prefix}{i}", "园区编号": str(park_id), "阶段": "谋划"}
        writer.writerow([cells.get(column, "") for column in header])
    return out.getvalue().encode("utf-8-sig")


def test_sigkill_in_the_middle_of_an_import_leaves_all_rows_or_none(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    url = db_factory.fresh()
    rng = random.Random(11)
    rows = 5000
    admin = auth(tokens["admin"])

    def upload(base: str, body: bytes) -> httpx.Response:
        return httpx.post(
            f"{base}{API}/projects/import",
            files={"file": ("projects.csv", body, "text/csv")},
            headers=admin,
            timeout=120,
        )

    with server(url) as (base, _):  # the layout, and how long one import takes here
        with httpx.Client(base_url=base, headers=admin) as http:
            made = http.post(f"{API}/parks", json={"name": "园区", "level": "other"})
            assert made.status_code == 201, made.text
            park_id = made.json()["id"]
            exported = http.get(f"{API}/projects/export", params={"format": "csv"})
            assert exported.status_code == 200, exported.text
        header = next(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
        started = time.monotonic()
        imported = upload(base, _import_csv(header, park_id, "量-", rows))
        duration = time.monotonic() - started
        assert imported.status_code == 200, imported.text
        assert imported.json()["created"] == rows
    outcomes = []
    with _WriteProbe(url) as probe:
        for attempt in range(5):
            prefix = f"导{attempt}-"
            body = _import_csv(header, park_id, prefix, rows)
            answers: list[int] = []
            with server(url) as (base, process):

                def send(
                    body: bytes = body, base: str = base, answers: list[int] = answers
                ) -> None:
                    with contextlib.suppress(httpx.TransportError):  # the server dies under it
                        answers.append(upload(base, body).status_code)

                sender = threading.Thread(target=send)
                sender.start()
                # From the moment the import starts writing: at once, or at a random moment up to
                # about its length later (so sometimes after it has answered).
                wait_for(
                    lambda sender=sender: probe.writing() or not sender.is_alive(),
                    120,
                    "the import starting to write",
                )
                time.sleep(rng.uniform(0, 1.2) * duration if attempt else 0)
                writing = probe.writing()
                process.send_signal(signal.SIGKILL)
                process.wait(30)
                sender.join(60)
                assert not sender.is_alive(), "the import's request did not end with the server"
            written = _count(url, prefix, "project")
            outcomes.append((written, answers[0] if answers else "killed", writing))
            assert written in (0, rows), f"partial import: {written} of {rows} rows"
            if answers:  # answered before the kill: then it is all there
                assert answers == [200] and written == rows
            if url.startswith("sqlite"):
                assert _integrity(url) == "ok"
    print(
        f"\nimport kills ({db_factory.engine}): one import of {rows} rows takes {duration:.2f} s; "
        f"(rows written, answer, write transaction open at the kill) per attempt {outcomes}"
    )
    assert any(writing for _, _, writing in outcomes), "no kill came in the middle of an import"
    db_factory.drop(url)


def _pg_cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
    )


def test_database_restart_gives_503_then_recovers_without_restarting_the_app(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    """Four clients keep listing parks while PostgreSQL stops and starts again. Every request is
    answered: 200, or 503 (problem+json, Retry-After) while the database is down; once it is back
    each client is served again by the same server process, with no 503 after its first 200."""
    if db_factory.engine != "postgresql":
        pytest.skip("restarts the PostgreSQL server")
    if not Path("/etc/postgresql").is_dir():
        pytest.skip("no local PostgreSQL cluster to restart")
    url = db_factory.fresh()
    # Per client, every request: (sent, answered, status or what went wrong, type, Retry-After).
    seen: list[list[tuple[float, float, int | str, str, str | None]]] = [[] for _ in range(4)]
    stop = threading.Event()

    def since(moment: float) -> list[list[tuple[float, float, int | str, str, str | None]]]:
        return [[a for a in mine if a[0] > moment] for mine in seen]

    def summary(answers: list[tuple[float, float, int | str, str, str | None]]) -> str:
        return ", ".join(str(a[2]) for a in answers[-30:])

    with server(url) as (base, process):
        made = httpx.post(
            f"{base}{API}/parks",
            json={"name": "园区", "level": "other"},
            headers=auth(tokens["admin"]),
        )
        assert made.status_code == 201, made.text

        def client(mine: list[tuple[float, float, int | str, str, str | None]]) -> None:
            try:
                with httpx.Client(base_url=base, headers=auth(tokens["admin"]), timeout=10) as http:
                    while not stop.is_set():
                        sent = time.monotonic()
                        try:
                            r = http.get(f"{API}/parks")
                        except httpx.TransportError as exc:
                            mine.append((sent, time.monotonic(), repr(exc), "", None))
                        else:
                            ct, retry = (
                                r.headers.get("content-type", ""),
                                r.headers.get("retry-after"),
                            )
                            mine.append((sent, time.monotonic(), r.status_code, ct, retry))
                        stop.wait(0.02)
            except BaseException as exc:  # whatever ends a client is an outcome too
                mine.append((time.monotonic(), time.monotonic(), f"client died: {exc!r}", "", None))

        threads = [threading.Thread(target=client, args=(mine,), daemon=True) for mine in seen]
        for t in threads:
            t.start()
        try:
            wait_for(
                lambda: all(sum(a[2] == 200 for a in mine) >= 3 for mine in seen),
                60,
                "every client being served before the outage",
            )
            try:
                _pg_cluster("stop")
                down = time.monotonic()
                # Each client meets the outage several times: every pooled connection from before
                # it is tried and found dead while the database is still down.
                wait_for(
                    lambda: all(len(mine) >= 3 for mine in since(down)),
                    60,
                    "three answers to every client while the database was down",
                )
                up = time.monotonic()
            finally:
                _pg_cluster("start")
            back = time.monotonic()

            def served_again() -> bool:
                return all(
                    len(mine) >= 5 and all(a[2] == 200 for a in mine[-5:]) for mine in since(back)
                )

            try:
                wait_for(
                    served_again,
                    60,
                    "five 200s in a row to every client once the database was back",
                )
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; since then: " + " | ".join(summary(m) for m in since(back))
                ) from None
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads), "a client did not stop"
        assert process.poll() is None, "the server process ended: the app was restarted"
    everything = [a for mine in seen for a in mine]
    odd = [a for a in everything if a[2] not in (200, 503)]
    assert odd == [], f"answers other than 200 or 503, or none at all: {odd[:5]}"
    outage = [a for mine in since(down) for a in mine if a[1] < up]
    assert outage and all(a[2] == 503 for a in outage), [a[2] for a in outage]
    unavailable = [a for a in everything if a[2] == 503]
    assert all(ct == "application/problem+json" and retry for _, _, _, ct, retry in unavailable)
    first_ok = []
    for i, mine in enumerate(since(back)):
        statuses = [a[2] for a in mine]
        first = statuses.index(200)
        assert all(s == 200 for s in statuses[first:]), f"client {i} after the restart: {statuses}"
        first_ok.append(mine[first][1] - back)
    print(
        f"\noutage: {len(unavailable)} answers were 503; each client served again "
        f"{', '.join(f'{t:.2f}' for t in first_ok)} s after the database came back"
    )
    db_factory.drop(url)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.timezones()
    )
)
def test_datetimes_with_any_offset_come_back_as_the_same_instant_in_utc(
    client: TestClient, moment: datetime
) -> None:
    name = f"t-{uuid.uuid4().hex}"
    made = client.post(
        f"{API}/tokens", json={"name": name, "scopes": ["read"], "expires_at": moment.isoformat()}
    )
    assert made.status_code == 201, made.text
    back = datetime.fromisoformat(made.json()["expires_at"].replace("Z", "+00:00"))
    assert back.utcoffset() == timedelta(0)
    assert back == moment.astimezone(UTC).replace(microsecond=moment.microsecond)


def test_naive_datetimes_are_refused(client: TestClient) -> None:
    body = problem(
        client.post(
            f"{API}/tokens",
            json={"name": "naive", "scopes": ["read"], "expires_at": "2030-01-01T00:00:00"},
        ),
        422,
    )
    assert body["field"] == "expires_at"
    problem(client.get(f"{API}/parks", params={"updated_after": "2030-01-01T00:00:00"}), 422)
