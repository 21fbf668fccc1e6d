"""Every test runs against a real database migrated to head, on SQLite and on PostgreSQL.

Each test gets a fresh database: a copy of a migrated SQLite file, or a PostgreSQL database
created from a migrated template. PostgreSQL is skipped only where no server answers, and
REQUIRE_POSTGRES=1 (set by .ci/run) turns that skip into a failure.
"""

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app import migrate
from app.config import Settings
from app.db import Database, make_engine
from app.main import create_app
from app.models.user import Role, Scope, TokenCreate, UserCreate
from app.services import user as user_service
from tests.helpers import same_app

ADMIN_PASSWORD = "admin-password-for-tests"
# Accounts in the template, so every fresh database has them without hashing anew.
USERS = {"viewer": Role.viewer, "editor": Role.editor}
TOKENS = {"admin": [Scope.admin], "read": [Scope.read], "write": [Scope.write]}
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ENGINES = ["sqlite", "postgresql"]


def _pg_dsn(database: str | None = None) -> str:
    url = make_url(PG_ADMIN_URL)
    if database:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def _pg_exec(*statements: str) -> None:
    conn = await asyncpg.connect(_pg_dsn(), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def pg_exec(*statements: str) -> None:
    asyncio.run(_pg_exec(*statements))


def _pg_available() -> str | None:
    try:
        pg_exec("SELECT 1")
        return None
    except Exception as exc:  # any failure to connect means "no server here"
        return f"{type(exc).__name__}: {exc}"


async def _bootstrap(url: str) -> dict[str, str]:
    db = Database(make_engine(url, pool_size=1, max_overflow=0))
    tokens: dict[str, str] = {}
    try:
        await user_service.ensure_admin(
            db, Settings(database_url=url, registry_admin_password=ADMIN_PASSWORD)
        )
        for name, role in USERS.items():
            await user_service.create_user(
                db, UserCreate(username=name, password=f"{name}-password", role=role)
            )
        async with db.writer() as session:
            for name, scopes in TOKENS.items():
                _, tokens[name] = await user_service.create_token(
                    session, TokenCreate(name=f"test-{name}", scopes=scopes), "tests"
                )
    finally:
        await db.dispose()
    return tokens


class DatabaseFactory:
    """Fresh databases of one engine, each a copy of one migrated template."""

    def __init__(self, engine: str, workdir: Path) -> None:
        self.engine = engine
        self.workdir = workdir
        self.prefix = f"registry_test_{os.getpid()}"
        self.created: list[str] = []
        self.tokens: dict[str, str] = {}
        self.template = self._make_template()

    def _make_template(self) -> str:
        if self.engine == "sqlite":
            path = self.workdir / "template.db"
            migrate.upgrade(f"sqlite:///{path}")
            self.tokens = asyncio.run(_bootstrap(f"sqlite:///{path}"))
            return str(path)
        name = f"{self.prefix}_tpl"
        pg_exec(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        self.created.append(name)
        migrate.upgrade(_pg_dsn(name))
        self.tokens = asyncio.run(_bootstrap(_pg_dsn(name)))
        return name

    def empty(self) -> str:
        """A database with no schema at all (for migration tests)."""
        name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        if self.engine == "sqlite":
            return f"sqlite:///{self.workdir / (name + '.db')}"
        pg_exec(f"CREATE DATABASE {name}")
        self.created.append(name)
        return _pg_dsn(name)

    def fresh(self) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        if self.engine == "sqlite":
            path = self.workdir / f"{name}.db"
            shutil.copyfile(self.template, path)
            return f"sqlite:///{path}"
        pg_exec(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        self.created.append(name)
        return _pg_dsn(name)

    def drop(self, url: str) -> None:
        if self.engine == "postgresql":
            name = make_url(url).database
            pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            if name in self.created:
                self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session", params=ENGINES)
def db_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseFactory]:
    engine: str = request.param
    if engine == "postgresql":
        reason = _pg_available()
        if reason is not None:
            if os.environ.get("REQUIRE_POSTGRES") == "1":
                pytest.fail(
                    f"PostgreSQL is required (REQUIRE_POSTGRES=1) but unreachable: {reason}"
                )
            pytest.skip(f"no PostgreSQL server reachable at {PG_ADMIN_URL}: {reason}")
    factory = DatabaseFactory(engine, tmp_path_factory.mktemp(engine))
    yield factory
    factory.close()


@pytest.fixture
def database_url(db_factory: DatabaseFactory) -> Iterator[str]:
    url = db_factory.fresh()
    yield url
    db_factory.drop(url)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        cors_origins=["http://front.example"],
        registry_admin_password=ADMIN_PASSWORD,
    )


@pytest.fixture
def tokens(db_factory: DatabaseFactory) -> dict[str, str]:
    return db_factory.tokens


@pytest.fixture
def anon(settings: Settings) -> Iterator[TestClient]:
    """A client that has not logged in. It runs the test's app: its lifespan, on its own event
    loop (Starlette's portal thread), where the app's database pools live."""
    with TestClient(create_app(settings), base_url="http://testserver") as test_client:
        yield test_client


@pytest.fixture
def client(anon: TestClient, tokens: dict[str, str]) -> Iterator[TestClient]:
    """A client holding the admin's service token (writes are recorded as token:test-admin).

    Not `anon`: a test may hold both, and changing one's headers leaves the other as it was."""
    with same_app(anon, {"Authorization": f"Bearer {tokens['admin']}"}) as admin:
        yield admin
