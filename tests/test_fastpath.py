"""The fast read path (`app/fastpath.py`) answers byte for byte what the full application answers.

Two applications share one database: one as deployed, one with `fast_reads=False`. Every request
below goes to both; status, headers and body must be equal. On both engines the fast path must
have answered the successes itself (else this would compare the full path with itself).
"""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.fastpath import FastReads
from app.main import create_app
from app.resources import ALL
from tests.helpers import API, make_project
from tests.test_lists import insert_projects
from tests.test_security import login
from tests.test_seed import run_seed

IGNORED_HEADERS = {"date", "x-request-id"}


def fast_reads(app: Any) -> FastReads:
    layer = app.middleware_stack
    while not isinstance(layer, FastReads):
        layer = layer.app
    return layer


class Pair:
    def __init__(self, fast: TestClient, slow: TestClient, engine: str) -> None:
        self.fast, self.slow, self.engine = fast, slow, engine
        self.successes = 0

    def same(self, path: str, *, delegated: bool = False, **kwargs: Any) -> Any:
        """`delegated`: a success the fast path leaves to the application by design."""
        a = self.fast.get(path, **kwargs)
        b = self.slow.get(path, **kwargs)
        where = f"GET {path} {kwargs.get('headers', '')}"
        assert a.status_code == b.status_code, (where, a.text, b.text)
        assert a.content == b.content, where
        assert [(k, v) for k, v in a.headers.items() if k not in IGNORED_HEADERS] == [
            (k, v) for k, v in b.headers.items() if k not in IGNORED_HEADERS
        ], where
        self.successes += a.status_code in (200, 304) and not delegated
        return a

    def walk(self, resource: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of a list, on both paths, following the fast path's cursors."""
        items: list[dict[str, Any]] = []
        query = dict(params)
        for _ in range(200):
            response = self.same(f"{API}/{resource}", params=query)
            assert response.status_code == 200, response.text
            body = response.json()
            items += body["items"]
            if body["next_cursor"] is None:
                return items
            query["cursor"] = body["next_cursor"]
        raise AssertionError("the cursor never ends")


def _clients(settings: Settings, headers: dict[str, str]) -> tuple[TestClient, TestClient]:
    fast = TestClient(create_app(settings), base_url="http://testserver", headers=headers)
    slow = TestClient(
        create_app(settings.model_copy(update={"fast_reads": False})),
        base_url="http://testserver",
        headers=headers,
    )
    return fast, slow


@pytest.fixture
def pair(
    settings: Settings, database_url: str, tokens: dict[str, str], db_factory: Any
) -> Iterator[Pair]:
    run_seed(database_url)  # every resource, Chinese text, amounts, provenance
    # 300 projects with NULL years and totals, and whole-second timestamps (no microseconds).
    insert_projects(database_url, park_id=1, n=300)
    fast, slow = _clients(settings, {"Authorization": f"Bearer {tokens['read']}"})
    with fast, slow:
        compared = Pair(fast, slow, db_factory.engine)
        yield compared
        answered = fast_reads(fast.app).answered
        # Every success was the fast path's own answer; every failure the application's.
        assert answered == compared.successes


def test_every_resource_reads_the_same_by_id_and_by_page(pair: Pair) -> None:
    for spec in ALL:
        items = pair.walk(spec.name, limit=7)
        assert items, spec.name
        for item in items[:25]:
            got = pair.same(f"{API}/{spec.name}/{item['id']}")
            etag = got.headers["etag"]
            for header in (etag, f"W/{etag}", "*", f'"0", {etag}', '"0"'):
                pair.same(f"{API}/{spec.name}/{item['id']}", headers={"If-None-Match": header})
        # Ids no record has, and ids no record can have: 404 / 422 from the full path.
        for missing in (items[-1]["id"] + 10_000, 2**31 - 1, 2**31, 0):
            pair.same(f"{API}/{spec.name}/{missing}")
        pair.same(f"{API}/{spec.name}/1", params={"unexpected": "1"})
        for field in spec.sort_fields:
            for sort in (field, f"-{field}"):
                walked = pair.walk(spec.name, sort=sort, limit=50)
                assert len(walked) == len(items), (spec.name, sort)


def test_project_lists_filters_sorts_and_refusals_read_the_same(pair: Pair) -> None:
    for params in (
        {"sort": "-total_investment", "stage": "planning", "limit": 9},
        {"sort": "year,-name", "limit": 31},
        {"sort": "-year,total_investment", "limit": 17},
        {"sort": "name", "is_key": "true", "limit": 23},
        {"sort": "-updated_at", "updated_after": "2026-01-01T00:02:00+08:00", "limit": 40},
        {"year": "2016", "sort": "-created_at"},
        {"park_id": "1", "include_deleted": "true", "limit": 100},
    ):
        pair.walk("projects", **params)
    # What the fast path leaves to the application: search, range filters, and bad input.
    pair.same(f"{API}/projects?q=项目", delegated=True)
    pair.same(f"{API}/projects?min_investment=1000000", delegated=True)
    for query in (
        "limit=0",
        "limit=501",
        "sort=nonsense",
        "sort=name,name",
        "cursor=not-a-cursor",
        "stage=planning&stage=signed",
        "unknown=1",
        "year=",
        "updated_after=2026-01-01T00:00:00",
        "year=%FF",
    ):
        pair.same(f"{API}/projects?{query}")


def test_the_change_feed_reads_the_same(pair: Pair, tokens: dict[str, str]) -> None:
    # Writes after the seed: an update and a tombstone (data null) in the feed too.
    editor = {"Authorization": f"Bearer {tokens['write']}"}
    body = {"park_id": 1, "name": "快读变更流", "stage": "signed"}
    made = pair.slow.post(f"{API}/projects", json=body, headers=editor).json()
    path = f"{API}/projects/{made['id']}"
    assert pair.slow.patch(path, json={"stage": "operating"}, headers=editor).status_code == 200
    assert pair.slow.delete(path, headers=editor).status_code == 204
    seen: list[Any] = []
    for limit in (1, 7, 100, 1000):
        after, entries = 0, []
        while True:
            page = pair.same(f"{API}/changes", params={"after": after, "limit": limit}).json()
            if not page["items"]:
                assert page["last_seq"] == after
                break
            entries += page["items"]
            after = page["last_seq"]
        seen = seen or entries
        assert entries == seen and len(entries) > 30, limit
    for spec in ALL:
        page = pair.same(f"{API}/changes", params={"resource": spec.name, "limit": 50}).json()
        assert {e["resource"] for e in page["items"]} == {spec.name}
    pair.same(f"{API}/changes")  # the defaults
    pair.same(f"{API}/changes", params={"after": 2**63 - 1})  # the last seq there can be
    # Forms the application reads as a success in its own way, and refusals.
    for query in ("after=1&after=2", "after=%2B1", "unknown=1", "after=+1"):
        pair.same(f"{API}/changes?{query}", delegated=True)
    for query in (
        "after=-1",
        "after=abc",
        "after=",
        "limit=0",
        "limit=1001",
        "resource=bogus",
        "after=9223372036854775808",
        "after=%FF",
    ):
        assert pair.same(f"{API}/changes?{query}").status_code == 422, query


def test_credentials_are_judged_the_same(
    pair: Pair, settings: Settings, tokens: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    viewer_jwt = login(pair.slow, "viewer", "viewer-password")
    made = pair.slow.post(
        f"{API}/tokens", json={"name": "soon-revoked", "scopes": ["read"]}, headers=admin
    ).json()
    cases = {
        "service token": f"Bearer {tokens['write']}",
        "staff JWT": f"Bearer {viewer_jwt}",
        "lower-case scheme": f"bearer {tokens['read']}",
        "about to be revoked": f"Bearer {made['token']}",
        "forged secret": f"Bearer {tokens['read'][:-2]}xx",
        "unknown token id": "Bearer pir_999_abcdef",
        "huge token id": "Bearer pir_99999999999_abcdef",
        "garbage JWT": "Bearer abc.def.ghi",
        "basic": "Basic dXNlcjpwYXNz",
        "empty bearer": "Bearer ",
    }
    for path in (f"{API}/projects/1", f"{API}/projects?limit=3", f"{API}/changes?limit=3"):
        for value in cases.values():
            pair.same(path, headers={"Authorization": value})
        del pair.fast.headers["Authorization"]
        del pair.slow.headers["Authorization"]
        pair.same(path)  # no credentials: 401
        pair.fast.headers["Authorization"] = pair.slow.headers["Authorization"] = (
            f"Bearer {tokens['read']}"
        )
    assert pair.slow.delete(f"{API}/tokens/{made['id']}", headers=admin).status_code == 204
    revoked = pair.same(f"{API}/projects/1", headers={"Authorization": f"Bearer {made['token']}"})
    assert revoked.status_code == 401


def test_public_reads_and_deleted_records(
    settings: Settings, database_url: str, tokens: dict[str, str]
) -> None:
    open_settings = settings.model_copy(update={"public_read": True})
    fast, slow = _clients(open_settings, {})
    engine = settings.database_url.split(":", 1)[0]
    with fast, slow:
        pair = Pair(fast, slow, engine)
        run_seed(database_url)
        pair.same(f"{API}/projects/1")  # anonymous, allowed by PUBLIC_READ
        pair.same(f"{API}/projects")
        slow.headers["Authorization"] = f"Bearer {tokens['admin']}"
        made = make_project(slow, 1)
        assert slow.delete(f"{API}/projects/{made['id']}").status_code == 204
        del slow.headers["Authorization"]
        assert pair.same(f"{API}/projects/{made['id']}").status_code == 404
        tombstones = pair.walk("projects", include_deleted="true", sort="-id", limit=3)
        assert tombstones[0]["id"] == made["id"] and tombstones[0]["deleted_at"] is not None
        # CORS wraps both paths alike.
        pair.same(f"{API}/projects/1", headers={"Origin": "http://front.example"})
        pair.same(f"{API}/projects/1", headers={"Origin": "http://elsewhere.example"})
        answered = fast_reads(fast.app).answered
        assert answered == pair.successes
