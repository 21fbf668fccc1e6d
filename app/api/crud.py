"""The five operations every resource has, built from its `ResourceSpec`."""

import json
from collections.abc import Callable
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, Field, TypeAdapter

from app.api.deps import (
    CanRead,
    CanWrite,
    IfMatch,
    IfNoneMatch,
    ReadSession,
    StaffRead,
    WriteSession,
    deleted_for_staff,
    etags,
    none_match_tags,
)
from app.api.route import ResourceRoute
from app.errors import NotFound, responses
from app.models.change import ChangePublic
from app.models.common import EXTERNAL_ID_PATTERN, MAX_ID, Page
from app.resources import BY_NAME
from app.services import batch, changes, records
from app.services.records import ResourceSpec

JSON = "application/json"
HISTORY: TypeAdapter[list[ChangePublic]] = TypeAdapter(list[ChangePublic])


def json_response(
    spec: ResourceSpec, record: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        spec.public_json(record),
        status_code=status,
        media_type=JSON,
        headers={"ETag": records.etag(record), **(headers or {})},
    )


def page_response(spec: ResourceSpec, rows: list[Any], cursor: str | None) -> Response:
    """`{"items": [...], "next_cursor": ...}` (the `Page` schema): the rows' plain data written
    in one go, or each row through its model and joined."""
    data = [spec.plain_data(r) for r in rows]
    if all(d is not None for d in data):
        page = {"items": data, "next_cursor": cursor}
        return Response(pydantic_core.to_json(page), media_type=JSON)
    items = b",".join(spec.public_json(r) for r in rows)
    after = json.dumps(cursor).encode()
    return Response(b'{"items":[' + items + b'],"next_cursor":' + after + b"}", media_type=JSON)


class BatchResponseItem(batch.BatchResult):
    data: dict[str, Any] | None = Field(description="写入后的记录；删除为空")


class BatchResponse(BaseModel):
    items: list[BatchResponseItem] = Field(description="每项的结果，顺序同请求 (one per item)")


def operation(router: APIRouter, method: str, path: str, **options: Any) -> Callable[[Any], Any]:
    """Registers the decorated endpoint as a `ResourceRoute` (the lean request path), on the
    application's own router: `ResourceRoute.matches` reads the route's full path, which an
    included router's routes do not carry."""

    def register(endpoint: Any) -> Any:
        router.add_api_route(
            path, endpoint, methods=[method], route_class_override=ResourceRoute, **options
        )
        return endpoint

    return register


class Operations:
    """Resource operations a module declares, registered by `main` on the application's
    router under the API prefix (see `operation`)."""

    def __init__(self) -> None:
        self.declared: list[tuple[str, str, Any, dict[str, Any]]] = []

    def __call__(self, method: str, path: str, **options: Any) -> Callable[[Any], Any]:
        def declare(endpoint: Any) -> Any:
            self.declared.append((method, path, endpoint, options))
            return endpoint

        return declare

    def register(self, router: APIRouter, prefix: str) -> None:
        for method, path, endpoint, options in self.declared:
            operation(router, method, prefix + path, **options)(endpoint)


def tag(spec: ResourceSpec) -> str:
    return f"{spec.title_zh} {spec.name.capitalize()}"


def add_crud_routes(
    router: APIRouter,
    spec: ResourceSpec,
    examples: dict[str, Any] | None = None,
    prefix: str = "",
) -> None:
    Public: Any = spec.public
    Create: Any = spec.create
    Update: Any = spec.update
    Filters: Any = spec.filters
    page_model: Any = Page[Public]
    base = f"{prefix}/{spec.name}"
    # `:int` so that a sibling path (`/parks/batch`, `/projects/export`) with another method
    # is answered 405 by the router instead of reaching this route as a malformed id (422).
    item = f"{base}/{{id:int}}"
    # Shared records (sources) are changed by callers of every park only.
    shared = (403,) if spec.park is None else ()
    tags: list[str | Any] = [tag(spec)]
    RecordId = Annotated[int, Path(alias="id", description=f"{spec.title_zh}编号", ge=1, le=MAX_ID)]
    links = record_links(spec)
    create_examples = (
        {"seed": {"summary": "示例（来自种子数据）", "value": examples}} if examples else None
    )
    edit_examples = (
        {"one": {"summary": "只改一个字段（其余字段不变）", "value": spec.edit_example}}
        if spec.edit_example
        else None
    )

    @operation(
        router,
        "GET",
        base,
        response_model=page_model,
        tags=tags,
        summary=f"列出{spec.title_zh}",
        description=(
            f"分页列出{spec.title_zh}：`limit` 每页条数（默认 50，最多 500，超出返回 422），"
            "`cursor` 取上一页的 `next_cursor`，`sort` 排序，`q` 名称模糊搜索（支持中文），以及按字段筛选。"
            f"可排序字段: {', '.join(spec.sort_fields)}。"
        ),
        operation_id=f"list_{spec.name}",
        dependencies=[CanRead],
        responses=responses(422),
    )
    async def list_records(
        request: Request, session: ReadSession, params: Annotated[Filters, Query()]
    ) -> Response:
        await deleted_for_staff(request, params)
        rows, cursor = await records.list_page(session, spec, params)
        return page_response(spec, rows, cursor)

    @operation(
        router,
        "POST",
        base,
        status_code=201,
        response_model=Public,
        tags=tags,
        summary=f"新建{spec.title_zh}",
        description="成功返回 201，`Location` 指向新记录，`ETag` 为其版本。",
        operation_id=f"create_{spec.singular}",
        dependencies=[CanWrite],
        # A park is made only by a caller of every park.
        responses=responses(403, 409, 422) if spec.park == "id" else responses(409, 422),
        openapi_extra={"responses": {"201": {"links": links}}},
    )
    async def create_record(
        session: WriteSession, body: Annotated[Create, Body(openapi_examples=create_examples)]
    ) -> Response:
        record = await records.create(session, spec, body)
        return json_response(spec, record, 201, {"Location": f"{base}/{record.id}"})

    @operation(
        router,
        "PUT",
        f"{base}/by-external-id/{{external_id}}",
        response_model=Public,
        tags=tags,
        summary=f"按外部编号新建或整体替换{spec.title_zh}（幂等）",
        description=(
            "同步系统用自己的编号写入：不存在则新建 (201)，存在则整体替换 (200)，未给出的字段恢复默认值；"
            "重复同一请求不产生新版本。可带 `If-Match`。"
            " Create or replace by the caller's key; repeating the call changes nothing."
        ),
        operation_id=f"put_{spec.singular}_by_external_id",
        dependencies=[CanWrite],
        responses={**responses(409, 412, 422), 201: {"description": "已新建 (created)"}},
        openapi_extra={"responses": {"200": {"links": links}, "201": {"links": links}}},
    )
    async def put_record(
        session: WriteSession,
        # The body's own rule for external_id (no control character, no whitespace in any
        # regex engine's sense): a key the body would refuse is not taken from the path either.
        external_id: Annotated[
            str,
            Path(min_length=1, max_length=100, pattern=EXTERNAL_ID_PATTERN, description="外部编号"),
        ],
        body: Annotated[Create, Body(openapi_examples=create_examples)],
        if_match: IfMatch = None,
    ) -> Response:
        record, created = await records.put_by_external_id(
            session, spec, external_id, body, etags(if_match)
        )
        if created:
            return json_response(spec, record, 201, {"Location": f"{base}/{record.id}"})
        return json_response(spec, record)

    @operation(
        router,
        "POST",
        f"{base}/batch",
        response_model=BatchResponse,
        tags=tags,
        summary=f"批量写入{spec.title_zh}（全部成功或全部不写）",
        description=(
            f"最多 {batch.MAX_ITEMS} 项 create / update / delete，在一个事务中执行。任一项失败则什么都不写，"
            "并在 problem+json 的 `errors` 中列出每个失败项的 `index`。"
            " All or nothing; every failing item is listed with its index."
        ),
        operation_id=f"batch_{spec.name}",
        dependencies=[CanWrite],
        responses=responses(422),
    )
    async def batch_records(session: WriteSession, body: batch.BatchRequest) -> Response:
        done = await batch.run(session, spec, body)
        answer = BatchResponse(
            items=[
                BatchResponseItem(
                    **r.model_dump(), data=None if r.op == "delete" else spec.to_public(rec)
                )
                for r, rec in done
            ]
        )
        return Response(answer.model_dump_json(), media_type=JSON)

    @operation(
        router,
        "GET",
        item,
        response_model=Public,
        tags=tags,
        summary=f"查看{spec.title_zh}",
        description="返回 `ETag`；带 `If-None-Match` 且未变化时返回 304。已删除的记录返回 404。",
        operation_id=f"get_{spec.singular}",
        dependencies=[CanRead],
        responses={**responses(404, 422), 304: {"description": "未变化 (not modified)"}},
    )
    async def get_record(
        session: ReadSession, record_id: RecordId, if_none_match: IfNoneMatch = None
    ) -> Response:
        record = await records.read_row(session, spec, record_id)
        tags = none_match_tags(if_none_match)
        if tags is not None and ("*" in tags or records.etag(record) in tags):
            return Response(status_code=304, headers={"ETag": records.etag(record)})
        return json_response(spec, record)

    @operation(
        router,
        "GET",
        f"{item}/history",
        response_model=list[ChangePublic],
        tags=tags,
        summary=f"{spec.title_zh}的修改历史：谁在何时改了什么",
        description=(
            "按顺序列出该记录的每次新建、修改、删除，含操作者 (actor) 与请求编号；已删除的记录仍可查看。"
            "需要登录（PUBLIC_READ 不含历史）。"
        ),
        operation_id=f"get_{spec.singular}_history",
        dependencies=[StaffRead],
        responses=responses(404, 422),
    )
    async def record_history(session: ReadSession, record_id: RecordId) -> Response:
        rows = await changes.history(session, spec.name, record_id)
        if not rows:
            raise NotFound(f"{spec.singular} {record_id} does not exist")
        return Response(
            HISTORY.dump_json([ChangePublic.from_row(r) for r in rows]), media_type=JSON
        )

    @operation(
        router,
        "PATCH",
        item,
        response_model=Public,
        tags=tags,
        summary=f"修改{spec.title_zh}（部分更新）",
        description=(
            "部分更新：只改请求里给出的字段，未写的字段保持原样；把字段写成 null 即清空它（必填字段除外）。"
            "在 Try it out 中只保留要改的字段。带 `If-Match` 时版本不符返回 412。内容未变则版本不变。"
            " Partial update: only the fields sent are changed."
        ),
        operation_id=f"update_{spec.singular}",
        dependencies=[CanWrite],
        responses=responses(*shared, 404, 409, 412, 422),
        openapi_extra={"responses": {"200": {"links": links}}},
    )
    async def update_record(
        session: WriteSession,
        record_id: RecordId,
        body: Annotated[Update, Body(openapi_examples=edit_examples)],
        if_match: IfMatch = None,
    ) -> Response:
        record = await records.update(session, spec, record_id, body, etags(if_match))
        return json_response(spec, record)

    @operation(
        router,
        "DELETE",
        item,
        status_code=204,
        tags=tags,
        summary=f"删除{spec.title_zh}（软删除）",
        description="软删除：记录从列表和查询中消失，但保留墓碑供同步。仍有下级记录时返回 409 并列出它们。",
        operation_id=f"delete_{spec.singular}",
        dependencies=[CanWrite],
        responses=responses(*shared, 404, 409, 412, 422),
    )
    async def delete_record(
        session: WriteSession, record_id: RecordId, if_match: IfMatch = None
    ) -> Response:
        await records.delete(session, spec, record_id, etags(if_match))
        return Response(status_code=204)


def record_links(spec: ResourceSpec) -> dict[str, Any]:
    """OpenAPI links from a response carrying one record (create, update, put): read it, its
    history, update it or delete it at the version just returned, and create its children
    under it. Clients generated from the document, and schemathesis's stateful phase, follow
    them to chain create → read → update → delete."""
    by_id = {"id": "$response.body#/id"}
    at_version = {**by_id, "header.If-Match": "$response.header.ETag"}
    links: dict[str, Any] = {
        f"get_{spec.singular}": {
            "operationId": f"get_{spec.singular}",
            "parameters": by_id,
            "description": f"读取这条{spec.title_zh} (read it)",
        },
        f"get_{spec.singular}_history": {
            "operationId": f"get_{spec.singular}_history",
            "parameters": by_id,
            "description": "它的修改历史 (its history)",
        },
        f"update_{spec.singular}": {
            "operationId": f"update_{spec.singular}",
            "parameters": at_version,
            "description": "在刚返回的版本上修改 (update at this version)",
        },
        f"delete_{spec.singular}": {
            "operationId": f"delete_{spec.singular}",
            "parameters": at_version,
            "description": "在刚返回的版本上删除 (delete at this version)",
        },
    }
    for child in spec.children:
        other = BY_NAME[child.resource]
        links[f"create_{other.singular}_under_it"] = {
            "operationId": f"create_{other.singular}",
            # Merged into the request body: the new record refers to this one.
            "requestBody": {child.fk: "$response.body#/id"},
            "description": f"在它之下新建{other.title_zh} (a {other.singular} that refers to it)",
        }
    return links


def model_example(model: type[BaseModel]) -> dict[str, Any]:
    """An example body made of each field's first example (the seed data's own values)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        examples = info.examples or extra.get("examples")
        if isinstance(examples, list) and examples:
            out[name] = examples[0]
    return out
