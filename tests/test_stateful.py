"""A stateful property test of projects through the API, against a model kept in the test.

Hypothesis drives random sequences of create, PATCH with If-Match (sometimes stale), DELETE
with If-Match (sometimes stale), paged lists and GET with If-None-Match; after every step the
registry must equal the model exactly, and an ETag must change exactly when the record's
representation does (a PATCH that changes nothing keeps both the ETag and the version).
"""

import uuid
from datetime import datetime
from functools import cmp_to_key
from typing import Any

import hypothesis.strategies as st
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.helpers import API, make_park

STAGES = [
    "planning",
    "negotiating",
    "signed",
    "under_construction",
    "completed",
    "operating",
    "cancelled",
]
# Few values, so that a PATCH often sets what is already there (a no-op) and lists have ties.
NAMES = ["鲁南大数据中心", "交大智邦智慧工厂", "锂电项目", "Project A"]
YEARS = [None, 2021, 2022]
CODES = [None, "a1", "a2", "b10"]
# Sorts whose order Python can state exactly on both engines (ids, enums, years, ASCII codes,
# times); "id" breaks every tie, as the API promises.
SORTS = ["id", "-id", "year", "-year,stage", "stage,-code", "code", "-updated_at", "created_at"]
FIELDS = ("name", "stage", "is_key", "year", "code", "note")

changes = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(NAMES),
        "stage": st.sampled_from(STAGES),
        "is_key": st.booleans(),
        "year": st.sampled_from(YEARS),
        "code": st.sampled_from(CODES),
        "note": st.sampled_from([None, "推断", ""]),
    },
)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _compare(keys: list[tuple[str, bool]]) -> Any:
    """The API's order: each key ascending with nulls last, or descending with nulls first."""

    def value(row: dict[str, Any], name: str) -> Any:
        # Times as instants: their text drops a zero fraction of a second.
        return instant(row[name]) if name.endswith("_at") else row[name]

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        for name, desc in keys:
            x, y = value(a, name), value(b, name)
            if x == y:
                continue
            # Nulls last ascending; otherwise the values' own order.
            result = (x is None) - (y is None) or (x > y) - (x < y)
            return -result if desc else result
        return 0

    return cmp_to_key(compare)


def expected_order(rows: list[dict[str, Any]], sort: str) -> list[int]:
    keys = [(part.lstrip("-"), part.startswith("-")) for part in sort.split(",")]
    if "id" not in [k for k, _ in keys]:
        keys.append(("id", keys[-1][1]))  # the tie-break follows the last key's direction
    return [r["id"] for r in sorted(rows, key=_compare(keys))]


class ProjectRegistry(RuleBasedStateMachine):
    """Each run works in a park of its own, so runs sharing one database never see each
    other's projects; the model is that park's projects as the test expects them."""

    client: TestClient  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, dict[str, Any]] = {}  # id → the representation expected now
        self.deleted: set[int] = set()
        self.codes: dict[str, int] = {}  # code → project; tombstones keep theirs
        self.seen: dict[tuple[int, str], dict[str, Any]] = {}  # (id, ETag) → representation
        self.prefix = uuid.uuid4().hex[:8]  # codes are unique across every run in the database

    @initialize()
    def park(self) -> None:
        self.park_id = make_park(self.client, name=f"园区-{self.prefix}")["id"]

    # ------------------------------------------------------------ helpers

    def url(self, project_id: int) -> str:
        return f"{API}/projects/{project_id}"

    def code(self, short: str | None) -> str | None:
        return None if short is None else f"{self.prefix}-{short}"

    def observe(self, response: Any) -> dict[str, Any]:
        """Records what the API answered: one ETag is one representation, and back."""
        body: dict[str, Any] = response.json()
        etag = response.headers["etag"]
        assert etag == f'"{body["version"]}"'
        known = self.seen.setdefault((body["id"], etag), body)
        assert known == body, f"ETag {etag} of project {body['id']} now stands for another body"
        for (other_id, other_etag), other in self.seen.items():
            if other_id == body["id"] and other == body:
                assert other_etag == etag, "the same representation under two ETags"
        return body

    def stale_etag(self, project_id: int, draw: Any) -> str:
        current = self.model[project_id]["version"]
        older = [f'"{v}"' for v in range(1, current)]
        return str(
            draw(st.sampled_from([*older, f'"{current + 1}"', f'W/"{current}"', '"0"', '"x"', ""]))
        )

    def conflict(self, project_id: int | None, code: str | None) -> bool:
        return code is not None and self.codes.get(code, project_id) != project_id

    # ------------------------------------------------------------ rules

    @rule(
        name=st.sampled_from(NAMES),
        stage=st.sampled_from(STAGES),
        is_key=st.booleans(),
        year=st.sampled_from(YEARS),
        code=st.sampled_from(CODES),
    )
    def create(
        self, name: str, stage: str, is_key: bool, year: int | None, code: str | None
    ) -> None:
        full_code = self.code(code)
        sent = {"park_id": self.park_id, "name": name, "stage": stage, "is_key": is_key}
        sent |= {"year": year, "code": full_code}
        response = self.client.post(f"{API}/projects", json=sent)
        if self.conflict(None, full_code):
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 201, response.text
        body = self.observe(response)
        assert response.headers["location"] == self.url(body["id"])
        assert body["version"] == 1 and response.headers["etag"] == '"1"'
        assert {k: body[k] for k in sent} == sent
        self.model[body["id"]] = body
        if full_code is not None:
            self.codes[full_code] = body["id"]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), patch=changes, stale=st.booleans())
    def update(self, data: Any, patch: dict[str, Any], stale: bool) -> None:
        project_id = data.draw(st.sampled_from(sorted(self.model)))
        before = self.model[project_id]
        if "code" in patch:
            patch["code"] = self.code(patch["code"])
        if stale:
            if_match = self.stale_etag(project_id, data.draw)
        else:
            if_match = data.draw(st.sampled_from([f'"{before["version"]}"', "*"]))
        response = self.client.patch(
            self.url(project_id), json=patch, headers={"If-Match": if_match}
        )
        if stale:
            assert response.status_code == 412, response.text
            assert response.headers["etag"] == f'"{before["version"]}"'
            return  # the invariant checks that nothing changed
        if self.conflict(project_id, patch.get("code")):
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 200, response.text
        body = self.observe(response)
        changed = any(before[k] != v for k, v in patch.items())
        if not changed:
            # Nothing to change: not a new version, and the very same representation.
            assert body == before
            return
        assert body["version"] == before["version"] + 1
        assert instant(body["updated_at"]) >= instant(before["updated_at"])
        unchanged = {k: v for k, v in before.items() if k not in ("version", "updated_at")}
        assert {k: v for k, v in body.items() if k not in ("version", "updated_at")} == {
            **unchanged,
            **patch,
        }
        self.model[project_id] = body
        if "code" in patch:
            self.codes = {c: i for c, i in self.codes.items() if i != project_id}
            if patch["code"] is not None:
                self.codes[patch["code"]] = project_id

    @precondition(lambda self: self.model)
    @rule(data=st.data(), stale=st.booleans())
    def delete(self, data: Any, stale: bool) -> None:
        project_id = data.draw(st.sampled_from(sorted(self.model)))
        version = self.model[project_id]["version"]
        if_match = self.stale_etag(project_id, data.draw) if stale else f'"{version}"'
        response = self.client.delete(self.url(project_id), headers={"If-Match": if_match})
        if stale:
            assert response.status_code == 412, response.text
            return
        assert response.status_code == 204, response.text
        del self.model[project_id]
        self.deleted.add(project_id)

    @precondition(lambda self: self.deleted)
    @rule(data=st.data())
    def deleted_stays_gone(self, data: Any) -> None:
        project_id = data.draw(st.sampled_from(sorted(self.deleted)))
        assert self.client.get(self.url(project_id)).status_code == 404
        patched = self.client.patch(self.url(project_id), json={"name": "复活"})
        assert patched.status_code == 404
        assert self.client.delete(self.url(project_id)).status_code == 404

    @precondition(lambda self: self.model)
    @rule(data=st.data(), fresh=st.booleans())
    def get(self, data: Any, fresh: bool) -> None:
        project_id = data.draw(st.sampled_from(sorted(self.model)))
        expected = self.model[project_id]
        current = f'"{expected["version"]}"'
        if fresh:
            # If-None-Match uses the weak comparison, and "*" matches any current record.
            tag = data.draw(st.sampled_from([current, f"W/{current}", "*", f'"0", {current}']))
        else:
            tag = self.stale_etag(project_id, data.draw)
        response = self.client.get(self.url(project_id), headers={"If-None-Match": tag})
        if fresh:
            assert response.status_code == 304, (tag, response.text)
            assert response.headers["etag"] == current and response.content == b""
            return
        if tag.removeprefix("W/") == current:  # W/"n" is the current tag, weakly
            assert response.status_code == 304
            return
        assert response.status_code == 200, response.text
        assert self.observe(response) == expected

    @rule(limit=st.integers(1, 7), sort=st.sampled_from(SORTS))
    def list_all_pages(self, limit: int, sort: str) -> None:
        rows = self.walk(limit, sort)
        assert [r["id"] for r in rows] == expected_order(list(self.model.values()), sort)

    # ------------------------------------------------------------ invariants

    def walk(self, limit: int, sort: str = "id") -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        params: dict[str, Any] = {"park_id": self.park_id, "limit": limit, "sort": sort}
        for _ in range(len(self.model) + 2):  # a cursor that never ends is a failure too
            response = self.client.get(f"{API}/projects", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= limit
            rows += page["items"]
            if page["next_cursor"] is None:
                return rows
            params["cursor"] = page["next_cursor"]
        raise AssertionError("the pages never ended")

    @invariant()
    def list_equals_model(self) -> None:
        if not hasattr(self, "park_id"):
            return
        rows = self.walk(limit=3)
        assert {r["id"]: r for r in rows} == self.model
        assert len(rows) == len(self.model)  # and no project appeared twice


def test_projects_behave_like_the_model(client: TestClient) -> None:
    ProjectRegistry.client = client
    run_state_machine_as_test(
        ProjectRegistry,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            derandomize=True,  # the same sequences on every run, so CI is reproducible
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
