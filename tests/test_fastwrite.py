"""The fast write path (`app/fastwrite.py`) answers and stores what the full application does.

Two applications, one as deployed and one with `fast_writes=False`, each on a database of its
own seeded alike. Every request below goes to both with the same `X-Request-ID`: status, headers
and body must be equal (timestamps aside), and at the end so must everything stored — every
record, tombstones included, and the whole change feed with its snapshots, actors and request
ids. On PostgreSQL the fast path must have answered every successful create and update itself
(else this would compare the full path with itself); on SQLite it must answer nothing.
"""

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from app.api.crud import model_example
from app.config import Settings
from app.fastwrite import FastWrites
from app.main import create_app
from app.resources import ALL
from tests.conftest import DatabaseFactory
from tests.helpers import API
from tests.test_security import login
from tests.test_seed import run_seed

STAMPS = {"created_at", "updated_at", "deleted_at", "changed_at"}
IGNORED_HEADERS = {"date", "content-length"}  # the length follows the timestamps' digits

# Per resource: what makes a new record unique, and an update of it.
NEW = {
    "sources": {"title": "快速写入测试来源"},
    "parks": {"name": "快速写入测试园区"},
    "chains": {"code": "fast-write"},
    "enterprises": {"credit_code": "91350100M000100Y43"},
    "projects": {"code": "FW-0001"},
    "investments": {"amount": 30.1, "unit": "亿元"},  # a JSON number: parsed as a Decimal
    "targets": {"value": "12"},
}
CHANGE = {
    "sources": {"publisher": "齐鲁壹点"},
    "parks": {"city": "滕州市", "positioning": None},
    "chains": {"name": "锂电（快写）", "role": "pillar"},
    "enterprises": {"is_high_tech": True, "name": "快写科技有限公司"},
    "projects": {"stage": "under_construction", "year": 2026, "name": "快写项目"},
    "investments": {"amount": "1234.56", "unit": "万元"},
    "targets": {"value": "15", "period_end_year": 2027},
}


def layer(app: Any, kind: type) -> Any:
    found = app.middleware_stack
    while not isinstance(found, kind):
        found = found.app
    return found


def stampless(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("<time>" if k in STAMPS and v is not None else stampless(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [stampless(v) for v in value]
    return value


def body_of(response: Any) -> Any:
    try:
        return stampless(response.json())
    except ValueError:
        return response.content


class Twin:
    def __init__(self, fast: TestClient, slow: TestClient, engine: str) -> None:
        self.fast, self.slow, self.engine = fast, slow, engine
        self.successes = 0

    def send(
        self, method: str, path: str, status: int, *, delegated: bool = False, **kwargs: Any
    ) -> Any:
        """The same request to both; `delegated`: a success the fast path leaves to the
        application by design."""
        headers = kwargs.pop("headers", {})
        if isinstance(headers, dict):  # a list of pairs (a repeated header) is sent as it is
            headers = {"X-Request-ID": uuid.uuid4().hex, **headers}
        a = self.fast.request(method, path, headers=headers, **kwargs)
        b = self.slow.request(method, path, headers=headers, **kwargs)
        where = f"{method} {path} {kwargs} {headers}"
        assert a.status_code == b.status_code == status, (where, a.text, b.text)
        assert body_of(a) == body_of(b), where
        assert [(k, v) for k, v in a.headers.items() if k not in IGNORED_HEADERS] == [
            (k, v) for k, v in b.headers.items() if k not in IGNORED_HEADERS
        ], where
        self.successes += method in ("POST", "PATCH") and status < 300 and not delegated
        return a

    def stored(self, client: TestClient) -> dict[str, Any]:
        """Everything a client can read back: each resource with its tombstones, and the feed."""
        out: dict[str, Any] = {}
        for spec in ALL:
            query: dict[str, Any] = {"include_deleted": "true", "limit": 500}
            rows: list[Any] = []
            while True:
                page = client.get(f"{API}/{spec.name}", params=query).json()
                rows += page["items"]
                if page["next_cursor"] is None:
                    break
                query["cursor"] = page["next_cursor"]
            out[spec.name] = rows
        feed: list[Any] = []
        after = 0
        while True:
            page = client.get(f"{API}/changes", params={"after": after, "limit": 1000}).json()
            if not page["items"]:
                break
            feed += [{k: v for k, v in e.items() if k != "seq"} for e in page["items"]]
            after = page["last_seq"]
        out["changes"] = feed
        return stampless(out)


@pytest.fixture
def twin(
    settings: Settings, database_url: str, db_factory: DatabaseFactory, tokens: dict[str, str]
) -> Iterator[Twin]:
    other = db_factory.fresh()
    for url in (database_url, other):
        run_seed(url)
    slow_settings = settings.model_copy(update={"fast_writes": False, "database_url": other})
    auth = {"Authorization": f"Bearer {tokens['write']}"}
    fast = TestClient(create_app(settings), base_url="http://testserver", headers=auth)
    slow = TestClient(create_app(slow_settings), base_url="http://testserver", headers=auth)
    try:
        with fast, slow:
            pair = Twin(fast, slow, db_factory.engine)
            yield pair
            assert pair.stored(fast) == pair.stored(slow)
            if pair.engine == "postgresql":
                # No refused or delegated write left its pooled connection mid-transaction.
                assert _sessions(database_url, "state LIKE 'idle in transaction%'") == 0
            answered = layer(fast.app, FastWrites).answered
            # Every successful write was the fast path's own; every failure the application's.
            assert answered == (pair.successes if pair.engine == "postgresql" else 0)
            assert layer(slow.app, FastWrites).answered == 0
    finally:
        db_factory.drop(other)


def test_every_resource_is_created_and_updated_the_same(twin: Twin) -> None:
    for spec in ALL:
        base = f"{API}/{spec.name}"
        body = {**model_example(spec.create), **NEW[spec.name], "external_id": f"fw-{spec.name}"}
        created = twin.send("POST", base, 201, json=body)
        item = f"{base}/{created.json()['id']}"
        etag = created.headers["etag"]
        changed = twin.send("PATCH", item, 200, json=CHANGE[spec.name], headers={"If-Match": etag})
        assert changed.headers["etag"] != etag
        # The same change again writes nothing (no new version), with or without If-Match.
        twin.send("PATCH", item, 200, json=CHANGE[spec.name], headers={"If-Match": "*"})
        twin.send("PATCH", item, 200, json=CHANGE[spec.name])
        current = changed.headers["etag"]
        twin.send(
            "PATCH", item, 200, json=CHANGE[spec.name], headers={"If-Match": f'"0", {current}'}
        )
        twin.send("PATCH", item, 412, json=NEW[spec.name], headers={"If-Match": etag})
        twin.send("POST", base, 409, json=body)  # its external_id is taken now
        # A charset on the media type is still JSON; an empty patch changes nothing.
        twin.send(
            "PATCH",
            item,
            200,
            content=b"{}",
            headers={"Content-Type": "application/json; charset=utf-8"},
        )


def test_refusals_are_the_applications_own(twin: Twin, tokens: dict[str, str]) -> None:
    projects = f"{API}/projects"
    good = {"park_id": 1, "name": "快写拒绝测试", "stage": "planning"}
    json_type = {"Content-Type": "application/json"}
    for content in (b"{bad", b"[]", b"", b'{"park_id": 1}', '{"name": "\xff"}'.encode("latin-1")):
        twin.send("POST", projects, 422, content=content, headers=json_type)
    twin.send("POST", projects, 422, json={**good, "stage": "dreaming"})
    twin.send("POST", projects, 422, json={**good, "chain_id": 99999})  # no such parent
    twin.send("POST", projects, 422, json={**good, "park_id": 2})  # no such park
    # A chain of another park: the same-park rule (a hook that reads the parent check's parks).
    park = twin.send("POST", f"{API}/parks", 201, json={"name": "另一园区", "level": "provincial"})
    chain = twin.send(
        "POST",
        f"{API}/chains",
        201,
        json={"park_id": park.json()["id"], "code": "other", "name": "其他", "role": "other"},
    )
    twin.send("POST", projects, 422, json={**good, "chain_id": chain.json()["id"]})
    # Not JSON by its media type, and a header given twice: the application decides.
    twin.send("POST", projects, 422, content=b'{"x": 1}', headers={"Content-Type": "text/plain"})
    twin.send(
        "POST",
        projects,
        201,
        delegated=True,
        content='{"park_id": 1, "name": "两个请求号", "stage": "planning"}'.encode(),
        headers=[
            ("Content-Type", "application/json"),
            ("X-Request-ID", "a"),
            ("X-Request-ID", "b"),
        ],
    )
    # Records that are not there, or not at this version.
    twin.send("PATCH", f"{projects}/999999", 404, json={"name": "无"})
    twin.send("PATCH", f"{projects}/0", 422, json={"name": "无"})
    twin.send("PATCH", f"{projects}/1", 412, json={"name": "旧"}, headers={"If-Match": '"99"'})
    twin.send(
        "PATCH", f"{projects}/1", 422, json={"stage": "dreaming"}, headers={"If-Match": '"99"'}
    )
    twin.send("PATCH", f"{projects}/1", 422, json={"park_id": None})
    # Credentials: none, unknown, malformed, read-only, and a staff login of each role.
    twin.send("POST", projects, 401, json=good, headers={"Authorization": ""})
    twin.send("POST", projects, 401, json=good, headers={"Authorization": "Bearer pir_1_nonsense"})
    twin.send("POST", projects, 401, json=good, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    twin.send(
        "POST", projects, 403, json=good, headers={"Authorization": f"Bearer {tokens['read']}"}
    )
    for username, status in (("editor", 201), ("viewer", 403)):
        staff = {
            "Authorization": f"Bearer {login(twin.fast, username, f'{username}-password')}",
        }
        twin.send(
            "POST", projects, status, json={**good, "name": f"{username}的项目"}, headers=staff
        )
    # A replayed Idempotency-Key is answered from the store, before the fast path.
    key = {"Idempotency-Key": "fast-write-once"}
    first = twin.send("POST", projects, 201, json={**good, "name": "只写一次"}, headers=key)
    again = twin.send(
        "POST", projects, 201, delegated=True, json={**good, "name": "只写一次"}, headers=key
    )
    assert again.json() == first.json()


def _sessions(dsn: str, condition: str) -> int:
    """Connections to this database, other than the one asking, in this condition."""

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    f" AND pid <> pg_backend_pid() AND {condition}"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


@pytest.mark.parametrize("fast_writes", [True, False])
def test_a_key_taken_by_a_concurrent_writer_is_a_conflict(
    settings: Settings,
    database_url: str,
    db_factory: DatabaseFactory,
    tokens: dict[str, str],
    fast_writes: bool,
) -> None:
    """The pre-check passes while another transaction holds the same external_id uncommitted;
    the INSERT then waits for it, and fails when it commits: 409, not 500, on both paths."""
    if db_factory.engine != "postgresql":
        pytest.skip("SQLite writers take the database lock up front: no such race")
    app = create_app(settings.model_copy(update={"fast_writes": fast_writes}))
    auth = {"Authorization": f"Bearer {tokens['write']}"}
    body = {"name": "并发园区", "level": "provincial", "external_id": "race"}
    with TestClient(app, base_url="http://testserver", headers=auth) as client:
        holder_ready, release = threading.Event(), threading.Event()

        def hold() -> None:
            async def go() -> None:
                conn = await asyncpg.connect(database_url)
                try:
                    await conn.execute("BEGIN")
                    await conn.execute(
                        "INSERT INTO park (external_id, version, created_at, updated_at, name,"
                        " level) VALUES ('race', 1, now(), now(), '抢先', 'provincial')"
                    )
                    holder_ready.set()
                    await asyncio.to_thread(release.wait, 10)
                    await conn.execute("COMMIT")
                finally:
                    await conn.close()

            asyncio.run(go())

        holder = threading.Thread(target=hold)
        holder.start()
        assert holder_ready.wait(10)
        result: dict[str, Any] = {}
        writer = threading.Thread(
            target=lambda: result.update(r=client.post(f"{API}/parks", json=body))
        )
        writer.start()
        deadline = time.monotonic() + 10
        while (
            _sessions(database_url, "wait_event_type = 'Lock'") == 0 and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        release.set()
        holder.join(10)
        writer.join(10)
        response = result["r"]
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert layer(app, FastWrites).answered == 0
        # The record that won is there, and the loser left nothing behind.
        parks = client.get(f"{API}/parks", params={"limit": 500}).json()["items"]
        assert [p["name"] for p in parks if p["external_id"] == "race"] == ["抢先"]
        assert not [p for p in parks if p["name"] == body["name"]]
