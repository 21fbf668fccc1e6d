"""Login, staff accounts and service tokens."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from app.api.deps import CurrentPrincipal, DecimalRoute, IsAdmin, ReadSession, WriteSession
from app.config import Settings
from app.errors import Invalid, responses
from app.models.common import MAX_ID
from app.models.user import (
    AccessToken,
    Role,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from app.security import Unauthorized, issue_access_token
from app.services import user as user_service

# Its own route class: an included router keeps its routes' class, not the parent's.
router = APIRouter(route_class=DecimalRoute)
AUTH_TAG = "认证 Auth"
ADMIN_TAG = "用户与令牌 Users & tokens"


@router.post(
    "/auth/token",
    response_model=AccessToken,
    tags=[AUTH_TAG],
    summary="登录：用户名密码换取访问令牌（30 分钟内有效）",
    description="OAuth2 password flow. 每个用户名、每个地址一分钟内失败过多返回 429 并带 Retry-After。",
    operation_id="login",
    responses={
        **responses(422),
        401: {"description": "用户名或密码错误"},
        429: {"description": "失败次数过多"},
    },
)
async def login(
    request: Request, session: WriteSession, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> AccessToken:
    settings: Settings = request.app.state.settings
    address = request.client.host if request.client else "unknown"
    if "\x00" in form.username:
        # No account can have such a name, and the database refuses to store or compare it.
        raise Invalid.field("username", "用户名不能包含 NUL 字符 (no NUL characters)", "body")
    user = await user_service.authenticate(session, settings, form.username, form.password, address)
    assert user.id is not None
    token, lifetime = issue_access_token(
        settings, user.id, user.username, Role(user.role), user.password_hash
    )
    return AccessToken(access_token=token, expires_in=lifetime)


@router.get(
    "/auth/me",
    tags=[AUTH_TAG],
    summary="当前身份",
    description="返回当前令牌代表的用户或服务令牌及其角色；未登录返回 401。 Who am I.",
    operation_id="whoami",
    responses={401: {"description": "未登录"}},
)
async def whoami(principal: CurrentPrincipal) -> dict[str, str]:
    if principal is None:
        raise Unauthorized()
    return {"name": principal.name, "role": principal.role.value, "kind": principal.kind}


@router.get(
    "/users",
    response_model=list[UserPublic],
    tags=[ADMIN_TAG],
    summary="列出用户（管理员）",
    description="全部工作人员账号及其角色、是否启用；不含密码。 All staff accounts (admin only).",
    operation_id="list_users",
    dependencies=[IsAdmin],
)
async def list_users(session: ReadSession) -> list[UserPublic]:
    return [UserPublic.model_validate(u) for u in await user_service.list_users(session)]


@router.post(
    "/users",
    response_model=UserPublic,
    status_code=201,
    tags=[ADMIN_TAG],
    summary="新建用户（管理员）",
    description="角色 viewer 只读 / editor 可写登记数据 / admin 另可管理用户与令牌；密码只保存哈希。",
    operation_id="create_user",
    dependencies=[IsAdmin],
    responses=responses(409, 422),
)
async def create_user(session: WriteSession, body: UserCreate, response: Response) -> UserPublic:
    user = await user_service.create_user(session, body)
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    return UserPublic.model_validate(user)


@router.patch(
    "/users/{id}",
    response_model=UserPublic,
    tags=[ADMIN_TAG],
    summary="修改用户：角色、密码、停用（管理员）",
    description="只改请求里给出的字段；`is_active: false` 停用账号，已签发的令牌在过期前仍有效。",
    operation_id="update_user",
    dependencies=[IsAdmin],
    responses=responses(404, 422),
)
async def update_user(
    session: WriteSession,
    user_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="用户编号")],
    body: UserUpdate,
) -> UserPublic:
    return UserPublic.model_validate(await user_service.update_user(session, user_id, body))


@router.get(
    "/tokens",
    response_model=list[TokenPublic],
    tags=[ADMIN_TAG],
    summary="列出服务令牌（管理员）",
    description="服务令牌的名称、权限、过期与吊销时间；令牌原文只在新建时显示一次。",
    operation_id="list_tokens",
    dependencies=[IsAdmin],
)
async def list_tokens(session: ReadSession) -> list[TokenPublic]:
    return [TokenPublic.model_validate(t) for t in await user_service.list_tokens(session)]


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    tags=[ADMIN_TAG],
    summary="新建服务令牌（管理员；令牌原文只显示一次）",
    description="供其他系统调用：`Authorization: Bearer pir_…`。权限 read 只读 / write 可写 / admin 管理。",
    operation_id="create_token",
    responses=responses(409, 422),
)
async def create_token(
    session: WriteSession, body: TokenCreate, principal: Annotated[object, IsAdmin]
) -> TokenCreated:
    creator = getattr(principal, "name", None)
    record, token = await user_service.create_token(session, body, creator)
    return TokenCreated(**TokenPublic.model_validate(record).model_dump(), token=token)


@router.delete(
    "/tokens/{id}",
    status_code=204,
    tags=[ADMIN_TAG],
    summary="吊销服务令牌（管理员）",
    description="吊销后该令牌立即失效；记录保留供审计。 Revoked at once; kept for the audit.",
    operation_id="revoke_token",
    dependencies=[IsAdmin],
    responses=responses(404, 422),
)
async def revoke_token(
    session: WriteSession,
    token_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="令牌编号")],
) -> Response:
    await user_service.revoke_token(session, token_id)
    return Response(status_code=204)
