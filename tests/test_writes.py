"""Versions, ETags, conditional requests, soft deletes and the change log."""

import asyncio

import httpx
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.helpers import API, make_chain, make_park, make_project, post, problem


def test_etag_and_conditional_requests(client: TestClient) -> None:
    park = make_park(client)
    url = f"{API}/parks/{park['id']}"
    first = client.get(url)
    assert first.headers["etag"] == '"1"'
    not_modified = client.get(url, headers={"If-None-Match": '"1"'})
    assert not_modified.status_code == 304 and not_modified.headers["etag"] == '"1"'
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"7"'}).status_code == 200

    ok = client.patch(url, json={"city": "枣庄"}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == '"2"'
    stale = problem(client.patch(url, json={"city": "滕州"}, headers={"If-Match": '"1"'}), 412)
    assert "version 2" in stale["detail"]
    assert client.get(url).json()["city"] == "枣庄"  # the stale write changed nothing
    problem(client.delete(url, headers={"If-Match": '"1"'}), 412)
    assert client.get(url, headers={"If-None-Match": '"1"'}).status_code == 200


def test_patch_that_changes_nothing_keeps_the_version(client: TestClient) -> None:
    park = make_park(client)
    same = client.patch(f"{API}/parks/{park['id']}", json={"name": park["name"]})
    assert same.status_code == 200 and same.json()["version"] == 1


def test_soft_delete_leaves_a_tombstone(client: TestClient) -> None:
    park = make_park(client)
    project = make_project(client, park["id"])
    assert client.delete(f"{API}/projects/{project['id']}").status_code == 204
    problem(client.get(f"{API}/projects/{project['id']}"), 404)
    assert client.get(f"{API}/projects").json()["items"] == []
    tombstones = client.get(f"{API}/projects", params={"include_deleted": "true"}).json()["items"]
    assert [t["id"] for t in tombstones] == [project["id"]]
    assert tombstones[0]["deleted_at"] is not None and tombstones[0]["version"] == 2
    problem(client.delete(f"{API}/projects/{project['id']}"), 404)
    problem(client.patch(f"{API}/projects/{project['id']}", json={"name": "复活"}), 404)


def test_delete_with_live_children_is_refused_and_names_them(client: TestClient) -> None:
    park = make_park(client)
    chain = make_chain(client, park["id"])
    p1 = make_project(client, park["id"], chain_id=chain["id"])
    p2 = make_project(client, park["id"], name="另一个项目", chain_id=chain["id"])
    body = problem(client.delete(f"{API}/chains/{chain['id']}"), 409)
    assert body["children"] == {"projects": [p1["id"], p2["id"]]}
    assert client.get(f"{API}/chains/{chain['id']}").status_code == 200
    body = problem(client.delete(f"{API}/parks/{park['id']}"), 409)
    assert set(body["children"]) == {"chains", "projects"}
    for p in (p1, p2):
        client.delete(f"{API}/projects/{p['id']}")
    assert client.delete(f"{API}/chains/{chain['id']}").status_code == 204


def test_unique_values_conflict_with_409_naming_the_field(client: TestClient) -> None:
    park = make_park(client, external_id="zz-park")
    body = problem(
        client.post(
            f"{API}/parks", json={"name": "别的", "level": "other", "external_id": "zz-park"}
        ),
        409,
    )
    assert body["field"] == "external_id"
    make_chain(client, park["id"], code="lithium")
    body = problem(
        client.post(
            f"{API}/chains",
            json={"park_id": park["id"], "code": "lithium", "name": "锂电", "role": "leading"},
        ),
        409,
    )
    assert body["field"] == "code"


def test_investment_writes_move_the_project_headline(client: TestClient) -> None:
    """Every change of the project's derived figures (total, conflict flag, figures) is a new
    version of the project, with a feed entry; a write that leaves them as they were is not."""
    park = make_park(client)
    project = make_project(client, park["id"])
    url = f"{API}/projects/{project['id']}"
    seq = client.get(f"{API}/changes").json()["last_seq"]

    def derived(version: int, total: str | None, conflict: bool) -> None:
        got = client.get(url)
        assert got.status_code == 200, got.text
        body = got.json()
        assert (body["version"], body["total_investment"], body["investment_conflict"]) == (
            version,
            total,
            conflict,
        ), body
        assert got.headers["etag"] == f'"{version}"'

    derived(1, None, False)
    inv = post(
        client,
        "investments",
        {"project_id": project["id"], "kind": "reported", "amount": "2", "unit": "亿元"},
    )
    assert (inv["amount"], inv["version"]) == ("200000000.00", 1)
    derived(2, "200000000.00", False)
    planned = post(
        client,
        "investments",
        {"project_id": project["id"], "kind": "planned_total", "amount": "3", "unit": "亿元"},
    )
    assert (planned["amount"], planned["version"]) == ("300000000.00", 1)
    derived(3, "300000000.00", True)
    patched = client.patch(f"{API}/investments/{inv['id']}", json={"amount": "3", "unit": "亿元"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["id"], patched.json()["amount"], patched.json()["version"]) == (
        inv["id"],
        "300000000.00",
        2,
    )
    derived(4, "300000000.00", False)  # the same total, but the conflict is gone
    gone = client.delete(f"{API}/investments/{planned['id']}")
    assert (gone.status_code, gone.content) == (204, b""), gone.text
    derived(4, "300000000.00", False)  # the reported 3亿 is the total now: nothing derived moved
    gone = client.delete(f"{API}/investments/{inv['id']}")
    assert (gone.status_code, gone.content) == (204, b""), gone.text
    derived(5, None, False)
    for investment in (inv, planned):
        problem(client.get(f"{API}/investments/{investment['id']}"), 404)
    entries = client.get(f"{API}/changes", params={"after": seq, "resource": "projects"}).json()
    assert [(c["id"], c["op"], c["version"]) for c in entries["items"]] == [
        (project["id"], "update", v) for v in (2, 3, 4, 5)
    ]


def test_the_headline_total_is_the_latest_dated_record_of_the_preferred_kind(
    client: TestClient,
) -> None:
    """The headline `total_investment`: a planned total, else a reported figure; among several
    of that kind the latest `as_of_date`, an undated record counting as the oldest, and among
    records of the same date the last entered. `investment_figures` marks that record."""
    park = make_park(client)
    project = make_project(client, park["id"])
    url = f"{API}/projects/{project['id']}"

    def invest(kind: str, yi: str, as_of_date: str | None = None) -> int:
        body = {"project_id": project["id"], "kind": kind, "amount": yi, "unit": "亿元"}
        made = post(client, "investments", {**body, "as_of_date": as_of_date})
        assert made["as_of_date"] == as_of_date, made
        return int(made["id"])

    def headline(yi: int, record: int) -> None:
        got = client.get(url).json()
        assert got["total_investment"] == f"{yi}00000000.00", got
        figures = got["investment_figures"] or []
        if figures:  # only while the records disagree; then exactly one is the headline
            assert [f["investment_id"] for f in figures if f["headline"]] == [record], figures

    undated = invest("reported", "1")
    headline(1, undated)
    june = invest("reported", "2", "2024-06-30")
    headline(2, june)  # a dated record beats an undated one
    older = invest("reported", "4", "2023-12-31")
    headline(2, june)  # an older date does not win, though entered later
    invest("reported", "5")
    headline(2, june)  # undated counts as the oldest, even when entered last
    same_day = invest("reported", "6", "2024-06-30")
    headline(6, same_day)  # the same date: the last entered
    moved = client.patch(f"{API}/investments/{older}", json={"as_of_date": "2025-01-01"})
    assert moved.status_code == 200 and moved.json()["as_of_date"] == "2025-01-01", moved.text
    headline(4, older)  # its date moved past the others
    gone = client.delete(f"{API}/investments/{older}")
    assert (gone.status_code, gone.content) == (204, b""), gone.text
    headline(6, same_day)
    planned = invest("planned_total", "7")
    headline(7, planned)  # a planned total beats every reported figure, dated or not
    later_plan = invest("planned_total", "8", "2020-01-01")
    headline(8, later_plan)


def test_every_write_lands_in_the_change_feed(client: TestClient) -> None:
    park = make_park(client, external_id="zz")
    client.patch(f"{API}/parks/{park['id']}", json={"city": "枣庄"})
    client.delete(f"{API}/parks/{park['id']}")
    feed = client.get(f"{API}/changes", params={"after": 0}).json()
    ops = [(c["resource"], c["id"], c["external_id"], c["op"], c["version"]) for c in feed["items"]]
    assert ops == [
        ("parks", park["id"], "zz", "create", 1),
        ("parks", park["id"], "zz", "update", 2),
        ("parks", park["id"], "zz", "delete", 3),
    ]
    assert feed["items"][1]["data"]["city"] == "枣庄"
    assert feed["items"][2]["data"] is None  # a tombstone
    seqs = [c["seq"] for c in feed["items"]]
    assert seqs == sorted(seqs) and feed["last_seq"] == seqs[-1]
    rest = client.get(f"{API}/changes", params={"after": seqs[0]}).json()
    assert [c["seq"] for c in rest["items"]] == seqs[1:]


def test_more_concurrent_writes_than_pooled_connections_do_not_stall(
    settings: Settings, tokens: dict[str, str]
) -> None:
    """Each request holds at most one pooled connection at a time (the token check returns its
    own at once), so more concurrent writers than connections queue instead of deadlocking
    (each holding one and waiting for a second until the pool's timeout, then a 503)."""
    small = settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 0})
    app = create_app(small)
    headers = {"Authorization": f"Bearer {tokens['write']}"}

    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver", headers=headers
            ) as http:
                park = await http.post(f"{API}/parks", json={"name": "并发园区", "level": "other"})
                park_id = park.json()["id"]

                async def create(i: int) -> int:
                    body = {"park_id": park_id, "name": f"并发{i}", "stage": "planning"}
                    return (await http.post(f"{API}/projects", json=body)).status_code

                return await asyncio.wait_for(
                    asyncio.gather(*(create(i) for i in range(12))), timeout=20
                )

    assert asyncio.run(run()) == [201] * 12


def test_an_investment_is_added_where_staff_look_for_it(client: TestClient) -> None:
    """`POST /projects/{id}/investments`: the project's amount, given on the project's own path
    (with its unit); the headline follows; the path, not the body, names the project."""
    park = make_park(client)
    project = make_project(client, park["id"], name="电芯项目", stage="signed")
    url = f"{API}/projects/{project['id']}/investments"
    made = client.post(url, json={"kind": "planned_total", "amount": "1.5", "unit": "亿元"})
    assert made.status_code == 201, made.text
    investment = made.json()
    assert (investment["project_id"], investment["amount"]) == (project["id"], "150000000.00")
    assert made.headers["location"] == f"{API}/investments/{investment['id']}"
    assert client.get(made.headers["location"]).json() == investment
    after = client.get(f"{API}/projects/{project['id']}").json()
    assert (after["total_investment"], after["version"]) == ("150000000.00", 2)
    assert client.get(url).json()["items"] == [investment]
    # The project comes from the path only; a missing one is 404, a bad body a 422 naming it.
    assert problem(client.post(url, json={**investment_body(), "project_id": 1}), 422)["field"]
    missing = client.post(f"{API}/projects/999999/investments", json=investment_body())
    problem(missing, 404)
    assert problem(client.post(url, json={"kind": "planned_total"}), 422)["field"] == "amount"
    assert client.get(url).json()["items"] == [investment]


def investment_body() -> dict[str, str]:
    return {"kind": "reported", "amount": "2", "unit": "亿元"}
