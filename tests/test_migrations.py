"""The schema belongs to Alembic: upgrade → no drift → downgrade to base → upgrade, on both engines."""

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from app import migrate
from app.config import Settings
from app.db import make_engine
from app.main import create_app
from app.models import metadata
from tests.conftest import DatabaseFactory
from tests.helpers import API, tables_and_revision

REGISTRY_TABLES = set(metadata.tables)


def test_upgrade_check_downgrade_upgrade(db_factory: DatabaseFactory) -> None:
    url = db_factory.empty()
    try:
        assert tables_and_revision(url) == (set(), None)
        head = migrate.head_revision()
        assert head

        migrate.upgrade(url)
        tables, revision = tables_and_revision(url)
        assert tables >= REGISTRY_TABLES, REGISTRY_TABLES - tables
        assert revision == head
        # `alembic check` raises if the models and the migrations disagree in any way.
        command.check(migrate.alembic_config(url))

        migrate.downgrade(url, "base")
        tables, revision = tables_and_revision(url)
        assert tables & REGISTRY_TABLES == set(), tables & REGISTRY_TABLES
        assert tables <= {"alembic_version"}, tables
        assert revision is None

        migrate.upgrade(url)
        tables, revision = tables_and_revision(url)
        assert tables >= REGISTRY_TABLES and revision == head
        command.check(migrate.alembic_config(url))

        # The re-created schema is one the application can use and is ready on.
        settings = Settings(database_url=url, registry_admin_password="admin-password-for-tests")
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["schema"] == head
            anonymous = client.get(f"{API}/parks", params={"limit": 1})
            assert anonymous.status_code == 401, anonymous.text  # no credentials, no reads
            login = client.post(
                f"{API}/auth/token",
                data={"username": "admin", "password": "admin-password-for-tests"},
            )
            assert login.status_code == 200, login.text
            token = {"Authorization": f"Bearer {login.json()['access_token']}"}
            listed = client.get(f"{API}/parks", params={"limit": 1}, headers=token)
            assert listed.status_code == 200, listed.text
            assert listed.json()["items"] == []
            made = client.post(
                f"{API}/parks", json={"name": "园区", "level": "other"}, headers=token
            )
            assert made.status_code == 201, made.text
    finally:
        db_factory.drop(url)


def _schema_of(conn: Any) -> dict[str, Any]:
    """Everything SQLAlchemy's inspector reads of the schema, table by table: each column's
    type, nullability, default and identity, the primary key, indexes, unique, foreign-key and
    check constraints (and PostgreSQL's enum types). The bookkeeping table `alembic_version`
    is left out: it exists at base only once a migration has run."""
    insp = inspect(conn)
    dialect = conn.dialect

    def listed(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(items, key=repr)

    columns = insp.get_multi_columns()
    keys = insp.get_multi_pk_constraint()
    indexes = insp.get_multi_indexes()
    uniques = insp.get_multi_unique_constraints()
    foreign = insp.get_multi_foreign_keys()
    checks = insp.get_multi_check_constraints()
    schema: dict[str, Any] = {}
    for key in columns:
        if key[1] == "alembic_version":
            continue
        schema[key[1]] = {
            "columns": {
                c["name"]: {
                    "type": c["type"].compile(dialect=dialect),
                    "nullable": c["nullable"],
                    "default": c.get("default"),
                    "autoincrement": c.get("autoincrement"),
                    "identity": c.get("identity"),
                    "computed": c.get("computed"),
                }
                for c in columns[key]
            },
            "primary_key": keys.get(key),
            "indexes": listed(indexes.get(key, [])),
            "unique": listed(uniques.get(key, [])),
            "foreign_keys": listed(foreign.get(key, [])),
            "checks": listed(checks.get(key, [])),
        }
    if hasattr(insp, "get_enums"):  # PostgreSQL's own types outlive the tables that used them
        schema["(enum types)"] = listed(insp.get_enums())
    return schema


async def _schema(url: str) -> dict[str, Any]:
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            return dict(await conn.run_sync(_schema_of))
    finally:
        await engine.dispose()


def schema(url: str) -> dict[str, Any]:
    return asyncio.run(_schema(url))


def schema_differences(expected: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Per table and part, what differs: (expected, got)."""
    differences: dict[str, Any] = {}
    for table in sorted(set(expected) | set(got)):
        want, have = expected.get(table), got.get(table)
        if want == have:
            continue
        if not isinstance(want, dict) or not isinstance(have, dict):
            differences[table] = (want, have)
            continue
        differences[table] = {
            part: _part_differences(want.get(part), have.get(part))
            for part in sorted(set(want) | set(have))
            if want.get(part) != have.get(part)
        }
    return differences


def _part_differences(want: Any, have: Any) -> Any:
    """A list of indexes or constraints as what is missing and what is extra; columns by name."""
    if isinstance(want, list) and isinstance(have, list):
        return {
            "missing": [item for item in want if item not in have],
            "extra": [item for item in have if item not in want],
        }
    if isinstance(want, dict) and isinstance(have, dict) and part_is_columns(want, have):
        return {
            name: (want.get(name), have.get(name))
            for name in sorted(set(want) | set(have))
            if want.get(name) != have.get(name)
        }
    return (want, have)


def part_is_columns(want: dict[str, Any], have: dict[str, Any]) -> bool:
    return all(isinstance(v, dict) and "nullable" in v for v in (*want.values(), *have.values()))


def _below(script: ScriptDirectory, revision: str) -> str | None:
    """The revision a step down from `revision` lands on (the history is one line)."""
    found = script.get_revision(revision)
    assert found is not None and not isinstance(found.down_revision, (list, tuple))
    return found.down_revision


def test_every_revision_steps_down_and_up(db_factory: DatabaseFactory) -> None:
    """Each migration's downgrade undoes exactly its own upgrade, one step at a time: after
    each step down the whole schema is the one recorded after the step up to that revision."""
    url = db_factory.empty()
    try:
        cfg = migrate.alembic_config(url)
        script = ScriptDirectory.from_config(cfg)
        revisions = [r.revision for r in reversed(list(script.walk_revisions()))]  # base first
        assert revisions[-1] == migrate.head_revision() and len(revisions) < 100
        after: dict[str | None, dict[str, Any]] = {None: schema(url)}
        assert after[None] == {} or set(after[None]) == {"(enum types)"}, after[None]
        for revision in revisions:
            command.upgrade(cfg, revision)
            assert tables_and_revision(url)[1] == revision
            after[revision] = schema(url)
            assert after[revision] != after[_below(script, revision)], (
                f"upgrade to {revision} changed nothing in the schema"
            )
        assert set(after[revisions[-1]]) >= REGISTRY_TABLES
        for revision in reversed(revisions):
            below = _below(script, revision)
            command.downgrade(cfg, "-1")
            assert tables_and_revision(url)[1] == below
            differences = schema_differences(after[below], schema(url))
            assert not differences, (
                f"the downgrade of {revision} does not leave the schema of {below}: {differences}"
            )
        command.upgrade(cfg, "head")
        differences = schema_differences(after[revisions[-1]], schema(url))
        assert not differences, f"head again differs from head the first time: {differences}"
        command.check(cfg)
    finally:
        db_factory.drop(url)


BEFORE_UNKNOWN = "ba0c6c2d3e6f"  # the last revision where yes/no facts could not be unknown


async def _load_before_unknown(url: str) -> dict[str, int]:
    """At BEFORE_UNKNOWN: the seeded enterprise and projects as the seed wrote them (false where
    the article is silent), one of them corrected by staff, a staff enterprise with `false`, and
    the seeded 30/20亿元 conflict."""
    from app.models.change import Change
    from app.models.enterprise import Enterprise
    from app.models.investment import Investment
    from app.models.park import Park
    from app.models.project import Project

    engine = make_engine(url, pool_size=1, max_overflow=0)
    now = datetime(2026, 3, 26, tzinfo=UTC)
    times = {"version": 1, "created_at": now, "updated_at": now}
    ids: dict[str, int] = {}

    def old(table: Any, names: Any) -> Any:
        """Only these columns of the table (with their types, without the models' defaults,
        which name columns this revision does not have yet)."""
        names = {*names, *(["id"] if "id" in table.c else [])}
        return sa.table(table.name, *(sa.column(n, table.c[n].type) for n in names))

    async def insert(conn: Any, table: Any, **values: Any) -> int:
        table = old(table, values)
        return int(
            (await conn.execute(table.insert().values(**values).returning(table.c.id))).scalar()
        )

    async def log(
        conn: Any, resource: str, record_id: int, actor: str, data: dict[str, Any]
    ) -> None:
        values = {
            "resource": resource,
            "record_id": record_id,
            "external_id": data.get("external_id"),
            "op": "create",
            "version": 1,
            "changed_at": now,
            "actor": actor,
            "park_id": data["park_id"],
            "data": data,
        }
        table = old(Change.__table__, values)  # type: ignore[attr-defined]
        await conn.execute(table.insert().values(**values))

    try:
        async with engine.begin() as conn:
            park = await insert(conn, Park.__table__, name="枣庄高新区", level="national", **times)
            flags = {"is_high_tech": False, "is_above_scale": False, "is_leading": False}
            for key, actor in (("jiaoda-zhibang-zaozhuang", "seed"), ("staff-enterprise", "admin")):
                values = {"park_id": park, "name": key, "external_id": key, **flags}
                ids[key] = await insert(conn, Enterprise.__table__, **values, **times)
                await log(
                    conn, "enterprises", ids[key], actor, {**values, "id": ids[key], "version": 1}
                )
            for key in ("lunan-big-data-center", "jiaoda-zhibang-smart-factory"):
                values = {
                    "park_id": park,
                    "name": key,
                    "external_id": key,
                    "stage": "operating",
                    "is_key": False,
                }
                ids[key] = await insert(
                    conn,
                    Project.__table__,
                    **values,
                    **times,
                    investment_conflict=key == "lunan-big-data-center",
                    total_investment=Decimal("3000000000.00")
                    if key == "lunan-big-data-center"
                    else None,
                )
                await log(
                    conn, "projects", ids[key], "seed", {**values, "id": ids[key], "version": 1}
                )
            # Staff looked at the smart factory and confirmed: not a key project.
            await log(
                conn,
                "projects",
                ids["jiaoda-zhibang-smart-factory"],
                "admin",
                {"park_id": park, "is_key": False},
            )
            for amount, kind in (("3000000000.00", "planned_total"), ("2000000000.00", "reported")):
                ids[kind] = await insert(
                    conn,
                    Investment.__table__,
                    project_id=ids["lunan-big-data-center"],
                    kind=kind,
                    amount=Decimal(amount),
                    currency="CNY",
                    park_id=park,
                    **times,
                )
    finally:
        await engine.dispose()
    return ids


async def _rows(url: str, sql: str) -> list[Any]:
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).mappings().all())
    finally:
        await engine.dispose()


def test_unknown_facts_become_null_only_where_the_seed_wrote_them(
    db_factory: DatabaseFactory,
) -> None:
    url = db_factory.empty()
    try:
        migrate.upgrade(url, BEFORE_UNKNOWN)
        ids = asyncio.run(_load_before_unknown(url))
        migrate.upgrade(url)
        settings = Settings(database_url=url, registry_admin_password="admin-password-for-tests")
        with TestClient(create_app(settings)) as client:
            token = client.post(
                f"{API}/auth/token",
                data={"username": "admin", "password": "admin-password-for-tests"},
            ).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"

            def get(resource: str, key: str) -> dict[str, Any]:
                answer = client.get(f"{API}/{resource}/{ids[key]}")
                assert answer.status_code == 200, answer.text
                return dict(answer.json())

            seeded = get("enterprises", "jiaoda-zhibang-zaozhuang")
            assert [seeded[f] for f in ("is_high_tech", "is_above_scale", "is_leading")] == [
                None
            ] * 3
            assert seeded["version"] == 2 and seeded["inferred"] == {}
            staff = get("enterprises", "staff-enterprise")  # what staff entered stays
            assert [staff[f] for f in ("is_high_tech", "is_above_scale", "is_leading")] == [
                False
            ] * 3
            assert staff["version"] == 1
            assert (
                get("projects", "jiaoda-zhibang-smart-factory")["is_key"] is False
            )  # staff said no
            lunan = get("projects", "lunan-big-data-center")
            assert lunan["is_key"] is None
            assert [(f["investment_id"], f["headline"]) for f in lunan["investment_figures"]] == [
                (ids["planned_total"], True),
                (ids["reported"], False),
            ]
            assert lunan["total_investment_range_display"] == "20亿元–30亿元，2条记录不一致"
            # Each correction is a change a follower of the feed sees, with what the API shows.
            feed = client.get(f"{API}/changes", params={"limit": 100}).json()["items"]
            by_migration = {(c["resource"], c["id"]): c for c in feed if c["actor"] == "migration"}
            assert set(by_migration) == {
                ("enterprises", ids["jiaoda-zhibang-zaozhuang"]),
                ("projects", ids["lunan-big-data-center"]),
            }
            entry = by_migration[("projects", ids["lunan-big-data-center"])]
            assert entry["version"] == 2
            for field in (
                "is_key",
                "investment_figures",
                "total_investment_range_display",
                "version",
            ):
                assert entry["data"][field] == lunan[field], field
        # Down again: unknown reads as the old schema's false; up again changes nothing more.
        migrate.downgrade(url, BEFORE_UNKNOWN)
        rows = asyncio.run(_rows(url, "SELECT is_high_tech FROM enterprise ORDER BY id"))
        assert [bool(r["is_high_tech"]) for r in rows] == [False, False]
        migrate.upgrade(url)
        rows = asyncio.run(_rows(url, "SELECT is_high_tech FROM enterprise ORDER BY id"))
        assert [r["is_high_tech"] for r in rows] == [None, False]
    finally:
        db_factory.drop(url)
