"""The change feed: every create, update and delete, in commit order."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import ReadSession
from app.errors import responses
from app.resources import ALL
from app.services import changes

router = APIRouter()

ResourceName = StrEnum("ResourceName", {spec.name: spec.name for spec in ALL})  # type: ignore[misc]


class ChangePublic(BaseModel):
    seq: int = Field(description="序号，严格递增 (strictly increasing)")
    resource: str = Field(description="资源名，如 projects", examples=["projects"])
    id: int = Field(description="记录编号")
    external_id: str | None = None
    op: str = Field(description="create / update / delete", examples=["update"])
    version: int
    changed_at: datetime
    actor: str | None = Field(description="写入者 (who made the change)")
    request_id: str | None = None
    data: dict[str, Any] | None = Field(description="变更后的记录；删除时为空 (tombstone)")


class ChangePage(BaseModel):
    items: list[ChangePublic]
    last_seq: int = Field(description="本页最后一个 seq；下次以 after=last_seq 继续")


@router.get(
    "/changes",
    response_model=ChangePage,
    tags=["同步 Sync"],
    summary="变更流：按提交顺序列出所有写入",
    description=(
        "以 `after=上次的 last_seq` 轮询，不会漏掉、也不会重复任何变更；删除以墓碑 (data 为空) 出现。"
        " Poll with `after=last_seq`: no change is missed or seen twice."
    ),
    operation_id="list_changes",
    responses=responses(422),
)
async def list_changes(
    session: ReadSession,
    after: Annotated[int, Query(ge=0, description="从此 seq 之后开始")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="最多条数 (≤ 1000)")] = 100,
    resource: Annotated[ResourceName | None, Query(description="只看某类资源")] = None,
) -> ChangePage:
    rows = await changes.after(session, after, limit, resource.value if resource else None)
    items = [
        ChangePublic(
            seq=r.seq or 0,
            resource=r.resource,
            id=r.record_id,
            external_id=r.external_id,
            op=r.op,
            version=r.version,
            changed_at=r.changed_at,
            actor=r.actor,
            request_id=r.request_id,
            data=r.data,
        )
        for r in rows
    ]
    return ChangePage(items=items, last_seq=items[-1].seq if items else after)
