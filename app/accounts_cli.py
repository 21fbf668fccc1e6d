"""`python -m app create-user` and `python -m app create-token`."""

import argparse
import asyncio
import sys
from datetime import timedelta

from pydantic import ValidationError

from app import context
from app.config import get_settings
from app.db import Database, make_engine
from app.db_types import utcnow
from app.errors import AppError
from app.models.user import Role, Scope, TokenCreate, UserCreate
from app.services import user as user_service

ACTOR = "cli"


def _parks(value: str | None) -> list[int] | None:
    """`--parks 1,3` → [1, 3]; not given → None (every park)."""
    if value is None:
        return None
    return [int(part) for part in value.split(",") if part.strip()]


async def _run(args: argparse.Namespace) -> int:
    db = Database(make_engine(get_settings().database_url, pool_size=1, max_overflow=0))
    acting = context.actor.set(ACTOR)  # recorded in the audit trail as who did it
    try:
        if args.command == "create-user":
            body = UserCreate(
                username=args.username,
                password=args.password,
                role=Role(args.role),
                park_ids=_parks(args.parks),
            )
            user = await user_service.create_user(db, body)
            print(f"created user {user.username} ({user.role})")
            return 0
        expires = utcnow() + timedelta(days=args.expires_days) if args.expires_days else None
        scopes = [Scope(s.strip()) for s in args.scopes.split(",") if s.strip()]
        token_body = TokenCreate(
            name=args.name, scopes=scopes, expires_at=expires, park_ids=_parks(args.parks)
        )
        async with db.writer() as session:
            record, secret = await user_service.create_token(session, token_body, ACTOR)
        print(f"created token {record.name} (scopes: {', '.join(record.scopes)}); shown once:")
        print(secret)
        return 0
    except (ValidationError, ValueError, AppError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        context.actor.reset(acting)
        await db.dispose()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
