"""Who may do what: the role table, token attacks, rate limits, body limits, audit, no leaks."""

import asyncio
import http.client
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, update
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.db import Database, make_engine
from app.main import create_app
from app.models.user import AuditAction, AuditEvent
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API, problem, staff_claims
from tests.servers import rss_kib, server, serving_pid, wait_for, worker_pids

ADMIN_ONLY = re.compile(r"^/api/v1/(users|tokens|audit)")


def login(client: TestClient, username: str, password: str) -> str:
    response = client.post(f"{API}/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 1800
    return str(body["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operations(client: TestClient) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if path.startswith(API) and path != f"{API}/auth/token"
    ]


def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> int:
    url = path.replace(
        "{id}", "999999"
    )  # absent: authorised callers get 404, never a revoked token
    params = {"year": 2021, "group_by": "chain"}
    body = {} if method in ("POST", "PATCH", "PUT") else None
    return client.request(method, url, params=params, json=body, headers=headers).status_code


def test_every_operation_answers_each_role_as_the_table_says(
    anon: TestClient, tokens: dict[str, str]
) -> None:
    callers = {
        "anonymous": {},
        "viewer": bearer(login(anon, "viewer", "viewer-password")),
        "editor": bearer(login(anon, "editor", "editor-password")),
        "admin": bearer(login(anon, "admin", ADMIN_PASSWORD)),
        "read-token": bearer(tokens["read"]),
        "write-token": bearer(tokens["write"]),
        "admin-token": bearer(tokens["admin"]),
    }
    ops = operations(anon)
    assert len(ops) > 40
    mismatches = []
    for method, path in ops:
        for caller, headers in callers.items():
            status = call(anon, method, path, headers)
            reading = method == "GET" and not ADMIN_ONLY.match(path)
            if caller == "anonymous":
                expected_denied = 401
            elif caller in ("viewer", "read-token"):
                expected_denied = None if reading else 403
            elif caller in ("editor", "write-token"):
                expected_denied = 403 if ADMIN_ONLY.match(path) else None
            else:
                expected_denied = None
            ok = (
                status == expected_denied if expected_denied else status not in (401, 403)
            ) and status < 500
            if not ok:
                mismatches.append((caller, method, path, status, expected_denied))
    assert mismatches == []


def test_public_read_lets_anonymous_read_but_never_write(database_url: str) -> None:
    settings = Settings(
        database_url=database_url, public_read=True, registry_admin_password=ADMIN_PASSWORD
    )
    with TestClient(create_app(settings)) as anon:
        assert anon.get(f"{API}/parks").status_code == 200
        problem(anon.post(f"{API}/parks", json={"name": "x", "level": "other"}), 401)
        problem(anon.get(f"{API}/users"), 401)


def _forge(claims: dict[str, Any], key: str, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_forged_expired_unsigned_and_revoked_credentials_get_401(
    anon: TestClient, tokens: dict[str, str], settings: Settings
) -> None:
    now = datetime.now(UTC)
    good = {
        "sub": "admin",
        **staff_claims(settings, "admin"),
        "role": "admin",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "typ": "access",
    }
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(
        json.dumps(
            {
                "sub": "admin",
                "role": "admin",
                "iat": int(now.timestamp()),
                "exp": int(now.timestamp()) + 300,
                "typ": "access",
            }
        ).encode()
    ).decode()
    attacks = {
        "wrong key": _forge(good, "another-secret-another-secret-another"),
        "expired": _forge(
            {**good, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)},
            settings.secret_key,
        ),
        "alg none": f"{header}.{payload}.",
        "no exp": _forge({k: v for k, v in good.items() if k != "exp"}, settings.secret_key),
        "not an access token": _forge({**good, "typ": "refresh"}, settings.secret_key),
        "garbage": "not-a-jwt",
        "token with wrong secret": tokens["admin"][:-4] + "AAAA",
        "unknown token id": "pir_999_abcdef",
    }
    control = bearer(_forge(good, settings.secret_key))
    assert anon.get(f"{API}/parks", headers=control).status_code == 200
    for name, token in attacks.items():
        response = anon.get(f"{API}/parks", headers=bearer(token))
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == "Bearer"
    admin = bearer(tokens["admin"])
    made = anon.post(
        f"{API}/tokens", json={"name": "short", "scopes": ["read"]}, headers=admin
    ).json()
    assert anon.get(f"{API}/parks", headers=bearer(made["token"])).status_code == 200
    assert anon.delete(f"{API}/tokens/{made['id']}", headers=admin).status_code == 204
    assert anon.get(f"{API}/parks", headers=bearer(made["token"])).status_code == 401
    past = (now - timedelta(seconds=1)).isoformat()
    expired = anon.post(
        f"{API}/tokens", json={"name": "old", "scopes": ["read"], "expires_at": past}, headers=admin
    ).json()
    assert anon.get(f"{API}/parks", headers=bearer(expired["token"])).status_code == 401


def test_the_eleventh_bad_login_in_a_minute_gets_429(anon: TestClient) -> None:
    for _ in range(10):
        problem(
            anon.post(f"{API}/auth/token", data={"username": "editor", "password": "wrong"}), 401
        )
    limited = problem(
        anon.post(f"{API}/auth/token", data={"username": "editor", "password": "editor-password"}),
        429,
    )
    assert "too many" in limited["detail"]
    retry = anon.post(f"{API}/auth/token", data={"username": "editor", "password": "wrong"})
    assert 1 <= int(retry.headers["retry-after"]) <= 60
    # Another user logs in from the same address: the limit is per (username, address)...
    login(anon, "viewer", "viewer-password")
    # ... until the address has failed 30 times in the minute, with whichever usernames.
    for n in range(20):
        problem(
            anon.post(f"{API}/auth/token", data={"username": f"guess{n}", "password": "x"}), 401
        )
    problem(
        anon.post(f"{API}/auth/token", data={"username": "viewer", "password": "viewer-password"}),
        429,
    )


def test_history_shows_who_changed_a_project_in_order(
    anon: TestClient, tokens: dict[str, str]
) -> None:
    editor = bearer(login(anon, "editor", "editor-password"))
    admin = bearer(tokens["admin"])
    park = anon.post(
        f"{API}/parks", json={"name": "园区", "level": "national"}, headers=editor
    ).json()
    project = anon.post(
        f"{API}/projects",
        json={"park_id": park["id"], "name": "项目", "stage": "planning"},
        headers=editor,
    ).json()
    anon.patch(
        f"{API}/projects/{project['id']}",
        json={"stage": "signed"},
        headers={**admin, "X-Request-ID": "req-42"},
    )
    anon.delete(f"{API}/projects/{project['id']}", headers=editor)
    history = anon.get(
        f"{API}/projects/{project['id']}/history", headers=bearer(tokens["read"])
    ).json()
    assert [(h["op"], h["version"], h["actor"]) for h in history] == [
        ("create", 1, "editor"),
        ("update", 2, "token:test-admin"),
        ("delete", 3, "editor"),
    ]
    assert history[1]["request_id"] == "req-42" and history[1]["data"]["stage"] == "signed"
    feed = anon.get(f"{API}/changes", headers=admin).json()["items"]
    assert {c["actor"] for c in feed} == {"editor", "token:test-admin"}
    problem(anon.get(f"{API}/projects/999/history", headers=admin), 404)


def test_no_secret_ever_appears_in_a_response(anon: TestClient, tokens: dict[str, str]) -> None:
    admin = bearer(tokens["admin"])
    created = anon.post(
        f"{API}/users",
        json={"username": "li", "password": "s3cret-pass", "role": "viewer"},
        headers=admin,
    )
    assert created.status_code == 201 and "password" not in created.text
    users = anon.get(f"{API}/users", headers=admin)
    assert "argon2" not in users.text and "password" not in users.text
    made = anon.post(
        f"{API}/tokens", json={"name": "sync", "scopes": ["read", "write"]}, headers=admin
    ).json()
    listed = anon.get(f"{API}/tokens", headers=admin).text
    assert made["token"] not in listed and made["token"].split("_", 2)[2] not in listed
    assert "hash" not in listed
    assert anon.get(f"{API}/auth/me", headers=bearer(made["token"])).json() == {
        "name": "token:sync",
        "role": "editor",
        "kind": "token",
        "park_ids": None,
    }
    # Mass assignment: a role or a hash cannot ride along.
    problem(
        anon.post(
            f"{API}/users",
            json={
                "username": "x",
                "password": "12345678",
                "role": "viewer",
                "is_active": False,
                "password_hash": "x",
            },
            headers=admin,
        ),
        422,
    )


def test_no_usable_default_key(tmp_path: Path) -> None:
    """Without SECRET_KEY a random key is made on first start, kept with the data (0600) and
    reused; a key that is set must be long; nothing prints it."""
    kept = tmp_path / "data" / "secret_key"
    first = Settings(secret_key_file=kept)
    assert len(first.secret_key) >= 32
    assert kept.stat().st_mode & 0o777 == 0o600
    assert Settings(secret_key_file=kept).secret_key == first.secret_key  # reused on restart
    other = Settings(secret_key_file=tmp_path / "elsewhere" / "secret_key")
    assert other.secret_key != first.secret_key  # random, not a value anyone could know
    assert first.secret_key not in repr(first) and first.secret_key not in str(first)
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment="production", secret_key="short")
    assert Settings(environment="production", secret_key="x" * 40).environment == "production"
    (tmp_path / "broken").write_text("x")
    with pytest.raises(ValidationError, match="no usable key"):
        Settings(secret_key_file=tmp_path / "broken")
    with pytest.raises(ValidationError):
        Settings(access_token_minutes=120)


def test_docs_can_be_turned_off(database_url: str) -> None:
    settings = Settings(
        database_url=database_url, docs_enabled=False, registry_admin_password=ADMIN_PASSWORD
    )
    with TestClient(create_app(settings)) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404


def test_cors_star_never_comes_with_credentials(database_url: str) -> None:
    settings = Settings(
        database_url=database_url, cors_origins=["*"], registry_admin_password=ADMIN_PASSWORD
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/healthz", headers={"Origin": "http://evil.example"})
        assert r.headers.get("access-control-allow-credentials") is None
        assert r.headers["access-control-allow-origin"] == "*"


def test_first_start_creates_admin_with_its_password_kept_not_printed(
    db_factory: DatabaseFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from app import migrate

    url = db_factory.empty()
    migrate.upgrade(url)
    settings = Settings(database_url=url, secret_key_file=tmp_path / "data" / "secret_key")
    with TestClient(create_app(settings)):
        pass
    printed = capsys.readouterr().out
    kept = tmp_path / "data" / "admin_password"
    assert f"Created user 'admin'; its password is in {kept}" in printed, printed
    assert kept.stat().st_mode & 0o777 == 0o600
    password = kept.read_text().strip()
    assert len(password) >= 16 and password not in printed
    with TestClient(create_app(settings)) as c:
        assert "Created user" not in capsys.readouterr().out
        token = login(c, "admin", password)
        assert c.get(f"{API}/users", headers=bearer(token)).status_code == 200
    db_factory.drop(url)


@pytest.mark.slow
def test_a_10_mib_body_gets_413_without_the_server_growing(
    database_url: str, tokens: dict[str, str]
) -> None:
    with server(database_url) as (base, process):
        headers = bearer(tokens["admin"])
        before = rss_kib(process.pid)
        big = b'{"name": "' + b"x" * (10 * 1024 * 1024) + b'", "level": "other"}'
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            declared = http.post(
                f"{API}/parks", content=big, headers={"Content-Type": "application/json"}
            )
            assert declared.status_code == 413
            assert declared.headers["content-type"] == "application/problem+json"

            def chunks() -> Any:
                for i in range(0, len(big), 64 * 1024):
                    yield big[i : i + 64 * 1024]

            # Without a length the limit is applied as the body comes: the server answers 413
            # once it has read past the limit, reads the rest only to drop it, and keeps the
            # connection for the next request (no transport error is expected, nor accepted).
            streamed = http.post(
                f"{API}/parks", content=chunks(), headers={"Content-Type": "application/json"}
            )
            assert "content-length" not in streamed.request.headers
            assert streamed.request.headers["transfer-encoding"] == "chunked"
            assert streamed.status_code == 413, (
                f"10 MiB sent without a length, answered {streamed.status_code}: {streamed.text[:300]}"
            )
            body = problem(streamed, 413)
            assert body["detail"] == "request body exceeds 1048576 bytes", body
            small = http.post(f"{API}/parks", json={"name": "小", "level": "other"})
            assert small.status_code == 201, small.text
        grown_mib = (rss_kib(process.pid) - before) / 1024
        assert grown_mib < 4, f"server grew by {grown_mib:.1f} MiB"


# ---------------------------------------------------------------- login limits over time and space

PEER = "x-test-peer"


def _from_peer(app: ASGIApp) -> ASGIApp:
    """The app as clients at many addresses reach it: a request's TCP peer (the address the
    login limits count by) is the one its `X-Test-Peer` header names."""

    async def reached(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = dict(scope["headers"]).get(PEER.encode())
            if peer is not None:
                scope = {**scope, "client": (peer.decode(), 40000)}
        await app(scope, receive, send)

    return reached


def _age_failed_logins(database_url: str, by: timedelta) -> int:
    """Moves every failed login recorded so far `by` into the past, as if that much time had
    gone by (the limits' windows are a minute and an hour); how many there were."""

    async def go() -> int:
        db = Database(make_engine(database_url, pool_size=1))
        try:
            async with db.writer() as session:
                table = AuditEvent.__table__  # type: ignore[attr-defined]
                failed = table.c.action == AuditAction.login_failed.value
                rows = (await session.execute(select(table.c.id, table.c.at).where(failed))).all()
                for row_id, at in rows:
                    await session.execute(
                        update(table).where(table.c.id == row_id).values(at=at - by)
                    )
                await session.commit()
                return len(rows)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_failures_from_many_addresses_lock_a_user_out_until_the_hour_has_passed(
    database_url: str,
) -> None:
    """LOGIN_FAILURES_PER_USER_PER_HOUR counts a user's failures from every address, each
    address at most LOGIN_FAILURES_PER_MINUTE of them; over it the user cannot log in from
    anywhere, with the right password too, until the hour has passed. Time is moved on by
    moving the recorded failures back."""
    settings = Settings(
        database_url=database_url,
        registry_admin_password=ADMIN_PASSWORD,
        login_failures_per_minute=2,
        login_failures_per_user_per_hour=6,
    )
    with TestClient(_from_peer(create_app(settings))) as c:

        def attempt(peer: str, password: str, username: str = "editor") -> httpx.Response:
            form = {"username": username, "password": password}
            return c.post(f"{API}/auth/token", data=form, headers={PEER: peer})

        # One address: two failures in a minute, then 429, the right password too.
        for _ in range(2):
            problem(attempt("10.0.0.1", "wrong"), 401)
        problem(attempt("10.0.0.1", "editor-password"), 429)
        # A minute later it may fail twice more; its four failures in the hour count as two.
        assert _age_failed_logins(database_url, timedelta(minutes=2)) == 2
        for _ in range(2):
            problem(attempt("10.0.0.1", "wrong"), 401)
        problem(attempt("10.0.0.1", "wrong"), 429)
        for peer in ("10.0.0.2", "10.0.0.2", "10.0.0.3"):
            problem(attempt(peer, "wrong"), 401)
        # 7 failures, 5 of them counted: not yet over the hourly limit of 6.
        assert attempt("10.0.0.9", "editor-password").status_code == 200
        problem(attempt("10.0.0.3", "wrong"), 401)  # the 6th counted
        for peer in ("10.0.0.9", "10.0.0.10"):
            locked = attempt(peer, "editor-password")
            problem(locked, 429)
            assert 3500 < int(locked.headers["retry-after"]) <= 3600, locked.headers
        assert attempt("10.0.0.9", "viewer-password", "viewer").status_code == 200  # per user
        # 58 minutes on, the six are still within the hour; 3 minutes later they are not.
        _age_failed_logins(database_url, timedelta(minutes=58))
        problem(attempt("10.0.0.9", "editor-password"), 429)
        _age_failed_logins(database_url, timedelta(minutes=3))
        assert attempt("10.0.0.9", "editor-password").status_code == 200
        assert attempt("10.0.0.1", "editor-password").status_code == 200


@pytest.mark.slow
def test_login_limits_are_counted_across_the_workers(database_url: str) -> None:
    """Under `--workers 2` a user's failed logins are counted together, whichever process
    answered each: failures spread over both workers reach the per-minute limit of an address
    and the hourly limit of the user, and both workers then answer 429."""
    env = {
        "TRUSTED_PROXIES": '["127.0.0.1"]',  # so that X-Forwarded-For names each client
        "LOGIN_FAILURES_PER_MINUTE": "2",
        "LOGIN_FAILURES_PER_USER_PER_HOUR": "6",
    }
    with server(database_url, workers=2, **env) as (base, process):
        port = int(base.rsplit(":", 1)[1])
        pids = wait_for(
            lambda: found if len(found := worker_pids(process.pid)) == 2 else None,
            30,
            "the supervisor starting two workers",
        )
        # One kept-alive connection to each worker, told apart by the kernel's socket table
        # (new connections go to whichever worker accepts first: until both have, try again).
        connections: dict[int, http.client.HTTPConnection] = {}

        def one_more_worker() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/healthz")
            assert conn.getresponse().read()
            worker = serving_pid(conn.sock, pids)
            if worker is None or worker in connections:
                conn.close()
            else:
                connections[worker] = conn
            return len(connections) == 2

        try:
            wait_for(one_more_worker, 60, "a connection accepted by each of the two workers")
            first, second = connections.values()

            def attempt(
                conn: http.client.HTTPConnection, address: str, password: str
            ) -> tuple[int, str | None]:
                form = urlencode({"username": "editor", "password": password})
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Forwarded-For": address,
                }
                conn.request("POST", f"{API}/auth/token", body=form, headers=headers)
                answer = conn.getresponse()
                answer.read()
                return answer.status, answer.getheader("retry-after")

            def expect(
                conn: http.client.HTTPConnection, address: str, password: str, status: int, why: str
            ) -> str | None:
                got, retry = attempt(conn, address, password)
                worker = "first" if conn is first else "second"
                assert got == status, f"{why}: {address} on the {worker} worker got {got}"
                return retry

            # One address, one failure on each worker: the minute's limit of 2 is reached.
            expect(first, "10.1.0.1", "wrong", 401, "the 1st failure")
            expect(second, "10.1.0.1", "wrong", 401, "the 2nd failure")
            expect(first, "10.1.0.1", "wrong", 429, "over the minute's 2 (1 on each worker)")
            expect(second, "10.1.0.1", "editor-password", 429, "over the minute's 2")
            # Two more addresses, their failures spread over both: the hour's limit of 6.
            expect(second, "10.1.0.2", "wrong", 401, "the 3rd failure in the hour")
            expect(first, "10.1.0.2", "wrong", 401, "the 4th failure in the hour")
            expect(first, "10.1.0.9", "editor-password", 200, "4 of the hour's 6")
            expect(second, "10.1.0.9", "editor-password", 200, "4 of the hour's 6")
            expect(first, "10.1.0.3", "wrong", 401, "the 5th failure in the hour")
            expect(second, "10.1.0.3", "wrong", 401, "the 6th failure in the hour")
            for conn in (first, second):
                retry = expect(conn, "10.1.0.9", "editor-password", 429, "the hour's 6 reached")
                assert retry is not None and int(retry) > 60, retry
            # Each connection was answered by the same worker throughout.
            assert {serving_pid(c.sock, pids) for c in (first, second)} == set(connections)
        finally:
            for conn in connections.values():
                conn.close()
