"""The seed data: traceable to the article, loaded idempotently, and counted by the targets."""

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.config import PROJECT_DIR
from tests.helpers import API, csv_rows, export, post, run_seed, to_csv, upload

SEED_FILE = PROJECT_DIR / "seeds" / "zaozhuang.yaml"
ARTICLE = PROJECT_DIR / "seeds" / "source" / "000_4f659c39924bd0b0.txt"


def article_text() -> str:
    if not ARTICLE.is_file():
        pytest.fail(
            f"the seed article is missing: expected {ARTICLE} (kept in the repository); "
            "the provenance of the seed data cannot be checked without it"
        )
    return re.sub(r"\s+", "", ARTICLE.read_text(encoding="utf-8"))


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


def test_seeded_facts_carry_source_and_quote_and_mark_every_inference(seeded: TestClient) -> None:
    text = article_text()
    data = yaml.safe_load(SEED_FILE.read_text(encoding="utf-8"))
    for resource in ("parks", "chains", "enterprises", "projects", "investments", "targets"):
        in_file = {r["external_id"]: r for r in data[resource]}
        for record in all_items(seeded, resource):
            where = (resource, record["external_id"])
            assert record["source_id"] is not None, where
            assert re.sub(r"\s+", "", record["quote"]) in text, where
            # Each inference the seed file names is on the record the API answers, field by field.
            assert record["inferred"] == in_file[record["external_id"]].get("inferred", {}), where
            assert set(record["inferred"]) <= set(record), where
            # Every year in the seed is an inference (the article gives none), and says so.
            for field in ("year", "period_start_year", "period_end_year", "landed_year"):
                if record.get(field) is not None:
                    assert field in record["inferred"], (*where, field)
    targets = all_items(seeded, "targets")
    assert len(targets) == 18
    assert all("2021" in t["inferred"]["period_start_year"] for t in targets)
    # "3—5年" is kept as the range it is, each end marked as a reading.
    scale = [t for t in targets if t["metric"] == "output_scale"]
    assert len(scale) == 5
    for t in scale:
        assert (t["period_end_year_earliest"], t["period_end_year"]) == (2023, 2025)
        assert {"period_end_year_earliest", "period_end_year", "value", "metric"} <= set(
            t["inferred"]
        )
        assert "3—5年" in t["inferred"]["period_end_year"]
    # Readings of a phrase are marked on the field they fill.
    projects = {p["name"]: p for p in all_items(seeded, "projects")}
    assert {"stage", "chain_id"} <= set(projects["鲁南大数据中心"]["inferred"])
    kinds = {i["kind"]: i["inferred"] for i in all_items(seeded, "investments")}
    assert "总投资" in kinds["planned_total"]["kind"] and "kind" in kinds["reported"]


def test_a_value_staff_enter_is_no_longer_marked_inferred(seeded: TestClient) -> None:
    lunan = seeded.get(f"{API}/projects", params={"q": "鲁南"}).json()["items"][0]
    assert set(lunan["inferred"]) == {"stage", "chain_id"}
    url = f"{API}/projects/{lunan['id']}"
    # Another value for the stage: staff's now, not the seed's reading; the chain's mark stays.
    r = seeded.patch(url, json={"stage": "completed"})
    assert r.status_code == 200 and set(r.json()["inferred"]) == {"chain_id"}
    # The same value again changes nothing, mark or version.
    again = seeded.patch(url, json={"stage": "completed"})
    assert again.json()["version"] == r.json()["version"]
    # A write that says the new value is itself an inference keeps what it says.
    marked = seeded.patch(url, json={"stage": "operating", "inferred": {"stage": "据新闻推断"}})
    assert marked.status_code == 200 and marked.json()["inferred"] == {"stage": "据新闻推断"}
    # The same rule in a spreadsheet: an edited 阶段 cell drops the stage's mark.
    rows = csv_rows(export(seeded, format="csv", external_id="lunan-big-data-center"))
    rows[1][rows[0].index("阶段")] = "在建"
    report = upload(seeded, to_csv(rows))
    assert report.status_code == 200 and report.json()["updated"] == 1, report.text
    assert seeded.get(url).json()["inferred"] == {}


def test_what_the_article_does_not_say_is_unknown_not_no(seeded: TestClient) -> None:
    enterprise = all_items(seeded, "enterprises")[0]
    assert enterprise["credit_code"] is None  # never invented
    assert (enterprise["is_high_tech"], enterprise["is_above_scale"], enterprise["is_leading"]) == (
        None,
        None,
        None,
    )
    assert [p["is_key"] for p in all_items(seeded, "projects")] == [None, None]
    # Staff may say "no", and "no" stays no; they may also say "unknown" again.
    patched = seeded.patch(f"{API}/enterprises/{enterprise['id']}", json={"is_high_tech": False})
    assert patched.status_code == 200 and patched.json()["is_high_tech"] is False
    again = seeded.get(f"{API}/enterprises/{enterprise['id']}").json()
    assert (again["is_high_tech"], again["is_above_scale"]) == (False, None)
    cleared = seeded.patch(f"{API}/enterprises/{enterprise['id']}", json={"is_high_tech": None})
    assert cleared.status_code == 200 and cleared.json()["is_high_tech"] is None
    # A project of unknown stage can be stored, and is listed as such.
    park = all_items(seeded, "parks")[0]
    unknown = post(seeded, "projects", {"park_id": park["id"], "name": "阶段未知的项目"})
    assert (unknown["stage"], unknown["is_key"]) == (None, None)
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
    # Both figures on the project itself, each with its source, and which one the total takes.
    sources = {s["external_id"]: s["id"] for s in all_items(seeded, "sources")}
    by_id = {i["id"]: i for i in investments}
    figures = project["investment_figures"]
    assert [(f["amount_display"], f["kind"], f["source_id"], f["headline"]) for f in figures] == [
        ("30亿元", "planned_total", sources["qlwb-news"], True),
        ("20亿元", "reported", sources["qlwb-commentary"], False),
    ]
    assert all(by_id[f["investment_id"]]["source_id"] == f["source_id"] for f in figures)
    assert project["total_investment_range_display"] == "20亿元–30亿元，2条记录不一致"
    # The same on a single read, and gone once the records agree.
    url = f"{API}/projects/{project['id']}"
    assert seeded.get(url).json()["investment_figures"] == figures
    reported = next(i for i in investments if i["kind"] == "reported")
    fixed = seeded.patch(
        f"{API}/investments/{reported['id']}", json={"amount": "30", "unit": "亿元"}
    )
    assert fixed.status_code == 200
    agreed = seeded.get(url).json()
    assert (agreed["investment_conflict"], agreed["investment_figures"]) == (False, None)
    assert agreed["total_investment_range_display"] is None


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
    # The registry holds nothing about 锂电 in 2021: no data, never "0 of 10, 0%".
    for item in annual.values():
        assert (item["status"], item["status_label"]) == ("no_data", "数据不足")
        assert (item["actual"], item["ratio"], item["records_counted"]) == (None, None, 0)
    scale = next(i for i in card["items"] if i["target"]["metric"] == "output_scale")
    assert scale["target"]["value"] == "300.00" and scale["target"]["unit"] == "亿元"
    assert scale["computable"] is False and scale["actual"] is None
    assert scale["status"] == "not_computable"


def test_progress_says_what_it_counted_and_what_it_could_not(seeded: TestClient) -> None:
    targets = all_items(seeded, "targets")
    key = next(t for t in targets if t["metric"] == "key_projects")
    url = f"{API}/targets/{key['id']}/progress"
    # Both seeded projects have no year and an unknown key flag: skipped, with why.
    body = seeded.get(url, params={"year": 2021}).json()
    assert (body["status"], body["actual"], body["ratio"]) == ("no_data", None, None)
    assert (body["records_counted"], body["records_skipped"]) == (0, 2)
    reasons = {s["reason"]: s for s in body["skipped"]}
    assert set(reasons) == {"no_year", "unknown_key"}
    assert reasons["no_year"]["label"] == "未填项目年度" and reasons["no_year"]["count"] == 2
    assert {r["name"] for r in reasons["no_year"]["records"]} == {
        "鲁南大数据中心",
        "交大智邦（枣庄）数字科技有限公司智慧工厂",
    }
    # A project of 2021 whose key flag is unknown decides nothing either: still no data.
    park = all_items(seeded, "parks")[0]
    unsure = post(seeded, "projects", {"park_id": park["id"], "name": "是否重点未知", "year": 2021})
    body = seeded.get(url, params={"year": 2021}).json()
    assert (body["status"], body["actual"], body["ratio"]) == ("no_data", None, None)
    assert body["records_skipped"] == 3
    r = seeded.patch(f"{API}/projects/{unsure['id']}", json={"is_key": False, "stage": "planning"})
    assert r.status_code == 200
    # One known key project of 2021: counted; the unknown ones still make it partial, with
    # the actual a lower bound and the upper bound given.
    post(
        seeded,
        "projects",
        {"park_id": park["id"], "name": "重点丙", "stage": "signed", "is_key": True, "year": 2021},
    )
    body = seeded.get(url, params={"year": 2021}).json()
    assert (body["status"], body["actual"], body["actual_upper"]) == ("partial", "1", "3")
    assert body["ratio"] == "0.0100"
    # Once every project's year is known, the figure is complete.
    for p in all_items(seeded, "projects"):
        if p["year"] is None:
            r = seeded.patch(f"{API}/projects/{p['id']}", json={"year": 2020})
            assert r.status_code == 200, r.text
    body = seeded.get(url, params={"year": 2021}).json()
    assert (body["status"], body["actual"], body["records_skipped"]) == ("complete", "1", 0)
    # A figure pair on both sides of 1亿元 is skipped as a conflict, not as a missing amount.
    chain = next(c for c in all_items(seeded, "chains") if c["name"] == "光电")
    over = next(
        t
        for t in all_items(seeded, "targets", chain_id=chain["id"])
        if t["metric"] == "projects_over_100m"
    )
    split = post(
        seeded,
        "projects",
        {
            "park_id": park["id"],
            "chain_id": chain["id"],
            "name": "分歧项目",
            "stage": "signed",
            "year": 2021,
        },
    )
    for kind, amount in (("planned_total", "3"), ("reported", "0.5")):
        post(
            seeded,
            "investments",
            {"project_id": split["id"], "kind": kind, "amount": amount, "unit": "亿元"},
        )
    chainless = post(
        seeded,
        "projects",
        {"park_id": park["id"], "name": "未归链项目", "stage": "signed", "year": 2021},
    )
    post(
        seeded,
        "investments",
        {"project_id": chainless["id"], "kind": "planned_total", "amount": "2", "unit": "亿元"},
    )
    body = seeded.get(f"{API}/targets/{over['id']}/progress", params={"year": 2021}).json()
    reasons = {s["reason"]: [r["name"] for r in s["records"]] for s in body["skipped"]}
    assert reasons == {
        "conflicting_amount": ["分歧项目"],
        "no_chain": [
            "重点丙",
            "未归链项目",
        ],  # of no chain: might be 光电's, so never left out silently
        "no_amount": ["重点丙"],
    }
    assert (body["status"], body["actual"], body["ratio"]) == ("no_data", None, None)
    # High-tech enterprises: the seeded one's flag is unknown → no data; a known "no" is data.
    high_tech = next(t for t in targets if t["metric"] == "high_tech_enterprises")
    h_url = f"{API}/targets/{high_tech['id']}/progress"
    body = seeded.get(h_url, params={"year": 2022}).json()
    assert (body["status"], body["actual"]) == ("no_data", None)
    assert body["skipped"][0]["reason"] == "unknown_high_tech"
    enterprise = all_items(seeded, "enterprises")[0]
    r = seeded.patch(f"{API}/enterprises/{enterprise['id']}", json={"is_high_tech": False})
    assert r.status_code == 200
    body = seeded.get(h_url, params={"year": 2022}).json()
    assert (body["status"], body["actual"], body["ratio"]) == ("complete", "0", "0.0000")
    assert body["records_excluded"] == 1


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
        return str(body["actual"] or 0)

    def patch(body: dict[str, Any]) -> None:
        answer = seeded.patch(f"{API}/projects/{project['id']}", json=body)
        assert answer.status_code == 200, answer.text
        assert {k: answer.json()[k] for k in body} == body

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
    patch({"stage": "negotiating"})
    assert actual() == before
    patch({"stage": "cancelled"})
    assert actual() == before
    patch({"stage": "operating", "year": year + 1})
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
    # The conflict widens the sum into the range of what the records say.
    assert (big_data["total_investment_low"], big_data["total_investment_high"]) == (
        "2000000000.00",
        "3000000000.00",
    )
    assert big_data["total_investment_range_display"] == "20亿元–30亿元"
    # A chain whose one project has no amount has no total: not "0元".
    smart = next(g for g in by_chain if g["label"] == "智能制造")
    assert (smart["status"], smart["total_investment"], smart["total_investment_display"]) == (
        "no_data",
        None,
        None,
    )
    assert (smart["project_count"], smart["projects_without_investment"]) == (1, 1)
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
    assert "changed by staff" in out
    assert client.get(f"{API}/projects/{lunan['id']}").json()["stage"] == "under_construction"
    # A later seed (say, corrected after an upgrade) keeps what staff changed, and says so ...
    _, out = run_seed(database_url)
    assert "0 updated, 32 unchanged, 1 kept as staff changed them" in out, out
    assert client.get(f"{API}/projects/{lunan['id']}").json()["stage"] == "under_construction"
    # ... unless told to overwrite it.
    _, out = run_seed(database_url, force=True)
    assert "1 updated" in out, out
    assert client.get(f"{API}/projects/{lunan['id']}").json()["stage"] == "operating"


def test_seed_files_name_no_machine_paths() -> None:
    for path in sorted((PROJECT_DIR / "seeds").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            assert "/work/" not in path.read_text(encoding="utf-8"), path
