"""Small builders shared by the tests: records created through the API, as a client would."""

from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"


def post(
    client: TestClient, resource: str, body: dict[str, Any], status: int = 201
) -> dict[str, Any]:
    response = client.post(f"{API}/{resource}", json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def make_park(client: TestClient, name: str = "枣庄高新区", **extra: Any) -> dict[str, Any]:
    return post(client, "parks", {"name": name, "level": "national", "city": "枣庄市", **extra})


def make_chain(
    client: TestClient, park_id: int, code: str = "big-data", name: str = "大数据", **extra: Any
) -> dict[str, Any]:
    return post(
        client,
        "chains",
        {"park_id": park_id, "code": code, "name": name, "role": "pillar", **extra},
    )


def make_enterprise(
    client: TestClient,
    park_id: int,
    chain_id: int,
    name: str = "交大智邦（枣庄）数字科技有限公司",
    **extra: Any,
) -> dict[str, Any]:
    return post(
        client, "enterprises", {"park_id": park_id, "chain_id": chain_id, "name": name, **extra}
    )


def make_project(
    client: TestClient, park_id: int, name: str = "鲁南大数据中心", **extra: Any
) -> dict[str, Any]:
    return post(client, "projects", {"park_id": park_id, "name": name, "stage": "signed", **extra})


def make_target(client: TestClient, park_id: int, **extra: Any) -> dict[str, Any]:
    """每年100个重点项目 for the park, unless `extra` says otherwise."""
    body = {
        "park_id": park_id,
        "metric": "key_projects",
        "value": "100",
        "unit": "个",
        "recurrence": "annual",
        **extra,
    }
    return post(client, "targets", body)


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for leak in ("Traceback", "sqlalchemy", "SELECT ", "/work/", ".py"):
        assert leak not in response.text
    return body


def staff_claims(settings: Any, username: str) -> dict[str, Any]:
    """The account-bound claims of a staff token for `username` as the database holds it now
    (`uid`, `cred`), for tests that forge or issue tokens themselves."""
    import asyncio

    from sqlalchemy import select

    from app.db import Database, make_engine
    from app.models.user import User
    from app.security import credentials_stamp

    async def read() -> dict[str, Any]:
        db = Database(make_engine(settings.database_url, pool_size=1))
        try:
            async with db.reader() as session:
                user = (
                    await session.execute(select(User).where(User.username == username))  # type: ignore[arg-type]
                ).scalar_one()
                assert user.id is not None
                return {"uid": user.id, "cred": credentials_stamp(settings, user.password_hash)}
        finally:
            await db.dispose()

    return asyncio.run(read())
