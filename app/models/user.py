"""Staff accounts, service tokens, and the failed logins that rate limiting counts."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, StrictBool
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Index, String
from sqlmodel import Field, SQLModel

from app.db_types import UTCDateTime
from app.models.common import AwareDatetime, Ref, ShortName


class Role(StrEnum):
    """viewer 只读, editor 可写登记数据, admin 另可管理用户与令牌"""

    viewer = "viewer"
    editor = "editor"
    admin = "admin"


class Scope(StrEnum):
    """read 只读（同 viewer）, write 可写（同 editor）, admin 管理（同 admin）"""

    read = "read"
    write = "write"
    admin = "admin"


class User(SQLModel, table=True):
    __tablename__ = "user_account"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(sa_type=String(100), unique=True)
    password_hash: str = Field(sa_type=String(200))
    role: str = Field(sa_type=String(10))
    is_active: bool = Field(default=True)
    # The parks this account may see and change; null: every park (the city's view).
    park_ids: list[int] | None = Field(default=None, sa_type=JSON)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=String(100), unique=True)
    # SHA-256 of a 256-bit random secret: a slow hash adds nothing to a secret nobody can guess.
    token_hash: str = Field(sa_type=String(64))
    scopes: list[str] = Field(sa_type=JSON)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    created_by: str | None = Field(default=None, sa_type=String(200))
    park_ids: list[int] | None = Field(default=None, sa_type=JSON)  # as for a user


class AuditEvent(SQLModel, table=True):
    """Who changed access to the registry, or tried to: logins (both outcomes), accounts and
    service tokens made, changed, disabled or revoked. Failed logins are also what the login
    limits count (`services.audit`)."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index(None, "action", "at"),
        Index(None, "subject", "at"),
        Index(None, "address", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime)
    action: str = Field(sa_type=String(32))
    actor: str | None = Field(default=None, sa_type=String(200))  # who: a principal's name
    subject: str | None = Field(default=None, sa_type=String(200))  # whose access: user:…/token:…
    address: str | None = Field(default=None, sa_type=String(64))  # from where: client address
    request_id: str | None = Field(default=None, sa_type=String(100))
    detail: dict[str, Any] | None = Field(default=None, sa_type=JSON)


def _no_colon(name: str) -> str:
    # "token:…" names a service token wherever a caller is named (actor, audit, idempotency).
    if ":" in name:
        raise ValueError("用户名不能包含冒号 (a username has no colon)")
    return name


Username = Annotated[ShortName, AfterValidator(_no_colon)]


def _distinct(parks: list[int]) -> list[int]:
    return sorted(set(parks))


ParkIds = Annotated[
    list[Ref], PydanticField(min_length=1, max_length=100), AfterValidator(_distinct)
]
ParkScope = Annotated[
    ParkIds | None,
    Field(
        description="只能查看、修改这些园区的记录（园区编号）；空 (null) 为不限园区（全市）",
        schema_extra={"examples": [[1]]},
    ),
]


class UserCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    username: Username = Field(
        description="用户名（不含冒号：token:… 是服务令牌的名字）",
        schema_extra={"examples": ["zhangsan"]},
    )
    password: str = Field(min_length=8, max_length=200, description="密码（至少 8 位）")
    role: Role = Field(description="角色: viewer 只读 / editor 编辑 / admin 管理员")
    park_ids: ParkScope = None


class UserUpdate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    password: str | None = Field(
        default=None, min_length=8, max_length=200, description="新密码（至少 8 位）；不改则不填"
    )
    role: Role | None = Field(
        default=None, description="新角色: viewer 只读 / editor 编辑 / admin 管理员"
    )
    is_active: StrictBool | None = Field(
        default=None, description="false 停用账号（不能再登录）；true 重新启用"
    )
    park_ids: ParkScope = Field(
        default=None, description="新的园区范围；给出 null 为不限园区，不给则不改"
    )


class UserPublic(SQLModel):
    id: int = Field(description="用户编号 (user id)")
    username: str = Field(description="用户名", schema_extra={"examples": ["zhangsan"]})
    role: Role = Field(description="角色: viewer 只读 / editor 编辑 / admin 管理员")
    is_active: bool = Field(description="是否启用；停用的账号不能登录")
    park_ids: list[int] | None = Field(description="园区范围；null 为不限园区（全市）")
    created_at: datetime = Field(description="创建时间 (UTC)")
    updated_at: datetime = Field(description="更新时间 (UTC)")


class TokenCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    name: ShortName = Field(
        description="令牌名称（用于审计）",
        schema_extra={"examples": ["sync-service"]},
    )
    scopes: list[Scope] = Field(min_length=1, description="权限: read / write / admin")
    expires_at: AwareDatetime | None = Field(
        default=None, description="过期时间（须带时区，按 UTC 保存）；空为不过期"
    )
    park_ids: ParkScope = None


class TokenPublic(SQLModel):
    id: int = Field(description="令牌编号 (token id)")
    name: str = Field(
        description="令牌名称（用于审计）", schema_extra={"examples": ["sync-service"]}
    )
    scopes: list[Scope] = Field(description="权限: read 只读 / write 可写 / admin 管理")
    expires_at: datetime | None = Field(description="过期时间 (UTC)；空为不过期")
    revoked_at: datetime | None = Field(description="吊销时间 (UTC)；空为有效")
    created_at: datetime = Field(description="创建时间 (UTC)")
    created_by: str | None = Field(description="创建者 (who created it)")
    park_ids: list[int] | None = Field(description="园区范围；null 为不限园区（全市）")


class TokenCreated(TokenPublic):
    token: str = Field(description="令牌原文，只显示这一次 (shown once)")


class AccessToken(SQLModel):
    access_token: str = Field(
        description="访问令牌 (JWT)；以 `Authorization: Bearer <access_token>` 发送"
    )
    token_type: str = Field(default="bearer", description="令牌类型，固定为 bearer")
    expires_in: int = Field(description="有效秒数 (seconds until it expires)")


class AuditAction(StrEnum):
    """login.succeeded 登录成功 / login.failed 登录失败 / user.created 新建用户 / user.updated 修改
    用户（角色、停用、密码）/ token.created 新建令牌 / token.revoked 吊销令牌"""

    login_succeeded = "login.succeeded"
    login_failed = "login.failed"
    user_created = "user.created"
    user_updated = "user.updated"
    token_created = "token.created"
    token_revoked = "token.revoked"


class AuditPublic(SQLModel):
    id: int = Field(description="事件编号，递增 (event id)")
    at: datetime = Field(description="时间 (UTC)")
    action: AuditAction = Field(description="事件")
    actor: str | None = Field(description="操作者：用户名或 token:名称；登录事件为所用用户名")
    subject: str | None = Field(
        description="涉及的账号或令牌，如 user:zhangsan、token:sync-service"
    )
    address: str | None = Field(description="来源地址 (client address)")
    request_id: str | None = Field(description="请求编号，对应日志中的 X-Request-ID")
    detail: dict[str, Any] | None = Field(
        description='变化内容，如 {"role": ["editor", "viewer"]}（旧值、新值）；不含密码'
    )


class AuditPage(SQLModel):
    items: list[AuditPublic] = Field(description="按编号降序（最新在前）")
    next_before: int | None = Field(
        description="下一页：以 before=next_before 继续；为空表示没有更早的事件"
    )
