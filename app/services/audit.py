"""The audit trail of access: who logged in or failed to, and who made, changed, disabled or
revoked which account or token, when and from where. Failed logins are also what the login
limits count: one table, so the limits and the trail can never disagree."""

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import context
from app.config import Settings
from app.db_types import utcnow
from app.models.user import AuditAction, AuditEvent
from app.security import TooManyRequests

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
# Failed logins are kept this long (the limits need an hour); every other event for good.
KEEP_FAILED_LOGINS = timedelta(days=90)


def user_subject(username: str) -> str:
    return f"user:{username[:100]}"


def token_subject(name: str) -> str:
    return f"token:{name[:100]}"


def record(
    session: AsyncSession,
    action: AuditAction,
    subject: str | None,
    address: str | None,
    detail: dict[str, Any] | None = None,
    actor: str | None = None,
) -> None:
    """Adds the event to `session`, to be committed with the change it records. The actor is
    the request's caller unless given (a login names the account it tried)."""
    session.add(
        AuditEvent(
            at=utcnow(),
            action=action.value,
            actor=actor if actor is not None else context.actor.get(),
            subject=subject,
            address=address[:64] if address else None,
            request_id=context.request_id.get(),
            detail=detail,
        )
    )


async def check_login_limits(
    session: AsyncSession, settings: Settings, username: str, address: str
) -> None:
    """429 with Retry-After when failed logins are over a limit: per (username, address) and
    per address within a minute, and per username within an hour from all addresses, where
    each address counts for at most the per-minute limit. So failures from one address never
    lock a user out of logging in from another: that takes failures from many addresses
    (hourly limit / per-minute limit of them), and then lasts until the hour has passed."""
    now = utcnow()
    subject = user_subject(username)
    stmt = select(col(AuditEvent.at), col(AuditEvent.subject), col(AuditEvent.address)).where(
        col(AuditEvent.action) == AuditAction.login_failed.value,
        or_(
            (col(AuditEvent.subject) == subject) & (col(AuditEvent.at) > now - HOUR),
            (col(AuditEvent.address) == address) & (col(AuditEvent.at) > now - MINUTE),
        ),
    )
    rows = (await session.execute(stmt)).all()
    recent = [(at, s, a) for at, s, a in rows if at > now - MINUTE]
    per_address: dict[str | None, list[datetime]] = {}
    for at, s, a in sorted(rows, key=lambda row: row[0]):
        if s == subject:
            per_address.setdefault(a, []).append(at)
    hourly = [
        at for times in per_address.values() for at in times[-settings.login_failures_per_minute :]
    ]
    limits: list[tuple[list[datetime], int, timedelta]] = [
        (
            [at for at, s, a in recent if s == subject and a == address],
            settings.login_failures_per_minute,
            MINUTE,
        ),
        (
            [at for at, _, a in recent if a == address],
            settings.login_failures_per_address_per_minute,
            MINUTE,
        ),
        (hourly, settings.login_failures_per_user_per_hour, HOUR),
    ]
    for times, limit, window in limits:
        if len(times) >= limit:
            # Retry when enough of the oldest have left the window.
            oldest = sorted(times)[len(times) - limit]
            wait = max(1, math.ceil((oldest + window - now).total_seconds()))
            raise TooManyRequests(
                "登录失败次数过多，请稍后再试 (too many failed logins; try again later)",
                headers={"Retry-After": str(wait)},
            )


async def login_failed(session: AsyncSession, username: str, address: str) -> None:
    record(session, AuditAction.login_failed, user_subject(username), address, actor=username[:200])
    await session.execute(
        delete(AuditEvent).where(
            col(AuditEvent.action) == AuditAction.login_failed.value,
            col(AuditEvent.at) < utcnow() - KEEP_FAILED_LOGINS,
        )
    )
    await session.commit()


async def page(
    session: AsyncSession,
    limit: int,
    before: int | None,
    action: AuditAction | None,
    subject: str | None,
    actor: str | None,
) -> tuple[list[AuditEvent], int | None]:
    """Newest first; the id to continue `before`, if there are older events."""
    stmt = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(col(AuditEvent.id) < before)
    if action is not None:
        stmt = stmt.where(col(AuditEvent.action) == action.value)
    if subject is not None:
        stmt = stmt.where(col(AuditEvent.subject) == subject)
    if actor is not None:
        stmt = stmt.where(col(AuditEvent.actor) == actor)
    events = list(await session.scalars(stmt))
    more = len(events) > limit
    events = events[:limit]
    return events, (events[-1].id if more and events else None)
