"""Request-scoped dependencies: sessions (reads, and writes that lock up front) and headers."""

from collections.abc import AsyncIterator
from decimal import Decimal
from json import JSONDecodeError, loads
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app import context, security
from app.config import Settings
from app.db import Database
from app.models.user import Role
from app.security import Forbidden, Principal, Unauthorized
from app.services import user as user_service


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.reader() as session:
        yield session


async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.writer() as session:
        yield session


# `scope="function"`: the session ends, and its connection goes back to the pool, when the route
# returns, not after the response has been sent (FastAPI's default for `yield` dependencies): a
# client reading a large page slowly would otherwise hold a pooled connection, and the others
# queue behind it (the bench's feed pages, ~60 KB each, had a p99 of several times the median).
# Nothing streams from these sessions: exports open their own.
ReadSession = Annotated[AsyncSession, Depends(_read_session, scope="function")]
WriteSession = Annotated[AsyncSession, Depends(_write_session, scope="function")]


def etags(value: str | None) -> list[str] | None:
    """The entity tags of an `If-Match` / `If-None-Match` header, as sent."""
    if value is None:
        return None
    return [tag.strip() for tag in value.split(",") if tag.strip()]


async def _if_match(
    if_match: Annotated[
        str | None,
        Header(
            description='只在当前版本匹配时写入，如 `"3"`；不匹配返回 412 (optimistic concurrency)'
        ),
    ] = None,
) -> list[str] | None:
    return etags(if_match)


def none_match_tags(value: str | None) -> list[str] | None:
    """The ETags of an `If-None-Match` header, compared weakly: W/"3" matches "3"."""
    tags = etags(value)
    return None if tags is None else [t.removeprefix("W/") for t in tags]


async def _if_none_match(
    if_none_match: Annotated[
        str | None, Header(description="与当前 ETag 相同则返回 304 (conditional GET)")
    ] = None,
) -> list[str] | None:
    return none_match_tags(if_none_match)


IfMatch = Annotated[list[str] | None, Depends(_if_match)]
IfNoneMatch = Annotated[list[str] | None, Depends(_if_none_match)]


class DecimalJSONRequest(Request):
    """Parses JSON numbers as Decimal, so `"amount": 30.1` never passes through a float."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = loads(body, parse_float=Decimal)
            except UnicodeDecodeError as exc:
                # JSON text is UTF-8 (RFC 8259): other bytes are a malformed body, answered
                # like any other JSON syntax error (422 naming the position), not a bare 400.
                text = body.decode("utf-8", errors="replace")
                raise JSONDecodeError("the body is not UTF-8 text", text, exc.start) from exc
        return self._json


class DecimalRoute(APIRoute):
    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def exact_handler(request: Request) -> Any:
            return await handler(DecimalJSONRequest(request.scope, request.receive))

        return exact_handler


# ---------------------------------------------------------------- who is calling

_oauth2 = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    auto_error=False,
    description="工作人员登录：在 Swagger 点击 Authorize，输入用户名和密码 (staff login)",
)
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="服务令牌：`Authorization: Bearer pir_…` (service tokens)",
)


async def principal_from(app: Any, authorization: str | None, conn: Any = None) -> Principal | None:
    """Both schemes read the same `Authorization: Bearer` header; the token's shape tells which.
    A service token is looked up on every request, so revoking it takes effect at once, on a
    connection of its own that is returned before the route takes one (see `_principal`), or
    on `conn`, a driver connection the caller holds (the fast read path's)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use Authorization: Bearer <token>")
    token = token.strip()
    if token.startswith(security.TOKEN_PREFIX):
        return await user_service.principal_for_token(app.state.db, token, conn)
    return security.read_access_token(app.state.settings, token)


async def caller_name(app: Any, headers: list[tuple[bytes, bytes]]) -> str | None:
    """For middleware that must know the caller before routing (idempotency keys)."""
    raw = dict(headers).get(b"authorization")
    principal = await principal_from(app, raw.decode("latin-1") if raw is not None else None)
    return principal.name if principal else None


async def _principal(
    request: Request,
    _staff: Annotated[str | None, Security(_oauth2)],
    _service: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal | None:
    # A service token is checked on a connection of its own, returned to the pool at once, not
    # on the route's session: a write route would otherwise hold two connections (the check's,
    # kept until the response, and its writer's), and as many concurrent writes as the pool
    # has connections deadlock, each holding one and waiting for another (seen in the bench:
    # 32 concurrent creates against a pool of 30 stalled until the pool timeout).
    return await principal_from(request.app, request.headers.get("authorization"))


def require(role: Role) -> Any:
    async def check(
        request: Request, principal: Annotated[Principal | None, Depends(_principal)]
    ) -> Principal | None:
        settings: Settings = request.app.state.settings
        if principal is None:
            if role == Role.viewer and settings.public_read:
                context.actor.set("anonymous")
                return None
            raise Unauthorized()
        if not principal.allows(role):
            raise Forbidden(
                f"this needs the {role.value} role; {principal.name} is {principal.role.value}"
            )
        context.actor.set(principal.name)
        return principal

    return Depends(check)


CanRead = require(Role.viewer)
CanWrite = require(Role.editor)
IsAdmin = require(Role.admin)
CurrentPrincipal = Annotated[Principal | None, CanRead]
