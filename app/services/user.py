"""Accounts and tokens: creation, login with rate limiting, token checks, the start-up admin."""

import hmac
import json
import logging
import math
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from sqlmodel import col

from app import security
from app.config import Settings
from app.db import Database, one, run, statement
from app.db_types import utcnow
from app.errors import Conflict, NotFound
from app.models.common import MAX_ID
from app.models.user import ApiToken, LoginFailure, Role, TokenCreate, User, UserCreate, UserUpdate
from app.security import Principal, TooManyRequests, Unauthorized

log = logging.getLogger("app.users")
WINDOW = timedelta(minutes=1)
ADMIN = "admin"


async def create_user(session: AsyncSession, body: UserCreate) -> User:
    if (
        await session.scalar(select(col(User.id)).where(col(User.username) == body.username))
        is not None
    ):
        raise Conflict(f"user '{body.username}' already exists")
    now = utcnow()
    user = User(
        username=body.username,
        password_hash=await security.hash_password(body.password),
        role=body.role.value,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"user '{body.username}' already exists") from exc
    return user


async def update_user(session: AsyncSession, user_id: int, body: UserUpdate) -> User:
    user = await session.scalar(select(User).where(col(User.id) == user_id).with_for_update())
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    if body.password is not None:
        user.password_hash = await security.hash_password(body.password)
    if body.role is not None:
        user.role = body.role.value
    if body.is_active is not None:
        user.is_active = body.is_active
    user.updated_at = utcnow()
    await session.commit()
    return user


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(col(User.id))))


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
        async with db.writer() as session:
            await create_user(
                session, UserCreate(username=ADMIN, password=password, role=Role.admin)
            )
    except Conflict:
        return None  # another worker created it first
    return None if settings.registry_admin_password else password


async def _failures_since(
    session: AsyncSession, column: Mapped[str], value: str, since: datetime
) -> list[datetime]:
    stmt = (
        select(col(LoginFailure.at))
        .where(column == value, col(LoginFailure.at) > since)
        .order_by(col(LoginFailure.at))
    )
    return list(await session.scalars(stmt))


async def authenticate(
    session: AsyncSession, settings: Settings, username: str, password: str, address: str
) -> User:
    """The user, or 401; 429 with Retry-After once too many logins failed within a minute."""
    now = utcnow()
    since = now - WINDOW
    for column, value in (
        (col(LoginFailure.username), username),
        (col(LoginFailure.address), address),
    ):
        recent = await _failures_since(session, column, value, since)
        if len(recent) >= settings.login_failures_per_minute:
            wait = max(1, math.ceil((recent[0] + WINDOW - now).total_seconds()))
            raise TooManyRequests(
                "too many failed logins; try again later", headers={"Retry-After": str(wait)}
            )
    user = await session.scalar(select(User).where(col(User.username) == username))
    # An unknown or disabled account costs a hash too: the answer's timing tells nothing.
    known = user is not None and user.is_active
    stored = user.password_hash if user is not None and known else await security.decoy_hash()
    ok = await security.verify_password(password, stored) and known
    if ok and user is not None:
        return user
    session.add(LoginFailure(username=username[:100], address=address[:64], at=now))
    await session.execute(
        delete(LoginFailure).where(col(LoginFailure.at) < now - timedelta(days=1))
    )
    await session.commit()
    raise Unauthorized("wrong username or password")


async def create_token(
    session: AsyncSession, body: TokenCreate, created_by: str | None
) -> tuple[ApiToken, str]:
    if (
        await session.scalar(select(col(ApiToken.id)).where(col(ApiToken.name) == body.name))
        is not None
    ):
        raise Conflict(f"a token named '{body.name}' already exists")
    record = ApiToken(
        name=body.name,
        token_hash="",
        scopes=[s.value for s in body.scopes],
        expires_at=body.expires_at,
        created_at=utcnow(),
        created_by=created_by,
    )
    session.add(record)
    await session.flush()
    assert record.id is not None
    token, record.token_hash = security.new_api_token(record.id)
    await session.commit()
    return record, token


async def revoke_token(session: AsyncSession, token_id: int) -> ApiToken:
    record = await session.scalar(
        select(ApiToken).where(col(ApiToken.id) == token_id).with_for_update()
    )
    if record is None:
        raise NotFound(f"token {token_id} does not exist")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        await session.commit()
    return record


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list(await session.scalars(select(ApiToken).order_by(col(ApiToken.id))))


def _token_statement() -> Any:
    table = ApiToken.__table__  # type: ignore[attr-defined]
    columns = ("token_hash", "revoked_at", "expires_at", "name", "scopes")
    return select(*(table.c[c] for c in columns)).where(table.c.id == bindparam("id"))


def _user_statement() -> Any:
    table = User.__table__  # type: ignore[attr-defined]
    columns = ("username", "password_hash", "role", "is_active")
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
    return Principal(name=account.username, role=Role(account.role), kind="user")


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
    )
