"""The seed loader: `python -m app seed [--check]`.

Reads the data files under `seeds/` and upserts every record by its `external_id` through the
same service functions as the API, so validation is never bypassed. Running it twice changes
nothing: an update whose values equal what is stored writes no new version.

A seeded record that anyone but the seed (or a migration) has written since is kept as staff
left it, and reported: a corrected seed (e.g. after an upgrade) reaches every record nobody
touched, never overwriting a correction. `--force` overwrites those too; `--check` reports both.
"""

import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import context
from app.config import PROJECT_DIR, get_settings
from app.db import Database, make_engine
from app.errors import AppError
from app.models.change import Change
from app.resources import CHAINS, ENTERPRISES, INVESTMENTS, PARKS, PROJECTS, SOURCES, TARGETS
from app.services import records
from app.services.records import ResourceSpec

SEED_DIR = PROJECT_DIR / "seeds"
ACTOR = "seed"
# Writers whose changes a later seed may replace: the seed itself, and data migrations.
MACHINE_ACTORS = (ACTOR, "migration")
# Sections in dependency order; each reference field names the section it points into.
SECTIONS: tuple[tuple[str, ResourceSpec], ...] = (
    ("sources", SOURCES),
    ("parks", PARKS),
    ("chains", CHAINS),
    ("enterprises", ENTERPRISES),
    ("projects", PROJECTS),
    ("investments", INVESTMENTS),
    ("targets", TARGETS),
)
REFERENCES = {
    "source": ("source_id", SOURCES),
    "park": ("park_id", PARKS),
    "chain": ("chain_id", CHAINS),
    "enterprise": ("enterprise_id", ENTERPRISES),
    "project": ("project_id", PROJECTS),
}


class SeedError(Exception):
    pass


def load_files(seed_dir: Path = SEED_DIR) -> dict[str, list[dict[str, Any]]]:
    merged: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in SECTIONS}
    for path in sorted(seed_dir.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for name, _ in SECTIONS:
            merged[name].extend(data.get(name) or [])
    return merged


async def _find(session: AsyncSession, spec: ResourceSpec, external_id: str) -> Any:
    return await session.scalar(select(spec.model).where(spec.column("external_id") == external_id))


async def _body(session: AsyncSession, entry: dict[str, Any], where: str) -> dict[str, Any]:
    """The entry as an API body: references by external_id become ids."""
    body = dict(entry)
    for ref, (field, spec) in REFERENCES.items():
        if ref not in body:
            continue
        external_id = body.pop(ref)
        if external_id is None:
            body[field] = None
            continue
        target = await _find(session, spec, external_id)
        if target is None:
            raise SeedError(
                f"{where}: {ref} '{external_id}' is not in the seed data or the database"
            )
        body[field] = target.id
    return body


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, AppError):
        return exc.detail
    return str(exc)


async def _edited_by_staff(session: AsyncSession, spec: ResourceSpec, record_id: int) -> bool:
    """Whether the change feed shows a write to the record by anyone but the seed or a
    migration."""
    found = await session.scalar(
        select(col(Change.seq))
        .where(
            col(Change.resource) == spec.name,
            col(Change.record_id) == record_id,
            or_(col(Change.actor).is_(None), col(Change.actor).not_in(MACHINE_ACTORS)),
        )
        .limit(1)
    )
    return found is not None


async def _differences(
    session: AsyncSession, spec: ResourceSpec, record: Any, body: dict[str, Any]
) -> list[str]:
    data = spec.update.model_validate(body).model_dump(exclude_unset=True)
    if spec.prepare:
        await spec.prepare(session, record, data)
    return [
        f"{k}: {getattr(record, k)!r} → {v!r}" for k, v in data.items() if getattr(record, k) != v
    ]


async def run(
    db: Database, *, check: bool = False, force: bool = False, out: Any = sys.stdout
) -> int:
    """Load (or with `check`, compare) the seed data; returns the number of differences found."""
    token = context.actor.set(ACTOR)
    created = updated = unchanged = kept = 0
    differences = 0
    try:
        for section, spec in SECTIONS:
            for index, entry in enumerate(load_files()[section]):
                where = f"{section}[{index}] {entry.get('external_id')}"
                if not entry.get("external_id"):
                    raise SeedError(f"{where}: every seed record needs an external_id")
                async with db.reader() as session:
                    existing = await _find(session, spec, entry["external_id"])
                    try:
                        body = await _body(session, entry, where)
                    except SeedError:
                        if check:  # its parent would be created by a real run
                            print(f"+ {where}: would be created", file=out)
                            differences += 1
                            continue
                        raise
                    edited = False
                    if existing is not None:
                        diff = await _differences(session, spec, existing, body)
                        edited = bool(diff) and await _edited_by_staff(session, spec, existing.id)
                if check:
                    if existing is None:
                        print(f"+ {where}: would be created", file=out)
                        differences += 1
                    elif diff:
                        staff = " (changed by staff: kept unless --force)" if edited else ""
                        print(f"~ {where}{staff}: {'; '.join(diff)}", file=out)
                        differences += 1
                    continue
                if edited and not force:
                    print(f"= {where}: changed by staff since the seed; kept", file=out)
                    kept += 1
                    continue
                async with db.writer() as session:
                    try:
                        if existing is None:
                            await records.create(session, spec, spec.create.model_validate(body))
                            created += 1
                        elif diff:
                            await records.update(
                                session, spec, existing.id, spec.update.model_validate(body), None
                            )
                            updated += 1
                        else:
                            unchanged += 1
                    except (ValidationError, AppError) as exc:
                        raise SeedError(f"{where}: {_describe(exc)}") from exc
    finally:
        context.actor.reset(token)
    if check:
        print(f"seed check: {differences} difference(s)", file=out)
    else:
        print(
            f"seed: {created} created, {updated} updated, {unchanged} unchanged"
            + (f", {kept} kept as staff changed them (--force overwrites)" if kept else ""),
            file=out,
        )
    return differences


async def is_empty(db: Database) -> bool:
    async with db.reader() as session:
        for spec in (SOURCES, PARKS):
            if await session.scalar(select(spec.column("id")).limit(1)) is not None:
                return False
    return True


async def _main(check: bool, if_empty: bool, force: bool) -> int:
    settings = get_settings()
    db = Database(make_engine(settings.database_url, pool_size=2, max_overflow=0))
    try:
        if if_empty and not check and not await is_empty(db):
            # A later start must not overwrite corrections staff made to seeded records.
            print("seed: the database already holds data; skipped (`python -m app seed` upserts)")
            return 0
        differences = await run(db, check=check, force=force)
    except SeedError as exc:
        print(f"seed failed: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    return 1 if check and differences else 0


def main(check: bool = False, if_empty: bool = False, force: bool = False) -> int:
    return asyncio.run(_main(check, if_empty, force))
