"""Contract fuzzing: schemathesis against the app's own OpenAPI document, in-process over ASGI.

Every operation of `app.openapi()` is called with generated requests (the examples, coverage
and fuzzing phases: valid and invalid input alike) and every response goes through all of
schemathesis's default checks: no 5xx, documented status codes, content types, headers and
bodies, invalid input refused, valid input accepted, auth enforced, 405 with a full `Allow`.
Where a check conflicts with documented behaviour it is configured for that operation only,
with the reason, in `CHECKS`. Then the OpenAPI links: a stateful phase follows them at random
and the test asserts it followed every kind (read, history, update at the returned ETag,
delete at it, create a child under a parent) to a 2xx; and a walk through nothing but the
links takes a record of every resource from create to delete.

Requests are sent as the admin: a staff access token (a JWT), not an API token, because the
fuzzer revokes `/tokens/{id}` and deactivates `/users/{id}` with whatever ids it draws, and an
API token it revoked would turn every later answer into a 401.

The fuzzing phase draws `EXAMPLES` = 100 examples per operation on each engine (about 3 min
on PostgreSQL, 2.5 on SQLite, on 2 shared cores); the coverage phase (boundary values and one
violation per constraint, deterministic) and the stateful phase (`SCENARIOS`) run in full on
both. Each engine serves one database to the whole module: operations see each
other's records, as they would in production. Operations without inputs (`/healthz`,
`GET /users`, …) have a single distinct request, so Hypothesis stops there.
"""

import asyncio
import copy
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.python import asgi as schemathesis_asgi
from sqlalchemy import update
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.db import Database, make_engine
from app.main import create_app
from app.models.user import Role, User
from app.resources import ALL
from app.security import ALGORITHM
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import staff_claims

EXAMPLES = {"postgresql": 100, "sqlite": 100}
# The suite draws the same examples every run (a red CI is then a regression, reproducible by
# anyone); FUZZ_RANDOM=1 draws new ones, for exploring (what it finds becomes a fix and a test).
DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")
# Stateful: scenarios (sequences of linked calls), and the longest sequence.
SCENARIOS = {"postgresql": 100, "sqlite": 100}
STEPS = 8

DEFAULT_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
IF_MATCH = "412"
RULES = "422"
# Every check stays on for every operation, except where one conflicts with what the API
# documents; then that check is configured for that operation only, for the reason given.
#
# positive_data_acceptance says a request the schema allows must not be refused. The
# operations below document refusals that JSON Schema cannot express, so for them that check
# also accepts the documented status:
#  412 - `If-Match` names a version that is not current (stale, or a made-up tag);
#  422 - a rule beyond the schema, which the answer names field by field: a reference to a
#        record that does not exist (`park_id`, `source_id`, …), a credit code's GB 32100
#        check character, an amount not exact to the fen in its unit, a `cursor` this API did
#        not issue, a `sort` field not in the listed ones, a batch item or an imported row
#        that breaks any of these (reported with its index / row).
CHECKS: dict[str, dict[str, Any]] = {}


def _accept(operation_id: str, *statuses: str) -> None:
    CHECKS.setdefault(operation_id, {})["positive_data_acceptance"] = {
        "expected-statuses": DEFAULT_ACCEPTED + list(statuses)
    }


for _spec in ALL:
    _accept(f"create_{_spec.singular}", RULES)
    _accept(f"put_{_spec.singular}_by_external_id", IF_MATCH, RULES)
    _accept(f"update_{_spec.singular}", IF_MATCH, RULES)
    _accept(f"delete_{_spec.singular}", IF_MATCH)
    _accept(f"batch_{_spec.name}", RULES)
    _accept(f"list_{_spec.name}", RULES)
    # use_after_free says nothing answers 2xx about a deleted record; a record's history is
    # documented to stay readable after the delete (the audit trail outlives the record).
    CHECKS[f"get_{_spec.singular}_history"] = {"use_after_free": {"enabled": False}}
for _name in ("projects", "enterprises", "investments"):
    _accept(f"export_{_name}", RULES)
_accept("list_project_investments", RULES)
_accept("create_project_investment", RULES)  # as create_investment: an amount not exact to the fen
for _operation in ("create_user", "update_user", "create_token"):
    _accept(_operation, RULES)  # `park_ids` naming a park that does not exist
for _name in ("projects", "investments"):
    _accept(f"import_{_name}", RULES)
    # negative_data_rejection: in multipart/form-data every part is bytes, so a "number" where
    # the schema says a binary file reaches the server as a file whose bytes are that number's
    # text: a valid file, which the import reads and reports on row by row, as documented.
    CHECKS[f"import_{_name}"]["negative_data_rejection"] = {"enabled": False}


def _config(engine: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "max-examples": EXAMPLES[engine],
                # The admin's Authorization header is sent with every request; a generated
                # one would be overwritten, and a case meant to be invalid would become valid.
                "with-security-parameters": False,
            },
            "phases": {
                "stateful": {
                    "max-steps": STEPS,
                    # Only the links the document declares, so the test can tell they work.
                    "inference": {"algorithms": []},
                }
            },
            "operations": [
                {"include-operation-id": operation_id, "checks": checks}
                for operation_id, checks in CHECKS.items()
            ],
        }
    )


class Forward:
    """The ASGI app schemathesis is given: it forwards each request to the running test's app.
    The schema is built at import (pytest collects one test per operation from it), before any
    fixture has made the app; the app's own lifespan is run by the fixture."""

    def __init__(self) -> None:
        self.target: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.target is not None, "no app under test"
        await self.target(scope, receive, send)


FORWARD = Forward()


def _schema(engine: str) -> Any:
    document = create_app(Settings(database_url="sqlite://")).openapi()
    schema = schemathesis.openapi.from_dict(copy.deepcopy(document), config=_config(engine))
    schema.app = FORWARD
    return schema


POSTGRESQL = _schema("postgresql")
SQLITE = _schema("sqlite")
SCHEMAS = {"postgresql": POSTGRESQL, "sqlite": SQLITE}


@pytest.fixture(scope="module")
def admin(db_factory: DatabaseFactory) -> Iterator[dict[str, str]]:
    """One database and one app per engine for the module, served in-process; yields the
    admin's Authorization header."""
    url = db_factory.fresh()
    settings = Settings(database_url=url, registry_admin_password=ADMIN_PASSWORD)
    app = create_app(settings)
    # The app's lifespan (its engine and pool) must run on the event loop schemathesis sends
    # requests from; its client starts it there and keeps it until shutdown_lifespans().
    with schemathesis_asgi.get_client(app):
        pass
    FORWARD.target = app
    headers: dict[str, str] = {}
    HARNESS[db_factory.engine] = (settings, headers)
    _restore_admin(db_factory.engine)
    try:
        yield headers
    finally:
        _report(db_factory.engine)
        FORWARD.target = None
        schemathesis_asgi.shutdown_lifespans()
        db_factory.drop(url)


def _report(engine: str) -> None:
    per_operation: dict[str, Counter[str]] = {}
    for (sent_on, label, phase), count in SENT.items():
        if sent_on == engine:
            per_operation.setdefault(label, Counter())[phase] += count
    if per_operation:
        fuzzed = sorted(c["fuzzing"] for c in per_operation.values())
        total = sum(sum(c.values()) for c in per_operation.values())
        print(
            f"\n{engine}: {len(per_operation)} operations, {total} generated requests;"
            f" fuzzing examples per operation min {fuzzed[0]}, median {fuzzed[len(fuzzed) // 2]};"
            f" below {EXAMPLES[engine]}: "
            + ", ".join(
                f"{k} {dict(c)}"
                for k, c in per_operation.items()
                if c["fuzzing"] < EXAMPLES[engine]
            )
        )


# Requests sent, by engine, operation and phase; printed when the module's app shuts down.
SENT: Counter[tuple[str, str, str]] = Counter()


# The harness's own account, per engine: its settings and the headers every call sends.
HARNESS: dict[str, tuple[Settings, dict[str, str]]] = {}


def _restore_admin(engine: str) -> None:
    """The harness signs in as `admin`. A staff token lasts only while its account is active,
    an admin, and has the password it was issued under, and the fuzzed `PATCH /users/{id}`
    may change any of them, or confine it to some parks: put the account back and sign again."""
    settings, headers = HARNESS[engine]

    async def restore() -> None:
        db = Database(make_engine(settings.database_url, pool_size=1))
        try:
            async with db.writer() as session:
                await session.execute(
                    update(User)
                    .where(User.username == "admin")  # type: ignore[arg-type]
                    .values(is_active=True, role=Role.admin.value, park_ids=None)
                )
                await session.commit()
        finally:
            await db.dispose()

    asyncio.run(restore())
    now = datetime.now(UTC)
    claims = {
        "sub": "admin",
        **staff_claims(settings, "admin"),
        "role": Role.admin.value,
        "iat": now,
        "exp": now + timedelta(minutes=30),
        "typ": "access",
    }
    headers["Authorization"] = f"Bearer {jwt.encode(claims, settings.secret_key, ALGORITHM)}"


def _call(engine: str, case: schemathesis.Case, admin: dict[str, str]) -> None:
    SENT[engine, case.operation.label, case.meta.phase.name.value if case.meta else "?"] += 1
    try:
        case.call_and_validate(headers=dict(admin))  # a copy: schemathesis adds to it
    finally:
        if case.operation.label.startswith("PATCH /api/v1/users/"):
            _restore_admin(engine)


@pytest.mark.parametrize("db_factory", ["postgresql"], indirect=True)
@POSTGRESQL.parametrize()
@settings(suppress_health_check=[HealthCheck.too_slow], derandomize=DERANDOMIZE)
def test_operation_postgresql(case: schemathesis.Case, admin: dict[str, str]) -> None:
    _call("postgresql", case, admin)


@pytest.mark.parametrize("db_factory", ["sqlite"], indirect=True)
@SQLITE.parametrize()
@settings(suppress_health_check=[HealthCheck.too_slow], derandomize=DERANDOMIZE)
def test_operation_sqlite(case: schemathesis.Case, admin: dict[str, str]) -> None:
    _call("sqlite", case, admin)


@pytest.mark.parametrize("db_factory", ["postgresql", "sqlite"], indirect=True)
def test_linked_sequences(db_factory: DatabaseFactory, admin: dict[str, str]) -> None:
    """Scenarios that follow the document's links: create → read, history, update at the
    returned ETag, delete at it, and children created under a parent."""
    followed: Counter[str] = Counter()
    completed = 0

    class Workflows(SCHEMAS[db_factory.engine].as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": dict(admin)}

        def step(self, input: StepInput) -> StepOutput:
            output = super().step(input)
            link = input.transition
            if link is not None and input.is_applied and output.response.status_code < 300:
                # "POST /api/v1/parks -> [201] get_park -> GET /api/v1/parks/{id}"
                followed[link.id.split("] ")[1].split(" -> ")[0]] += 1
            return output

        def teardown(self) -> None:
            nonlocal completed
            completed += 1

    # The registry keeps what earlier scenarios wrote, so when Hypothesis replays a prefix to
    # vary it, the answers (and so which links can be followed) may differ from the first
    # time. It calls that a flaky strategy; like schemathesis's own runner, start afresh.
    for _ in range(10):
        if completed >= SCENARIOS[db_factory.engine]:
            break
        try:
            Workflows.run(
                settings=settings(
                    max_examples=SCENARIOS[db_factory.engine] - completed,
                    stateful_step_count=STEPS,
                    phases=[Phase.generate],
                    deadline=None,
                    derandomize=DERANDOMIZE,
                    suppress_health_check=list(HealthCheck),
                )
            )
        except FlakyStrategyDefinition:
            continue
        break
    print(
        f"\n{db_factory.engine}: {completed} scenarios; links followed to a 2xx: {dict(followed)}"
    )
    kinds = Counter(_kind(name) for name in followed)
    for kind in ("read", "history", "update", "delete", "create under"):
        assert kinds[kind], f"the stateful phase never followed a '{kind}' link to a 2xx"


def _kind(link: str) -> str:
    if link.endswith("_under_it"):
        return "create under"
    if link.endswith("_history"):
        return "history"
    return {"get": "read", "update": "update", "delete": "delete"}[link.split("_", 1)[0]]


def _resolve(expression: str, response: Any) -> Any:
    """A link's runtime expression, for the two forms the document uses."""
    if expression.startswith("$response.header."):
        return response.headers[expression.removeprefix("$response.header.")]
    if expression.startswith("$response.body#/"):
        value = response.json()
        for part in expression.removeprefix("$response.body#/").split("/"):
            value = value[part]
        return value
    raise AssertionError(f"unexpected link expression {expression}")


def test_links_lead_from_create_to_read_update_and_delete(admin: dict[str, str]) -> None:
    """Following nothing but the document's links (no URL built by hand), a record of every
    resource is created (under a parent where it needs one), read, its history read, updated
    at the ETag just returned, and deleted at the ETag the update returned. The stateful test
    shows that schemathesis follows the links; this one, that each leads where it should."""
    document = SQLITE.raw_schema
    operations = {
        op["operationId"]: (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    singular = {spec.name: spec.singular for spec in ALL}

    def links(operation_id: str, status: str) -> dict[str, Any]:
        return operations[operation_id][2]["responses"][status]["links"]  # type: ignore[no-any-return]

    def call(client: Any, operation_id: str, path: str, headers: dict[str, str], body: Any) -> Any:
        return client.request(operations[operation_id][0], path, json=body, headers=headers)

    def follow(client: Any, link: dict[str, Any], response: Any, body: Any = None) -> Any:
        path, headers = operations[link["operationId"]][1], dict(admin)
        for name, expression in link.get("parameters", {}).items():
            location, _, bare = name.rpartition(".")
            if location == "header":
                headers[bare] = _resolve(expression, response)
            else:
                path = path.replace("{" + bare + "}", str(_resolve(expression, response)))
        for field, expression in link.get("requestBody", {}).items():
            body = {**body, field: _resolve(expression, response)}
        return call(client, link["operationId"], path, headers, body)

    def create(client: Any, name: str, parents: dict[str, Any]) -> Any:
        """From the seed example (its references dropped, its names made unique, as the
        module's database already holds fuzzed records), at the root or under a parent."""
        operation_id = f"create_{singular[name]}"
        content = operations[operation_id][2]["requestBody"]["content"]["application/json"]
        body = {k: v for k, v in content["examples"]["seed"]["value"].items() if k[-3:] != "_id"}
        for key in ("name", "title", "code"):
            if isinstance(body.get(key), str):
                body[key] = f"{body[key]}-{uuid.uuid4().hex[:8]}"
        response = call(client, operation_id, operations[operation_id][1], dict(admin), body)
        for parent, parent_response in parents.items():
            if response.status_code == 201:
                break
            link = links(f"create_{singular[parent]}", "201").get(
                f"create_{singular[name]}_under_it"
            )
            if link is not None:
                response = follow(client, link, parent_response, body)
        return response if response.status_code == 201 else None

    with schemathesis_asgi.get_client(FORWARD) as client:
        parents: dict[str, Any] = {}
        for _ in ALL:  # parents before children, in as many rounds as it takes
            for spec in ALL:
                if spec.name not in parents and (made := create(client, spec.name, parents)):
                    parents[spec.name] = made
        assert set(parents) == set(singular), f"created only {list(parents)}"
        # A record of each resource, from create to delete before anything else touches it
        # (a child written under a project changes the project's ETag, as it should).
        for spec in ALL:
            created = create(client, spec.name, parents)
            out = links(f"create_{spec.singular}", "201")
            assert follow(client, out[f"get_{spec.singular}"], created).status_code == 200
            history = follow(client, out[f"get_{spec.singular}_history"], created)
            assert history.status_code == 200 and len(history.json()) == 1
            updated = follow(client, out[f"update_{spec.singular}"], created, {})
            assert updated.status_code == 200, updated.text
            again = links(f"update_{spec.singular}", "200")
            deleted = follow(client, again[f"delete_{spec.singular}"], updated)
            assert deleted.status_code == 204, deleted.text
            assert follow(client, again[f"get_{spec.singular}"], updated).status_code == 404


def test_a_time_outside_the_calendar_in_utc_is_refused(admin: dict[str, str]) -> None:
    with schemathesis_asgi.get_client(FORWARD) as client:
        response = client.get(
            "/api/v1/parks",
            params={"updated_after": "0001-01-01T00:00:00+00:04"},
            headers=dict(admin),
        )
    assert response.status_code == 422


def test_the_document_uses_only_json_schema_keywords() -> None:
    """schemathesis (and any client generator) ignores a keyword JSON Schema does not define,
    so a bound written as pydantic's `ge`/`le` is no bound at all."""
    document = create_app(Settings(database_url="sqlite://")).openapi()
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("ge", "le", "gt", "lt") and not isinstance(value, dict):
                    found.append(f"{path}/{key}")
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(document, "#")
    assert not found, "\n".join(found)
