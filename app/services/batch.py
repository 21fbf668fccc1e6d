"""Batch writes: up to 1,000 creates, updates and deletes of one resource, all or nothing."""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import db, errors
from app.errors import AppError, FieldError, Invalid
from app.models.common import MAX_ID
from app.services import records
from app.services.records import ResourceSpec

MAX_ITEMS = 1000


class BatchOp(StrEnum):
    """create 新建, update 部分更新, delete 删除"""

    create = "create"
    update = "update"
    delete = "delete"


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: BatchOp = Field(description="create 新建 / update 部分更新 / delete 删除")
    id: int | None = Field(default=None, ge=1, le=MAX_ID, description="update、delete 时必填")
    if_match: str | None = Field(default=None, description='版本条件，如 "3"；不符则整批失败')
    data: dict[str, Any] | None = Field(
        default=None, description="create 的完整记录或 update 的字段"
    )


class BatchRequest(BaseModel):
    """一批写入：同一类资源的新建、更新、删除，全部成功或全部不写 (all or nothing)."""

    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem] = Field(
        min_length=1,
        max_length=MAX_ITEMS,
        description=f"要执行的写入，按顺序执行，1 至 {MAX_ITEMS} 项 (the writes, in order)",
    )


class BatchResult(BaseModel):
    index: int = Field(description="该项在请求中的序号，从 0 起 (the item's index in the request)")
    op: BatchOp = Field(description="执行的操作：create 新建 / update 部分更新 / delete 删除")
    id: int = Field(description="写入的记录编号 (the record's id)")
    version: int = Field(
        description="写入后记录的版本号（删除也算一次写入）；更新时可作下次的 If-Match"
        " (the record's version after the write)"
    )


def _validation_errors(index: int, exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(
            field=".".join(["items", str(index), "data", *map(str, e["loc"])]),
            location="body",
            message=errors.message(e),
            index=index,
        )
        for e in exc.errors()
    ]


def _app_errors(index: int, exc: AppError) -> list[FieldError]:
    if exc.errors:
        return [
            FieldError(
                field=f"items.{index}.data.{e.field}",
                location="body",
                message=e.message,
                index=index,
            )
            for e in exc.errors
        ]
    return [
        FieldError(
            field=f"items.{index}",
            location="body",
            message=f"{exc.title}: {exc.detail}",
            index=index,
        )
    ]


async def _apply(session: AsyncSession, spec: ResourceSpec, index: int, item: BatchItem) -> Any:
    if item.op == BatchOp.create:
        if item.id is not None:
            raise Invalid.field("id", "a create takes no id")
        return await records.insert(
            session,
            spec,
            spec.create.model_validate(item.data or {}).model_dump(exclude_unset=True),
        )
    if item.id is None:
        raise Invalid.field("id", f"{item.op.value} needs the id of the record")
    record = await records.get_live(session, spec, item.id, lock=True)
    records.check_version(record, [item.if_match] if item.if_match else None)
    if item.op == BatchOp.update:
        if not item.data:
            raise Invalid.field("data", "an update needs the fields to change")
        await records.apply_update(
            session,
            spec,
            record,
            spec.update.model_validate(item.data).model_dump(exclude_unset=True),
        )
    else:
        if item.data:
            raise Invalid.field("data", "a delete takes no data")
        await records.soft_delete(session, spec, record)
    return record


async def run(
    session: AsyncSession, spec: ResourceSpec, request: BatchRequest
) -> list[tuple[BatchResult, Any]]:
    """Applies every item in one transaction; any failure rolls all of it back and names each
    failing item, so a client can fix them all in one go."""
    errors: list[FieldError] = []
    done: list[tuple[BatchResult, Any]] = []
    for index, item in enumerate(request.items):
        savepoint = await session.begin_nested()  # a failed item must not poison the rest's check
        try:
            record = await _apply(session, spec, index, item)
            await savepoint.commit()
        except ValidationError as exc:
            await savepoint.rollback()
            errors += _validation_errors(index, exc)
            continue
        except AppError as exc:
            await savepoint.rollback()
            errors += _app_errors(index, exc)
            continue
        except IntegrityError:
            await savepoint.rollback()
            errors.append(
                FieldError(
                    field=f"items.{index}",
                    location="body",
                    message="conflicts with another record",
                    index=index,
                )
            )
            continue
        done.append(
            (BatchResult(index=index, op=item.op, id=record.id, version=record.version), record)
        )
    if errors:
        await session.rollback()
        failing = sorted({e.index for e in errors if e.index is not None})
        raise Invalid(
            f"{len(failing)} of {len(request.items)} items failed (indexes {', '.join(map(str, failing))}); nothing was written",
            errors=errors,
        )
    await db.commit(session)
    return done
