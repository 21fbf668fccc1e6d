"""Login, staff accounts and service tokens."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Path, Query, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from app.api.deps import (
    CurrentPrincipal,
    DecimalRoute,
    IsAdmin,
    ReadSession,
    WriteSession,
    client_address,
)
from app.config import Settings
from app.errors import Invalid, responses
from app.models.common import MAX_ID, QueryText
from app.models.user import (
    AccessToken,
    AuditAction,
    AuditPage,
    AuditPublic,
    Role,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from app.security import Forbidden, Principal, Unauthorized, issue_access_token
from app.services import audit
from app.services import user as user_service

# Its own route class: an included router keeps its routes' class, not the parent's.
router = APIRouter(route_class=DecimalRoute)
AUTH_TAG = "认证 Auth"
ADMIN_TAG = "用户与令牌 Users & tokens"
MAX_AUDIT_PAGE = 500
Admin = Annotated[Principal | None, IsAdmin]  # the admin acting: it manages only its own parks


class LoginForm(OAuth2PasswordRequestForm):
    """FastAPI's OAuth2 password form, field for field (the same names, types, defaults and
    `grant_type` pattern), with each field described for Swagger: FastAPI reads the form's
    fields from this `__init__`, as it does for any class used as a dependency."""

    def __init__(
        self,
        *,
        grant_type: Annotated[
            str | None,
            Form(
                pattern="^password$",
                description="授权方式：只能为 password，或不填 (OAuth2 grant type)",
            ),
        ] = None,
        username: Annotated[str, Form(description="用户名 (the staff account's username)")],
        password: Annotated[
            str,
            Form(
                json_schema_extra={"format": "password"},
                description="密码 (the account's password)",
            ),
        ],
        scope: Annotated[
            str,
            Form(description="OAuth2 权限范围；本服务不使用，留空即可 (unused: the role decides)"),
        ] = "",
        client_id: Annotated[
            str | None,
            Form(description="OAuth2 客户端编号；本服务不使用，留空即可 (unused)"),
        ] = None,
        client_secret: Annotated[
            str | None,
            Form(
                json_schema_extra={"format": "password"},
                description="OAuth2 客户端密钥；本服务不使用，留空即可 (unused)",
            ),
        ] = None,
    ) -> None:
        super().__init__(
            grant_type=grant_type,
            username=username,
            password=password,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
        )


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
async def login(request: Request, form: Annotated[LoginForm, Depends()]) -> AccessToken:
    settings: Settings = request.app.state.settings
    if "\x00" in form.username:
        # No account can have such a name, and the database refuses to store or compare it.
        raise Invalid.field("username", "用户名不能包含 NUL 字符 (no NUL characters)", "body")
    account = await user_service.authenticate(
        request.app.state.db, settings, form.username, form.password, client_address(request)
    )
    token, lifetime = issue_access_token(
        settings, account.id, account.username, Role(account.role), account.password_hash
    )
    return AccessToken(access_token=token, expires_in=lifetime)


@router.get(
    "/auth/me",
    tags=[AUTH_TAG],
    summary="当前身份",
    description=(
        "返回当前令牌代表的用户或服务令牌、角色及园区范围（park_ids 为 null 即不限园区）；"
        "未登录返回 401。 Who am I."
    ),
    operation_id="whoami",
    responses={401: {"description": "未登录"}},
)
async def whoami(principal: CurrentPrincipal) -> dict[str, Any]:
    if principal is None:
        raise Unauthorized()
    parks = None if principal.parks is None else sorted(principal.parks)
    return {
        "name": principal.name,
        "role": principal.role.value,
        "kind": principal.kind,
        "park_ids": parks,
    }


@router.get(
    "/users",
    response_model=list[UserPublic],
    tags=[ADMIN_TAG],
    summary="列出用户（管理员）",
    description=(
        "工作人员账号及其角色、是否启用、园区范围；不含密码。限园区的管理员只看到本园区的账号。"
        " Staff accounts (admin only)."
    ),
    operation_id="list_users",
)
async def list_users(session: ReadSession, acting: Admin) -> list[UserPublic]:
    users = await user_service.list_users(session, acting)
    return [UserPublic.model_validate(u) for u in users]


@router.post(
    "/users",
    response_model=UserPublic,
    status_code=201,
    tags=[ADMIN_TAG],
    summary="新建用户（管理员）",
    description="角色 viewer 只读 / editor 可写登记数据 / admin 另可管理用户与令牌；密码只保存哈希。",
    operation_id="create_user",
    responses=responses(403, 409, 422),
)
async def create_user(
    request: Request, body: UserCreate, response: Response, acting: Admin
) -> UserPublic:
    db = request.app.state.db
    user = await user_service.create_user(db, body, client_address(request), acting)
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    return UserPublic.model_validate(user)


@router.patch(
    "/users/{id}",
    response_model=UserPublic,
    tags=[ADMIN_TAG],
    summary="修改用户：角色、密码、停用（管理员）",
    description=(
        "只改请求里给出的字段；停用、降级或改密码对该用户已签发的令牌立即生效。"
        " Disabling, demoting or a new password takes effect on the user's next request."
    ),
    operation_id="update_user",
    responses=responses(403, 404, 422),
)
async def update_user(
    request: Request,
    acting: Admin,
    user_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="用户编号")],
    body: UserUpdate,
) -> UserPublic:
    db = request.app.state.db
    user = await user_service.update_user(db, user_id, body, client_address(request), acting)
    return UserPublic.model_validate(user)


@router.get(
    "/tokens",
    response_model=list[TokenPublic],
    tags=[ADMIN_TAG],
    summary="列出服务令牌（管理员）",
    description="服务令牌的名称、权限、过期与吊销时间；令牌原文只在新建时显示一次。",
    operation_id="list_tokens",
)
async def list_tokens(session: ReadSession, acting: Admin) -> list[TokenPublic]:
    tokens = await user_service.list_tokens(session, acting)
    return [TokenPublic.model_validate(t) for t in tokens]


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    tags=[ADMIN_TAG],
    summary="新建服务令牌（管理员；令牌原文只显示一次）",
    description="供其他系统调用：`Authorization: Bearer pir_…`。权限 read 只读 / write 可写 / admin 管理。",
    operation_id="create_token",
    responses=responses(403, 409, 422),
)
async def create_token(
    request: Request,
    session: WriteSession,
    body: TokenCreate,
    acting: Admin,
) -> TokenCreated:
    creator = acting.name if acting else None
    address = client_address(request)
    record, token = await user_service.create_token(session, body, creator, address, acting)
    return TokenCreated(**TokenPublic.model_validate(record).model_dump(), token=token)


@router.delete(
    "/tokens/{id}",
    status_code=204,
    tags=[ADMIN_TAG],
    summary="吊销服务令牌（管理员）",
    description="吊销后该令牌立即失效；记录保留供审计。 Revoked at once; kept for the audit.",
    operation_id="revoke_token",
    responses=responses(404, 422),
)
async def revoke_token(
    request: Request,
    session: WriteSession,
    acting: Admin,
    token_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="令牌编号")],
) -> Response:
    await user_service.revoke_token(session, token_id, client_address(request), acting)
    return Response(status_code=204)


@router.get(
    "/audit",
    response_model=AuditPage,
    tags=[ADMIN_TAG],
    summary="访问审计：登录、账号与令牌的变化（管理员）",
    description=(
        "谁在何时、从哪里登录（成功或失败）、新建或修改账号（角色、停用、密码）、新建或吊销令牌；"
        "最新在前，以 before=next_before 翻页。失败的登录保留 90 天，其余事件长期保留。"
        " Access audit trail, newest first."
    ),
    operation_id="list_audit_events",
    responses=responses(403, 422),
)
async def list_audit_events(
    session: ReadSession,
    acting: Admin,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE, description="最多条数")] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="只看编号小于此值的事件（翻页）")
    ] = None,
    action: Annotated[AuditAction | None, Query(description="只看某类事件")] = None,
    subject: Annotated[
        QueryText | None,
        Query(max_length=200, description="只看某个账号或令牌，如 user:zhangsan"),
    ] = None,
    actor: Annotated[QueryText | None, Query(max_length=200, description="只看某个操作者")] = None,
) -> AuditPage:
    if acting is not None and acting.parks is not None:
        raise Forbidden(
            "访问审计只对不限园区的管理员开放 (the audit trail is for city-wide admins)"
        )
    events, next_before = await audit.page(session, limit, before, action, subject, actor)
    return AuditPage(items=[AuditPublic.model_validate(e) for e in events], next_before=next_before)
