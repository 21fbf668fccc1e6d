"""Sync: upserts by the caller's key, idempotency keys, batch writes, the feed under concurrency
and a mirror that follows it."""

import asyncio
import csv
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlmodel import col

from app.db import Database, make_engine
from app.db_types import utcnow
from app.idempotency import KEEP
from app.models.idempotency import IdempotencyKey
from tests.conftest import DatabaseFactory
from tests.helpers import API, make_park, make_project, problem
from tests.servers import mirror, server

RESOURCE_TABLES = ("source", "park", "chain", "enterprise", "project", "investment", "target")


def feed(client: TestClient, after: int = 0) -> list[dict[str, Any]]:
    return list(
        client.get(f"{API}/changes", params={"after": after, "limit": 1000}).json()["items"]
    )


def test_put_by_external_id_creates_replaces_and_repeats_as_a_no_op(client: TestClient) -> None:
    url = f"{API}/parks/by-external-id/crm-77"
    body = {"name": "高新区", "level": "national", "city": "枣庄市"}
    created = client.put(url, json=body)
    assert created.status_code == 201 and created.headers["location"].endswith(
        f"/parks/{created.json()['id']}"
    )
    assert created.json()["external_id"] == "crm-77"
    seq = feed(client)[-1]["seq"]
    again = client.put(url, json=body)
    assert again.status_code == 200 and again.json()["version"] == 1
    assert feed(client, seq) == []  # no new version, no new change
    replaced = client.put(url, json={"name": "高新区", "level": "provincial"})
    assert (
        replaced.json()["version"] == 2 and replaced.json()["city"] is None
    )  # a replacement, not a patch
    problem(client.put(url, json=body, headers={"If-Match": '"1"'}), 412)
    problem(client.put(url, json={**body, "external_id": "other"}), 422)
    assert client.delete(f"{API}/parks/{created.json()['id']}").status_code == 204
    revived = client.put(url, json=body)
    assert revived.status_code == 200 and revived.json()["deleted_at"] is None
    assert client.get(f"{API}/parks/{created.json()['id']}").status_code == 200


def test_put_converts_money_like_post(client: TestClient) -> None:
    park = make_park(client)
    project = make_project(client, park["id"])
    url = f"{API}/investments/by-external-id/erp-1"
    body = {"project_id": project["id"], "kind": "planned_total", "amount": "30", "unit": "亿元"}
    assert client.put(url, json=body).json()["amount"] == "3000000000.00"
    assert client.put(url, json=body).json()["version"] == 1


def test_idempotency_key_replays_refuses_other_bodies_and_is_scoped(
    client: TestClient, tokens: dict[str, str]
) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = client.post(f"{API}/parks", json={"name": "甲", "level": "other"}, headers=headers)
    replay = client.post(f"{API}/parks", json={"level": "other", "name": "甲"}, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json() and replay.headers["location"] == first.headers["location"]
    assert (
        replay.headers["etag"] == first.headers["etag"]
        and replay.headers["idempotent-replayed"] == "true"
    )
    other = problem(
        client.post(f"{API}/parks", json={"name": "乙", "level": "other"}, headers=headers), 422
    )
    assert "different request" in other["detail"]
    assert [p["name"] for p in client.get(f"{API}/parks").json()["items"]] == ["甲"]
    # Another caller's key space is its own.
    theirs = client.post(
        f"{API}/parks",
        json={"name": "丙", "level": "other"},
        headers={**headers, "Authorization": f"Bearer {tokens['write']}"},
    )
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    # A refused request is replayed as refused, with the same answer, and never half-applied:
    # a batch whose first item is good and second is not writes nothing, then or on replay.
    stored, seq = stored_parks(client), feed(client)[-1]["seq"]
    requests = [
        ("parks", {"name": ""}, "k-2"),
        (
            "parks/batch",
            {
                "items": [
                    {"op": "create", "data": {"name": "丁", "level": "other"}},
                    {"op": "create", "data": {"name": "", "level": "other"}},
                ]
            },
            "k-3",
        ),
    ]
    for path, body, key in requests:
        refused = client.post(f"{API}/{path}", json=body, headers={"Idempotency-Key": key})
        problem(refused, 422)
        assert "idempotent-replayed" not in refused.headers
        assert stored_parks(client) == stored and feed(client, seq) == [], f"{path} wrote"
        replayed = client.post(f"{API}/{path}", json=body, headers={"Idempotency-Key": key})
        assert replayed.status_code == 422, replayed.text
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.content == refused.content, (path, refused.text, replayed.text)
        assert replayed.headers["content-type"] == refused.headers["content-type"]
        assert stored_parks(client) == stored and feed(client, seq) == [], f"{path} replay wrote"
    assert [e["index"] for e in refused.json()["errors"]] == [1]


def stored_parks(client: TestClient) -> list[dict[str, Any]]:
    """Every park as stored, tombstones too."""
    answer = client.get(f"{API}/parks", params={"include_deleted": "true", "limit": 500})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def keyed(client: TestClient, path: str, key: str, **request: Any) -> Any:
    """POST `request` (httpx's arguments) to `path` under `key`."""
    headers = {**request.pop("headers", {}), "Idempotency-Key": key}
    return client.post(f"{API}/{path}", headers=headers, **request)


def test_idempotency_key_on_batch_and_import(client: TestClient) -> None:
    """A batch and a spreadsheet import under an Idempotency-Key: the same request again gets
    the same answer and writes nothing more; another request with the key is refused."""
    park = make_park(client)
    projects = f"{API}/projects"
    batch = {
        "items": [
            {"op": "create", "data": {"park_id": park["id"], "name": n, "stage": "planning"}}
            for n in ("批一", "批二")
        ]
    }
    header = client.get(f"{projects}/export", params={"format": "csv"})
    assert header.status_code == 200, header.text
    columns = next(csv.reader(io.StringIO(header.content.decode("utf-8-sig"))))
    row = {"项目名称": "导入的项目", "园区编号": str(park["id"]), "阶段": "signed"}
    table = io.StringIO()
    csv.writer(table).writerows([columns, [row.get(c, "") for c in columns]])
    upload = {
        # A retry sends the same bytes; a fixed boundary makes the multipart body the same.
        "files": {"file": ("projects.csv", table.getvalue().encode())},
        "headers": {"Content-Type": "multipart/form-data; boundary=registry-test-boundary"},
    }
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("projects/batch", {"json": batch}, {"json": {"items": batch["items"][:1]}}),
        ("projects/import", upload, {"params": {"dry_run": "true"}, **upload}),
    ]
    for path, request, other in cases:
        key = f"key-{path}"
        first = keyed(client, path, key, **request)
        assert first.status_code == 200, first.text
        assert "idempotent-replayed" not in first.headers
        stored = client.get(projects, params={"include_deleted": "true", "limit": 500}).json()
        seq = feed(client)[-1]["seq"]
        replay = keyed(client, path, key, **request)
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
        refused = keyed(client, path, key, **other)
        assert "different request" in problem(refused, 422)["detail"]
        assert feed(client, seq) == [], f"a replay or a refusal of {path} wrote"
        after = client.get(projects, params={"include_deleted": "true", "limit": 500}).json()
        assert after == stored, f"a replay or a refusal of {path} wrote"
    names = [p["name"] for p in client.get(projects, params={"limit": 500}).json()["items"]]
    assert sorted(names) == sorted(["批一", "批二", "导入的项目"])


async def _age_keys(database_url: str, age: timedelta, *keys: str) -> None:
    """Moves the stored keys' time back to `age` ago, as if that much time had passed."""
    db = Database(make_engine(database_url, pool_size=1, max_overflow=0))
    try:
        async with db.writer() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(col(IdempotencyKey.key).in_(keys))
                .values(created_at=utcnow() - age)
            )
            await session.commit()
    finally:
        await db.dispose()


async def _stored_keys(database_url: str) -> list[tuple[str, bool]]:
    db = Database(make_engine(database_url, pool_size=1, max_overflow=0))
    try:
        async with db.reader() as session:
            rows = await session.execute(
                select(col(IdempotencyKey.key), col(IdempotencyKey.done)).order_by(
                    col(IdempotencyKey.key)
                )
            )
            return [(key, done) for key, done in rows]
    finally:
        await db.dispose()


def test_an_idempotency_key_is_kept_for_its_retention_and_then_forgotten(
    client: TestClient, database_url: str
) -> None:
    """Keys are kept at least 24 hours and purged after 48 (`idempotency.KEEP`). Time is moved
    by moving the stored keys' creation time back, not by waiting."""
    assert timedelta(hours=24) <= KEEP
    first = keyed(client, "parks", "old", json={"name": "戊", "level": "other"})
    assert first.status_code == 201, first.text
    bystander = keyed(client, "parks", "bystander", json={"name": "庚", "level": "other"})
    assert bystander.status_code == 201, bystander.text
    asyncio.run(_age_keys(database_url, KEEP - timedelta(minutes=5), "old", "bystander"))
    # Just inside the retention: still replayed, still refusing another body.
    replay = keyed(client, "parks", "old", json={"name": "戊", "level": "other"})
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    problem(keyed(client, "parks", "old", json={"name": "己", "level": "other"}), 422)
    assert asyncio.run(_stored_keys(database_url)) == [("bystander", True), ("old", True)]
    # Past it: the key is forgotten. The same key is a new request (written, not replayed),
    # and any keyed request purges the other expired keys.
    asyncio.run(_age_keys(database_url, KEEP + timedelta(minutes=5), "old", "bystander"))
    again = keyed(client, "parks", "old", json={"name": "己", "level": "other"})
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"] and again.json()["name"] == "己"
    assert asyncio.run(_stored_keys(database_url)) == [("old", True)]
    assert sorted(p["name"] for p in stored_parks(client)) == ["己", "庚", "戊"]


def test_batch_is_all_or_nothing_and_names_every_failing_item(client: TestClient) -> None:
    park = make_park(client)
    keep = make_project(client, park["id"], name="保留")
    gone = make_project(client, park["id"], name="删除")
    ok = client.post(
        f"{API}/projects/batch",
        json={
            "items": [
                {
                    "op": "create",
                    "data": {"park_id": park["id"], "name": "新一", "stage": "planning"},
                },
                {
                    "op": "update",
                    "id": keep["id"],
                    "if_match": '"1"',
                    "data": {"stage": "operating"},
                },
                {"op": "delete", "id": gone["id"]},
            ]
        },
    )
    assert ok.status_code == 200, ok.text
    assert [(i["index"], i["op"], i["version"]) for i in ok.json()["items"]] == [
        (0, "create", 1),
        (1, "update", 2),
        (2, "delete", 2),
    ]
    before = client.get(f"{API}/projects").json()["items"]
    seq = feed(client)[-1]["seq"]
    bad = client.post(
        f"{API}/projects/batch",
        json={
            "items": [
                {
                    "op": "create",
                    "data": {"park_id": park["id"], "name": "好的", "stage": "planning"},
                },
                {
                    "op": "create",
                    "data": {"park_id": park["id"], "name": "坏的", "stage": "flying"},
                },
                {"op": "update", "id": keep["id"], "if_match": '"1"', "data": {"name": "过期"}},
                {"op": "create", "data": {"park_id": 999, "name": "无园区", "stage": "planning"}},
                {"op": "delete", "id": 424242},
            ]
        },
    )
    body = problem(bad, 422)
    assert sorted({e["index"] for e in body["errors"]}) == [1, 2, 3, 4]
    assert any(e["field"] == "items.1.data.stage" for e in body["errors"])
    assert any(e["field"] == "items.3.data.park_id" for e in body["errors"])
    assert client.get(f"{API}/projects").json()["items"] == before  # nothing written
    assert feed(client, seq) == []
    too_many = {"items": [{"op": "delete", "id": 1}] * 1001}
    assert problem(client.post(f"{API}/projects/batch", json=too_many), 422)["field"] == "items"


def test_feed_filters_by_resource_and_lists_catch_up_by_time(client: TestClient) -> None:
    park = make_park(client)
    project = make_project(client, park["id"])
    assert [
        c["resource"]
        for c in client.get(f"{API}/changes", params={"resource": "projects"}).json()["items"]
    ] == ["projects"]
    problem(client.get(f"{API}/changes", params={"resource": "planets"}), 422)
    mark = client.get(f"{API}/projects/{project['id']}").json()["updated_at"]
    # The app runs in this process, on this clock: once it is past the mark, writes are later.
    deadline = time.monotonic() + 5
    while datetime.now(UTC) <= datetime.fromisoformat(mark):
        assert time.monotonic() < deadline, f"the clock did not pass {mark} in 5 s"
        time.sleep(0.001)
    patched = client.patch(f"{API}/parks/{park['id']}", json={"city": "滕州"})
    assert patched.status_code == 200, patched.text
    newer = client.get(f"{API}/parks", params={"updated_after": mark}).json()["items"]
    assert [p["id"] for p in newer] == [park["id"]]
    assert client.get(f"{API}/projects", params={"updated_after": mark}).json()["items"] == []


def _concurrent_posts(base: str, token: str, n: int) -> list[httpx.Response]:
    barrier = threading.Barrier(n)

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=30) as http:
            barrier.wait()
            return http.post(
                f"{API}/parks",
                json={"name": "并发", "level": "other"},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "same-key"},
            )

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.slow
def test_fifty_concurrent_identical_posts_create_exactly_one_record(
    database_url: str, tokens: dict[str, str]
) -> None:
    with server(database_url) as (base, _):
        responses = _concurrent_posts(base, tokens["admin"], 50)
        statuses = sorted({r.status_code for r in responses})
        assert set(statuses) <= {201, 409}, statuses
        created_ids = {r.json()["id"] for r in responses if r.status_code == 201}
        assert len(created_ids) == 1
        parks = httpx.get(
            f"{base}{API}/parks", headers={"Authorization": f"Bearer {tokens['admin']}"}
        ).json()["items"]
        assert len(parks) == 1


async def _table_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY id")]
            for t in RESOURCE_TABLES
        }
    finally:
        await conn.close()


@pytest.mark.slow
def test_concurrent_writers_poller_and_mirror_on_postgresql(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    if db_factory.engine != "postgresql":
        pytest.skip("out-of-order commits are a PostgreSQL matter; SQLite writers are serial")
    source_url, mirror_url = db_factory.fresh(), db_factory.fresh()
    writers, writes_each = 8, 500
    auth = {"Authorization": f"Bearer {tokens['admin']}"}
    with server(source_url, workers=2) as (base, _):
        park = httpx.post(
            f"{base}{API}/parks", json={"name": "园区", "level": "national"}, headers=auth
        ).json()
        with mirror(base, tokens["read"], mirror_url) as follower:
            mirror_log = follower.log
            seen: list[int] = []
            poll_failed: list[BaseException] = []
            done, abandon = threading.Event(), threading.Event()

            def poll() -> None:
                after = 0
                try:
                    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
                        while not abandon.is_set():
                            finished = done.is_set()
                            page = http.get(
                                f"{API}/changes", params={"after": after, "limit": 1000}
                            ).json()
                            seen.extend(c["seq"] for c in page["items"])
                            after = page["last_seq"]
                            if finished and not page["items"]:
                                return
                except BaseException as exc:  # reported by the test, not lost with the thread
                    poll_failed.append(exc)

            def write(w: int) -> int:
                failures = 0
                with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
                    project = http.post(
                        f"{API}/projects",
                        json={"park_id": park["id"], "name": f"w{w}", "stage": "planning"},
                    ).json()
                    for i in range(writes_each - 1):
                        if i % 3 == 2:
                            r = http.post(
                                f"{API}/investments",
                                json={
                                    "project_id": project["id"],
                                    "kind": "reported",
                                    "amount": str(i),
                                },
                            )
                        else:
                            r = http.patch(
                                f"{API}/projects/{project['id']}", json={"name": f"w{w}-{i}"}
                            )
                        failures += r.status_code >= 400
                return failures

            poller = threading.Thread(target=poll)
            poller.start()
            try:
                with ThreadPoolExecutor(writers) as pool:
                    failures = sum(pool.map(write, range(writers)))
            finally:
                done.set()
                poller.join(timeout=120)
                abandon.set()  # a poller still reading stops at its next page
            assert not poller.is_alive(), (
                f"the feed poller had not read to the end 120 s after the writers finished"
                f" ({len(seen)} changes read)"
            )
            assert not poll_failed, f"the feed poller failed: {poll_failed[0]!r}"
            assert failures == 0
            everything = httpx.get(
                f"{base}{API}/changes", params={"after": 0, "limit": 1}, headers=auth
            ).json()
            assert everything["items"][0]["seq"] == seen[0]
            assert seen == sorted(seen), "the poller saw a seq out of order"
            assert len(seen) == len(set(seen)), "the poller saw a seq twice"

            async def all_seqs() -> list[int]:
                conn = await asyncpg.connect(source_url)
                try:
                    return [r[0] for r in await conn.fetch("SELECT seq FROM change ORDER BY seq")]
                finally:
                    await conn.close()

            assert seen == asyncio.run(all_seqs()), "the poller missed a change"
            assert len(seen) >= 1 + writers * writes_each
            # The mirror catches up and then holds the same rows.
            expected = asyncio.run(_table_rows(source_url))
            deadline = time.monotonic() + 60
            while asyncio.run(_table_rows(mirror_url)) != expected:
                assert follower.poll() is None, (
                    f"the mirror exited with {follower.returncode}: {b''.join(mirror_log)!r}"
                )
                assert time.monotonic() < deadline, (
                    "the mirror did not hold the source's rows within 60 s; its log:"
                    f" {b''.join(mirror_log)[-2000:]!r}"
                )
                time.sleep(0.2)
    db_factory.drop(source_url)
    db_factory.drop(mirror_url)
