"""The schema belongs to Alembic: upgrade → no drift → downgrade to base → upgrade, on both engines."""

import asyncio

from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from app import migrate
from app.config import Settings
from app.db import make_engine
from app.main import create_app
from app.models import metadata
from tests.conftest import DatabaseFactory
from tests.helpers import API

REGISTRY_TABLES = set(metadata.tables)


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
    return asyncio.run(_tables_and_revision(url))


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
            listed = client.get(f"{API}/parks", params={"limit": 1})
            assert listed.status_code in (200, 401), listed.text
    finally:
        db_factory.drop(url)


def test_every_revision_steps_down_and_up(db_factory: DatabaseFactory) -> None:
    """Each migration's downgrade undoes exactly its own upgrade, one step at a time."""
    url = db_factory.empty()
    try:
        migrate.upgrade(url)
        at_head = tables_and_revision(url)
        cfg = migrate.alembic_config(url)
        steps = 0
        while tables_and_revision(url)[1] is not None:
            command.downgrade(cfg, "-1")
            steps += 1
            assert steps < 100
        assert tables_and_revision(url)[0] <= {"alembic_version"}
        for _ in range(steps):
            command.upgrade(cfg, "+1")
        assert tables_and_revision(url) == at_head
        command.check(cfg)
    finally:
        db_factory.drop(url)
