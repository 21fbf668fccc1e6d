"""The set-based import writes exactly what the API writes one record at a time (records and
change-feed entries), chunk by chunk, all or nothing, holding the feed's lock only at the end;
and its upload has its own size cap, above the 1 MiB every other request is held to."""

import asyncio
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import context
from app.config import Settings
from app.db import Database, make_engine
from app.main import create_app
from app.resources import PROJECTS
from app.services import records, tabular
from tests.helpers import (
    API,
    PROJECT_HEADERS,
    changes_after,
    csv_rows,
    export,
    last_seq,
    make_chain,
    make_enterprise,
    make_park,
    post,
    problem,
    to_csv,
    upload,
)

# What differs between two records written alike: who they are, and when.
VOLATILE = {"id", "external_id", "code", "created_at", "updated_at"}
COLUMN = {h: i for i, h in enumerate(PROJECT_HEADERS)}
STAGE_LABELS = {"signed": "签约", "planning": "谋划", "operating": "投产", "cancelled": "终止"}


def registry(client: TestClient) -> dict[str, Any]:
    park = make_park(client)
    chain = make_chain(client, park["id"])
    other_chain = make_chain(client, park["id"], code="lithium", name="锂电")
    enterprise = make_enterprise(client, park["id"], chain["id"])
    source = post(client, "sources", {"title": "枣庄高新区将率先突破攻坚", "publisher": "齐鲁晚报"})
    return {
        "park": park,
        "chain": chain,
        "other_chain": other_chain,
        "enterprise": enterprise,
        "source": source,
    }


def varied_projects(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Projects that between them set, and leave out, every field a file can carry."""
    park = r["park"]["id"]
    return [
        {"park_id": park, "name": "鲁南大数据中心", "stage": "operating", "is_key": True,
         "year": 2021, "chain_id": r["chain"]["id"], "source_id": r["source"]["id"],
         "quote": "总投资30亿元", "note": "行一\n行二, 带逗号"},
        {"park_id": park, "name": "交大智邦智慧工厂", "stage": "signed",
         "enterprise_id": r["enterprise"]["id"], "chain_id": r["chain"]["id"],
         "inferred": {"stage": "配图表明工厂已建成", "chain_id": "编辑判断"}},
        {"park_id": park, "name": "锂电配套", "stage": "planning", "chain_id": r["other_chain"]["id"],
         "year": 2022},
        {"park_id": park, "name": '=HYPERLINK("http://x")', "stage": "cancelled", "is_key": False},
        {"park_id": park, "name": "阶段未知的项目"},
    ]  # fmt: skip


HEADER_OF = {"stage": "阶段", "chain_id": "产业链编号", "year": "年度"}


def as_row(project: dict[str, Any], **keys: str) -> list[str]:
    """A project as a line of the export layout (derived columns empty)."""
    cells = dict.fromkeys(PROJECT_HEADERS, "")
    for header, name in (
        ("项目名称", "name"),
        ("园区编号", "park_id"),
        ("产业链编号", "chain_id"),
        ("企业编号", "enterprise_id"),
        ("年度", "year"),
        ("来源编号", "source_id"),
        ("原文引述", "quote"),
        ("备注", "note"),
    ):
        if project.get(name) is not None:
            cells[header] = tabular.csv_text(project[name])
    cells["阶段"] = STAGE_LABELS[project["stage"]] if project.get("stage") else ""
    cells["重点项目"] = {True: "是", False: "否", None: ""}[project.get("is_key")]  # "" = unknown
    cells["推断说明"] = "\n".join(
        f"{HEADER_OF[k]}：{v}" for k, v in (project.get("inferred") or {}).items()
    )
    cells["外部编号"], cells["项目代码"] = keys.get("external_id", ""), keys.get("code", "")
    return [cells[h] for h in PROJECT_HEADERS]


def by_external_id(client: TestClient, external_id: str) -> dict[str, Any]:
    items = client.get(f"{API}/projects", params={"external_id": external_id}).json()["items"]
    assert len(items) == 1, external_id
    found: dict[str, Any] = items[0]
    return found


def without(record: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


def assert_same_entries(one_by_one: list[dict[str, Any]], imported: list[dict[str, Any]]) -> None:
    """Feed entries of the same writes: alike but for the records' keys and times."""
    assert len(one_by_one) == len(imported) > 0
    for want, got in zip(one_by_one, imported, strict=True):
        assert (got["resource"], got["op"], got["version"], got["actor"]) == (
            want["resource"],
            want["op"],
            want["version"],
            want["actor"],
        )
        assert list(got["data"]) == list(want["data"])  # the same fields, in the same order
        assert without(got["data"], VOLATILE) == without(want["data"], VOLATILE)
        # As log_change writes them: the record's id, key and own updated_at.
        assert (got["id"], got["external_id"]) == (got["data"]["id"], got["data"]["external_id"])
        changed = datetime.fromisoformat(got["changed_at"].replace("Z", "+00:00"))
        assert changed == datetime.fromisoformat(got["data"]["updated_at"].replace("Z", "+00:00"))
        assert got["request_id"]


def test_an_import_creates_what_the_api_creates_one_by_one(client: TestClient) -> None:
    r = registry(client)
    projects = varied_projects(r)
    start = last_seq(client)
    for i, project in enumerate(projects):
        post(client, "projects", {**project, "external_id": f"api-{i}", "code": f"API-{i}"})
    middle = last_seq(client)
    rows = [as_row(p, external_id=f"imp-{i}", code=f"IMP-{i}") for i, p in enumerate(projects)]
    response = upload(client, to_csv([PROJECT_HEADERS, *rows]))
    assert response.status_code == 200, response.text
    assert (response.json()["created"], response.json()["errors"]) == (len(projects), [])

    for i in range(len(projects)):
        api, imported = by_external_id(client, f"api-{i}"), by_external_id(client, f"imp-{i}")
        assert without(imported, VOLATILE) == without(api, VOLATILE)
        assert imported["code"] == f"IMP-{i}" and imported["version"] == 1
    one_by_one = [c for c in changes_after(client, start) if c["seq"] <= middle]
    imported_entries = changes_after(client, middle)
    assert_same_entries(one_by_one, imported_entries)
    # The feed passes each snapshot through as stored: both were stored as json.dumps writes.
    raw = client.get(f"{API}/changes", params={"after": start, "limit": 1000}).text
    for entry in one_by_one + imported_entries:
        assert '"data":' + json.dumps(entry["data"]) in raw
    # In file order, all from the one request.
    assert [c["external_id"] for c in imported_entries] == [
        f"imp-{i}" for i in range(len(projects))
    ]
    assert len({c["request_id"] for c in imported_entries}) == 1


def test_an_edited_export_updates_like_a_patch(client: TestClient) -> None:
    r = registry(client)
    project = varied_projects(r)[1]
    patched = post(client, "projects", {**project, "external_id": "by-api", "code": "BY-API"})
    edited = post(client, "projects", {**project, "external_id": "by-file", "code": "BY-FILE"})
    edit = {"stage": "operating", "year": 2023, "is_key": True, "note": "已投产", "chain_id": None}
    start = last_seq(client)
    response = client.patch(
        f"{API}/projects/{patched['id']}", json=edit, headers={"If-Match": '"1"'}
    )
    assert response.status_code == 200, response.text
    middle = last_seq(client)
    rows = csv_rows(export(client, format="csv", external_id="by-file"))
    row = rows[1]
    row[COLUMN["阶段"]], row[COLUMN["年度"]], row[COLUMN["重点项目"]] = "投产", "2023", "是"
    row[COLUMN["备注"]], row[COLUMN["产业链编号"]] = "已投产", ""
    response = upload(client, to_csv(rows))
    assert response.status_code == 200, response.text
    assert (response.json()["updated"], response.json()["errors"]) == (1, [])

    after_patch = by_external_id(client, "by-api")
    after_import = by_external_id(client, "by-file")
    assert after_import["version"] == edited["version"] + 1 == 2
    assert without(after_import, VOLATILE) == without(after_patch, VOLATILE)
    assert after_import["created_at"] == edited["created_at"]
    one_by_one = [c for c in changes_after(client, start) if c["seq"] <= middle]
    assert_same_entries(one_by_one, changes_after(client, middle))


def test_rows_are_written_a_chunk_at_a_time_and_all_or_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tabular, "IMPORT_CHUNK", 2)
    r = registry(client)
    project = varied_projects(r)[2]
    rows = [as_row({**project, "name": f"项目{i}"}, code=f"C-{i}") for i in range(7)]
    bad = [list(row) for row in rows]
    bad[6][COLUMN["阶段"]] = "挖坑"  # the last row, in the last chunk
    bad[1][COLUMN["产业链编号"]] = "999"  # a parent that does not exist, in the first
    before, seq = client.get(f"{API}/projects").json()["items"], last_seq(client)

    for dry_run in (True, False):
        response = upload(client, to_csv([PROJECT_HEADERS, *bad]), dry_run=dry_run)
        body = response.json() if dry_run else problem(response, 422)["report"]
        assert [(e["row"], e["column"]) for e in body["errors"]] == [(3, "产业链编号"), (8, "阶段")]
        assert "chain 999 does not exist" in body["errors"][0]["message"]
        assert client.get(f"{API}/projects").json()["items"] == before
        assert changes_after(client, seq) == []

    response = upload(client, to_csv([PROJECT_HEADERS, *rows]))
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 7
    feed = changes_after(client, seq)
    assert [c["data"]["code"] for c in feed] == [f"C-{i}" for i in range(7)]
    assert [c["id"] for c in feed] == sorted(c["id"] for c in feed)


def test_a_key_given_up_by_an_earlier_row_is_free_for_a_later_one(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the rows were written one after another: a code that row 2 takes away from one
    project is free for row 3, in the same chunk or the next; taken before it is free, it is
    a conflict."""
    r = registry(client)
    project = varied_projects(r)[2]
    one = post(client, "projects", {**project, "external_id": "one", "code": "X"})
    two = post(client, "projects", {**project, "external_id": "two", "code": "Z"})
    renames = [
        as_row(project, external_id="one", code="Y"),  # X is given up ...
        as_row(project, external_id="two", code="X"),  # ... and taken; Z is given up ...
        as_row(project, external_id="new", code="Z"),  # ... and taken by a new project
    ]
    taken_first = [renames[1], renames[0]]
    for chunk in (1000, 2):
        monkeypatch.setattr(tabular, "IMPORT_CHUNK", chunk)
        body = upload(client, to_csv([PROJECT_HEADERS, *taken_first]), dry_run=True).json()
        assert [(e["row"], e["column"]) for e in body["errors"]] == [(2, "项目代码")]
        assert f"({one['id']}) already has code=X" in body["errors"][0]["message"]
        body = upload(client, to_csv([PROJECT_HEADERS, *renames]), dry_run=True).json()
        assert (body["errors"], body["updated"], body["created"]) == ([], 2, 1)
    response = upload(client, to_csv([PROJECT_HEADERS, *renames]))
    assert response.status_code == 200, response.text
    codes = {e: by_external_id(client, e)["code"] for e in ("one", "two", "new")}
    assert codes == {"one": "Y", "two": "X", "new": "Z"}
    assert by_external_id(client, "two")["id"] == two["id"]


def test_other_writers_go_on_while_an_import_writes(
    client: TestClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed's lock (which serialises every writer on PostgreSQL) is taken at the end of the
    import, not while its rows are written: another write commits meanwhile, and its feed entry
    comes first."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: the import holds the database's lock")
    r = registry(client)
    project = varied_projects(r)[2]
    seq = last_seq(client)
    monkeypatch.setattr(tabular, "IMPORT_CHUNK", 2)
    content = to_csv([PROJECT_HEADERS, *(as_row(project, code=f"I-{i}") for i in range(5))])
    written, resume = asyncio.Event(), asyncio.Event()
    write = tabular._Importer.write

    async def pausing_write(self: Any, plan: Any) -> None:
        await write(self, plan)
        written.set()
        await resume.wait()

    monkeypatch.setattr(tabular._Importer, "write", pausing_write)

    async def go() -> None:
        db = Database(make_engine(database_url, pool_size=2, max_overflow=0))
        context.actor.set("import-test")
        try:
            async with db.writer() as session:
                with tabular.reading(io.BytesIO(content), "p.csv") as table:
                    importing = asyncio.create_task(
                        tabular.import_rows(session, tabular.PROJECT_LAYOUT, table, dry_run=False)
                    )
                    await asyncio.wait_for(written.wait(), 30)
                    async with db.writer() as other:
                        body = PROJECTS.create.model_validate({**project, "name": "同时写入"})
                        await asyncio.wait_for(records.create(other, PROJECTS, body), 10)
                    resume.set()
                    report = await importing
                    assert (report.created, report.errors) == (5, [])
        finally:
            resume.set()
            await db.dispose()

    asyncio.run(go())
    feed = changes_after(client, seq)
    assert feed[0]["data"]["name"] == "同时写入"
    assert [c["data"]["code"] for c in feed[1:]] == [f"I-{i}" for i in range(5)]


@pytest.fixture
def capped(settings: Settings, tokens: dict[str, str]) -> Iterator[TestClient]:
    """The app with a 3 MiB import cap (and the usual 1 MiB for everything else)."""
    small = settings.model_copy(update={"import_max_body_bytes": 3 * 2**20})
    assert small.max_body_bytes == 2**20
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    with TestClient(create_app(small), headers=admin) as test_client:
        yield test_client


def test_an_upload_over_1_mib_imports_and_one_over_the_import_cap_is_413(
    capped: TestClient,
) -> None:
    r = registry(capped)
    project = {**varied_projects(r)[2], "note": "长" * 1300}  # about 4 KB a row
    rows = [as_row({**project, "name": f"项目{i}"}) for i in range(400)]
    content = to_csv([PROJECT_HEADERS, *rows])
    assert 1.3 * 2**20 < len(content) < 2 * 2**20
    response = upload(capped, content)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 400

    too_big = to_csv([PROJECT_HEADERS, *rows, *rows])
    assert len(too_big) > 3 * 2**20
    body = problem(upload(capped, too_big), 413)
    assert str(3 * 2**20) in body["detail"]

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="p.csv"\r\n\r\n'
        yield head
        for i in range(0, len(too_big), 2**16):
            yield too_big[i : i + 2**16]
        yield b"\r\n--b--\r\n"

    response = capped.post(
        f"{API}/projects/import",
        content=streamed(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    problem(response, 413)
    assert len(capped.get(f"{API}/projects", params={"limit": 500}).json()["items"]) == 400
    # Every other request keeps the 1 MiB cap.
    big_park = {"name": "园" * 100, "level": "other", "positioning": "长" * 400_000}
    problem(capped.post(f"{API}/parks", json=big_park), 413)


def test_rows_are_refused_with_the_messages_the_api_gives(client: TestClient) -> None:
    r = registry(client)
    other_park = make_park(client, name="其他园区")
    foreign_chain = make_chain(client, other_park["id"], code="far", name="远方")
    project = varied_projects(r)[1]  # in the park, with its chain and enterprise
    existing = post(client, "projects", {**project, "external_id": "moves", "code": "MOVES"})
    bodies = [
        {**project, "chain_id": foreign_chain["id"]},  # a chain of another park
        {**project, "enterprise_id": 999, "source_id": 998},  # parents that do not exist
    ]
    expected = []
    for body in bodies:
        errors = problem(client.post(f"{API}/projects", json=body), 422)["errors"]
        expected.append(sorted(e["message"] for e in errors))
    # Moving a project to another park while its chain and enterprise stay behind: the API
    # names both; an import moves no project at all (its investments move with it, by PATCH).
    response = client.patch(f"{API}/projects/{existing['id']}", json={"park_id": other_park["id"]})
    assert len(problem(response, 422)["errors"]) == 2
    expected.append(
        [
            "导入不能把项目移到另一个园区；请用 PATCH 修改 park_id (moving a record to another park: use the API)"
        ]
    )
    moved = csv_rows(export(client, format="csv", external_id="moves"))[1]
    moved[COLUMN["园区编号"]] = str(other_park["id"])
    rows = [as_row(body) for body in bodies] + [moved]

    report = upload(client, to_csv([PROJECT_HEADERS, *rows]), dry_run=True).json()
    got: dict[int, list[str]] = {}
    for error in report["errors"]:
        got.setdefault(error["row"], []).append(error["message"])
    assert [sorted(got[row]) for row in (2, 3, 4)] == expected
    assert "belongs to park" in expected[0][0]
