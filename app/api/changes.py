"""The change feed: every create, update and delete, in commit order."""

from enum import StrEnum
from typing import Annotated

from fastapi import Query, Request, Response

from app.api.crud import Operations
from app.api.deps import CanRead, ReadSession, caller
from app.errors import responses
from app.models.change import ChangePage
from app.resources import ALL
from app.services import changes

operations = Operations()
# `seq` is a BIGINT: a larger `after` could never match, and the driver refuses to bind it.
MAX_SEQ = 2**63 - 1
MAX_FEED_PAGE = 1000

TABLES = {spec.name: spec.table for spec in ALL}
ResourceName = StrEnum("ResourceName", {spec.name: spec.name for spec in ALL})  # type: ignore[misc]
# Its values explained, as a class docstring explains the other enums' (e.g. `parks 园区`).
ResourceName.__doc__ = ", ".join(f"{spec.name} {spec.title_zh}" for spec in ALL)


@operations(
    "GET",
    "/changes",
    response_model=ChangePage,
    tags=["同步 Sync"],
    summary="变更流：按提交顺序列出所有写入",
    description=(
        "以 `after=上次的 last_seq` 轮询，不会漏掉、也不会重复任何变更；删除以墓碑 (data 为空) 出现。"
        " 匿名读取（PUBLIC_READ）时不含操作者与请求编号，且只显示记录的当前版本（旧版本与已删除记录只有编号）。"
        " Poll with `after=last_seq`: no change is missed or seen twice."
    ),
    operation_id="list_changes",
    dependencies=[CanRead],
    responses=responses(422),
)
async def list_changes(
    request: Request,
    session: ReadSession,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="从此 seq 之后开始")] = 0,
    limit: Annotated[
        int, Query(ge=1, le=MAX_FEED_PAGE, description=f"最多条数 (≤ {MAX_FEED_PAGE})")
    ] = 100,
    resource: Annotated[ResourceName | None, Query(description="只看某类资源")] = None,
) -> Response:
    # Anonymous public reads see the registry as it is: no staff names, no past versions.
    public = None if await caller(request) is not None else TABLES
    name = resource.value if resource else None
    page = await changes.page_json(session, after, limit, name, public)
    return Response(page, media_type="application/json")
