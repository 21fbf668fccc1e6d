"""What more than one test module uses, kept here rather than imported from a test module:
records created through the API as a client would, problem checks, the seed loader, CSV and
Excel files made and read back, a probe of a live server's health, and the browser's flags."""

import asyncio
import csv
import io
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zipfile import ZIP_DEFLATED, ZipFile

import httpx
import pytest
from fastapi.testclient import TestClient
from openpyxl import Workbook  # type: ignore[import-untyped]
from sqlalchemy import inspect, text

from app.db import make_engine

API = "/api/v1"


@contextmanager
def same_app(of: TestClient, headers: dict[str, str]) -> Iterator[TestClient]:
    """Another client of the app `of` runs (entered): its own headers and cookies, its requests
    served by the same app on the same event loop. A client of its own, entered, would start the
    app a second time on a loop of its own, and the app's asyncpg pools cannot cross loops.

    A TestClient sends each request through its `portal` when it has one and opens one of its
    own only when it has none: this one borrows `of`'s, and gives it back on leaving (before
    `of` is closed)."""
    assert of.portal is not None, "same_app needs a client that is running its app (entered)"
    other = TestClient(of.app, base_url=str(of.base_url), headers=headers)
    other.app_state.update(of.app_state)  # what the lifespan left for requests, as `of` has it
    other.portal = of.portal
    try:
        yield other
    finally:
        other.portal = None
        other.close()


def post(
    client: TestClient, resource: str, body: dict[str, Any], status: int = 201
) -> dict[str, Any]:
    response = client.post(f"{API}/{resource}", json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def make_park(client: TestClient, name: str = "枣庄高新区", **extra: Any) -> dict[str, Any]:
    return post(client, "parks", {"name": name, "level": "national", "city": "枣庄市", **extra})


def make_chain(
    client: TestClient, park_id: int, code: str = "big-data", name: str = "大数据", **extra: Any
) -> dict[str, Any]:
    return post(
        client,
        "chains",
        {"park_id": park_id, "code": code, "name": name, "role": "pillar", **extra},
    )


def make_enterprise(
    client: TestClient,
    park_id: int,
    chain_id: int,
    name: str = "交大智邦（枣庄）数字科技有限公司",
    **extra: Any,
) -> dict[str, Any]:
    return post(
        client, "enterprises", {"park_id": park_id, "chain_id": chain_id, "name": name, **extra}
    )


def make_project(
    client: TestClient, park_id: int, name: str = "鲁南大数据中心", **extra: Any
) -> dict[str, Any]:
    return post(client, "projects", {"park_id": park_id, "name": name, "stage": "signed", **extra})


def make_target(client: TestClient, park_id: int, **extra: Any) -> dict[str, Any]:
    """每年100个重点项目 for the park, unless `extra` says otherwise."""
    body = {
        "park_id": park_id,
        "metric": "key_projects",
        "value": "100",
        "unit": "个",
        "recurrence": "annual",
        **extra,
    }
    return post(client, "targets", body)


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for leak in ("Traceback", "sqlalchemy", "SELECT ", "/work/", ".py"):
        assert leak not in response.text
    return body


def staff_claims(settings: Any, username: str) -> dict[str, Any]:
    """The account-bound claims of a staff token for `username` as the database holds it now
    (`uid`, `cred`), for tests that forge or issue tokens themselves."""
    from sqlalchemy import select

    from app.db import Database, make_engine
    from app.models.user import User
    from app.security import credentials_stamp

    async def read() -> dict[str, Any]:
        db = Database(make_engine(settings.database_url, pool_size=1))
        try:
            async with db.reader() as session:
                user = (
                    await session.execute(select(User).where(User.username == username))  # type: ignore[arg-type]
                ).scalar_one()
                assert user.id is not None
                return {"uid": user.id, "cred": credentials_stamp(settings, user.password_hash)}
        finally:
            await db.dispose()

    return asyncio.run(read())


# ---------------------------------------------------------------- the seed


def run_seed(url: str, check: bool = False, force: bool = False) -> tuple[int, str]:
    """Load (or with `check`, compare) the seed file into the database at `url`, as the
    `seed` command does: its exit status and what it printed."""
    from app import seed
    from app.db import Database, make_engine

    async def go() -> tuple[int, str]:
        db = Database(make_engine(url, pool_size=2, max_overflow=0))
        out = io.StringIO()
        try:
            return await seed.run(db, check=check, force=force, out=out), out.getvalue()
        finally:
            await db.dispose()

    return asyncio.run(go())


# ---------------------------------------------------------------- CSV and Excel exchange

# The columns of a projects export, in order.
PROJECT_HEADERS = [
    "编号",
    "外部编号",
    "项目代码",
    "项目名称",
    "园区编号",
    "园区名称",
    "产业链编号",
    "产业链",
    "企业编号",
    "企业名称",
    "阶段",
    "重点项目",
    "年度",
    "总投资(元)",
    "总投资(万元)",
    "总投资(亿元)",
    "投资额冲突",
    "总投资取自投资额编号",
    "总投资来源编号",
    "总投资各记录（不一致时）",
    "来源编号",
    "原文引述",
    "推断说明",
    "备注",
    "版本",
    "创建时间",
    "更新时间",
    "删除时间",
]
# The three columns a projects import needs.
IMPORT_HEADER = ["项目名称", "园区编号", "阶段"]
MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def export(client: TestClient, resource: str = "projects", **params: Any) -> Any:
    response = client.get(f"{API}/{resource}/export", params=params)
    assert response.status_code == 200, response.text
    return response


def csv_rows(response: Any) -> list[list[str]]:
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.content.startswith("\ufeff".encode())
    return list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))


def upload(
    client: TestClient,
    content: bytes,
    name: str = "projects.csv",
    dry_run: bool = False,
    resource: str = "projects",
    headers: dict[str, str] | None = None,
) -> Any:
    return client.post(
        f"{API}/{resource}/import",
        params={"dry_run": str(dry_run).lower()},
        files={"file": (name, content)},
        headers=headers,
    )


def to_csv(rows: Iterable[list[Any]]) -> bytes:
    """UTF-8 with a byte-order mark, as Excel saves it."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def last_seq(client: TestClient) -> int:
    return int(client.get(f"{API}/changes", params={"after": 0, "limit": 1000}).json()["last_seq"])


def changes_after(client: TestClient, seq: int) -> list[dict[str, Any]]:
    return list(client.get(f"{API}/changes", params={"after": seq, "limit": 1000}).json()["items"])


# ---------------------------------------------------------------- workbooks made by hand


def inline(ref: str, text: str) -> bytes:
    return f'<c r="{ref}" t="inlineStr"><is><t>{escape(text)}</t></is></c>'.encode()


def header_row() -> bytes:
    cells = b"".join(
        inline(f"{col}1", text) for col, text in zip("ABC", IMPORT_HEADER, strict=True)
    )
    return b'<row r="1">' + cells + b"</row>"


def sheet(*body: Iterable[bytes], head: bytes = b"") -> Iterator[bytes]:
    """A worksheet's XML, its header row (IMPORT_HEADER) first, streamed."""
    yield f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{MAIN_NS}">'.encode()
    yield head + b"<sheetData>" + header_row()
    for part in body:
        yield from part
    yield b"</sheetData></worksheet>"


@cache
def _base_workbook() -> dict[str, bytes]:
    """The parts openpyxl writes for an empty sheet called 项目."""
    workbook = Workbook()
    workbook.active.title = "项目"
    out = io.BytesIO()
    workbook.save(out)
    with ZipFile(out) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def xlsx(
    sheet_xml: Iterable[bytes],
    strings: Iterable[bytes] | None = None,
    parts: dict[str, bytes] | None = None,
) -> bytes:
    """A workbook whose sheet (and shared strings, if given) are streamed into the zip as they
    are made, deflated: a huge part costs the test its compressed size, not its own."""
    base = {**_base_workbook(), **(parts or {})}
    if strings is not None:
        override = (
            '<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml" /></Types>'
        )
        types = base["[Content_Types].xml"].replace(b"</Types>", override.encode())
        base["[Content_Types].xml"] = types
    streamed = {"xl/worksheets/sheet1.xml": sheet_xml}
    if strings is not None:
        streamed["xl/sharedStrings.xml"] = strings
    out = io.BytesIO()
    with ZipFile(out, "w", ZIP_DEFLATED) as archive:
        for name, content in base.items():
            if name not in streamed:
                archive.writestr(name, content)
        for name, chunks in streamed.items():
            with archive.open(name, "w") as member:
                for chunk in chunks:
                    member.write(chunk)
    return out.getvalue()


# ---------------------------------------------------------------- a live server, probed


@dataclass
class Probe:
    """Asks /healthz every 20 ms while it runs: the slowest answer, and any that failed."""

    base: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as http:
            while True:  # at least once, however quick the import
                sent = time.monotonic()
                try:
                    answer = http.get("/healthz")
                    if answer.status_code != 200:
                        self.failures.append(str(answer.status_code))
                except httpx.TransportError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - sent)
                if self.done.wait(0.02):
                    return

    @property
    def slowest(self) -> float:
        return max(self.latencies)


@contextmanager
def probing(base: str) -> Iterator[Probe]:
    probe = Probe(base)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        probe.done.set()
        thread.join()
    assert probe.latencies and not probe.failures, probe.failures


# ---------------------------------------------------------------- the browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_or_skip() -> None:
    """Skip where /usr/bin/chromium is missing; REQUIRE_BROWSER=1 makes that a failure."""
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is not installed (apt-get install -y chromium fonts-noto-cjk)"
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


async def _tables_and_revision(url: str) -> tuple[set[str], str | None]:
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            revision = None
            if "alembic_version" in tables:
                revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            return tables, revision
    finally:
        await engine.dispose()


def tables_and_revision(url: str) -> tuple[set[str], str | None]:
    """The database's tables and Alembic revision (None before any migration)."""
    return asyncio.run(_tables_and_revision(url))
