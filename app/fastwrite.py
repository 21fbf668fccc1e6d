"""Creates and partial updates (`POST /api/v1/{resource}`, `PATCH /api/v1/{resource}/{id}`) on
PostgreSQL without FastAPI's routing and dependency solving, on one pooled connection per write
instead of two, with the transaction run on the asyncpg connection itself.

The bench (issue 6) profiled a create at ~2.5× the reference's CPU: FastAPI's routing and
dependency solving were about a fifth of it, SQLAlchemy's execution of BEGIN, the parent check,
the INSERT, the change-log row and COMMIT about two fifths, and the service-token check took a
pooled connection of its own before the write took another, so under load every write queued
for the pool twice (most of its p99). This layer runs the write exactly as the routes do — the
same body model and JSON parsing (numbers as Decimal), the same credential check and role, the
same `records.create` / `records.update` with their hooks, version checks and change-log row,
the same response (`crud.json_response`) — in a `Database.driven_session`: the token is checked
on the write's own connection before its transaction begins, BEGIN and COMMIT go straight to the
driver, and so do the statements `records` and `changes` build once (`db.execute_core`).

It answers only a write that succeeded. Anything else — a body that does not validate, a
rejected credential, a missing record, a stale `If-Match`, a conflict — was refused before
COMMIT and rolled back, so nothing was written: the request goes, body and all, to the full
application, which answers it (problem+json and all) exactly as it always has. An unexpected
error is answered as the application answers one (`errors._on_unexpected`: 503 while the
database is away, else 500), and not retried: a COMMIT that failed half way may have landed.
On SQLite, or with `FAST_WRITES=0`, every request goes to the application.
`tests/test_fastwrite.py` checks that both paths answer and store the same.
"""

from decimal import Decimal
from json import loads
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import context, errors
from app.api.crud import json_response
from app.api.deps import etags, principal_from
from app.db import DRIVER
from app.errors import AppError
from app.fastpath import single_headers
from app.models.common import MAX_ID
from app.models.user import Role
from app.resources import BY_NAME
from app.services import records


class Delegate(Exception):
    """This request is not one the fast path answers: the full application does."""


class FastWrites:
    """ASGI middleware: answers POST /api/v1/{resource} and PATCH /api/v1/{resource}/{id} on
    PostgreSQL when they succeed, and hands everything else to the application behind it."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/") + "/"
        self.answered = 0  # requests answered here rather than by the application (tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if (
            scope["type"] != "http"
            or method not in ("POST", "PATCH")
            or not scope["path"].startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        db = getattr(app.state, "db", None)
        target = _target(scope, self.prefix, method)
        headers = _headers(scope)
        if (
            db is None
            or db.is_sqlite
            or not app.state.settings.fast_writes
            or scope.get("root_path")
            or target is None
            or headers is None
        ):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        try:
            body = await _body(receive, read)
            response = await self._write(scope, app, db, target, headers, body)
        except Delegate:
            await self.app(scope, _replay(read, receive), send)
            return
        except Exception as exc:  # as `errors.CatchAll` answers what the application raises
            response = await errors._on_unexpected(Request(scope), exc)
            await response(scope, receive, send)
            return
        await response(scope, receive, send)
        self.answered += 1

    async def _write(
        self,
        scope: Scope,
        app: Any,
        db: Any,
        target: tuple[Any, int | None],
        headers: dict[bytes, bytes],
        body: bytes,
    ) -> Any:
        spec, record_id = target
        try:
            # `deps.DecimalJSONRequest`, then the route's body model, as FastAPI validates it.
            model = spec.create if record_id is None else spec.update
            data = model.__pydantic_validator__.validate_python(
                loads(body, parse_float=Decimal), from_attributes=True
            )
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            raise Delegate from exc
        authorization = headers.get(b"authorization")
        async with db.driven_session() as session:
            try:
                # On the write's own connection, before its transaction begins.
                principal = await principal_from(
                    app,
                    None if authorization is None else authorization.decode("latin-1"),
                    session.info[DRIVER],
                )
            except AppError as exc:
                raise Delegate from exc  # the full path answers the 401
            if principal is None or not principal.allows(Role.editor):
                raise Delegate  # 401 / 403
            context.actor.set(principal.name)
            try:
                async with db.driven_transaction(session):
                    if record_id is None:
                        record = await records.create(session, spec, data)
                    else:
                        if_match = headers.get(b"if-match")
                        tags = etags(None if if_match is None else if_match.decode("latin-1"))
                        record = await records.update(session, spec, record_id, data, tags)
            except AppError as exc:
                # Raised before COMMIT, or by a conflict that rolled the transaction back:
                # nothing was written, and the full path answers it.
                raise Delegate from exc
        if record_id is None:
            location = f"{self.prefix}{spec.name}/{record.id}"
            return json_response(spec, record, 201, {"Location": location})
        return json_response(spec, record)


def _target(scope: Scope, prefix: str, method: str) -> tuple[Any, int | None] | None:
    """(resource, id) for `POST {prefix}{resource}` and `PATCH {prefix}{resource}/{id}`."""
    rest = scope["path"][len(prefix) :].split("/")
    spec = BY_NAME.get(rest[0])
    if spec is None:
        return None
    if method == "POST":
        return (spec, None) if len(rest) == 1 else None
    if len(rest) != 2 or not (rest[1].isascii() and rest[1].isdigit()):
        return None
    record_id = int(rest[1])
    return (spec, record_id) if 1 <= record_id <= MAX_ID else None


def _headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The headers, if none is repeated and the body is declared JSON of a known length."""
    headers = single_headers(scope)
    if headers is None:
        return None
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if kind != b"application/json" or not headers.get(b"content-length", b"").isdigit():
        return None
    return headers


async def _body(receive: Receive, read: list[Message]) -> bytes:
    """The request body, keeping each message received in `read` so that a delegated request
    can be replayed to the application as it arrived."""
    chunks = []
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            raise Delegate  # the client went away: the application sees it too
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(read: list[Message], receive: Receive) -> Receive:
    pending = list(read)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again
