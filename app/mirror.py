"""`python -m app mirror --source URL`: follow another registry's change feed into this database.

The mirror is a read replica: it applies each change exactly as the source recorded it (same ids,
versions and timestamps), page by page in one transaction with its position, so it can stop at
any moment and resume where it was. It also writes its own change rows, so mirrors can chain.
"""

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import httpx
from sqlalchemy import JSON, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.db import Database, make_engine
from app.db_types import utcnow
from app.models.change import MirrorState
from app.resources import BY_NAME
from app.services import changes
from app.services.records import ResourceSpec

log = logging.getLogger("app.mirror")
PAGE = 500


async def position(db: Database, source: str) -> int:
    async with db.reader() as session:
        state = await session.get(MirrorState, source)
        return state.last_seq if state else 0


def _columns(spec: ResourceSpec, data: dict[str, Any]) -> dict[str, Any]:
    """The row a snapshot describes: values as the public model reads them, but a JSON column
    as the snapshot's own JSON (the model would make objects of it, which JSON cannot store)."""
    typed = spec.public.model_validate(data)
    columns = spec.model.__table__.columns  # type: ignore[attr-defined]
    return {
        c.key: data[c.key] if isinstance(c.type, JSON) else getattr(typed, c.key)
        for c in columns
        if c.key in data
    }


async def _apply(session: AsyncSession, change: dict[str, Any]) -> ResourceSpec:
    spec = BY_NAME[change["resource"]]
    record: Any = await session.get(spec.model, change["id"])
    if change["op"] == "delete":
        if record is None:
            raise RuntimeError(
                f"delete of unknown {spec.singular} {change['id']} at seq {change['seq']}"
            )
        record.deleted_at = record.updated_at = changes.parse_time(change["changed_at"])
        record.version = change["version"]
    else:
        values = _columns(spec, change["data"])
        if record is None:
            record = spec.model(**values)
            session.add(record)
        else:
            for key, value in values.items():
                setattr(record, key, value)
    await session.flush()
    await changes.record(
        session,
        resource=spec.name,
        record_id=record.id,
        external_id=record.external_id,
        op=change["op"],
        version=record.version,
        changed_at=record.updated_at,
        park_id=None if spec.park is None else getattr(record, spec.park),
        previous_park_id=None,
        data=change["data"],
    )
    return spec


async def _advance_sequences(session: AsyncSession, names: set[str]) -> None:
    """Explicit ids do not move PostgreSQL's sequences; keep them past the highest id."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for spec in (BY_NAME[n] for n in sorted(names)):
        table = spec.model.__tablename__
        top = await session.scalar(select(func.max(spec.column("id"))))
        if top:
            await session.execute(
                text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :v)"), {"t": table, "v": top}
            )


async def apply_page(db: Database, source: str, items: list[dict[str, Any]]) -> int:
    async with db.writer() as session:
        state = await session.get(MirrorState, source, with_for_update=True)
        last = state.last_seq if state else 0
        touched: set[str] = set()
        for change in items:
            if change["seq"] <= last:
                continue  # already applied (a page fetched twice)
            touched.add((await _apply(session, change)).name)
            last = change["seq"]
        if state is None:
            session.add(MirrorState(source=source, last_seq=last, updated_at=utcnow()))
        else:
            state.last_seq, state.updated_at = last, utcnow()
        await _advance_sequences(session, touched)
        await session.commit()
        return last


async def follow(
    db: Database,
    source: str,
    token: str | None,
    *,
    interval: float,
    once: bool,
    stop: asyncio.Event,
) -> int:
    base = source.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    last = await position(db, base)
    delay = interval
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        while not stop.is_set():
            try:
                response = await http.get("/api/v1/changes", params={"after": last, "limit": PAGE})
                response.raise_for_status()
                items = response.json()["items"]
                delay = interval
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.warning("source unavailable (%s); retrying in %.1f s", exc, delay)
                items = None
                delay = min(delay * 2, 30)
            if items:
                last = await apply_page(db, base, items)
                continue
            if once and items is not None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    return last


async def _main(source: str, token: str | None, interval: float, once: bool) -> int:
    db = Database(make_engine(get_settings().database_url, pool_size=2, max_overflow=0))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        last = await follow(db, source, token, interval=interval, once=once, stop=stop)
        print(f"mirror: at seq {last} of {source}", file=sys.stderr)
        return 0
    finally:
        await db.dispose()


def main(source: str, token: str | None, interval: float = 1.0, once: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(_main(source, token, interval, once))
