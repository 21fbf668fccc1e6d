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


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.reader() as session:
        yield session


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """For FastAPI's own routes: a session whose transactions SQLAlchemy runs. Resource routes
    (`route.ResourceRoute`) run theirs on the driver instead (`Database.writing`)."""
    db: Database = request.app.state.db
    async with db.writer() as session:
        yield session


# `scope="function"`: the session ends, and its connection goes back to the pool, when the route
# returns, not after the response has been sent (FastAPI's default for `yield` dependencies): a
# client reading a large page slowly would otherwise hold a pooled connection.
ReadSession = Annotated[AsyncSession, Depends(read_session, scope="function")]
WriteSession = Annotated[AsyncSession, Depends(write_session, scope="function")]


def etags(value: str | None) -> list[str] | None:
    """The entity tags of an `If-Match` / `If-None-Match` header, as sent."""
    if value is None:
        return None
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def none_match_tags(value: str | None) -> list[str] | None:
    """The ETags of an `If-None-Match` header, compared weakly: W/"3" matches "3"."""
    tags = etags(value)
    return None if tags is None else [t.removeprefix("W/") for t in tags]


IfMatch = Annotated[
    str | None,
    Header(description='只在当前版本匹配时写入，如 `"3"`；不匹配返回 412 (optimistic concurrency)'),
]
IfNoneMatch = Annotated[
    str | None, Header(description="与当前 ETag 相同则返回 304 (conditional GET)")
]


def decimal_json(body: bytes) -> Any:
    """A JSON body with its numbers as Decimal, so `"amount": 30.1` never passes through a
    float. JSON text is UTF-8 (RFC 8259): other bytes are a malformed body, answered like any
    other JSON syntax error (422 naming the position)."""
    try:
        return loads(body, parse_float=Decimal)
    except UnicodeDecodeError as exc:
        text = body.decode("utf-8", errors="replace")
        raise JSONDecodeError("the body is not UTF-8 text", text, exc.start) from exc


class DecimalJSONRequest(Request):
    """Parses JSON numbers as Decimal, so `"amount": 30.1` never passes through a float."""

    async def json(self) -> Any:
        return decimal_json(await self.body())


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


async def principal_from(
    app: Any, authorization: str | None, session: AsyncSession | None = None
) -> Principal | None:
    """Both schemes read the same `Authorization: Bearer` header; the token's shape tells which.
    A service token is looked up on every request, so revoking it takes effect at once: on
    `session` (the request's own connection), or on a connection of its own returned at once."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("use Authorization: Bearer <token>")
    token = token.strip()
    if token.startswith(security.TOKEN_PREFIX):
        return await user_service.principal_for_token(app.state.db, token, session)
    claims = security.read_access_token(app.state.settings, token)
    return await user_service.principal_for_staff(app.state.db, app.state.settings, claims, session)


def client_address(request: Request) -> str:
    """Where the request came from, as the audit trail and the login limits see it: the TCP
    peer, or the client a trusted proxy names in X-Forwarded-For (TRUSTED_PROXIES, applied by
    the server: `shutdown.serve`)."""
    return request.client.host if request.client else "unknown"


_CALLER = "principal"  # the request state's key for the caller once resolved


async def caller(request: Request, session: AsyncSession | None = None) -> Principal | None:
    """Who is calling, resolved once per request and kept in the request's state, where the
    routes, the idempotency keys and the limits all read the same principal."""
    state = request.scope.setdefault("state", {})
    if _CALLER not in state:
        state[_CALLER] = await principal_from(
            request.app, request.headers.get("authorization"), session
        )
    principal: Principal | None = state[_CALLER]
    return principal


def authorize(
    settings: Settings, principal: Principal | None, role: Role, public: bool = True
) -> Principal | None:
    """Lets the caller through to an operation that needs `role`, and records it as the actor
    of what the request writes. With PUBLIC_READ anonymous callers may read what is `public`."""
    if principal is None:
        if role == Role.viewer and public and settings.public_read:
            context.actor.set("anonymous")
            context.parks.set(None)
            return None
        raise Unauthorized()
    if not principal.allows(role):
        raise Forbidden(
            f"this needs the {role.value} role; {principal.name} is {principal.role.value}"
        )
    context.actor.set(principal.name)
    context.parks.set(principal.parks)
    return principal


def require(role: Role, public: bool = True) -> Any:
    async def check(
        request: Request,
        _staff: Annotated[str | None, Security(_oauth2)],
        _service: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal | None:
        return authorize(request.app.state.settings, await caller(request), role, public)

    check.role = role  # type: ignore[attr-defined]  # read by `route.ResourceRoute`
    check.public = public  # type: ignore[attr-defined]
    return Depends(check)


async def deleted_for_staff(request: Request, params: Any) -> None:
    """Public reads show the registry as it is, not what was deleted from it."""
    if getattr(params, "include_deleted", False) and await caller(request) is None:
        raise Unauthorized("登录后才能查看已删除的记录 (log in to see deleted records)")


CanRead = require(Role.viewer)
# Who changed what, and what was deleted, is for staff even when PUBLIC_READ is on.
StaffRead = require(Role.viewer, public=False)
CanWrite = require(Role.editor)
IsAdmin = require(Role.admin)
CurrentPrincipal = Annotated[Principal | None, CanRead]
