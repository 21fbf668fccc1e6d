"""The one request path (issue 15): what its parts promise, each shown on its own.

- a shared list filter declared once on `ListParams` filters every resource;
- records are written out exactly as their public model writes them;
- the resource routes' handler is filled from the endpoint's signature once, and refuses at
  build time what it cannot fill;
- a service token is looked up once per request, even where the idempotency middleware needed
  the caller before the route ran.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import pytest
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.api.crud import operation, page_response
from app.api.deps import CanRead, ReadSession
from app.db import Database, make_engine, run, statement
from app.resources import ALL, PARKS
from app.services import records
from app.services import user as user_service
from tests.conftest import DatabaseFactory
from tests.helpers import (
    API,
    make_chain,
    make_enterprise,
    make_park,
    make_project,
    make_target,
    post,
)


def _one_of_each(client: TestClient) -> dict[str, dict[str, Any]]:
    source = post(client, "sources", {"title": "齐鲁晚报", "publisher": "齐鲁壹点"})
    park = make_park(client, source_id=source["id"])
    chain = make_chain(client, park["id"])
    enterprise = make_enterprise(client, park["id"], chain["id"], credit_code=None)
    project = make_project(client, park["id"], chain_id=chain["id"], enterprise_id=enterprise["id"])
    investment = post(
        client,
        "investments",
        {"project_id": project["id"], "kind": "planned_total", "amount": "30", "unit": "亿元"},
    )
    target = make_target(client, park["id"], chain_id=chain["id"], period_start_year=2021)
    return {
        "sources": source,
        "parks": park,
        "chains": chain,
        "enterprises": enterprise,
        "projects": project,
        "investments": investment,
        "targets": target,
    }


def test_created_after_filters_every_resource(client: TestClient) -> None:
    """`created_after` is one field on `ListParams`; every resource's list honours it."""
    before = _one_of_each(client)
    # The cut is the last creation time of the first records; the second are made once the
    # clock (the app's own: it runs in this process) has moved past it.
    cut = max((record["created_at"] for record in before.values()), key=datetime.fromisoformat)
    _wait_until_past(datetime.fromisoformat(cut))
    after = _one_of_each_again(client, before)
    for spec in ALL:
        listed = client.get(f"{API}/{spec.name}", params={"created_after": cut, "limit": 500})
        assert listed.status_code == 200, (spec.name, listed.text)
        ids = [item["id"] for item in listed.json()["items"]]
        assert ids == [after[spec.name]["id"]], spec.name
        everything = client.get(f"{API}/{spec.name}", params={"limit": 500}).json()["items"]
        assert before[spec.name]["id"] in [item["id"] for item in everything], spec.name
    refused = client.get(f"{API}/projects", params={"created_after": "yesterday"})
    assert refused.status_code == 422
    assert refused.json()["field"] == "created_after"


def _wait_until_past(moment: datetime, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while datetime.now(UTC) <= moment:
        assert time.monotonic() < deadline, f"the clock did not pass {moment} in {seconds} s"
        time.sleep(0.001)


def _one_of_each_again(client: TestClient, first: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A second record of every resource, under the first park and chain where it needs one."""
    park, chain = first["parks"], first["chains"]
    second_park = make_park(client, name="枣庄经济开发区")
    second_chain = make_chain(client, park["id"], code="li-battery", name="锂电")
    enterprise = make_enterprise(client, park["id"], chain["id"], name="第二家企业")
    project = make_project(client, park["id"], name="第二个项目", chain_id=chain["id"])
    return {
        "sources": post(client, "sources", {"title": "第二个来源"}),
        "parks": second_park,
        "chains": second_chain,
        "enterprises": enterprise,
        "projects": project,
        "investments": post(
            client,
            "investments",
            {"project_id": project["id"], "kind": "reported", "amount": "20", "unit": "亿元"},
        ),
        "targets": make_target(client, park["id"], period_start_year=2022),
    }


def test_records_are_written_out_as_their_public_model_writes_them(
    client: TestClient, database_url: str
) -> None:
    """`public_json` writes a row's values without validating them into the public model
    (`records.plain_fields`); the bytes must be the model's own, for every resource, for the
    rows as the database gives them back."""
    _one_of_each_again(client, _one_of_each(client))

    async def compare() -> int:
        db = Database(make_engine(database_url, pool_size=1))
        compared = 0
        try:
            async with db.reading() as session:
                for spec in ALL:
                    rows, _ = await records.list_page(session, spec, spec.filters(limit=500))
                    assert rows, spec.name
                    validator = spec.public.__pydantic_validator__
                    items = []
                    for row in rows:
                        model = validator.validate_python(row, from_attributes=True)
                        expected = model.__pydantic_serializer__.to_json(model)
                        assert spec.public_json(row) == expected, spec.name
                        items.append(expected)
                        compared += 1
                    page = b'{"items":[' + b",".join(items) + b'],"next_cursor":"c"}'
                    assert page_response(spec, rows, "c").body == page, spec.name
                    # The direct route is the one taken where the model allows it.
                    assert spec.plain_fields is not None, spec.name
        finally:
            await db.dispose()
        return compared

    assert asyncio.run(compare()) >= 2 * len(ALL)


def test_a_resource_route_refuses_what_it_cannot_fill() -> None:
    """A dependency other than the session and the role check is refused when the app is
    built, not met at request time."""

    async def extra() -> int:
        return 1

    async def endpoint(session: ReadSession, value: Annotated[int, Depends(extra)]) -> Any:
        return None

    with pytest.raises(TypeError, match="not supported"):
        operation(APIRouter(), "GET", "/x", dependencies=[CanRead])(endpoint)
    with pytest.raises(TypeError, match="one role check"):
        operation(APIRouter(), "GET", "/y")(lambda: None)


def test_a_service_token_is_looked_up_once_per_request(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller is resolved once per request: a read, a write, and a POST with an
    Idempotency-Key (whose middleware needs the caller before the route runs) each look the
    token up once. The real look-up runs; it is only counted."""
    park = make_park(client)
    calls: list[str] = []
    real = user_service.principal_for_token

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append("lookup")
        return await real(*args, **kwargs)

    monkeypatch.setattr(user_service, "principal_for_token", counted)
    assert client.get(f"{API}/parks/{park['id']}").status_code == 200
    assert len(calls) == 1
    assert client.patch(f"{API}/parks/{park['id']}", json={"city": "枣庄"}).status_code == 200
    assert len(calls) == 2
    keyed = client.post(
        f"{API}/sources", json={"title": "一次"}, headers={"Idempotency-Key": "once-1"}
    )
    assert keyed.status_code == 201
    assert len(calls) == 3
    assert client.get(f"{API}/auth/me").status_code == 200  # one of FastAPI's own routes
    assert len(calls) == 4


def test_credentials_on_the_resource_routes(client: TestClient, tokens: dict[str, str]) -> None:
    """Each credential judged as FastAPI's own routes judge it, on reads of a record, a page
    and the feed; a token revoked between two requests is refused on the second."""
    park = make_park(client)
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    login = client.post(
        f"{API}/auth/token", data={"username": "viewer", "password": "viewer-password"}
    )
    made = client.post(f"{API}/tokens", json={"name": "soon-revoked", "scopes": ["read"]}).json()
    cases = {
        f"Bearer {tokens['read']}": 200,
        f"Bearer {login.json()['access_token']}": 200,
        f"bearer {tokens['read']}": 200,
        f"Bearer {made['token']}": 200,
        f"Bearer {tokens['read'][:-2]}xx": 401,
        "Bearer pir_999_abcdef": 401,
        "Bearer pir_99999999999_abcdef": 401,
        "Bearer abc.def.ghi": 401,
        "Basic dXNlcjpwYXNz": 401,
        "Bearer ": 401,
    }
    paths = (f"{API}/parks/{park['id']}", f"{API}/parks?limit=3", f"{API}/changes?limit=3")
    del client.headers["Authorization"]
    for path in paths:
        for value, status in cases.items():
            answer = client.get(path, headers={"Authorization": value})
            assert answer.status_code == status, (path, value, answer.text)
            assert client.get(f"{API}/auth/me", headers={"Authorization": value}).status_code == (
                status
            )
        assert client.get(path).status_code == 401  # no credentials
    assert client.delete(f"{API}/tokens/{made['id']}", headers=admin).status_code == 204
    revoked = {"Authorization": f"Bearer {made['token']}"}
    assert client.get(paths[0], headers=revoked).status_code == 401
    # A reader may read but not write, on the resource routes as on the others.
    reader = {"Authorization": f"Bearer {tokens['read']}"}
    assert client.post(f"{API}/sources", json={"title": "x"}, headers=reader).status_code == 403


def test_a_key_taken_by_a_concurrent_writer_is_a_conflict(
    client: TestClient, database_url: str, db_factory: DatabaseFactory
) -> None:
    """The pre-check passes while another transaction holds the same external_id uncommitted;
    the INSERT then waits for it, and fails when it commits: 409, not 500, and the loser
    leaves nothing behind. The test sees the API's INSERT blocked on the other transaction
    (PostgreSQL's own view of it) before it lets that transaction commit, and the answer is
    the race's conflict, not the pre-check's."""
    if db_factory.engine != "postgresql":
        pytest.skip("SQLite writers take the database lock up front: no such race")
    body = {"name": "并发园区", "level": "provincial", "external_id": "race"}
    holder_pid: list[int] = []
    holder_ready, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold() -> None:
        async def go() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                holder_pid.append(await conn.fetchval("SELECT pg_backend_pid()"))
                await conn.execute("BEGIN")
                await conn.execute(
                    "INSERT INTO park (external_id, version, created_at, updated_at, name,"
                    " level) VALUES ('race', 1, now(), now(), '抢先', 'provincial')"
                )
                holder_ready.set()
                released = await asyncio.to_thread(release.wait, 30)
                await conn.execute("COMMIT" if released else "ROLLBACK")
            finally:
                await conn.close()

        try:
            asyncio.run(go())
        except BaseException as exc:  # reported by the test, not lost with the thread
            failures.append(exc)
            holder_ready.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_ready.wait(30), "the holding transaction did not insert its row in 30 s"
    assert not failures, f"the holding transaction failed: {failures[0]!r}"
    result: dict[str, Any] = {}
    writer = threading.Thread(
        target=lambda: result.update(r=client.post(f"{API}/parks", json=body))
    )
    writer.start()
    try:
        blocked = _wait_for_blocked_by(database_url, holder_pid[0], lambda: "r" in result)
    finally:
        release.set()
        holder.join(30)
        writer.join(30)
    assert not holder.is_alive(), "the holding transaction did not commit within 30 s"
    assert not writer.is_alive(), "the API's write did not answer within 30 s of the commit"
    assert not failures, f"the holding transaction failed: {failures[0]!r}"
    # What PostgreSQL showed while the API's request was still running: its INSERT of the
    # park waiting for the holding transaction to end (a row lock on a transaction id), not
    # a wait for anything else, and not an answer from the pre-check.
    assert blocked["wait_event_type"] == "Lock", blocked
    assert blocked["wait_event"] == "transactionid", blocked
    assert blocked["query"].lstrip().upper().startswith("INSERT INTO PARK"), blocked
    assert "r" in result, "the API's write raised instead of answering (traceback above)"
    response = result["r"]
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    # The race's own conflict (`records._conflict`), not the pre-check's "already has".
    assert "written at the same time" in response.json()["detail"], response.text
    parks = client.get(f"{API}/parks", params={"limit": 500}).json()["items"]
    assert [p["name"] for p in parks if p["external_id"] == "race"] == ["抢先"]
    assert not [p for p in parks if p["name"] == body["name"]]


def _wait_for_blocked_by(
    database_url: str, holder: int, answered: Callable[[], bool], seconds: float = 30
) -> dict[str, Any]:
    """The session of this database that PostgreSQL shows blocked by backend `holder`
    (`pg_blocking_pids`), with what it waits on and runs, once one is; fails if the request
    answers first or none is blocked within `seconds`."""

    async def blocked(conn: asyncpg.Connection) -> dict[str, Any] | None:
        row = await conn.fetchrow(
            "SELECT pid, wait_event_type, wait_event, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND $1 = ANY(pg_blocking_pids(pid))",
            holder,
        )
        return None if row is None else dict(row)

    async def poll() -> dict[str, Any]:
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                found = await blocked(conn)
                if found is not None:
                    return found
                assert not answered(), (
                    "the API answered before any statement of it waited on the transaction"
                    " holding the same external_id: the race did not happen"
                )
                await asyncio.sleep(0.02)
            raise AssertionError(
                f"no session was blocked by the transaction holding the key within {seconds} s"
            )
        finally:
            await conn.close()

    return asyncio.run(poll())


def test_a_read_that_needs_sqlalchemy_swaps_its_connection_rather_than_taking_a_second(
    database_url: str,
) -> None:
    """`Database.reading` starts on the pool's connection alone; a statement only SQLAlchemy
    can run (one not built by `db.statement`) swaps it for SQLAlchemy's connection. With a
    pool of one connection, holding both at once would wait for the pool until it timed out."""

    async def go() -> tuple[int, int, int]:
        db = Database(make_engine(database_url, pool_size=1, max_overflow=0), pool_timeout=3)
        try:
            async with db.reading() as session:
                table = PARKS.table
                prepared = statement(("test-count",), lambda: select(func.count(table.c.id)))
                first = (await run(session, prepared))[0]
                adhoc = (await run(session, select(func.count(table.c.id).label("n"))))[0]
                again = (await run(session, prepared))[0]
            return first[next(iter(first))], adhoc["n"], again[next(iter(again))]
        finally:
            await db.dispose()

    assert asyncio.run(asyncio.wait_for(go(), 10)) == (0, 0, 0)
