"""`python -m app create-user` and `python -m app create-token`."""

import argparse
import asyncio
import sys
from datetime import timedelta

from pydantic import ValidationError

from app.config import get_settings
from app.db import Database, make_engine
from app.db_types import utcnow
from app.errors import AppError
from app.models.user import Role, Scope, TokenCreate, UserCreate
from app.services import user as user_service


async def _run(args: argparse.Namespace) -> int:
    db = Database(make_engine(get_settings().database_url, pool_size=1, max_overflow=0))
    try:
        async with db.writer() as session:
            if args.command == "create-user":
                body = UserCreate(
                    username=args.username, password=args.password, role=Role(args.role)
                )
                user = await user_service.create_user(session, body)
                print(f"created user {user.username} ({user.role})")
            else:
                expires = (
                    utcnow() + timedelta(days=args.expires_days) if args.expires_days else None
                )
                scopes = [Scope(s.strip()) for s in args.scopes.split(",") if s.strip()]
                token_body = TokenCreate(name=args.name, scopes=scopes, expires_at=expires)
                record, token = await user_service.create_token(session, token_body, "cli")
                print(
                    f"created token {record.name} (scopes: {', '.join(record.scopes)}); shown once:"
                )
                print(token)
        return 0
    except (ValidationError, ValueError, AppError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
