"""The command line and user administration as README promises them, on both engines.

Each `python -m app` command runs as a real process against the test's database (its
DATABASE_URL, the suite's admin password), and what it did is checked through the API and in the
tables. User administration runs against a real server (`python -m app serve`).
"""

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from app import migrate
from app.config import PROJECT_DIR
from app.db import make_engine
from app.models import metadata
from app.models.user import ApiToken
from app.seed import SECTIONS, load_files
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API, tables_and_revision
from tests.servers import server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_app(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS` on `database_url`, as an operator runs it."""
    env = {**os.environ, "DATABASE_URL": database_url, "REGISTRY_ADMIN_PASSWORD": ADMIN_PASSWORD}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def succeeded(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args[3:]} exited {done.returncode}:\n{done.stderr}"
    return done.stdout


def login(http: httpx.Client | TestClient, username: str, password: str) -> Any:
    return http.post(f"{API}/auth/token", data={"username": username, "password": password})


def token_of(http: httpx.Client | TestClient, username: str, password: str) -> str:
    answer = login(http, username, password)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def _query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(sql), params)]
    finally:
        await engine.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return asyncio.run(_query(url, sql, **params))


async def _everything(url: str) -> dict[str, str]:
    """Every row of every table as text, by table."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            return {
                table: "\n".join(
                    repr(tuple(row)) for row in await conn.execute(text(f'SELECT * FROM "{table}"'))
                )
                for table in tables
            }
    finally:
        await engine.dispose()


def everything(url: str) -> dict[str, str]:
    return asyncio.run(_everything(url))


def feed_last_seq(client: TestClient, headers: dict[str, str]) -> int:
    """The change feed's last seq, read as a consumer reads it (page by page from 0)."""
    after, pages = 0, 0
    while True:
        page = client.get(f"{API}/changes", params={"after": after, "limit": 1000}, headers=headers)
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        if not items:
            return after
        after = items[-1]["seq"]
        pages += 1
        assert pages < 1000, "the feed never ended"


# ---------------------------------------------------------------- user administration (API)


@pytest.fixture(scope="module")
def served(db_factory: DatabaseFactory) -> Iterator[str]:
    """One real server per engine for the user-administration tests (each its own accounts)."""
    url = db_factory.fresh()
    try:
        with server(url) as (base, _):
            yield base
    finally:
        db_factory.drop(url)


def test_deactivating_a_user_blocks_its_login_and_its_existing_token(
    served: str, tokens: dict[str, str]
) -> None:
    admin = bearer(tokens["admin"])
    with httpx.Client(base_url=served, timeout=30) as http:
        made = http.post(
            f"{API}/users",
            json={"username": "clerk", "password": "clerk-password-1", "role": "editor"},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        user_id = made.json()["id"]
        token = token_of(http, "clerk", "clerk-password-1")
        assert http.get(f"{API}/auth/me", headers=bearer(token)).json()["name"] == "clerk"
        park = {"name": "停用前", "level": "other"}
        assert http.post(f"{API}/parks", json=park, headers=bearer(token)).status_code == 201
        wrong = login(http, "clerk", "not-the-password")
        assert wrong.status_code == 401, wrong.text

        off = http.patch(f"{API}/users/{user_id}", json={"is_active": False}, headers=admin)
        assert off.status_code == 200 and off.json()["is_active"] is False, off.text
        # The token it already holds stops on its next request, reads and writes alike.
        assert http.get(f"{API}/auth/me", headers=bearer(token)).status_code == 401
        assert http.get(f"{API}/parks", headers=bearer(token)).status_code == 401
        park = {"name": "停用后", "level": "other"}
        assert http.post(f"{API}/parks", json=park, headers=bearer(token)).status_code == 401
        # Its right password logs in no more, answered as a wrong one is.
        blocked = login(http, "clerk", "clerk-password-1")
        assert blocked.status_code == 401, blocked.text
        assert blocked.json()["detail"] == wrong.json()["detail"]
        names = [p["name"] for p in http.get(f"{API}/parks", headers=admin).json()["items"]]
        assert "停用前" in names and "停用后" not in names

        # Enabled again, the same password logs in: the refusal was the deactivation's.
        on = http.patch(f"{API}/users/{user_id}", json={"is_active": True}, headers=admin)
        assert on.status_code == 200 and on.json()["is_active"] is True, on.text
        again = token_of(http, "clerk", "clerk-password-1")
        assert http.get(f"{API}/auth/me", headers=bearer(again)).status_code == 200


def test_a_role_change_applies_on_the_next_request(served: str, tokens: dict[str, str]) -> None:
    admin = bearer(tokens["admin"])
    with httpx.Client(base_url=served, timeout=30) as http:
        made = http.post(
            f"{API}/users",
            json={"username": "writer", "password": "writer-password-1", "role": "editor"},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        user_id = made.json()["id"]
        token = token_of(http, "writer", "writer-password-1")
        created = http.post(
            f"{API}/parks", json={"name": "编辑建", "level": "other"}, headers=bearer(token)
        )
        assert created.status_code == 201, created.text
        park_url = f"{API}/parks/{created.json()['id']}"

        demoted = http.patch(f"{API}/users/{user_id}", json={"role": "viewer"}, headers=admin)
        assert demoted.status_code == 200 and demoted.json()["role"] == "viewer", demoted.text
        # The very next request with the same token is a viewer's: writes 403, reads 200.
        refused = http.patch(park_url, json={"city": "别处"}, headers=bearer(token))
        assert refused.status_code == 403, refused.text
        refused = http.post(
            f"{API}/parks", json={"name": "降级后", "level": "other"}, headers=bearer(token)
        )
        assert refused.status_code == 403, refused.text
        read = http.get(park_url, headers=bearer(token))
        assert read.status_code == 200 and read.json()["city"] is None
        assert http.get(f"{API}/auth/me", headers=bearer(token)).json()["role"] == "viewer"

        promoted = http.patch(f"{API}/users/{user_id}", json={"role": "editor"}, headers=admin)
        assert promoted.status_code == 200, promoted.text
        changed = http.patch(park_url, json={"city": "枣庄市"}, headers=bearer(token))
        assert changed.status_code == 200 and changed.json()["city"] == "枣庄市", changed.text
        names = [p["name"] for p in http.get(f"{API}/parks", headers=admin).json()["items"]]
        assert "编辑建" in names and "降级后" not in names


# ---------------------------------------------------------------- create-user, create-token


def test_create_user_makes_an_account_that_logs_in_and_refuses_a_second_of_its_name(
    database_url: str, anon: TestClient, tokens: dict[str, str]
) -> None:
    admin = bearer(tokens["admin"])
    park = anon.post(f"{API}/parks", json={"name": "高新区", "level": "national"}, headers=admin)
    assert park.status_code == 201, park.text
    park_id = park.json()["id"]
    password = "gaoxin-admin-secret"
    done = run_app(
        database_url,
        *("create-user", "--username", "gaoxin-admin", "--password", password),
        *("--role", "admin", "--parks", str(park_id)),
    )
    assert succeeded(done) == "created user gaoxin-admin (admin)\n"
    assert password not in done.stdout + done.stderr

    token = token_of(anon, "gaoxin-admin", password)
    me = anon.get(f"{API}/auth/me", headers=bearer(token)).json()
    assert me == {"name": "gaoxin-admin", "role": "admin", "kind": "user", "park_ids": [park_id]}
    assert login(anon, "gaoxin-admin", "not-the-password").status_code == 401

    again = run_app(
        database_url,
        *("create-user", "--username", "gaoxin-admin", "--password", "another-password"),
        *("--role", "viewer"),
    )
    assert again.returncode == 2, (again.returncode, again.stderr)
    assert again.stdout == ""
    assert again.stderr.strip() == "error: user 'gaoxin-admin' already exists", again.stderr
    # Nothing of the first changed: its password, role and scope stand; the second's do not.
    assert login(anon, "gaoxin-admin", "another-password").status_code == 401
    token = token_of(anon, "gaoxin-admin", password)
    assert anon.get(f"{API}/auth/me", headers=bearer(token)).json() == me
    listed = [
        u for u in anon.get(f"{API}/users", headers=admin).json() if u["username"] == "gaoxin-admin"
    ]
    assert len(listed) == 1


def test_create_token_is_shown_once_works_as_bearer_and_is_kept_only_as_its_sha256(
    database_url: str, anon: TestClient, tokens: dict[str, str]
) -> None:
    done = run_app(database_url, "create-token", "--name", "sync", "--scopes", "read,write")
    out = succeeded(done).splitlines()
    assert out[0] == "created token sync (scopes: read, write); shown once:", out
    assert len(out) == 2, out
    token = out[1]
    shape = re.fullmatch(r"pir_(\d+)_([A-Za-z0-9_-]{43})", token)  # 256 bits, base64url
    assert shape is not None, token
    token_id, secret = int(shape[1]), shape[2]
    assert token not in done.stderr and secret not in done.stderr

    # It works as a Bearer token, with the scopes given: reads and writes.
    me = anon.get(f"{API}/auth/me", headers=bearer(token)).json()
    assert me == {"name": "token:sync", "role": "editor", "kind": "token", "park_ids": None}
    made = anon.post(
        f"{API}/parks", json={"name": "令牌建", "level": "other"}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text
    forged = f"pir_{token_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert anon.get(f"{API}/parks", headers=bearer(forged)).status_code == 401

    # Kept as the SHA-256 of its secret, and the token is nowhere in the database.
    stored = query(database_url, "SELECT id, token_hash FROM api_token WHERE name = 'sync'")
    assert stored == [(token_id, hashlib.sha256(secret.encode()).hexdigest())], stored
    dump = everything(database_url)
    assert "'sync'" in dump[ApiToken.__tablename__]  # the dump reads the rows
    holding = sorted(table for table, rows in dump.items() if secret in rows)
    assert holding == [], f"the token's secret is stored in the database, in {holding}"
    if make_url(database_url).get_backend_name() == "sqlite":  # nor in the file's bytes
        path = make_url(database_url).database
        assert path is not None
        for name in (path, f"{path}-wal"):
            if os.path.exists(name):
                with open(name, "rb") as f:
                    assert secret.encode() not in f.read(), f"the token's secret is in {name}"
    # Shown once: the admins' list of tokens does not show it.
    listed = anon.get(f"{API}/tokens", headers=bearer(tokens["admin"]))
    assert listed.status_code == 200 and "sync" in listed.text
    assert secret not in listed.text


# ---------------------------------------------------------------- seed --if-empty


def seed_external_ids() -> dict[str, set[str]]:
    files = load_files()
    return {spec.name: {e["external_id"] for e in files[section]} for section, spec in SECTIONS}


def stored_external_ids(url: str) -> dict[str, set[str]]:
    return {
        spec.name: {
            r[0]
            for r in query(url, f"SELECT external_id FROM {spec.table.name}")
            if r[0] is not None
        }
        for _, spec in SECTIONS
    }


def test_seed_if_empty_loads_an_empty_database(
    database_url: str, anon: TestClient, tokens: dict[str, str]
) -> None:
    admin = bearer(tokens["admin"])
    assert feed_last_seq(anon, admin) == 0
    expected = seed_external_ids()
    count = sum(len(ids) for ids in expected.values())
    assert succeeded(run_app(database_url, "seed", "--if-empty")) == (
        f"seed: {count} created, 0 updated, 0 unchanged\n"
    )
    assert stored_external_ids(database_url) == expected
    # The feed holds a create for each seeded record, and only the seed's writes.
    entries = query(database_url, "SELECT resource, external_id, op, actor FROM change")
    assert {e[3] for e in entries} == {"seed"}
    creates = [(e[0], e[1]) for e in entries if e[2] == "create"]
    assert sorted(creates) == sorted((name, x) for name, ids in expected.items() for x in ids)
    assert feed_last_seq(anon, admin) == max(
        r[0] for r in query(database_url, "SELECT seq FROM change")
    )


def test_seed_if_empty_writes_nothing_to_a_database_holding_data(
    database_url: str, anon: TestClient, tokens: dict[str, str]
) -> None:
    admin = bearer(tokens["admin"])
    park = anon.post(f"{API}/parks", json={"name": "自建园区", "level": "other"}, headers=admin)
    assert park.status_code == 201, park.text
    last = feed_last_seq(anon, admin)
    assert last > 0
    done = run_app(database_url, "seed", "--if-empty")
    assert succeeded(done).startswith("seed: the database already holds data; skipped"), done.stdout
    assert feed_last_seq(anon, admin) == last
    assert anon.get(f"{API}/changes", params={"after": last}, headers=admin).json()["items"] == []
    assert stored_external_ids(database_url) == {spec.name: set() for _, spec in SECTIONS}
    names = [p["name"] for p in anon.get(f"{API}/parks", headers=admin).json()["items"]]
    assert names == ["自建园区"]


# ---------------------------------------------------------------- migrate REVISION


def test_migrate_to_a_named_revision_then_to_head(db_factory: DatabaseFactory) -> None:
    url = db_factory.empty()
    middle = "3c37c763571b"  # idempotency keys and mirror state; audit events come later
    head = migrate.head_revision()
    assert head is not None and head != middle
    try:
        succeeded(run_app(url, "migrate", middle))
        tables, revision = tables_and_revision(url)
        assert revision == middle
        assert {"mirror_state", "idempotency_key", "login_failure"} <= tables
        assert "audit_event" not in tables

        succeeded(run_app(url, "migrate"))
        tables, revision = tables_and_revision(url)
        assert revision == head
        assert set(metadata.tables) <= tables and "login_failure" not in tables

        # Asked to go back, or to an unknown revision, it says so and changes nothing.
        behind = run_app(url, "migrate", middle)
        assert behind.returncode == 1 and "migrate only upgrades" in behind.stderr, behind.stderr
        unknown = run_app(url, "migrate", "nonsense")
        assert unknown.returncode == 2, unknown.stderr
        assert "unknown revision 'nonsense'" in unknown.stderr and "Traceback" not in unknown.stderr
        assert tables_and_revision(url)[1] == head
    finally:
        db_factory.drop(url)
