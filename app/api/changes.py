"""The change feed: every create, update and delete, in commit order."""

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import CanRead, ReadSession
from app.errors import responses
from app.models.change import ChangePage, ChangePublic
from app.resources import ALL
from app.services import changes

router = APIRouter()

ResourceName = StrEnum("ResourceName", {spec.name: spec.name for spec in ALL})  # type: ignore[misc]


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
    dependencies=[CanRead],
    responses=responses(422),
)
async def list_changes(
    session: ReadSession,
    after: Annotated[int, Query(ge=0, description="从此 seq 之后开始")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="最多条数 (≤ 1000)")] = 100,
    resource: Annotated[ResourceName | None, Query(description="只看某类资源")] = None,
) -> ChangePage:
    rows = await changes.after(session, after, limit, resource.value if resource else None)
    items = [ChangePublic.from_row(r) for r in rows]
    return ChangePage(items=items, last_seq=items[-1].seq if items else after)
