"""Alembic, driven from code: the schema belongs to the migrations, never to `create_all`."""

import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import PROJECT_DIR, get_settings


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config(str(PROJECT_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(Path(PROJECT_DIR) / "migrations"))
    cfg.set_main_option(
        "sqlalchemy.url", (database_url or get_settings().database_url).replace("%", "%%")
    )
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def cli(revision: str, database_url: str | None = None) -> int:
    """`python -m app migrate [REVISION]`: upgrades to the revision; says so, rather than doing
    nothing or printing a traceback, when the revision is unknown or already behind."""
    cfg = alembic_config(database_url)
    script = ScriptDirectory.from_config(cfg)
    try:
        target = script.get_revision(revision)
    except CommandError as exc:
        print(f"error: unknown revision {revision!r}: {exc}", file=sys.stderr)
        return 2
    current: list[str | None] = []

    def read(rev: Any, context: Any) -> list[Any]:
        current.append(context.get_current_revision())
        return []

    with EnvironmentContext(cfg, script, fn=read):
        script.run_env()
    at = current[0] if current else None
    if target is not None and at is not None and at != target.revision:
        newer = {r.revision for r in script.iterate_revisions(at, "base")}
        if target.revision in newer:
            print(
                f"the schema is at {at}, already past {target.revision}: migrate only upgrades "
                f"(to go back: alembic downgrade {target.revision})",
                file=sys.stderr,
            )
            return 1
    command.upgrade(cfg, revision)
    return 0


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision; None when it was never migrated. Any other failure (the
    database gone or unreachable) raises: it is not "not migrated"."""
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version")):
            return None
        revision: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return revision
