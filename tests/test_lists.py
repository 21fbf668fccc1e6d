"""Lists: keyset pagination over 1,000 rows, sorting with NULLs, filters, `q`, and list errors."""

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert

from app.db import make_engine
from app.models.project import Project
from tests.helpers import API, make_chain, make_park, make_project, post, problem

N = 1000
PAGE = 37


# ---------------------------------------------------------------- helpers


def _year(i: int) -> int | None:
    return None if i % 5 == 0 else 2015 + i % 7


def _total(i: int) -> Decimal | None:
    return None if i % 4 == 0 else Decimal(i % 13) * Decimal("1000000") + Decimal("0.05")


def _name(i: int) -> str:
    # Fixed-width digits after a common prefix sort the same under any collation;
    # names repeat, so the id tiebreak matters.
    return f"项目{(i * 37) % 250:04d}"


async def _insert(database_url: str, rows: list[dict[str, Any]]) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Project.__table__), rows)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


def insert_projects(database_url: str, park_id: int, n: int = N) -> None:
    """n projects written straight to the table (the API would take too long for 1,000)."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "park_id": park_id,
            "name": _name(i),
            "stage": "planning",
            "is_key": i % 3 == 0,
            "year": _year(i),
            "total_investment": _total(i),
            "investment_conflict": False,
            "version": 1,
            "created_at": base + timedelta(seconds=i),
            "updated_at": base + timedelta(seconds=i),
        }
        for i in range(n)
    ]
    asyncio.run(_insert(database_url, rows))


def walk(
    client: TestClient,
    params: dict[str, Any] | None = None,
    between: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Every item of a list, page by page through next_cursor; `between(page)` runs after each."""
    items: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        query = {**(params or {}), **({"cursor": cursor} if cursor else {})}
        response = client.get(f"{API}/projects", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        items.extend(body["items"])
        pages += 1
        assert pages <= 200, "the cursor never ends"
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        if between is not None:
            between(pages)


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


def expected_order(items: list[dict[str, Any]], sort: str) -> list[int]:
    """Python's idea of the order: asc = NULLs last, desc = NULLs first, then id in the
    direction of the last key."""
    convert: dict[str, Callable[[Any], Any]] = {"total_investment": Decimal}
    last = sort.split(",")[-1]
    ordered = sorted(items, key=lambda r: r["id"], reverse=last.startswith("-"))
    for part in reversed(sort.split(",")):
        name = part.lstrip("-")
        to = convert.get(name, lambda v: v)

        def key(row: dict[str, Any], name: str = name, to: Any = to) -> tuple[Any, ...]:
            value = row[name]
            return (1,) if value is None else (0, to(value))

        ordered = sorted(ordered, key=key, reverse=part.startswith("-"))
    return ids(ordered)


def forge_cursor(sort: str, values: list[Any]) -> str:
    raw = json.dumps({"s": sort, "v": values}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# ---------------------------------------------------------------- walking the cursor


def test_cursor_walks_1000_rows_exactly_once_in_any_order(
    client: TestClient, database_url: str
) -> None:
    park = make_park(client)
    insert_projects(database_url, park["id"])

    first = client.get(f"{API}/projects").json()
    assert len(first["items"]) == 50  # the default page size
    assert first["next_cursor"]

    items, pages = walk(client, {"limit": PAGE})
    seen = ids(items)
    assert len(seen) == N
    assert len(set(seen)) == N
    assert seen == sorted(seen)  # default order: id
    assert pages == -(-N // PAGE)  # 28 pages, the last one short

    # Other orders, with NULLs among the keys, match Python's sort of the same rows.
    walks = {}
    for sort, limit in (
        ("-year,name", PAGE),
        ("-total_investment", PAGE),
        ("year,-name", 97),
        ("total_investment", 97),
    ):
        items, _ = walk(client, {"limit": limit, "sort": sort})
        assert len(items) == N, sort
        assert len(set(ids(items))) == N, sort
        assert ids(items) == expected_order(items, sort), f"sort={sort} is out of order"
        walks[sort] = items
    # The data really has NULLs in both keys: first when descending, last when ascending.
    assert walks["-total_investment"][0]["total_investment"] is None
    assert walks["-total_investment"][-1]["total_investment"] is not None
    assert walks["total_investment"][-1]["total_investment"] is None
    assert walks["-year,name"][0]["year"] is None and walks["-year,name"][-1]["year"] == 2015
    assert walks["year,-name"][0]["year"] == 2015 and walks["year,-name"][-1]["year"] is None


def test_cursor_is_stable_while_rows_are_inserted(client: TestClient, database_url: str) -> None:
    park = make_park(client)
    insert_projects(database_url, park["id"])
    originals = set(ids(walk(client, {"limit": 500})[0]))
    assert len(originals) == N
    created: list[int] = []

    def insert_some(page: int) -> None:
        # On every other page, a row that sorts before everything and one that ties an
        # existing name: offset paging would shift and repeat rows here.
        if page % 2:
            return
        for name in (f"000-新{page}", _name(page)):
            created.append(make_project(client, park["id"], name=name, stage="planning")["id"])

    for sort in ("id", "name"):
        before = len(created)
        items, _ = walk(client, {"limit": PAGE, "sort": sort}, between=insert_some)
        seen = ids(items)
        counts = Counter(seen)
        assert [i for i, c in counts.items() if c > 1] == [], f"duplicates with sort={sort}"
        missing = originals - set(seen)
        assert not missing, f"sort={sort} skipped {len(missing)} original rows"
        assert set(seen) - originals <= set(created)
        assert len(created) > before


# ---------------------------------------------------------------- filters and search


def _found(client: TestClient, **params: Any) -> set[int]:
    response = client.get(f"{API}/projects", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return set(ids(response.json()["items"]))


def _invest(client: TestClient, project_id: int, kind: str, amount: str, unit: str) -> int:
    body = {"project_id": project_id, "kind": kind, "amount": amount, "unit": unit}
    return int(post(client, "investments", body)["id"])


def test_project_filters(client: TestClient) -> None:
    park = make_park(client)
    other_park = make_park(client, "乙园区")
    big_data = make_chain(client, park["id"])
    lithium = make_chain(client, park["id"], code="lithium", name="锂电")
    firm = post(client, "enterprises", {"park_id": park["id"], "name": "交大智邦"})

    def project(name: str, **extra: Any) -> int:
        return int(make_project(client, extra.pop("park_id", park["id"]), name=name, **extra)["id"])

    lunan = project(
        "鲁南大数据中心",
        chain_id=big_data["id"],
        stage="operating",
        is_key=True,
        year=2021,
    )
    factory = project(
        "智慧工厂",
        chain_id=lithium["id"],
        enterprise_id=firm["id"],
        stage="under_construction",
        is_key=False,
        year=2022,
    )
    cell = project("电芯项目", chain_id=lithium["id"], stage="signed", is_key=True, year=2021)
    plan = project("谋划项目", stage="planning", is_key=False)
    elsewhere = project("乙园区项目", park_id=other_park["id"], stage="signed", year=2021)

    _invest(client, lunan, "planned_total", "30", "亿元")
    _invest(client, lunan, "reported", "20", "亿元")
    factory_inv = _invest(client, factory, "reported", "1", "亿元")
    _invest(client, cell, "planned_total", "5000", "万元")
    _invest(client, plan, "annual_plan", "9", "亿元")  # not a total: no headline

    assert _found(client) == {lunan, factory, cell, plan, elsewhere}
    assert _found(client, park_id=park["id"]) == {lunan, factory, cell, plan}
    assert _found(client, park_id=other_park["id"]) == {elsewhere}
    assert _found(client, chain_id=lithium["id"]) == {factory, cell}
    assert _found(client, enterprise_id=firm["id"]) == {factory}
    assert _found(client, stage="signed") == {cell, elsewhere}
    assert _found(client, is_key="true") == {lunan, cell}
    # "No" finds what staff said no to; a project whose key flag is unknown is neither.
    assert _found(client, is_key="false") == {factory, plan}
    assert _found(client, year=2021) == {lunan, cell, elsewhere}
    assert _found(client, year=2021, chain_id=lithium["id"], is_key="true") == {cell}

    # Headline figures: lunan 3e9 (planned_total wins), factory 1e8, cell 5e7, plan none.
    assert _found(client, min_investment="100000000") == {lunan, factory}  # inclusive
    assert _found(client, max_investment="100000000.00") == {factory, cell}  # inclusive
    assert _found(client, min_investment="50000000", max_investment="100000000") == {
        factory,
        cell,
    }
    assert _found(client, min_investment="0") == {lunan, factory, cell}  # no headline: out
    # Amounts as staff write them: with 亿 / 万 (and 元), the same bounds as in yuan.
    assert _found(client, min_investment="1亿") == {lunan, factory}
    assert _found(client, min_investment="0.5亿", max_investment="1亿元") == {factory, cell}
    assert _found(client, max_investment="5000万") == {cell}
    for bad in ("1e8", "-1", "1亿亿", "0.001"):
        response = client.get(f"{API}/projects", params={"min_investment": bad})
        assert problem(response, 422)["field"] == "min_investment", bad
    # The filter follows the investment records: a corrected figure moves the project.
    response = client.patch(
        f"{API}/investments/{factory_inv}", json={"amount": "0.5", "unit": "亿元"}
    )
    assert response.status_code == 200, response.text
    assert _found(client, min_investment="100000000") == {lunan}
    assert _found(client, max_investment="50000000") == {factory, cell}

    problem(client.get(f"{API}/projects", params={"stage": "dreaming"}), 422)
    body = problem(client.get(f"{API}/projects", params={"min_investment": "-1"}), 422)
    assert body["field"] == "min_investment"
    body = problem(client.get(f"{API}/projects", params={"year": "soon"}), 422)
    assert body["field"] == "year"


def test_q_finds_chinese_substrings_and_treats_like_wildcards_literally(
    client: TestClient,
) -> None:
    park = make_park(client)
    lunan = make_project(client, park["id"], name="鲁南大数据中心")["id"]
    percent = make_project(client, park["id"], name="100%绿电项目")["id"]
    plain = make_project(client, park["id"], name="100绿电项目")["id"]
    underscore = make_project(client, park["id"], name="a_b项目")["id"]
    ab = make_project(client, park["id"], name="axb项目")["id"]
    coded = make_project(client, park["id"], name="智慧工厂", code="ZB-2021_01")["id"]
    backslash = make_project(client, park["id"], name="路径\\项目")["id"]

    assert _found(client, q="大数据") == {lunan}
    assert _found(client, q="鲁南大数据中心") == {lunan}
    assert _found(client, q="数据中") == {lunan}
    assert _found(client, q="绿电") == {percent, plain}
    assert _found(client, q="%") == {percent}
    assert _found(client, q="0%绿") == {percent}
    assert _found(client, q="_") == {underscore, coded}
    assert _found(client, q="a_b") == {underscore}
    assert _found(client, q="\\") == {backslash}
    assert _found(client, q="2021_0") == {coded}  # the code is searched too
    assert _found(client, q="axb") == {ab}
    assert _found(client, q="不存在") == set()
    problem(client.get(f"{API}/projects", params={"q": ""}), 422)


# ---------------------------------------------------------------- list parameters refused


def test_list_parameter_errors_name_the_parameter(client: TestClient) -> None:
    park = make_park(client)
    for i in range(3):
        make_project(client, park["id"], name=f"项目{i}")

    assert len(client.get(f"{API}/projects", params={"limit": 500}).json()["items"]) == 3
    for bad in ("501", "0", "-1", "many"):
        body = problem(client.get(f"{API}/projects", params={"limit": bad}), 422)
        assert body["field"] == "limit", bad

    body = problem(client.get(f"{API}/projects", params={"colour": "red"}), 422)
    assert body["field"] == "colour"
    body = problem(client.get(f"{API}/projects", params={"sort": "secret"}), 422)
    assert body["field"] == "sort"
    assert "secret" in body["detail"]
    body = problem(client.get(f"{API}/projects", params={"sort": "-deleted_at"}), 422)
    assert body["field"] == "sort"


FORGED = {
    "int": ("id", ["not-a-number"]),
    "decimal": ("-total_investment,-id", ["lots", 1]),
    "datetime": ("-updated_at,-id", ["yesterday", 1]),
    "object": ("name,id", [{"x": 1}, 1]),
}


def test_cursors_are_checked(client: TestClient) -> None:
    park = make_park(client)
    for i in range(5):
        make_project(client, park["id"], name=f"项目{i}", year=2020 + i)
    page = client.get(f"{API}/projects", params={"limit": 2, "sort": "name"}).json()
    cursor = page["next_cursor"]
    assert cursor

    # The cursor continues its own sort.
    rest = client.get(f"{API}/projects", params={"limit": 2, "sort": "name", "cursor": cursor})
    assert rest.status_code == 200 and len(rest.json()["items"]) == 2

    for tampered in (cursor[:-3] + "!!!", "garbage", cursor[::-1], "e30"):
        body = problem(
            client.get(f"{API}/projects", params={"sort": "name", "cursor": tampered}), 422
        )
        assert body["field"] == "cursor", tampered

    for other_sort in ("-name", "year", None):
        params = {"cursor": cursor, **({"sort": other_sort} if other_sort else {})}
        body = problem(client.get(f"{API}/projects", params=params), 422)
        assert body["field"] == "cursor", other_sort

    # A cursor that decodes but carries values of the wrong type is not one we issued either.
    answers: dict[str, tuple[Any, Any]] = {}
    for case, (sort, values) in FORGED.items():
        params = {
            "sort": sort.removesuffix(",id").removesuffix(",-id"),
            "cursor": forge_cursor(sort, values),
        }
        try:
            response = client.get(f"{API}/projects", params=params)
            answers[case] = (response.status_code, response.json().get("field"))
        except Exception as exc:  # the test client re-raises what a real client sees as a 500
            answers[case] = (500, type(exc).__name__)
    assert answers == dict.fromkeys(FORGED, (422, "cursor"))


# ---------------------------------------------------------------- sync helpers: updated_after, tombstones


def test_updated_after_and_include_deleted(client: TestClient) -> None:
    park = make_park(client)
    a = make_project(client, park["id"], name="甲项目")
    b = make_project(client, park["id"], name="乙项目")
    c = make_project(client, park["id"], name="丙项目")
    mark = b["updated_at"]
    assert datetime.fromisoformat(mark).utcoffset() == timedelta(0)

    assert _found(client, updated_after=mark) == {c["id"]}
    patched = client.patch(f"{API}/projects/{a['id']}", json={"is_key": True})
    assert patched.status_code == 200
    assert _found(client, updated_after=mark) == {a["id"], c["id"]}
    # The same instant written in Beijing time means the same thing.
    beijing = datetime.fromisoformat(mark).astimezone(timezone(timedelta(hours=8))).isoformat()
    assert "+08:00" in beijing
    assert _found(client, updated_after=beijing) == {a["id"], c["id"]}
    assert _found(client, updated_after=patched.json()["updated_at"]) == set()

    assert client.delete(f"{API}/projects/{c['id']}").status_code == 204
    assert _found(client) == {a["id"], b["id"]}
    assert _found(client, include_deleted="true") == {a["id"], b["id"], c["id"]}
    assert _found(client, updated_after=mark) == {a["id"]}
    tombstones = client.get(
        f"{API}/projects", params={"updated_after": mark, "include_deleted": "true"}
    ).json()["items"]
    assert {t["id"]: t["deleted_at"] is not None for t in tombstones} == {
        a["id"]: False,
        c["id"]: True,
    }
    body = problem(
        client.get(f"{API}/projects", params={"updated_after": "2026-01-01T00:00:00"}), 422
    )
    assert body["field"] == "updated_after"
