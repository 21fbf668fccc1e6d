"""Request-scoped dependencies: sessions (reads, and writes that lock up front) and headers."""

from collections.abc import AsyncIterator
from decimal import Decimal
from json import loads
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database


async def _read_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.reader() as session:
        yield session


async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.writer() as session:
        yield session


ReadSession = Annotated[AsyncSession, Depends(_read_session)]
WriteSession = Annotated[AsyncSession, Depends(_write_session)]


def _etags(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [tag.strip() for tag in value.split(",") if tag.strip()]


async def _if_match(
    if_match: Annotated[
        str | None,
        Header(
            description='只在当前版本匹配时写入，如 `"3"`；不匹配返回 412 (optimistic concurrency)'
        ),
    ] = None,
) -> list[str] | None:
    return _etags(if_match)


async def _if_none_match(
    if_none_match: Annotated[
        str | None, Header(description="与当前 ETag 相同则返回 304 (conditional GET)")
    ] = None,
) -> list[str] | None:
    tags = _etags(if_none_match)
    # If-None-Match uses the weak comparison: W/"3" matches "3".
    return None if tags is None else [t.removeprefix("W/") for t in tags]


IfMatch = Annotated[list[str] | None, Depends(_if_match)]
IfNoneMatch = Annotated[list[str] | None, Depends(_if_none_match)]


class DecimalJSONRequest(Request):
    """Parses JSON numbers as Decimal, so `"amount": 30.1` never passes through a float."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body(), parse_float=Decimal)
        return self._json


class DecimalRoute(APIRoute):
    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def exact_handler(request: Request) -> Any:
            return await handler(DecimalJSONRequest(request.scope, request.receive))

        return exact_handler
