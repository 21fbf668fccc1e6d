"""The issue's end-to-end story: a client builds a park's registry through the API."""

from fastapi.testclient import TestClient

from tests.helpers import API, make_chain, make_enterprise, make_park, make_target, post, problem


def test_a_client_builds_the_registry(client: TestClient) -> None:
    park = make_park(client)
    chain = make_chain(client, park["id"])
    enterprise = make_enterprise(client, park["id"], chain["id"], credit_code="91350100M000100Y43")
    project = post(
        client,
        "projects",
        {
            "park_id": park["id"],
            "chain_id": chain["id"],
            "enterprise_id": enterprise["id"],
            "name": "鲁南大数据中心",
            "stage": "operating",
        },
    )
    created = client.post(
        f"{API}/investments",
        json={"project_id": project["id"], "kind": "planned_total", "amount": "30", "unit": "亿元"},
    )
    assert created.status_code == 201
    assert created.headers["location"] == f"{API}/investments/{created.json()['id']}"
    assert created.headers["etag"] == '"1"'
    assert created.json()["amount"] == "3000000000.00"
    assert created.json()["amount_display"] == "30亿元"
    post(
        client,
        "investments",
        {"project_id": project["id"], "kind": "reported", "amount": 20, "unit": "亿元"},
    )

    found = client.get(f"{API}/projects", params={"q": "大数据"}).json()["items"]
    assert [p["id"] for p in found] == [project["id"]]
    assert found[0]["total_investment"] == "3000000000.00"
    assert found[0]["total_investment_display"] == "30亿元"
    assert found[0]["investment_conflict"] is True

    amounts = [
        i["amount"]
        for i in client.get(f"{API}/projects/{project['id']}/investments").json()["items"]
    ]
    assert amounts == ["3000000000.00", "2000000000.00"]
    # Read back through the resource's own GET, which is what a client caches.
    again = client.get(f"{API}/investments/{created.json()['id']}")
    assert again.json()["amount"] == "3000000000.00"


def test_every_resource_answers_all_five_operations(client: TestClient) -> None:
    source = post(
        client,
        "sources",
        {
            "title": "枣庄高新区将率先突破攻坚",
            "publisher": "齐鲁晚报·齐鲁壹点",
            "authors": ["秦政"],
        },
    )
    park = make_park(client, source_id=source["id"], quote="枣庄高新区是枣庄市唯一的国家级高新区")
    chain = make_chain(client, park["id"])
    enterprise = post(client, "enterprises", {"park_id": park["id"], "name": "某企业"})
    project = post(
        client, "projects", {"park_id": park["id"], "name": "某项目", "stage": "planning"}
    )
    investment = post(
        client,
        "investments",
        {"project_id": project["id"], "kind": "annual_plan", "amount": "5000", "unit": "万元"},
    )
    target = make_target(
        client, park["id"], chain_id=chain["id"], metric="projects_over_100m", value="10"
    )
    records = {
        "sources": source,
        "parks": park,
        "chains": chain,
        "enterprises": enterprise,
        "projects": project,
        "investments": investment,
        "targets": target,
    }
    patches = {
        "sources": {"note": "改"},
        "parks": {"province": "山东省"},
        "chains": {"name_en": "Big data"},
        "enterprises": {"is_high_tech": True},
        "projects": {"is_key": True},
        "investments": {"amount": "6000", "unit": "万元"},
        "targets": {"value": "12"},
    }
    for name, record in records.items():
        url = f"{API}/{name}/{record['id']}"
        listed = client.get(f"{API}/{name}").json()["items"]
        assert record["id"] in [r["id"] for r in listed], name
        got = client.get(url)
        assert got.status_code == 200 and got.headers["etag"] == f'"{got.json()["version"]}"'
        patched = client.patch(url, json=patches[name], headers={"If-Match": got.headers["etag"]})
        assert patched.status_code == 200, patched.text
        assert patched.json()["version"] == got.json()["version"] + 1
    assert client.get(f"{API}/investments/{investment['id']}").json()["amount"] == "60000000.00"
    # Children first: the reverse of creation order leaves no live child behind.
    for name in ["targets", "investments", "projects", "enterprises", "chains", "parks", "sources"]:
        assert client.delete(f"{API}/{name}/{records[name]['id']}").status_code == 204, name
        problem(client.get(f"{API}/{name}/{records[name]['id']}"), 404)


def test_foreign_key_to_missing_record_names_the_field(client: TestClient) -> None:
    park = make_park(client)
    body = problem(
        client.post(
            f"{API}/projects",
            json={"park_id": park["id"], "chain_id": 999, "name": "x", "stage": "planning"},
        ),
        422,
    )
    assert body["field"] == "chain_id"
    assert "chain 999" in body["detail"]


def test_references_must_share_the_park(client: TestClient) -> None:
    a = make_park(client, "甲园区")
    b = make_park(client, "乙园区")
    chain_of_b = make_chain(client, b["id"])
    body = problem(
        client.post(
            f"{API}/projects",
            json={
                "park_id": a["id"],
                "chain_id": chain_of_b["id"],
                "name": "x",
                "stage": "planning",
            },
        ),
        422,
    )
    assert body["field"] == "chain_id"
