"""Staff accounts, service tokens, and the failed logins that rate limiting counts."""

from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict, StrictBool
from sqlalchemy import JSON, Index, String
from sqlmodel import Field, SQLModel

from app.db_types import UTCDateTime
from app.models.common import AwareDatetime, ShortName


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


class LoginFailure(SQLModel, table=True):
    __tablename__ = "login_failure"
    __table_args__ = (Index(None, "username", "at"), Index(None, "address", "at"))

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(sa_type=String(100))
    address: str = Field(sa_type=String(64))
    at: datetime = Field(sa_type=UTCDateTime)


class UserCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    username: ShortName = Field(description="用户名", schema_extra={"examples": ["zhangsan"]})
    password: str = Field(min_length=8, max_length=200, description="密码（至少 8 位）")
    role: Role = Field(description="角色: viewer 只读 / editor 编辑 / admin 管理员")


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


class UserPublic(SQLModel):
    id: int = Field(description="用户编号 (user id)")
    username: str = Field(description="用户名", schema_extra={"examples": ["zhangsan"]})
    role: Role = Field(description="角色: viewer 只读 / editor 编辑 / admin 管理员")
    is_active: bool = Field(description="是否启用；停用的账号不能登录")
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


class TokenCreated(TokenPublic):
    token: str = Field(description="令牌原文，只显示这一次 (shown once)")


class AccessToken(SQLModel):
    access_token: str = Field(
        description="访问令牌 (JWT)；以 `Authorization: Bearer <access_token>` 发送"
    )
    token_type: str = Field(default="bearer", description="令牌类型，固定为 bearer")
    expires_in: int = Field(description="有效秒数 (seconds until it expires)")
