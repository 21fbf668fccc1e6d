"""Who may do what: the role table, token attacks, rate limits, body limits, audit, no leaks."""

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API, problem, staff_claims
from tests.servers import rss_kib, server

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

            try:
                streamed = http.post(
                    f"{API}/parks", content=chunks(), headers={"Content-Type": "application/json"}
                )
                assert streamed.status_code == 413
            except httpx.TransportError:
                pass  # the server may close the connection once it has answered 413
            assert (
                http.post(f"{API}/parks", json={"name": "小", "level": "other"}).status_code == 201
            )
        grown_mib = (rss_kib(process.pid) - before) / 1024
        assert grown_mib < 4, f"server grew by {grown_mib:.1f} MiB"
