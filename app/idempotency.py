"""`Idempotency-Key` on POST: the same key and body replay the first response; another body
with the same key is refused (422); a repeat while the first is still running gets 409.
Keys are scoped to the caller and kept for at least 24 hours (purged after 48)."""

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import Database
from app.db_types import utcnow
from app.errors import PROBLEM_JSON, AppError
from app.models.idempotency import IdempotencyKey

KEEP = timedelta(hours=48)
# A key left "in progress" this long belongs to a request that died with its process.
ABANDONED = timedelta(minutes=2)
REPLAYED_HEADERS = {b"content-type", b"location", b"etag"}


def _problem(
    status: int, title: str, detail: str, path: str, extra: list[tuple[bytes, bytes]] | None = None
) -> list[Message]:
    slug = title.lower().replace(" ", "-")
    body = json.dumps(
        {
            "type": f"/problems/{slug}",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": path,
        },
        ensure_ascii=False,
    ).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


def _fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    try:  # the same JSON, however it is spaced or ordered, is the same request
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(
        b"\n".join([method.encode(), path.encode(), query, canonical])
    ).hexdigest()


class Idempotency:
    def __init__(self, app: ASGIApp, resolve_caller: Any) -> None:
        self.app = app
        self.resolve_caller = resolve_caller  # (app, headers) -> caller name, or None if unknown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode("latin-1").strip()
        if not key:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(key) > 200:
            for m in _problem(
                422, "Validation error", "Idempotency-Key is longer than 200 characters", path
            ):
                await send(m)
            return
        try:
            caller = await self.resolve_caller(scope["app"], scope["headers"])
        except AppError:
            await self.app(scope, receive, send)  # not authenticated: the app answers 401
            return
        chunks = []
        try:
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except HTTPException as exc:
            for m in _problem(exc.status_code, "Content too large", str(exc.detail), path):
                await send(m)
            return
        body = b"".join(chunks)
        fingerprint = _fingerprint("POST", path, scope.get("query_string", b""), body)
        db: Database = scope["app"].state.db
        claimed = await self._claim(db, caller or "anonymous", key, path, fingerprint)
        if isinstance(claimed, list):
            for m in claimed:
                await send(m)
            return

        replay_sent = False

        async def replay_receive() -> Message:
            nonlocal replay_sent
            if not replay_sent:
                replay_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured: dict[str, Any] = {"body": []}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await self._release(db, claimed)
            raise
        if captured.get("status", 500) >= 500:
            await self._release(db, claimed)  # let the client retry a failure of ours
            return
        await self._store(db, claimed, captured)

    async def _claim(
        self, db: Database, caller: str, key: str, path: str, fingerprint: str
    ) -> int | list[Message]:
        now = utcnow()
        async with db.writer() as session:
            row = IdempotencyKey(
                scope=caller,
                key=key,
                method="POST",
                path=path,
                request_hash=fingerprint,
                created_at=now,
            )
            session.add(row)
            try:
                await session.execute(
                    delete(IdempotencyKey).where(IdempotencyKey.created_at < now - KEEP)
                )
                await session.commit()
                assert row.id is not None
                return row.id
            except IntegrityError:
                await session.rollback()
        async with db.writer() as session:
            stmt = select(IdempotencyKey).where(
                IdempotencyKey.scope == caller, IdempotencyKey.key == key
            )
            found = (await session.execute(stmt.with_for_update())).scalar_one_or_none()
            if found is None:  # purged between the two statements: treat as new
                return await self._claim(db, caller, key, path, fingerprint)
            if found.request_hash != fingerprint:
                return _problem(
                    422,
                    "Validation error",
                    "this Idempotency-Key was used with a different request; use a new key",
                    path,
                )
            if found.done and found.response_status is not None:
                headers = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in found.response_headers or []
                ]
                headers.append((b"idempotent-replayed", b"true"))
                return [
                    {
                        "type": "http.response.start",
                        "status": found.response_status,
                        "headers": headers,
                    },
                    {"type": "http.response.body", "body": found.response_body or b""},
                ]
            if now - found.created_at < ABANDONED:
                return _problem(
                    409,
                    "Conflict",
                    "a request with this Idempotency-Key is still in progress",
                    path,
                    [(b"retry-after", b"1")],
                )
            found.created_at = now  # the first attempt died; this one takes the key over
            await session.commit()
            assert found.id is not None
            return found.id

    async def _store(self, db: Database, row_id: int, captured: dict[str, Any]) -> None:
        headers = [
            [k.decode("latin-1"), v.decode("latin-1")]
            for k, v in captured["headers"]
            if k.lower() in REPLAYED_HEADERS
        ]
        async with db.writer() as session:
            row = await session.get(IdempotencyKey, row_id)
            if row is not None:
                row.done = True
                row.response_status = captured["status"]
                row.response_headers = headers
                row.response_body = b"".join(captured["body"])
                await session.commit()

    async def _release(self, db: Database, row_id: int) -> None:
        async with db.writer() as session:
            await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row_id))
            await session.commit()
