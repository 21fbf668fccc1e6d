"""Accounts and tokens: creation, login with rate limiting, token checks, the start-up admin."""

import hmac
import json
import logging
import secrets
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import security
from app.config import Settings
from app.db import Database, one, run, statement
from app.db_types import utcnow
from app.errors import Conflict, Invalid, NotFound
from app.models.common import MAX_ID
from app.models.park import Park
from app.models.user import (
    ApiToken,
    AuditAction,
    Role,
    TokenCreate,
    User,
    UserCreate,
    UserUpdate,
)
from app.security import Forbidden, Principal, TooManyRequests, Unauthorized
from app.services import audit

log = logging.getLogger("app.users")
# Logins waiting for a hashing thread beyond this many are turned away (429) at once.
MAX_QUEUED_LOGINS = 64
_IN_FLIGHT: set[tuple[str, str]] = set()  # (username, address) of the logins being decided
ADMIN = "admin"


async def _grantable(
    session: AsyncSession, acting: Principal | None, park_ids: list[int] | None
) -> None:
    """An admin grants only parks it holds itself (an unscoped admin: any), and only parks that
    exist: 403 or 422 naming `park_ids`."""
    if acting is not None and not acting.covers(security.park_scope(park_ids)):
        raise Forbidden(
            "只能授予自己范围内的园区 (a scope can only be granted from within your own parks)"
        )
    if park_ids:
        found = set(
            await session.scalars(
                select(col(Park.id)).where(
                    col(Park.id).in_(park_ids), col(Park.deleted_at).is_(None)
                )
            )
        )
        missing = sorted(set(park_ids) - found)
        if missing:
            raise Invalid.field("park_ids", f"园区不存在 (no such park): {missing}", "body")


def manages(acting: Principal | None, park_ids: Any) -> bool:
    """Whether `acting` may see and manage an account or token of scope `park_ids`: one whose
    parks all lie within its own (an unscoped admin manages every one)."""
    return acting is None or acting.covers(security.park_scope(park_ids))


async def create_user(
    db: Database, body: UserCreate, address: str | None = None, acting: Principal | None = None
) -> User:
    """The new account; its password is hashed first, holding no connection or lock."""
    password_hash = await security.hash_password(body.password)
    async with db.writer() as session:
        await _grantable(session, acting, body.park_ids)
        if (
            await session.scalar(select(col(User.id)).where(col(User.username) == body.username))
            is not None
        ):
            raise Conflict(f"user '{body.username}' already exists")
        now = utcnow()
        user = User(
            username=body.username,
            password_hash=password_hash,
            role=body.role.value,
            park_ids=body.park_ids,
            created_at=now,
            updated_at=now,
        )
        session.add(user)
        audit.record(
            session,
            AuditAction.user_created,
            audit.user_subject(body.username),
            address,
            {"role": body.role.value, "park_ids": body.park_ids},
        )
        try:
            await session.commit()
        except IntegrityError as exc:
            await session.rollback()
            raise Conflict(f"user '{body.username}' already exists") from exc
        return user


async def update_user(
    db: Database,
    user_id: int,
    body: UserUpdate,
    address: str | None = None,
    acting: Principal | None = None,
) -> User:
    """The account as changed; the audit trail gets each change as [old, new] (a password only
    as "changed"). A new password is hashed first, holding no connection or lock."""
    password_hash = None if body.password is None else await security.hash_password(body.password)
    async with db.writer() as session:
        user = await session.scalar(select(User).where(col(User.id) == user_id).with_for_update())
        if user is None or not manages(acting, user.park_ids):
            raise NotFound(f"user {user_id} does not exist")
        changed: dict[str, Any] = {}
        scope = security.park_scope
        if "park_ids" in body.model_fields_set and scope(body.park_ids) != scope(user.park_ids):
            await _grantable(session, acting, body.park_ids)
            changed["park_ids"] = [user.park_ids, body.park_ids]
            user.park_ids = body.park_ids
        if password_hash is not None:
            user.password_hash = password_hash
            changed["password"] = "changed"
        if body.role is not None and body.role.value != user.role:
            changed["role"] = [user.role, body.role.value]
            user.role = body.role.value
        if body.is_active is not None and body.is_active != user.is_active:
            changed["is_active"] = [user.is_active, body.is_active]
            user.is_active = body.is_active
        user.updated_at = utcnow()
        if changed:
            subject = audit.user_subject(user.username)
            audit.record(session, AuditAction.user_updated, subject, address, changed)
        await session.commit()
        return user


async def list_users(session: AsyncSession, acting: Principal | None = None) -> list[User]:
    users = await session.scalars(select(User).order_by(col(User.id)))
    return [u for u in users if manages(acting, u.park_ids)]


async def ensure_admin(db: Database, settings: Settings) -> str | None:
    """Make sure a user `admin` exists; returns a generated password (to show once), if any."""
    try:
        async with db.reader() as session:
            if (
                await session.scalar(select(col(User.id)).where(col(User.username) == ADMIN))
                is not None
            ):
                return None
    except (OperationalError, ProgrammingError):
        log.warning("no user table yet (run `python -m app migrate`); admin not ensured")
        return None
    password = settings.registry_admin_password or secrets.token_urlsafe(12)
    try:
        await create_user(db, UserCreate(username=ADMIN, password=password, role=Role.admin))
    except Conflict:
        return None  # another worker created it first
    return None if settings.registry_admin_password else password


async def authenticate(
    db: Database, settings: Settings, username: str, password: str, address: str
) -> Any:
    """The account's id, username, role and password hash, or 401; 429 with Retry-After once
    too many logins failed (`audit.check_login_limits`). The password is checked holding no
    connection or lock: a burst of logins waits for the hashing limiter, not for the pool."""
    if security.hashing.statistics().tasks_waiting >= MAX_QUEUED_LOGINS:
        raise TooManyRequests(
            "登录繁忙，请稍后再试 (too many logins at once)", headers={"Retry-After": "1"}
        )
    # One attempt at a time per (username, address) in this process: guesses sent in parallel
    # would all pass the limits below before the first of them is counted as a failure.
    if (username, address) in _IN_FLIGHT:
        raise TooManyRequests(
            "同一账号的登录正在进行 (a login for this account is in progress)",
            headers={"Retry-After": "1"},
        )
    _IN_FLIGHT.add((username, address))
    try:
        return await _authenticate(db, settings, username, password, address)
    finally:
        _IN_FLIGHT.discard((username, address))


async def _authenticate(
    db: Database, settings: Settings, username: str, password: str, address: str
) -> Any:
    table = User.__table__  # type: ignore[attr-defined]
    async with db.reader() as session:
        await audit.check_login_limits(session, settings, username, address)
        account = (
            await session.execute(
                select(table.c.id, table.c.username, table.c.role, table.c.password_hash).where(
                    table.c.username == username, table.c.is_active
                )
            )
        ).first()
    # An unknown or disabled account costs a hash too: the answer's timing tells nothing.
    stored = account.password_hash if account is not None else await security.decoy_hash()
    ok = await security.verify_password(password, stored) and account is not None
    async with db.writer() as session:
        if ok:
            audit.record(
                session,
                AuditAction.login_succeeded,
                audit.user_subject(username),
                address,
                actor=username,
            )
            await session.commit()
            return account
        await audit.login_failed(session, username, address)
    raise Unauthorized("wrong username or password")


async def create_token(
    session: AsyncSession,
    body: TokenCreate,
    created_by: str | None,
    address: str | None = None,
    acting: Principal | None = None,
) -> tuple[ApiToken, str]:
    if (
        await session.scalar(select(col(ApiToken.id)).where(col(ApiToken.name) == body.name))
        is not None
    ):
        raise Conflict(f"a token named '{body.name}' already exists")
    await _grantable(session, acting, body.park_ids)
    if acting is not None and not acting.allows(
        security.role_of_scopes([s.value for s in body.scopes])
    ):
        raise Forbidden("不能授予高于自己的权限 (cannot grant more than your own role)")
    record = ApiToken(
        name=body.name,
        token_hash="",
        scopes=[s.value for s in body.scopes],
        expires_at=body.expires_at,
        created_at=utcnow(),
        created_by=created_by,
        park_ids=body.park_ids,
    )
    session.add(record)
    await session.flush()
    assert record.id is not None
    token, record.token_hash = security.new_api_token(record.id)
    detail = {
        "scopes": record.scopes,
        "park_ids": body.park_ids,
        "expires_at": body.expires_at.isoformat() if body.expires_at else None,
    }
    audit.record(
        session, AuditAction.token_created, audit.token_subject(body.name), address, detail
    )
    await session.commit()
    return record, token


async def revoke_token(
    session: AsyncSession,
    token_id: int,
    address: str | None = None,
    acting: Principal | None = None,
) -> ApiToken:
    record = await session.scalar(
        select(ApiToken).where(col(ApiToken.id) == token_id).with_for_update()
    )
    if record is None or not manages(acting, record.park_ids):
        raise NotFound(f"token {token_id} does not exist")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        audit.record(session, AuditAction.token_revoked, audit.token_subject(record.name), address)
        await session.commit()
    return record


async def list_tokens(session: AsyncSession, acting: Principal | None = None) -> list[ApiToken]:
    tokens = await session.scalars(select(ApiToken).order_by(col(ApiToken.id)))
    return [t for t in tokens if manages(acting, t.park_ids)]


def _token_statement() -> Any:
    table = ApiToken.__table__  # type: ignore[attr-defined]
    columns = ("token_hash", "revoked_at", "expires_at", "name", "scopes", "park_ids")
    return select(*(table.c[c] for c in columns)).where(table.c.id == bindparam("id"))


def _user_statement() -> Any:
    table = User.__table__  # type: ignore[attr-defined]
    columns = ("username", "password_hash", "role", "is_active", "park_ids")
    return select(*(table.c[c] for c in columns)).where(table.c.id == bindparam("id"))


async def principal_for_staff(
    db: Database, settings: Settings, claims: security.StaffClaims, session: AsyncSession | None
) -> Principal:
    """The caller a staff token names, as the account is now: it must still exist, be active
    and have the password the token was issued under, and its current role is what applies.
    So disabling, demoting, deleting or a new password takes effect on the next request. One
    lookup by primary key, on `session` (the request's own) or a connection of its own."""
    if not 1 <= claims.user_id <= MAX_ID:
        raise Unauthorized("invalid or expired token")
    stmt = statement(("staff",), _user_statement)
    if session is not None:
        account = one(await run(session, stmt, {"id": claims.user_id}))
    else:
        async with db.reader() as own:
            account = one(await run(own, stmt, {"id": claims.user_id}))
    if (
        account is None
        or account.username != claims.username
        or not account.is_active
        or not hmac.compare_digest(
            security.credentials_stamp(settings, account.password_hash), claims.credentials
        )
    ):
        raise Unauthorized("this sign-in is no longer valid; log in again")
    return Principal(
        name=account.username,
        role=Role(account.role),
        kind="user",
        parks=security.park_scope(account.park_ids),
    )


async def principal_for_token(
    db: Database, token: str, session: AsyncSession | None = None
) -> Principal:
    """The caller a service token names. It runs on every request such a token makes, so
    revoking one takes effect at once: one prepared statement, on `session` (the request's
    own) or on a connection of its own, returned at once."""
    parsed = security.parse_api_token(token)
    if parsed is None or not 1 <= parsed[0] <= MAX_ID:
        raise Unauthorized("invalid token")
    token_id, secret = parsed
    stmt = statement(("token",), _token_statement)
    if session is not None:
        record = one(await run(session, stmt, {"id": token_id}))
    else:
        async with db.reader() as own:
            record = one(await run(own, stmt, {"id": token_id}))
    if record is None:
        raise Unauthorized("invalid token")
    if not security.digest_matches(secret, record.token_hash):
        raise Unauthorized("invalid token")
    if record.revoked_at is not None:
        raise Unauthorized("token revoked")
    if record.expires_at is not None and record.expires_at <= utcnow():
        raise Unauthorized("token expired")
    scopes = record.scopes
    return Principal(
        name=f"token:{record.name}",
        role=security.role_of_scopes(json.loads(scopes) if isinstance(scopes, str) else scopes),
        kind="token",
        parks=security.park_scope(record.park_ids),
    )
