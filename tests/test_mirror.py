"""`python -m app mirror` as README promises it: a real mirror process following a real server's
change feed into a database of its own, on both engines (and, from PostgreSQL, into SQLite).

- It resumes where it left off: stopped mid-way, it restarts from its recorded position (the
  first feed request of the new run asks for `after=` that position, never 0) and ends exactly
  equal to the source, each source change applied once, none missed.
- It follows deletes: a tombstone reaches the mirror (the row deleted as at the source, a delete
  entry in the mirror's own feed, the record 404 there).
- `--once` catches up (over several pages, into PostgreSQL or SQLite) and exits 0; run again when
  caught up it writes nothing.

Every wait is on a condition the system exposes (a request reaching the gate, a position in
`mirror_state`, a process exit), with a deadline and a message naming what did not happen.
"""

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import migrate, seed
from app.config import PROJECT_DIR, Settings
from app.db import Database, make_engine
from app.main import create_app
from app.mirror import PAGE
from app.models.change import Change, MirrorState
from app.resources import ALL
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API
from tests.servers import server

# What the mirror copies of each source change into its own feed (its own seq, actor and
# request id are its own).
FEED_COLUMNS = ("resource", "record_id", "external_id", "op", "version", "changed_at", "data")
Row = dict[str, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- reading a database


@dataclass
class Snapshot:
    rows: dict[str, list[Row]]  # every row of every resource table (deleted ones too), by id
    feed: list[tuple[Any, ...]]  # the change table, in seq order, as FEED_COLUMNS
    seqs: list[int]
    positions: dict[str, int]  # mirror_state: source → last_seq

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0


async def _snapshot(url: str) -> Snapshot:
    """The database as typed values (Decimal, aware datetimes, JSON as objects), so that a
    SQLite mirror compares with a PostgreSQL source value by value."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = {
                spec.name: [
                    dict(r._mapping)
                    for r in await conn.execute(select(spec.table).order_by(spec.table.c.id))
                ]
                for spec in ALL
            }
            change = Change.__table__  # type: ignore[attr-defined]
            feed_rows = list(
                await conn.execute(
                    select(change.c.seq, *(change.c[c] for c in FEED_COLUMNS)).order_by(
                        change.c.seq
                    )
                )
            )
            state = MirrorState.__table__  # type: ignore[attr-defined]
            positions = {
                r.source: int(r.last_seq)
                for r in await conn.execute(select(state.c.source, state.c.last_seq))
            }
    finally:
        await engine.dispose()
    return Snapshot(
        rows=rows,
        feed=[tuple(r)[1:] for r in feed_rows],
        seqs=[int(r[0]) for r in feed_rows],
        positions=positions,
    )


def snapshot(url: str) -> Snapshot:
    return asyncio.run(_snapshot(url))


def assert_same_registry(mirror: Snapshot, source: Snapshot, label: str) -> None:
    """Row for row equal, and the mirror's feed one entry per source change, in order."""
    for name, expected in source.rows.items():
        got = mirror.rows[name]
        assert [r["id"] for r in got] == [r["id"] for r in expected], (
            f"{label}: the mirror's {name} ids differ from the source's"
        )
        differing = [(g, e) for g, e in zip(got, expected, strict=True) if g != e]
        assert not differing, f"{label}: {name} rows differ (mirror, source): {differing[:2]}"
    missing = len(source.feed) - len(mirror.feed)
    assert mirror.feed == source.feed, (
        f"{label}: the mirror's own feed is not one entry per source change in order "
        f"({len(mirror.feed)} entries for {len(source.feed)} source changes; "
        f"{'missed' if missing > 0 else 'duplicated'} {abs(missing)})"
    )


# ---------------------------------------------------------------- the mirror process


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_TOKEN"}
    return {**env, "DATABASE_URL": database_url, **extra}


def _mirror_command(source: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app", "mirror", "--source", source, *extra]


@contextmanager
def following(
    source: str, token: str, database_url: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running mirror polling every 0.05 s when idle, its output in `log` (a file, so a
    full pipe never blocks it); killed afterwards if a test left it running."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            _mirror_command(source, "--token", token, "--interval", "0.05"),
            cwd=PROJECT_DIR,
            env=_env(database_url),
            stdout=out,
            stderr=out,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def stop(
    process: subprocess.Popen[bytes], log: Path, then: Callable[[], None] | None = None
) -> str:
    """SIGTERM, as a service manager stops it (then `then()`): it must exit 0 within 30 s.
    Its output."""
    process.send_signal(signal.SIGTERM)
    if then is not None:
        then()
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"the mirror did not exit within 30 s of SIGTERM:\n{log.read_text()}"
        ) from None
    output = log.read_text()
    assert code == 0, f"the mirror exited {code} on SIGTERM:\n{output}"
    return output


def mirror_once(
    source: str, database_url: str, log: Path, token: str, via_env: bool = False
) -> str:
    """`python -m app mirror --source URL --once` (the token on the command line or in
    MIRROR_TOKEN): it must catch up and exit 0 within 90 s. Its stderr."""
    extra = () if via_env else ("--token", token)
    env = _env(database_url, **({"MIRROR_TOKEN": token} if via_env else {}))
    try:
        done = subprocess.run(
            _mirror_command(source, *extra, "--once"),
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"mirror --once did not catch up and exit within 90 s: {exc}"
        ) from None
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)
    assert done.returncode == 0, f"mirror --once exited {done.returncode}:\n{done.stderr}"
    return done.stderr


def wait_for(
    what: str,
    condition: Callable[[], bool],
    *,
    seconds: float = 60,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll `condition` until it holds; fail naming `what` at the deadline, or at once if the
    mirror process exits first."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            output = log.read_text() if log else ""
            raise AssertionError(
                f"{what}: the mirror exited ({process.returncode}) first\n{output}"
            )
        if time.monotonic() > deadline:
            output = f"\nmirror output:\n{log.read_text()}" if log else ""
            raise AssertionError(f"{what} did not happen within {seconds:.0f} s{output}")
        time.sleep(0.05)


# ---------------------------------------------------------------- a gate the test controls


class FeedGate:
    """One HTTP hop between the mirror and the source: it passes every request on unchanged,
    records the `after` of each feed request, and holds the first one asking past seq 0 (the
    mirror asks for its next page only once it has committed the one before) until released.
    So the test stops the mirror at a known point of its catching up, with no timing guess."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.afters: list[int] = []
        self.holding = True
        self.held = threading.Event()
        self.released = threading.Event()
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                after = int(parse_qs(urlsplit(self.path).query).get("after", ["0"])[0])
                with gate._lock:
                    gate.afters.append(after)
                    hold = gate.holding and after > 0 and not gate.held.is_set()
                    if hold:
                        gate.held.set()
                if hold:
                    gate.released.wait(timeout=90)
                forwarded = httpx.get(
                    gate.upstream + self.path,
                    headers={"Authorization": self.headers.get("Authorization", "")},
                    timeout=30,
                )
                self.send_response(forwarded.status_code)
                self.send_header("Content-Type", forwarded.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(forwarded.content)))
                self.end_headers()
                self.wfile.write(forwarded.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FeedGate":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def let_through(self) -> None:
        """Release the held request, and hold no more."""
        with self._lock:
            self.holding = False
        self.released.set()

    def requests_since(self, start: int) -> list[int]:
        with self._lock:
            return list(self.afters[start:])


# ---------------------------------------------------------------- writing to the source


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.text[:500]}"
    return response.json()


def batch(http: httpx.Client, resource: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = ok(http.post(f"{API}/{resource}/batch", json={"items": items}))
    return list(answer["items"])


def make_projects(http: httpx.Client, park_id: int, count: int, prefix: str) -> list[int]:
    ids: list[int] = []
    for start in range(0, count, 1000):
        items = [
            {"op": "create", "data": {"park_id": park_id, "name": f"{prefix}{i}", "stage": None}}
            for i in range(start, min(count, start + 1000))
        ]
        ids += [item["id"] for item in batch(http, "projects", items)]
    return ids


# ---------------------------------------------------------------- the tests


def test_a_mirror_stopped_mid_way_resumes_where_it_left_off(
    db_factory: DatabaseFactory, tokens: dict[str, str], tmp_path: Path
) -> None:
    source_url, mirror_url = db_factory.fresh(), db_factory.fresh()
    log = tmp_path / "mirror.log"
    try:
        with (
            server(source_url) as (base, _),
            httpx.Client(base_url=base, headers=bearer(tokens["admin"]), timeout=60) as http,
            FeedGate(base) as gate,
        ):
            park = ok(http.post(f"{API}/parks", json={"name": "甲园", "level": "other"}), 201)
            # More than two pages, so that the stop falls in the middle of catching up.
            first_ids = make_projects(http, park["id"], 2 * PAGE + 10, "p")
            before_stop = snapshot(source_url)
            assert len(before_stop.seqs) > 2 * PAGE

            with following(gate.url, tokens["read"], mirror_url, log) as run1:
                wait_for(
                    "the mirror asking for its second page",
                    gate.held.is_set,
                    process=run1,
                    log=log,
                )
                # It asks for the next page only after committing the last: that is its position.
                asked = gate.requests_since(0)[-1]
                held_at = snapshot(mirror_url).positions.get(gate.url)
                assert held_at == asked == before_stop.seqs[PAGE - 1], (
                    f"asking for after={asked}, the mirror's recorded position is {held_at}; "
                    f"the first page ends at seq {before_stop.seqs[PAGE - 1]}"
                )
                output = stop(run1, log, then=gate.let_through)

            stopped = snapshot(mirror_url)
            position = stopped.positions[gate.url]
            # A stop finishes the page in flight (one transaction with its position) or drops
            # it whole: never part of a page.
            in_flight_end = before_stop.seqs[before_stop.seqs.index(asked) + PAGE]
            assert position in (asked, in_flight_end), (position, asked, in_flight_end)
            assert 0 < position < before_stop.last_seq, "the stop did not fall mid-way"
            assert f"mirror: at seq {position} of {gate.url}" in output, output
            applied = [
                c for s, c in zip(before_stop.seqs, before_stop.feed, strict=True) if s <= position
            ]
            assert stopped.feed == applied, (
                f"at its recorded position {position} the mirror does not hold exactly the "
                f"source's changes up to it ({len(stopped.feed)} entries, {len(applied)} expected)"
            )

            # More writes while it is stopped: to records it has and has not yet mirrored,
            # deletes of both, and new records.
            mirrored = [i for i in first_ids if i in {r["id"] for r in stopped.rows["projects"]}]
            not_yet = [i for i in first_ids if i not in set(mirrored)]
            assert mirrored and not_yet
            batch(
                http,
                "projects",
                [{"op": "update", "id": i, "data": {"stage": "signed"}} for i in mirrored[:5]]
                + [{"op": "update", "id": i, "data": {"stage": "signed"}} for i in not_yet[:5]]
                + [{"op": "delete", "id": i} for i in mirrored[-3:] + not_yet[-3:]],
            )
            make_projects(http, park["id"], 20, "late")
            source = snapshot(source_url)

            start = len(gate.afters)
            output = mirror_once(gate.url, mirror_url, log, tokens["read"])
            asked_again = gate.requests_since(start)
            assert asked_again and asked_again[0] == position, (
                f"the restarted mirror first asked for after={asked_again[:1]}, not after="
                f"{position} (its recorded position): it restarted rather than resumed"
            )
            assert asked_again == sorted(set(asked_again)), asked_again
            assert f"mirror: at seq {source.last_seq} of {gate.url}" in output, output

        mirror = snapshot(mirror_url)
        assert mirror.positions == {gate.url: source.last_seq}
        assert_same_registry(mirror, source, "after the resumed run")
    finally:
        db_factory.drop(source_url)
        db_factory.drop(mirror_url)


def test_a_mirror_follows_deletes(
    db_factory: DatabaseFactory, tokens: dict[str, str], tmp_path: Path
) -> None:
    source_url, mirror_url = db_factory.fresh(), db_factory.fresh()
    log = tmp_path / "mirror.log"
    try:
        with (
            server(source_url) as (base, _),
            httpx.Client(base_url=base, headers=bearer(tokens["admin"]), timeout=30) as http,
            following(base, tokens["read"], mirror_url, log) as follower,
        ):

            def caught_up() -> bool:
                return snapshot(mirror_url).positions.get(base) == snapshot(source_url).last_seq

            park = ok(http.post(f"{API}/parks", json={"name": "乙园", "level": "other"}), 201)
            project = ok(
                http.post(f"{API}/projects", json={"park_id": park["id"], "name": "将删项目"}), 201
            )
            investment = ok(
                http.post(
                    f"{API}/investments",
                    json={"project_id": project["id"], "kind": "planned_total", "amount": "3.5"},
                ),
                201,
            )
            wait_for("the mirror copying the project", caught_up, process=follower, log=log)
            held = snapshot(mirror_url)
            assert [r["deleted_at"] for r in held.rows["projects"]] == [None]
            assert [r["deleted_at"] for r in held.rows["investments"]] == [None]
            seen = held.last_seq

            gone = http.delete(f"{API}/investments/{investment['id']}")
            assert gone.status_code == 204, gone.text
            gone = http.delete(f"{API}/projects/{project['id']}")
            assert gone.status_code == 204, gone.text
            wait_for("the tombstones reaching the mirror", caught_up, process=follower, log=log)
            stop(follower, log)

        source, mirror = snapshot(source_url), snapshot(mirror_url)
        assert_same_registry(mirror, source, "after the deletes")
        for name, record in (("investments", investment), ("projects", project)):
            (row,) = mirror.rows[name]
            assert row["id"] == record["id"] and row["deleted_at"] is not None, row
        # Its own feed holds the tombstones (no data), as the source's does.
        tombstones = [(c[0], c[1], c[6]) for c in mirror.feed[len(held.feed) :] if c[3] == "delete"]
        assert tombstones == [
            ("investments", investment["id"], None),
            ("projects", project["id"], None),
        ], tombstones
        # Served from the mirror's database: the record is gone, its tombstone is in the feed.
        settings = Settings(database_url=mirror_url, registry_admin_password=ADMIN_PASSWORD)
        with TestClient(create_app(settings)) as on_mirror:
            auth = bearer(tokens["read"])
            assert on_mirror.get(f"{API}/projects/{project['id']}", headers=auth).status_code == 404
            page = on_mirror.get(f"{API}/changes", params={"after": seen}, headers=auth).json()
            served = [
                (c["resource"], c["id"], c["data"]) for c in page["items"] if c["op"] == "delete"
            ]
            assert served == [
                ("investments", investment["id"], None),
                ("projects", project["id"], None),
            ], page
    finally:
        db_factory.drop(source_url)
        db_factory.drop(mirror_url)


def _seed(url: str) -> None:
    async def load() -> None:
        db = Database(make_engine(url, pool_size=2))
        try:
            await seed.run(db, out=io.StringIO())
        finally:
            await db.dispose()

    asyncio.run(load())


def test_mirror_once_catches_up_and_exits_0(
    db_factory: DatabaseFactory, tokens: dict[str, str], tmp_path: Path
) -> None:
    """Into a database of the source's engine and, from PostgreSQL, into a SQLite file too;
    over several pages, every resource (the seed: money, JSON, unknowns), updates and deletes."""
    source_url, mirror_url = db_factory.fresh(), db_factory.fresh()
    log = tmp_path / "mirror.log"
    targets = [mirror_url]
    if db_factory.engine == "postgresql":
        sqlite_mirror = f"sqlite:///{tmp_path / 'mirror.db'}"
        migrate.upgrade(sqlite_mirror)
        targets.append(sqlite_mirror)
    try:
        _seed(source_url)
        with (
            server(source_url) as (base, _),
            httpx.Client(base_url=base, headers=bearer(tokens["admin"]), timeout=60) as http,
        ):
            park = ok(http.post(f"{API}/parks", json={"name": "丙园", "level": "other"}), 201)
            ids = make_projects(http, park["id"], PAGE + 10, "q")
            batch(
                http,
                "projects",
                [{"op": "update", "id": i, "data": {"is_key": True}} for i in ids[:10]]
                + [{"op": "delete", "id": i} for i in ids[-10:]],
            )
            source = snapshot(source_url)
            assert len(source.seqs) > PAGE and all(source.rows.values())

            mirrors = {}
            for n, url in enumerate(targets):
                output = mirror_once(base, url, log, tokens["read"], via_env=n == 0)
                assert f"mirror: at seq {source.last_seq} of {base}" in output, output
                mirrors[url] = snapshot(url)
                assert mirrors[url].positions == {base: source.last_seq}
                label = f"mirror --once into {url.split(':')[0]}"
                assert_same_registry(mirrors[url], source, label)

            # Caught up, it runs again, writes nothing and exits 0 at once.
            output = mirror_once(base, mirror_url, log, tokens["read"])
            assert f"mirror: at seq {source.last_seq} of {base}" in output, output
            again = snapshot(mirror_url)
            assert again.feed == mirrors[mirror_url].feed
            assert again.positions == mirrors[mirror_url].positions
    finally:
        db_factory.drop(source_url)
        db_factory.drop(mirror_url)
