"""The seed data: traceable to the article, loaded idempotently, and counted by the targets."""

import asyncio
import importlib.util
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app import seed
from app.config import PROJECT_DIR
from app.db import Database, make_engine
from tests.helpers import API, post

SEED_FILE = PROJECT_DIR / "seeds" / "zaozhuang.yaml"
ARTICLE = PROJECT_DIR / "seeds" / "source" / "000_4f659c39924bd0b0.txt"


def article_text() -> str:
    if not ARTICLE.is_file():
        pytest.fail(
            f"the seed article is missing: expected {ARTICLE} (kept in the repository); "
            "the provenance of the seed data cannot be checked without it"
        )
    return re.sub(r"\s+", "", ARTICLE.read_text(encoding="utf-8"))


def run_seed(url: str, check: bool = False) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        db = Database(make_engine(url, pool_size=2, max_overflow=0))
        out = io.StringIO()
        try:
            return await seed.run(db, check=check, out=out), out.getvalue()
        finally:
            await db.dispose()

    return asyncio.run(go())


@pytest.fixture
def seeded(client: TestClient, database_url: str) -> Iterator[TestClient]:
    run_seed(database_url)
    yield client


def all_items(client: TestClient, resource: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(
            f"{API}/{resource}",
            params={**params, "limit": 500, **({"cursor": cursor} if cursor else {})},
        ).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def test_every_quote_in_the_seed_file_is_in_the_article() -> None:
    text = article_text()
    data = yaml.safe_load(SEED_FILE.read_text(encoding="utf-8"))
    quotes = [
        (section, r["external_id"], r["quote"])
        for section, rows in data.items()
        for r in rows
        if r.get("quote")
    ]
    assert len(quotes) >= 30
    missing = [(s, e, q) for s, e, q in quotes if re.sub(r"\s+", "", q) not in text]
    assert missing == []


def test_the_seed_checker_script_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    article_text()
    monkeypatch.delenv("SEED_ARTICLE", raising=False)
    spec = importlib.util.spec_from_file_location(
        "check_quotes", PROJECT_DIR / "seeds" / "check_quotes.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DEFAULT_ARTICLE == ARTICLE  # the script reads the copy in the repository
    data = yaml.safe_load(SEED_FILE.read_text(encoding="utf-8"))
    assert module.check(data, ARTICLE.read_text(encoding="utf-8")) == []
    data["investments"][0]["quote"] = (
        "总投资40亿元的鲁南大数据中心"  # a quote the article does not hold
    )
    assert module.check(data, ARTICLE.read_text(encoding="utf-8")) != []


def test_seeded_facts_carry_source_and_quote_and_mark_the_inferred_year(seeded: TestClient) -> None:
    text = article_text()
    for resource in ("parks", "chains", "enterprises", "projects", "investments", "targets"):
        for record in all_items(seeded, resource):
            assert record["source_id"] is not None, (resource, record["external_id"])
            assert re.sub(r"\s+", "", record["quote"]) in text, (resource, record["external_id"])
            inferred_year = (
                record.get("year")
                or record.get("period_start_year")
                or record.get("period_end_year")
            )
            if inferred_year:
                assert "推断" in record["note"] and "infer" in record["note"], (
                    resource,
                    record["external_id"],
                )
    enterprise = all_items(seeded, "enterprises")[0]
    assert enterprise["credit_code"] is None  # never invented
    sources = all_items(seeded, "sources")
    assert {s["publisher"] for s in sources} == {"齐鲁晚报·齐鲁壹点"}
    assert sorted(a for s in sources for a in s["authors"]) == sorted(
        ["赵健健", "秦政", "姚冲", "靖亚如"]
    )
    assert all(s["published_date"] is None for s in sources)


def test_lunan_big_data_center_reports_its_conflict(seeded: TestClient) -> None:
    found = seeded.get(f"{API}/projects", params={"q": "鲁南"}).json()["items"]
    assert [p["name"] for p in found] == ["鲁南大数据中心"]
    project = found[0]
    assert project["investment_conflict"] is True
    assert project["total_investment"] == "3000000000.00"  # the planned total outranks a report
    investments = seeded.get(f"{API}/projects/{project['id']}/investments").json()["items"]
    assert sorted((i["kind"], i["amount"]) for i in investments) == [
        ("planned_total", "3000000000.00"),
        ("reported", "2000000000.00"),
    ]
    text = article_text()
    assert all(re.sub(r"\s+", "", i["quote"]) in text for i in investments)
    chain = seeded.get(f"{API}/chains/{project['chain_id']}").json()
    assert chain["name"] == "大数据"


def test_chains_and_the_lithium_scorecard(seeded: TestClient) -> None:
    chains = {c["name"]: c for c in all_items(seeded, "chains")}
    assert {name: c["role"] for name, c in chains.items()} == {
        "锂电": "leading",
        "光电": "pillar",
        "医药健康": "pillar",
        "智能制造": "pillar",
        "大数据": "pillar",
        "高端铝业": "sector",
        "新能源电动车": "sector",
    }
    card = seeded.get(
        f"{API}/chains/{chains['锂电']['id']}/scorecard", params={"year": 2021}
    ).json()
    annual = {
        i["target"]["metric"]: i for i in card["items"] if i["target"]["recurrence"] == "annual"
    }
    assert annual["leading_enterprises"]["target_value"] == "2.00"
    assert annual["projects_over_100m"]["target_value"] == "10.00"
    assert (
        annual["projects_over_100m"]["actual"] == "0"
        and annual["projects_over_100m"]["ratio"] == "0.0000"
    )
    scale = next(i for i in card["items"] if i["target"]["metric"] == "output_scale")
    assert scale["target"]["value"] == "300.00" and scale["target"]["unit"] == "亿元"
    assert scale["computable"] is False and scale["actual"] is None


def test_a_signed_project_over_100m_moves_the_chain_actual_by_one(seeded: TestClient) -> None:
    chains = {c["name"]: c for c in all_items(seeded, "chains")}
    chain = chains["光电"]
    target = next(
        t
        for t in all_items(seeded, "targets", chain_id=chain["id"])
        if t["metric"] == "projects_over_100m"
    )
    year = target["period_start_year"]

    def actual() -> str:
        body = seeded.get(f"{API}/targets/{target['id']}/progress", params={"year": year}).json()
        return str(body["actual"])

    before = actual()
    project = post(
        seeded,
        "projects",
        {
            "park_id": chain["park_id"],
            "chain_id": chain["id"],
            "name": "光电新项目",
            "stage": "signed",
            "year": year,
        },
    )
    assert actual() == before  # no investment yet: not over 100 million
    post(
        seeded,
        "investments",
        {"project_id": project["id"], "kind": "planned_total", "amount": "1.5", "unit": "亿元"},
    )
    assert int(actual()) == int(before) + 1
    # Not landed, or cancelled, or another year: not counted.
    seeded.patch(f"{API}/projects/{project['id']}", json={"stage": "negotiating"})
    assert actual() == before
    seeded.patch(f"{API}/projects/{project['id']}", json={"stage": "cancelled"})
    assert actual() == before
    seeded.patch(f"{API}/projects/{project['id']}", json={"stage": "operating", "year": year + 1})
    assert actual() == before


def test_key_projects_and_leading_enterprises_are_counted(seeded: TestClient) -> None:
    park = all_items(seeded, "parks")[0]
    chain = {c["name"]: c for c in all_items(seeded, "chains")}["锂电"]
    targets = all_items(seeded, "targets", park_id=park["id"])
    key = next(t for t in targets if t["metric"] == "key_projects")
    lead = next(
        t for t in targets if t["metric"] == "leading_enterprises" and t["chain_id"] == chain["id"]
    )
    post(
        seeded,
        "projects",
        {
            "park_id": park["id"],
            "name": "重点甲",
            "stage": "planning",
            "is_key": True,
            "year": 2021,
        },
    )
    post(
        seeded,
        "projects",
        {
            "park_id": park["id"],
            "name": "重点乙",
            "stage": "cancelled",
            "is_key": True,
            "year": 2021,
        },
    )
    progress = seeded.get(f"{API}/targets/{key['id']}/progress", params={"year": 2021}).json()
    assert progress["actual"] == "1" and [c["name"] for c in progress["counted"]] == ["重点甲"]
    assert progress["ratio"] == "0.0100"
    post(
        seeded,
        "enterprises",
        {
            "park_id": park["id"],
            "chain_id": chain["id"],
            "name": "头部企业甲",
            "is_leading": True,
            "landed_year": 2021,
        },
    )
    post(
        seeded,
        "enterprises",
        {"park_id": park["id"], "chain_id": chain["id"], "name": "非头部", "landed_year": 2021},
    )
    progress = seeded.get(f"{API}/targets/{lead['id']}/progress", params={"year": 2021}).json()
    assert progress["actual"] == "1" and progress["ratio"] == "0.5000"


def test_investment_stats_sum_exactly_and_count_conflicts_once(seeded: TestClient) -> None:
    by_chain = seeded.get(f"{API}/stats/investment", params={"group_by": "chain"}).json()["items"]
    big_data = next(g for g in by_chain if g["label"] == "大数据")
    assert big_data["total_investment"] == "3000000000.00" and big_data["conflicting_projects"] == 1
    assert big_data["total_investment_display"] == "30亿元"
    chain_id = big_data["key"]
    park_id = all_items(seeded, "parks")[0]["id"]
    p = post(
        seeded,
        "projects",
        {
            "park_id": park_id,
            "chain_id": chain_id,
            "name": "小项目",
            "stage": "signed",
            "year": 2022,
        },
    )
    post(seeded, "investments", {"project_id": p["id"], "kind": "planned_total", "amount": "0.01"})
    by_chain = seeded.get(f"{API}/stats/investment", params={"group_by": "chain"}).json()["items"]
    assert (
        next(g for g in by_chain if g["label"] == "大数据")["total_investment"] == "3000000000.01"
    )
    by_year = {
        g["key"]: g
        for g in seeded.get(f"{API}/stats/investment", params={"group_by": "year"}).json()["items"]
    }
    assert by_year[2022]["total_investment"] == "0.01"
    by_stage = seeded.get(f"{API}/stats/investment", params={"group_by": "stage"}).json()["items"]
    assert sum(g["project_count"] for g in by_stage) == len(all_items(seeded, "projects"))
    assert seeded.get(f"{API}/stats/investment", params={"group_by": "colour"}).status_code == 422


def test_the_loader_is_idempotent_and_check_reports_drift(
    client: TestClient, database_url: str
) -> None:
    _, out = run_seed(database_url)
    assert "33 created" in out
    snapshot = {
        r: {(x["id"], x["version"]) for x in all_items(client, r)}
        for r in ("sources", "parks", "chains", "enterprises", "projects", "investments", "targets")
    }
    feed_before = client.get(f"{API}/changes", params={"limit": 1000}).json()["last_seq"]
    _, out = run_seed(database_url)
    assert "0 created, 0 updated, 33 unchanged" in out
    again = {r: {(x["id"], x["version"]) for x in all_items(client, r)} for r in snapshot}
    assert again == snapshot
    assert client.get(f"{API}/changes", params={"after": feed_before}).json()["items"] == []
    differences, out = run_seed(database_url, check=True)
    assert differences == 0, out
    # A staff correction is drift from the files: --check names it without writing.
    lunan = client.get(f"{API}/projects", params={"q": "鲁南"}).json()["items"][0]
    client.patch(f"{API}/projects/{lunan['id']}", json={"stage": "under_construction"})
    differences, out = run_seed(database_url, check=True)
    assert differences == 1 and "lunan-big-data-center" in out and "stage" in out
    assert client.get(f"{API}/projects/{lunan['id']}").json()["stage"] == "under_construction"


def test_seed_files_name_no_machine_paths() -> None:
    for path in sorted((PROJECT_DIR / "seeds").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            assert "/work/" not in path.read_text(encoding="utf-8"), path
