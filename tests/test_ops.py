"""Operations: liveness, readiness, request ids and CORS, as a load balancer and a browser see them."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app import migrate
from app.config import Settings
from app.main import create_app
from tests.conftest import DatabaseFactory
from tests.helpers import API, make_park, problem

FRONT = "http://front.example"
ADMIN_PASSWORD = "admin-password-for-tests"


@pytest.fixture
def balancer(anon: TestClient) -> TestClient:
    """A load balancer's probe: no credentials."""
    assert "Authorization" not in anon.headers
    return anon


def test_healthz_and_readyz(balancer: TestClient) -> None:
    alive = balancer.get("/healthz")
    assert alive.status_code == 200
    assert alive.json()["status"] == "ok"
    ready = balancer.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok"
    assert body["schema"] == body["head"] == migrate.head_revision()


@pytest.fixture
def unmigrated_url(db_factory: DatabaseFactory) -> Iterator[str]:
    url = db_factory.empty()
    yield url
    db_factory.drop(url)


def test_readyz_on_a_database_that_was_not_migrated(unmigrated_url: str) -> None:
    settings = Settings(database_url=unmigrated_url, registry_admin_password=ADMIN_PASSWORD)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/readyz")
        body = problem(response, 503)
        # Not ready for this reason: the database answers, and has no schema revision at all.
        assert body.get("database") == "ok", body
        assert "schema" in body and body["schema"] is None, body
        assert body.get("head") == migrate.head_revision(), body
        assert "python -m app migrate" in body["detail"], body
        assert response.headers["retry-after"] == "5"
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        assert response.headers.get("x-request-id")


def test_readyz_when_the_database_goes_away(
    db_factory: DatabaseFactory, database_url: str, settings: Settings
) -> None:
    if db_factory.engine != "postgresql":
        pytest.skip("a database server that goes away is a PostgreSQL situation")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        db_factory.drop(database_url)  # terminates the app's connections too
        for _ in range(2):
            response = client.get("/readyz")
            # Gone is "unreachable", never "reachable but not migrated".
            assert problem(response, 503)["database"] == "unreachable", response.text
            assert "registry_test" not in response.text  # no database names leak
        assert client.get("/healthz").status_code == 200


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    park = make_park(client)
    url = f"{API}/parks/{park['id']}"
    responses = {
        "201": client.post(f"{API}/parks", json={"name": "乙园区", "level": "other"}),
        "200": client.get(url),
        "304": client.get(url, headers={"If-None-Match": '"1"'}),
        "404": client.get(f"{API}/parks/999"),
        "404-route": client.get("/no/such/page"),
        "405": client.put(url, json={}),
        "412": client.patch(url, json={"city": "滕州"}, headers={"If-Match": '"9"'}),
        "422": client.get(f"{API}/parks", params={"limit": 9999}),
        "healthz": client.get("/healthz"),
        "docs": client.get("/docs"),
        "openapi": client.get("/openapi.json"),
    }
    seen = []
    for name, response in responses.items():
        rid = response.headers.get("x-request-id")
        assert rid, f"{name} ({response.status_code}) has no X-Request-ID"
        seen.append(rid)
    assert len(set(seen)) == len(seen), "request ids must differ between requests"
    assert responses["304"].status_code == 304 and responses["412"].status_code == 412

    for echoed in ("abc-123", "6f1d2c3b-aaaa-4bbb-8ccc-0123456789ab"):
        response = client.get(url, headers={"X-Request-ID": echoed})
        assert response.headers["x-request-id"] == echoed
    missing = client.get(f"{API}/parks/999", headers={"X-Request-ID": "trace-1"})
    problem(missing, 404)
    assert missing.headers["x-request-id"] == "trace-1"
    invalid = client.post(f"{API}/parks", json={"name": ""}, headers={"X-Request-ID": "trace-2"})
    problem(invalid, 422)
    assert invalid.headers["x-request-id"] == "trace-2"


def test_an_unexpected_error_is_a_problem_with_a_request_id(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM /work/main/app/db.py")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "trace-500"})
        body = problem(response, 500)
        assert "secret" not in response.text and "RuntimeError" not in response.text
        assert body["type"].endswith("internal-error")
        assert response.headers.get("x-request-id") == "trace-500"


def test_cors_answers_only_the_configured_origins(client: TestClient) -> None:
    park = make_park(client)
    url = f"{API}/parks/{park['id']}"

    allowed = client.get(url, headers={"Origin": FRONT})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == FRONT
    exposed = allowed.headers.get("access-control-expose-headers", "").lower()
    assert "etag" in exposed and "x-request-id" in exposed and "location" in exposed

    preflight = client.options(
        url,
        headers={
            "Origin": FRONT,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "if-match, content-type, authorization",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == FRONT
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert "if-match" in allowed_headers

    for stranger in ("http://evil.example", "http://front.example.evil.com", "null"):
        other = client.get(url, headers={"Origin": stranger})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers, stranger
        denied = client.options(
            url, headers={"Origin": stranger, "Access-Control-Request-Method": "DELETE"}
        )
        assert denied.headers.get("access-control-allow-origin") in (None, ""), stranger
        assert denied.status_code != 200 or "access-control-allow-methods" not in denied.headers
    for response in (allowed, preflight):
        assert response.headers["access-control-allow-origin"] != "*"
    # The delete the stranger asked about did not happen.
    assert client.get(url).status_code == 200
