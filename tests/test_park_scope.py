"""Per-park access (issue 17): accounts and tokens confined to some parks see and change only
their records, everywhere a record shows (lists, reads, feed, history, exports, statistics,
scorecards, progress, the dashboard); a park-scoped admin manages only its parks' accounts.
On both engines. Park B's records carry a marker that must never reach a caller of park A."""

import asyncio
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.db import make_engine
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API, make_chain, make_enterprise, make_park, make_project, make_target
from tests.servers import mirror, server

SECRET_B = "乙园机密"  # in every name of park B's records
SECRET_A = "甲园机密"
SCOPED = ("parks", "chains", "enterprises", "projects", "investments", "targets")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    client: TestClient  # the admin's
    anon: TestClient  # no credentials
    ids: dict[str, dict[str, int]] = field(default_factory=dict)  # park → resource → id
    callers: dict[str, dict[str, str]] = field(default_factory=dict)  # name → headers
    parks: dict[str, int] = field(default_factory=dict)


def _records(client: TestClient, park: str, marker: str) -> dict[str, int]:
    made = make_park(client, name=f"{marker}{park}园区")
    chain = make_chain(client, made["id"], code=f"chain-{park}", name=f"{marker}产业链")
    enterprise = make_enterprise(client, made["id"], chain["id"], name=f"{marker}企业")
    project = make_project(
        client,
        made["id"],
        name=f"{marker}项目",
        chain_id=chain["id"],
        enterprise_id=enterprise["id"],
        year=2021,
        is_key=True,
        external_id=f"ext-{park}",
        code=f"code-{park}",
    )
    investment = client.post(
        f"{API}/investments",
        json={"project_id": project["id"], "kind": "planned_total", "amount": "30", "unit": "亿元"},
    )
    assert investment.status_code == 201, investment.text
    target = make_target(client, made["id"], note=f"{marker}目标", period_start_year=2021)
    return {
        "parks": made["id"],
        "chains": chain["id"],
        "enterprises": enterprise["id"],
        "projects": project["id"],
        "investments": investment.json()["id"],
        "targets": target["id"],
    }


def _login(client: TestClient, username: str, password: str) -> dict[str, str]:
    answer = client.post(f"{API}/auth/token", data={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return bearer(answer.json()["access_token"])


@pytest.fixture
def world(client: TestClient, anon: TestClient, tokens: dict[str, str]) -> World:
    w = World(client, anon)
    source = client.post(f"{API}/sources", json={"title": "大众日报 2021-03-29"})
    assert source.status_code == 201, source.text
    w.ids["A"] = _records(client, "A", SECRET_A)
    w.ids["B"] = _records(client, "B", SECRET_B)
    w.parks = {"A": w.ids["A"]["parks"], "B": w.ids["B"]["parks"]}
    for park in ("A", "B"):
        w.ids[park]["sources"] = source.json()["id"]  # shared by every park
    for name, role, parks in (
        ("a_viewer", "viewer", ["A"]),
        ("a_editor", "editor", ["A"]),
        ("a_admin", "admin", ["A"]),
        ("b_editor", "editor", ["B"]),
    ):
        made = client.post(
            f"{API}/users",
            json={
                "username": name,
                "password": f"{name}-password",
                "role": role,
                "park_ids": [w.parks[p] for p in parks],
            },
        )
        assert made.status_code == 201, made.text
        w.callers[name] = _login(client, name, f"{name}-password")
    for name, scopes in (("a_read", ["read"]), ("a_write", ["write"])):
        made = client.post(
            f"{API}/tokens", json={"name": name, "scopes": scopes, "park_ids": [w.parks["A"]]}
        )
        assert made.status_code == 201, made.text
        w.callers[name] = bearer(made.json()["token"])
    w.callers["viewer"] = _login(client, "viewer", "viewer-password")
    w.callers["editor"] = _login(client, "editor", "editor-password")
    w.callers["admin"] = _login(client, "admin", ADMIN_PASSWORD)
    w.callers["anonymous"] = {}
    return w


PARK_A = ("a_viewer", "a_editor", "a_admin", "a_read", "a_write")
UNSCOPED = ("viewer", "editor", "admin")


def _get(w: World, caller: str, url: str, **params: Any) -> Any:
    if caller == "anonymous":
        return w.anon.get(url, params=params)
    return w.client.get(url, params=params, headers=w.callers[caller])


def _read_operations(w: World) -> list[tuple[str, set[str]]]:
    """Every GET under the API, with the query parameters it declares."""
    spec = w.client.get("/openapi.json").json()
    return [
        (path, {p["name"] for p in item["get"].get("parameters", []) if p["in"] == "query"})
        for path, item in spec["paths"].items()
        if "get" in item and path.startswith(API) and path != f"{API}/auth/me"
    ]


def test_every_read_shows_park_a_callers_nothing_of_park_b(world: World) -> None:
    w = world
    reads = _read_operations(w)
    assert len(reads) > 20
    values = {"year": 2021, "group_by": "chain", "format": "csv", "limit": 500}
    problems: list[tuple[str, str, int | str]] = []
    for path, declared in reads:
        params = {k: v for k, v in values.items() if k in declared}
        resource = path.removeprefix(f"{API}/").split("/")[0]
        parks = ("A", "B") if "{id}" in path else ("-",)
        for park in parks:
            url = path
            if "{id}" in path:
                ids = w.ids[park]
                url = path.replace("{id}", str(ids.get(resource, ids["projects"])))
            for caller in (*PARK_A, *UNSCOPED, "b_editor", "anonymous"):
                answer = _get(w, caller, url, **params)
                text = answer.text + repr(dict(answer.headers))
                if answer.status_code >= 500:
                    problems.append((caller, url, answer.status_code))
                if caller == "anonymous":
                    if answer.status_code != 401:
                        problems.append((caller, url, answer.status_code))
                    continue
                if path in (f"{API}/users", f"{API}/tokens", f"{API}/audit"):
                    continue  # accounts: their own test below
                mine, other = ("A", "B") if caller != "b_editor" else ("B", "A")
                secret = SECRET_B if mine == "A" else SECRET_A
                scoped = caller in PARK_A or caller == "b_editor"
                if scoped and secret in text:
                    problems.append((caller, url, f"shows park {other}'s records"))
                if scoped and park == other and resource in SCOPED and answer.status_code != 404:
                    problems.append((caller, url, answer.status_code))
                if not scoped and park in ("A", "B") and answer.status_code != 200:
                    problems.append((caller, url, answer.status_code))
    assert problems == []
    # And the unscoped see both parks, in the same reads.
    everything = _get(w, "viewer", f"{API}/projects").text
    assert SECRET_A in everything and SECRET_B in everything


def test_the_feed_history_exports_stats_and_dashboard_hold_only_the_callers_parks(
    world: World,
) -> None:
    w = world
    feed = _get(w, "a_read", f"{API}/changes", limit=1000).json()
    ours = {(r, i) for r, i in ((r, w.ids["A"][r]) for r in SCOPED)}
    seen = {(e["resource"], e["id"]) for e in feed["items"]}
    assert ours <= seen
    assert all(
        e["resource"] == "sources" or (e["resource"], e["id"]) in ours for e in feed["items"]
    )
    everything = _get(w, "viewer", f"{API}/changes", limit=1000).json()
    assert len(everything["items"]) > len(feed["items"])
    # Resuming after its own last_seq misses nothing of its view, and sees nothing twice.
    first = _get(w, "a_read", f"{API}/changes", limit=3).json()
    rest = _get(w, "a_read", f"{API}/changes", after=first["last_seq"], limit=1000).json()
    assert [e["seq"] for e in first["items"] + rest["items"]] == [e["seq"] for e in feed["items"]]
    history = _get(w, "a_read", f"{API}/projects/{w.ids['A']['projects']}/history")
    assert history.status_code == 200 and len(history.json()) >= 1
    exported = _get(w, "a_read", f"{API}/projects/export", format="csv").text
    assert SECRET_A in exported and SECRET_B not in exported
    stats = _get(w, "a_read", f"{API}/stats/investment", group_by="chain").json()
    assert sum(g["project_count"] for g in stats["items"]) == 1
    progress = _get(w, "a_read", f"{API}/targets/{w.ids['A']['targets']}/progress", year=2021)
    assert progress.status_code == 200, progress.text
    page = _get(w, "a_read", "/dashboard/panel").text
    assert SECRET_A in page and SECRET_B not in page
    asked_for_b = _get(w, "a_read", "/dashboard/panel", park_id=w.parks["B"])
    assert asked_for_b.status_code == 404 and SECRET_B not in asked_for_b.text
    whole = _get(w, "a_read", "/dashboard")
    assert SECRET_B not in whole.text


def _snapshot(w: World, park: str) -> dict[str, Any]:
    return {r: _get(w, "admin", f"{API}/{r}/{w.ids[park][r]}").json() for r in SCOPED}


def test_park_a_writers_change_nothing_of_park_b(world: World) -> None:
    w = world
    before = _snapshot(w, "B")
    b, a = w.ids["B"], w.ids["A"]
    for caller in ("a_editor", "a_admin", "a_write"):
        h = w.callers[caller]
        for resource in SCOPED:
            patched = w.client.patch(f"{API}/{resource}/{b[resource]}", json={}, headers=h)
            assert patched.status_code == 404, (caller, resource, patched.text)
            deleted = w.client.delete(
                f"{API}/{resource}/{b[resource]}", headers={**h, "If-Match": "*"}
            )
            assert deleted.status_code == 404, (caller, resource, deleted.text)
        refused = {
            "chains": {"park_id": b["parks"], "code": "x", "name": "越界", "role": "pillar"},
            "enterprises": {"park_id": b["parks"], "name": "越界企业"},
            "projects": {"park_id": b["parks"], "name": "越界项目", "stage": "signed"},
            "investments": {"project_id": b["projects"], "kind": "reported", "amount": "1"},
            "targets": {
                "park_id": b["parks"],
                "metric": "key_projects",
                "value": "1",
                "unit": "个",
                "recurrence": "annual",
            },
        }
        for resource, body in refused.items():
            made = w.client.post(f"{API}/{resource}", json=body, headers=h)
            assert made.status_code == 422, (caller, resource, made.text)
            assert "does not exist" in made.text and SECRET_B not in made.text
        # Moving an A record to park B, or pointing it at B's chain, is refused alike.
        moved = w.client.patch(
            f"{API}/projects/{a['projects']}", json={"park_id": b["parks"]}, headers=h
        )
        assert moved.status_code == 422, moved.text
        pointed = w.client.patch(
            f"{API}/investments/{a['investments']}", json={"project_id": b["projects"]}, headers=h
        )
        assert pointed.status_code == 422, pointed.text
        # A park is made only by a caller of every park.
        park = w.client.post(f"{API}/parks", json={"name": "新园区", "level": "other"}, headers=h)
        assert park.status_code == 403, park.text
        # B's keys are taken, without B's ids.
        taken = w.client.post(
            f"{API}/projects",
            json={"park_id": a["parks"], "name": "撞码", "stage": "signed", "code": "code-B"},
            headers=h,
        )
        assert taken.status_code == 409 and f"({b['projects']})" not in taken.text
        # By external id: B's key is taken, not B's record changed.
        put = w.client.put(
            f"{API}/projects/by-external-id/ext-B",
            json={"park_id": a["parks"], "name": "抢占", "stage": "signed"},
            headers=h,
        )
        assert put.status_code == 409, put.text
        for resource in SCOPED:
            for item in (
                {"op": "update", "id": b[resource], "data": {"note": "批改"}},
                {"op": "delete", "id": b[resource]},
            ):
                batch = w.client.post(f"{API}/{resource}/batch", json={"items": [item]}, headers=h)
                assert batch.status_code == 422, (caller, resource, batch.text)
                assert "does not exist" in batch.text and SECRET_B not in batch.text
        rows = f"项目编号,类型,金额(元)\n{b['projects']},报道,100\n".encode()
        invested = w.client.post(
            f"{API}/investments/import",
            files={"file": ("i.csv", io.BytesIO(rows), "text/csv")},
            headers=h,
        )
        assert invested.status_code == 422 and "does not exist" in invested.text, invested.text
        csv = f"编号,名称,园区编号\n{b['projects']},导入改名,{a['parks']}\n".encode()
        imported = w.client.post(
            f"{API}/projects/import",
            files={"file": ("p.csv", io.BytesIO(csv), "text/csv")},
            headers=h,
        )
        assert imported.status_code == 422, imported.text
        assert "不存在" in imported.text
    assert _snapshot(w, "B") == before
    # An A writer still writes in A.
    renamed = w.client.patch(
        f"{API}/projects/{a['projects']}",
        json={"name": f"{SECRET_A}新名"},
        headers=w.callers["a_write"],
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == f"{SECRET_A}新名"


def test_a_moved_project_leaves_the_old_parks_view_as_a_deletion(world: World) -> None:
    w = world
    a, b = w.ids["A"], w.ids["B"]
    after = _get(w, "admin", f"{API}/changes", limit=1000).json()["last_seq"]
    moved = w.client.patch(
        f"{API}/projects/{a['projects']}",
        json={"park_id": b["parks"], "chain_id": None, "enterprise_id": None},
    )
    assert moved.status_code == 200, moved.text
    seen_by_a = _get(w, "a_read", f"{API}/changes", after=after).json()["items"]
    assert {(e["resource"], e["id"], e["op"]) for e in seen_by_a} == {
        ("projects", a["projects"], "delete"),
        ("investments", a["investments"], "delete"),
    }
    assert all(e["data"] is None for e in seen_by_a)
    seen_by_b = _get(w, "b_editor", f"{API}/changes", after=after).json()["items"]
    assert [(e["resource"], e["op"]) for e in seen_by_b] == [
        ("projects", "update"),
        ("investments", "update"),
    ]
    assert seen_by_b[1]["data"]["park_id"] == b["parks"]
    assert _get(w, "a_read", f"{API}/investments/{a['investments']}").status_code == 404
    assert _get(w, "b_editor", f"{API}/investments/{a['investments']}").status_code == 200


def test_a_park_admin_manages_only_its_parks_accounts(world: World) -> None:
    w = world
    h = w.callers["a_admin"]
    listed = {u["username"] for u in w.client.get(f"{API}/users", headers=h).json()}
    assert listed == {"a_viewer", "a_editor", "a_admin"}
    tokens = {t["name"] for t in w.client.get(f"{API}/tokens", headers=h).json()}
    assert tokens == {"a_read", "a_write"}
    body = {"username": "a_new", "password": "a-new-password", "role": "editor"}
    assert w.client.post(f"{API}/users", json=body, headers=h).status_code == 403  # unscoped
    wider = {**body, "park_ids": [w.parks["A"], w.parks["B"]]}
    assert w.client.post(f"{API}/users", json=wider, headers=h).status_code == 403
    made = w.client.post(f"{API}/users", json={**body, "park_ids": [w.parks["A"]]}, headers=h)
    assert made.status_code == 201, made.text
    users = w.client.get(f"{API}/users").json()
    b_editor = next(u["id"] for u in users if u["username"] == "b_editor")
    unscoped = next(u["id"] for u in users if u["username"] == "editor")
    for other in (b_editor, unscoped):
        refused = w.client.patch(f"{API}/users/{other}", json={"is_active": False}, headers=h)
        assert refused.status_code == 404
    widen = w.client.patch(f"{API}/users/{made.json()['id']}", json={"park_ids": None}, headers=h)
    assert widen.status_code == 403
    token = w.client.post(
        f"{API}/tokens", json={"name": "everywhere", "scopes": ["read"]}, headers=h
    )
    assert token.status_code == 403
    assert w.client.get(f"{API}/audit", headers=h).status_code == 403
    me = w.client.get(f"{API}/auth/me", headers=h).json()
    assert me["park_ids"] == [w.parks["A"]]
    # The city's admin widens a scope; the audit trail has it.
    assert (
        w.client.patch(
            f"{API}/users/{b_editor}", json={"park_ids": [w.parks["A"], w.parks["B"]]}
        ).status_code
        == 200
    )
    events = w.client.get(f"{API}/audit", params={"subject": "user:b_editor"}).json()["items"]
    change = next(e for e in events if e["action"] == "user.updated")
    assert change["detail"]["park_ids"] == [[w.parks["B"]], [w.parks["A"], w.parks["B"]]]
    # ... and it applies on b_editor's next request, with the token it already has.
    assert _get(w, "b_editor", f"{API}/projects/{w.ids['A']['projects']}").status_code == 200


# ---------------------------------------------------------------- a property: reads = model


NAMES = st.text(alphabet="甲乙丙丁戊己", min_size=1, max_size=4)
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["a_editor", "b_editor", "editor"]),
        st.sampled_from(["create", "rename", "delete", "move"]),
        st.sampled_from(["A", "B"]),
        NAMES,
        st.integers(min_value=0, max_value=7),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_each_callers_reads_equal_the_model_restricted_to_its_parks(
    world: World, steps: list[tuple[str, str, str, str, int]]
) -> None:
    w = world
    scope = {"a_editor": {"A"}, "b_editor": {"B"}, "editor": {"A", "B"}}
    park_of_id = {w.parks["A"]: "A", w.parks["B"]: "B"}
    model: dict[int, tuple[str, str]] = {}  # project id → (park, name) as the registry has it
    for p in _get(w, "admin", f"{API}/projects", limit=500).json()["items"]:
        model[p["id"]] = (park_of_id[p["park_id"]], p["name"])
    for caller, action, park, name, pick in steps:
        h = w.callers[caller]
        allowed = park in scope[caller]
        mine = sorted(i for i, (p, _) in model.items() if p in scope[caller])
        others = sorted(i for i, (p, _) in model.items() if p not in scope[caller])
        if action == "create":
            made = w.client.post(
                f"{API}/projects",
                json={"park_id": w.parks[park], "name": name, "stage": "planning"},
                headers=h,
            )
            assert made.status_code == (201 if allowed else 422), made.text
            if allowed:
                model[made.json()["id"]] = (park, name)
            continue
        pool = mine if pick % 2 == 0 or not others else others
        if not pool:
            continue
        target = pool[pick % len(pool)]
        visible = target in mine
        if action == "rename":
            answer = w.client.patch(f"{API}/projects/{target}", json={"name": name}, headers=h)
            assert answer.status_code == (200 if visible else 404), answer.text
            if visible:
                model[target] = (model[target][0], name)
        elif action == "delete":
            answer = w.client.delete(f"{API}/projects/{target}", headers={**h, "If-Match": "*"})
            if visible and answer.status_code == 409:
                continue  # it has investments: refused alike for everyone
            assert answer.status_code == (204 if visible else 404), answer.text
            if visible:
                del model[target]
        else:
            body = {"park_id": w.parks[park], "chain_id": None, "enterprise_id": None}
            answer = w.client.patch(f"{API}/projects/{target}", json=body, headers=h)
            expected = 200 if visible and allowed else 404 if not visible else 422
            assert answer.status_code == expected, answer.text
            if expected == 200:
                model[target] = (park, model[target][1])
    for caller, parks in scope.items():
        listed = _get(w, caller, f"{API}/projects", limit=500).json()["items"]
        assert {p["id"]: p["name"] for p in listed} == {
            i: n for i, (p, n) in model.items() if p in parks
        }
        searched = _get(w, caller, f"{API}/projects", q="甲", limit=500).json()["items"]
        assert {p["id"] for p in searched} == {
            i for i, (p, n) in model.items() if p in parks and "甲" in n
        }


def test_the_feed_of_a_scope_resumes_from_any_point(world: World) -> None:
    w = world
    whole = _get(w, "a_read", f"{API}/changes", limit=1000).json()["items"]
    seqs = [e["seq"] for e in whole]
    for start in [0, *seqs]:
        rest = _get(w, "a_read", f"{API}/changes", after=start, limit=2).json()
        expected = [s for s in seqs if s > start][:2]
        assert [e["seq"] for e in rest["items"]] == expected
        assert rest["last_seq"] == (expected[-1] if expected else start)
    assert re.search(SECRET_B, str(whole)) is None


# ---------------------------------------------------------------- a mirror of one park


async def _live_rows(url: str, park_id: int | None) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's live rows (of park `park_id` only, if given), in id order."""
    engine = make_engine(url, pool_size=1)
    out: dict[str, list[tuple[Any, ...]]] = {}
    try:
        async with engine.connect() as connection:
            for table, park_column in MIRRORED:
                where = "deleted_at IS NULL"
                if park_id is not None and park_column is not None:
                    where += f" AND {park_column} = {int(park_id)}"
                rows = await connection.execute(
                    text(f"SELECT * FROM {table} WHERE {where} ORDER BY id")
                )
                out[table] = [tuple(r) for r in rows]
    finally:
        await engine.dispose()
    return out


MIRRORED = (
    ("source", None),
    ("park", "id"),
    ("chain", "park_id"),
    ("enterprise", "park_id"),
    ("project", "park_id"),
    ("investment", "park_id"),
    ("target", "park_id"),
)


def test_a_park_a_mirror_holds_exactly_park_a_while_both_parks_are_written(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    source_url, mirror_url = db_factory.fresh(), db_factory.fresh()
    admin = bearer(tokens["admin"])
    with server(source_url) as (base, _):
        with httpx.Client(base_url=base, headers=admin, timeout=30) as http:
            parks = {
                p: http.post(f"{API}/parks", json={"name": f"{p}园", "level": "other"}).json()["id"]
                for p in ("A", "B")
            }
            token = http.post(
                f"{API}/tokens",
                json={"name": "mirror-a", "scopes": ["read"], "park_ids": [parks["A"]]},
            ).json()["token"]

        def write(park: str, writer: int) -> int:
            failures = 0
            with httpx.Client(base_url=base, headers=admin, timeout=30) as http:
                made = []
                for i in range(40):
                    if i % 4 == 0 or not made:
                        r = http.post(
                            f"{API}/projects",
                            json={
                                "park_id": parks[park],
                                "name": f"{park}{writer}-{i}",
                                "stage": "planning",
                            },
                        )
                        if r.status_code == 201:
                            made.append(r.json()["id"])
                    elif i % 4 == 1:
                        r = http.post(
                            f"{API}/investments",
                            json={"project_id": made[-1], "kind": "reported", "amount": str(i)},
                        )
                    elif i % 4 == 2:
                        r = http.patch(f"{API}/projects/{made[-1]}", json={"name": f"改{i}"})
                    else:  # to the other park and, every other time, back
                        other = "B" if park == "A" else "A"
                        r = http.patch(f"{API}/projects/{made[0]}", json={"park_id": parks[other]})
                        if i % 8 == 7 and r.status_code == 200:
                            r = http.patch(
                                f"{API}/projects/{made[0]}", json={"park_id": parks[park]}
                            )
                    failures += r.status_code >= 400
            return failures

        with mirror(base, token, mirror_url) as follower:
            with ThreadPoolExecutor(4) as pool:
                failures = sum(
                    pool.map(lambda a: write(*a), [("A", 0), ("A", 1), ("B", 0), ("B", 1)])
                )
            assert failures == 0
            expected = asyncio.run(_live_rows(source_url, parks["A"]))
            assert len(expected["project"]) > 10 and len(expected["investment"]) > 10
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if asyncio.run(_live_rows(mirror_url, None)) == expected:
                    break
                assert follower.poll() is None, b"".join(follower.log).decode(errors="replace")
                time.sleep(0.3)
            assert asyncio.run(_live_rows(mirror_url, None)) == expected
    db_factory.drop(source_url)
    db_factory.drop(mirror_url)


def test_shared_sources_are_added_by_a_park_but_changed_only_by_the_city(world: World) -> None:
    w = world
    source = w.ids["A"]["sources"]
    h = w.callers["a_write"]
    patched = w.client.patch(f"{API}/sources/{source}", json={"title": "改了"}, headers=h)
    assert patched.status_code == 403, patched.text
    deleted = w.client.delete(f"{API}/sources/{source}", headers={**h, "If-Match": "*"})
    assert deleted.status_code == 403, deleted.text
    added = w.client.post(f"{API}/sources", json={"title": "园区简报"}, headers=h)
    assert added.status_code == 201, added.text
    assert w.client.patch(f"{API}/sources/{source}", json={"title": "改了"}).status_code == 200


def test_a_chain_moves_to_another_park_only_without_its_records(world: World) -> None:
    w = world
    a, b = w.ids["A"], w.ids["B"]
    # A's project and enterprise stand on A's chain: it cannot leave them in A.
    moved = w.client.patch(f"{API}/chains/{a['chains']}", json={"park_id": b["parks"]})
    assert moved.status_code == 409, moved.text
    assert "enterprises" in moved.text and "projects" in moved.text
    # So a park-A caller never meets another park's chain through its own records.
    exported = _get(w, "a_read", f"{API}/projects/export", format="csv").text
    assert SECRET_B not in exported


def test_investments_written_while_their_project_moves_follow_it(
    db_factory: DatabaseFactory, tokens: dict[str, str]
) -> None:
    url = db_factory.fresh()
    admin = bearer(tokens["admin"])
    with server(url) as (base, _), httpx.Client(base_url=base, headers=admin, timeout=30) as http:
        parks = [
            http.post(f"{API}/parks", json={"name": f"{p}园", "level": "other"}).json()["id"]
            for p in "AB"
        ]
        project = http.post(
            f"{API}/projects", json={"park_id": parks[0], "name": "来回", "stage": "planning"}
        ).json()["id"]

        def move(_: int) -> None:
            with httpx.Client(base_url=base, headers=admin, timeout=30) as mover:
                for i in range(40):
                    answer = mover.patch(
                        f"{API}/projects/{project}", json={"park_id": parks[(i + 1) % 2]}
                    )
                    assert answer.status_code == 200, answer.text

        def invest(_: int) -> None:
            with httpx.Client(base_url=base, headers=admin, timeout=30) as investor:
                for i in range(40):
                    answer = investor.post(
                        f"{API}/investments",
                        json={"project_id": project, "kind": "reported", "amount": str(i + 1)},
                    )
                    assert answer.status_code == 201, answer.text

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda f: f(0), [move, invest, invest]))
        park = http.get(f"{API}/projects/{project}").json()["park_id"]
        filed = http.get(f"{API}/investments", params={"project_id": project, "limit": 500})
        assert len(filed.json()["items"]) == 80
        assert {i["park_id"] for i in filed.json()["items"]} == {park}
    db_factory.drop(url)
