"""The bench's deterministic data set, and its bulk load into PostgreSQL (COPY) and SQLite
(executemany). Setup only: nothing here is measured.

One park, seven chains, 20,000 enterprises, 100,000 projects (mixed stages, years and chains, some
null years), ~150,000 investments whose projects' `total_investment` / `investment_conflict` follow
the app's own headline rule, and a change feed of 1,000,000 entries (creates of every record, then
project updates) whose last version of each project matches the project row.
"""

import itertools
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson

from app.models.project import range_display
from app.money import display
from app.services.project import derived

SEED = 20261129
N_CHAINS = 7
N_ENTERPRISES = 20_000
N_PROJECTS = 100_000
N_CHANGES = 1_000_000
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
CHUNK = 50_000

STAGES = (
    ("planning", 15),
    ("negotiating", 15),
    ("signed", 20),
    ("under_construction", 20),
    ("completed", 10),
    ("operating", 15),
    ("cancelled", 5),
)
CHAINS = (
    ("lithium", "锂电", "Lithium battery", "leading"),
    ("optoelectronics", "光电", "Optoelectronics", "pillar"),
    ("pharma", "医药健康", "Pharma and health", "pillar"),
    ("smart-manufacturing", "智能制造", "Smart manufacturing", "pillar"),
    ("big-data", "大数据", "Big data", "pillar"),
    ("aluminium", "高端铝业", "High-end aluminium", "sector"),
    ("ev", "新能源电动车", "New-energy vehicles", "sector"),
)
PLACES = ("鲁南", "枣庄", "齐鲁", "山亭", "薛城", "峄城", "台儿庄", "滕州")
TRADES = ("锂能", "光电", "医药", "智造", "数据", "铝业", "新能源", "材料")
FORMS = ("科技有限公司", "股份有限公司", "制造有限公司", "新材料有限公司")
WORKS = ("年产10万吨", "智能化改造", "新建厂房", "扩建", "研发中心", "产业园", "数据中心", "生产线")
QUOTES = (
    "每年均招引落地头部企业2家、过亿元项目10个",
    "每年谋划实施100个重点项目",
    "全市高质量发展重要引擎、产城融合示范片区、中心城区发展高地",
)

PARK_COLS = (
    "id",
    "external_id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source_id",
    "quote",
    "note",
    "name",
    "level",
    "province",
    "city",
    "positioning",
)
CHAIN_COLS = (
    "id",
    "external_id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source_id",
    "quote",
    "note",
    "park_id",
    "code",
    "name",
    "name_en",
    "role",
)
ENTERPRISE_COLS = (
    "id",
    "external_id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source_id",
    "quote",
    "note",
    "park_id",
    "chain_id",
    "name",
    "credit_code",
    "is_high_tech",
    "is_above_scale",
    "is_leading",
    "landed_year",
)
PROJECT_COLS = (
    "id",
    "external_id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source_id",
    "quote",
    "note",
    "park_id",
    "chain_id",
    "enterprise_id",
    "code",
    "name",
    "stage",
    "is_key",
    "year",
    "total_investment",
    "investment_conflict",
    "investment_figures",  # JSON text, or None
)
INVESTMENT_COLS = (
    "id",
    "external_id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source_id",
    "quote",
    "note",
    "project_id",
    "kind",
    "currency",
    "as_of_date",
    "amount",
    "park_id",
)
CHANGE_COLS = (
    "seq",
    "resource",
    "record_id",
    "external_id",
    "op",
    "version",
    "changed_at",
    "actor",
    "request_id",
    "data",
)
MONEY = {"total_investment", "amount"}
TIMES = {"created_at", "updated_at", "deleted_at", "changed_at"}


def event_time(seq: int) -> datetime:
    """Strictly increasing with seq, with microseconds that are rarely zero."""
    return BASE_TIME + timedelta(microseconds=seq * 500_000 + (seq * 7919) % 400_000)


def iso(value: datetime) -> str:
    """A UTC datetime as the API writes it (pydantic: `...Z`, microseconds only when set)."""
    return value.isoformat().replace("+00:00", "Z")


@dataclass
class DataSet:
    parks: list[tuple[Any, ...]] = field(default_factory=list)
    chains: list[tuple[Any, ...]] = field(default_factory=list)
    enterprises: list[tuple[Any, ...]] = field(default_factory=list)
    projects: list[tuple[Any, ...]] = field(default_factory=list)
    investments: list[tuple[Any, ...]] = field(default_factory=list)
    # change feed: creates of every record, then project updates in this order of project ids
    update_ids: list[int] = field(default_factory=list)
    first_update_seq: int = 0

    def tables(self) -> list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]]:
        return [
            ("park", PARK_COLS, self.parks),
            ("chain", CHAIN_COLS, self.chains),
            ("enterprise", ENTERPRISE_COLS, self.enterprises),
            ("project", PROJECT_COLS, self.projects),
            ("investment", INVESTMENT_COLS, self.investments),
        ]


def _public(cols: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """A record as the API shows it; datetimes and dates are left to orjson (`OPT_UTC_Z`)."""
    out = dict(zip(cols, row, strict=True))
    for name in MONEY.intersection(out):
        if out[name] is not None:
            out[name] = str(out[name])
    return out


def project_public(row: tuple[Any, ...]) -> dict[str, Any]:
    # ProjectPublic's fields (the columns, `inferred` left to its database default of {}).
    out = _public(PROJECT_COLS, row)
    out["inferred"] = {}
    figures = out["investment_figures"] = None if row[19] is None else orjson.loads(row[19])
    out["total_investment_display"] = display(row[17])
    out["total_investment_range_display"] = range_display(figures)
    return out


def build() -> DataSet:
    rng = random.Random(SEED)
    rand = rng.random

    def randint(a: int, b: int) -> int:  # random.randint's range, a third of its cost
        return a + int(rand() * (b - a + 1))

    def choice(seq: Any) -> Any:
        return seq[int(rand() * len(seq))]

    ds = DataSet()
    seq = 0

    def tick() -> datetime:
        nonlocal seq
        seq += 1
        return event_time(seq)

    t = tick()
    ds.parks.append(
        (
            1,
            "bench-park",
            1,
            t,
            t,
            None,
            None,
            None,
            None,
            "枣庄高新区",
            "national",
            "山东省",
            "枣庄市",
            "全市高质量发展重要引擎、产城融合示范片区、中心城区发展高地",
        )
    )
    for i, (code, name, name_en, role) in enumerate(CHAINS, start=1):
        t = tick()
        ds.chains.append((i, None, 1, t, t, None, None, None, None, 1, code, name, name_en, role))
    for i in range(1, N_ENTERPRISES + 1):
        t = tick()
        name = f"{choice(PLACES)}{choice(TRADES)}{i:05d}{choice(FORMS)}"
        chain = randint(1, N_CHAINS) if rand() > 0.05 else None
        landed = randint(2005, 2026) if rand() > 0.15 else None
        ds.enterprises.append(
            (
                i,
                None,
                1,
                t,
                t,
                None,
                None,
                None,
                None,
                1,
                chain,
                name,
                None,
                rand() < 0.3,
                rand() < 0.4,
                rand() < 0.02,
                landed,
            )
        )

    # Projects first without their figures; investments decide them below.
    stage_names = [s for s, _ in STAGES]
    stage_cum = list(itertools.accumulate(w for _, w in STAGES))
    skeleton = []
    for i in range(1, N_PROJECTS + 1):
        t = tick()
        chain = randint(1, N_CHAINS) if rand() > 0.05 else None
        enterprise = randint(1, N_ENTERPRISES) if rand() > 0.2 else None
        stage = rng.choices(stage_names, cum_weights=stage_cum)[0]
        year = randint(2015, 2026) if rand() > 0.1 else None
        quote = choice(QUOTES) if rand() < 0.2 else None
        name = f"{choice(PLACES)}{choice(TRADES)}{choice(WORKS)}项目（{i}）"
        skeleton.append(
            [
                i,
                None,
                1,
                t,
                t,
                None,
                None,
                quote,
                None,
                1,
                chain,
                enterprise,
                f"BENCH-{i:06d}",
                name,
                stage,
                rand() < 0.1,
                year,
                None,
                False,
                None,
            ]
        )

    inv_id = 0
    per_project: dict[int, list[SimpleNamespace]] = {}
    kinds_more = ("annual_plan", "completed", "reported", "planned_total")
    for pid in range(1, N_PROJECTS + 1):
        count = rng.choices((0, 1, 2, 3), cum_weights=(15, 50, 85, 100))[0]
        recs = []
        base_amount = randint(1, 50_000) * 10_000  # 1 万元 .. 5 亿元
        for k in range(count):
            kind = (
                ("planned_total" if rand() < 0.6 else "reported") if k == 0 else choice(kinds_more)
            )
            if k == 0 or (kind in ("planned_total", "reported") and rand() < 0.5):
                cents = base_amount * 100  # the first claim, or one that agrees with it
            else:
                cents = randint(1, 50_000) * 1_000_000 + randint(0, 99)
            amount = Decimal(cents).scaleb(-2)
            as_of = date(2015, 1, 1) + timedelta(days=randint(0, 4000)) if rand() < 0.7 else None
            inv_id += 1
            recs.append(
                SimpleNamespace(
                    id=inv_id,
                    project_id=pid,
                    kind=kind,
                    amount=amount,
                    as_of_date=as_of,
                    source_id=None,
                )
            )
        per_project[pid] = recs

    for pid in range(1, N_PROJECTS + 1):
        for r in per_project[pid]:
            t = tick()
            ds.investments.append(
                (
                    r.id,
                    None,
                    1,
                    t,
                    t,
                    None,
                    None,
                    None,
                    None,
                    pid,
                    r.kind,
                    "CNY",
                    r.as_of_date,
                    r.amount,
                    skeleton[pid - 1][9],  # the project's park
                )
            )
        total, figures = derived(per_project[pid])  # type: ignore[arg-type]
        skeleton[pid - 1][17] = total
        skeleton[pid - 1][18] = figures is not None
        skeleton[pid - 1][19] = None if figures is None else orjson.dumps(figures).decode()

    # The rest of the feed: updates of random projects; each bumps that project's version.
    ds.first_update_seq = seq + 1
    n_updates = N_CHANGES - seq
    ds.update_ids = [randint(1, N_PROJECTS) for _ in range(n_updates)]
    for offset, pid in enumerate(ds.update_ids):
        row = skeleton[pid - 1]
        row[2] += 1
        row[4] = event_time(ds.first_update_seq + offset)
    ds.projects = [tuple(r) for r in skeleton]
    return ds


def iter_changes(ds: DataSet) -> Iterator[list[tuple[Any, ...]]]:
    """The 1,000,000 feed rows, in chunks, as (seq, resource, record_id, external_id, op, version,
    changed_at, actor, request_id, data-as-compact-JSON-text)."""
    chunk: list[tuple[Any, ...]] = []
    seq = 0

    def emit(
        resource: str, record_id: int, ext: str | None, op: str, version: int, data: dict[str, Any]
    ) -> None:
        nonlocal seq
        seq += 1
        chunk.append(
            (
                seq,
                resource,
                record_id,
                ext,
                op,
                version,
                event_time(seq),
                "bench",
                None,
                orjson.dumps(data, option=orjson.OPT_UTC_Z).decode(),
            )
        )

    for table, cols, rows in ds.tables():
        resource = {
            "park": "parks",
            "chain": "chains",
            "enterprise": "enterprises",
            "project": "projects",
            "investment": "investments",
        }[table]
        for row in rows:
            if table == "project":
                data = project_public(row)
                data["version"] = 1
                data["updated_at"] = data["created_at"]
            else:
                data = _public(cols, row)
                if table == "investment":
                    data["amount_display"] = display(row[INVESTMENT_COLS.index("amount")])
            emit(resource, row[0], row[1], "create", 1, data)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    versions = [1] * (N_PROJECTS + 1)
    public: dict[int, dict[str, Any]] = {}
    for pid in ds.update_ids:
        versions[pid] += 1
        base = public.get(pid)
        if base is None:
            base = public[pid] = project_public(ds.projects[pid - 1])
        data = dict(base)
        data["version"] = versions[pid]
        data["updated_at"] = event_time(seq + 1)
        emit("projects", pid, None, "update", versions[pid], data)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    assert seq == N_CHANGES, seq


# ---------------------------------------------------------------- loading


async def load_postgres(url: str, ds: DataSet) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")
        async with conn.transaction():
            for table, cols, rows in ds.tables():
                await conn.copy_records_to_table(table, records=rows, columns=list(cols))
            for chunk in iter_changes(ds):
                await conn.copy_records_to_table("change", records=chunk, columns=list(CHANGE_COLS))
            for table, col in (
                ("park", "id"),
                ("chain", "id"),
                ("enterprise", "id"),
                ("project", "id"),
                ("investment", "id"),
                ("change", "seq"),
            ):
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), "
                    f"(SELECT max({col}) FROM {table}))"
                )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def _sqlite_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in TIMES:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if name in MONEY:
        return int(value * 100)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def sqlite_rows(cols: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(_sqlite_value(c, v) for c, v in zip(cols, r, strict=True)) for r in rows]


def load_sqlite(path: str, ds: DataSet) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        for table, cols, rows in ds.tables():
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            db.executemany(sql, sqlite_rows(cols, rows))
        sql = f"INSERT INTO change ({', '.join(CHANGE_COLS)}) VALUES ({', '.join('?' * len(CHANGE_COLS))})"
        for chunk in iter_changes(ds):
            db.executemany(
                sql, [(*r[:6], _sqlite_value("changed_at", r[6]), *r[7:]) for r in chunk]
            )
        db.execute("COMMIT")
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
