"""`Idempotency-Key` on POST: the same key and body replay the first response; another body
with the same key is refused (422); a repeat while the first is still running gets 409.
Keys are scoped to the caller and kept for at least 24 hours (purged after 48).

Nothing kept is a secret: the request is kept as a keyed digest (a password in a body cannot be
guessed from it without SECRET_KEY), answers holding a secret are never kept (NEVER_REPLAYED),
and an answer larger than IDEMPOTENCY_MAX_STORED_BYTES is remembered as done without its body:
a repeat learns that it was done (409), and is not carried out twice."""

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import deps
from app.config import Settings
from app.db import Database
from app.db_types import utcnow
from app.errors import AppError, problem_response
from app.models.idempotency import IdempotencyKey

KEEP = timedelta(hours=48)
# A key left "in progress" this long belongs to a request that died with its process.
ABANDONED = timedelta(minutes=2)
REPLAYED_HEADERS = {b"content-type", b"location", b"etag"}
# Answers that hold a secret, or that must count every attempt: a key is ignored there (a
# replayed login would let guesses bypass the failure count, and keep a JWT at rest).
NEVER_REPLAYED = {"/api/v1/auth/token", "/api/v1/tokens"}


def _problem(
    scope: Scope, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    slug = title.lower().replace(" ", "-")
    return problem_response(Request(scope), status, slug, title, detail, headers=headers)


def _fingerprint(secret: str, method: str, path: str, query: bytes, body: bytes) -> str:
    try:  # the same JSON, however it is spaced or ordered, is the same request
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    request = b"\n".join([method.encode(), path.encode(), query, canonical])
    return hmac.new(secret.encode(), request, hashlib.sha256).hexdigest()


class Idempotency:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode("latin-1").strip()
        if not key or scope["path"] in NEVER_REPLAYED:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(key) > 200:
            refusal = _problem(
                scope, 422, "Validation error", "Idempotency-Key is longer than 200 characters"
            )
            await refusal(scope, receive, send)
            return
        try:
            # Resolved once: the route reads the same principal from the request's state.
            principal = await deps.caller(Request(scope))
            caller = principal.name if principal else None
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
        except HTTPException as exc:  # 413 from BodyLimit, 408 from ClientTimeout
            title = {408: "Request timeout"}.get(exc.status_code, "Content too large")
            headers = dict(exc.headers) if exc.headers else None
            refusal = _problem(scope, exc.status_code, title, str(exc.detail), headers)
            await refusal(scope, receive, send)
            return
        body = b"".join(chunks)
        settings: Settings = scope["app"].state.settings
        query = scope.get("query_string", b"")
        fingerprint = _fingerprint(settings.secret_key, "POST", path, query, body)
        db: Database = scope["app"].state.db
        claimed = await self._claim(scope, db, caller or "anonymous", key, fingerprint)
        if isinstance(claimed, Response):
            await claimed(scope, receive, send)
            return

        replay_sent = False

        async def replay_receive() -> Message:
            nonlocal replay_sent
            if not replay_sent:
                replay_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        captured: dict[str, Any] = {"body": [], "size": 0}
        keep = settings.idempotency_max_stored_bytes

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body" and captured["body"] is not None:
                chunk = message.get("body", b"")
                captured["size"] += len(chunk)
                # Past the bound the answer is only passed on: not kept, not even in memory.
                if captured["size"] <= keep:
                    captured["body"].append(chunk)
                else:
                    captured["body"] = None
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
        self, scope: Scope, db: Database, caller: str, key: str, fingerprint: str
    ) -> int | Response:
        """The key's row for this request, or the answer it already has."""
        path = scope["path"]
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
                    delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < now - KEEP)
                )
                await session.commit()
                assert row.id is not None
                return row.id
            except IntegrityError:
                await session.rollback()
        async with db.writer() as session:
            stmt = select(IdempotencyKey).where(
                col(IdempotencyKey.scope) == caller, col(IdempotencyKey.key) == key
            )
            found = (await session.execute(stmt.with_for_update())).scalar_one_or_none()
            if found is None:  # purged between the two statements: treat as new
                return await self._claim(scope, db, caller, key, fingerprint)
            if found.request_hash != fingerprint:
                return _problem(
                    scope,
                    422,
                    "Validation error",
                    "this Idempotency-Key was used with a different request; use a new key",
                )
            if found.done and found.response_status is not None and found.response_body is None:
                return _problem(
                    scope,
                    409,
                    "Conflict",
                    f"这个 Idempotency-Key 的请求已于 {found.created_at:%Y-%m-%d %H:%M:%S} UTC 完成"
                    f"（状态 {found.response_status}），回答太大未保存；结果见变更流 /api/v1/changes"
                    " (this request was already carried out; its answer was too large to keep)",
                )
            if found.done and found.response_status is not None:
                return Response(
                    found.response_body or b"",
                    status_code=found.response_status,
                    headers={**dict(found.response_headers or []), "Idempotent-Replayed": "true"},
                )
            if now - found.created_at < ABANDONED:
                return _problem(
                    scope,
                    409,
                    "Conflict",
                    "a request with this Idempotency-Key is still in progress",
                    {"Retry-After": "1"},
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
                body = captured["body"]  # None: too large to keep
                row.response_headers = headers if body is not None else []
                row.response_body = None if body is None else b"".join(body)
                await session.commit()

    async def _release(self, db: Database, row_id: int) -> None:
        async with db.writer() as session:
            await session.execute(delete(IdempotencyKey).where(col(IdempotencyKey.id) == row_id))
            await session.commit()
