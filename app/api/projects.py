"""Project routes beyond the standard five: a project's own investment records, listed and
added where staff look for them."""

from typing import Annotated, Any

from fastapi import Body, Path, Query, Request, Response
from pydantic import create_model

from app.api.crud import Operations, json_response, page_response, tag
from app.api.deps import CanRead, CanWrite, ReadSession, WriteSession, deleted_for_staff
from app.errors import responses
from app.models.common import MAX_ID, CreateModel, Page
from app.models.investment import InvestmentCreate, InvestmentPublic
from app.resources import INVESTMENTS, PROJECTS, InvestmentFilters
from app.services import records
from app.services.project import HEADLINE_RULE

operations = Operations()
_page: Any = Page[InvestmentPublic]
ProjectId = Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="项目编号")]
# An investment record's body without its project, which the path names.
_fields: dict[str, Any] = {
    name: (info.annotation, info)
    for name, info in InvestmentCreate.model_fields.items()
    if name != "project_id"
}
ProjectInvestmentCreate: Any = create_model(
    "ProjectInvestmentCreate",
    __base__=CreateModel,
    __doc__="项目的一条投资额记录（所属项目由路径给出）(an investment record of the project)",
    **_fields,
)


@operations(
    "GET",
    "/projects/{id}/investments",
    response_model=_page,
    tags=[tag(PROJECTS)],
    summary="列出项目的投资额记录",
    description="一个项目的全部投资额记录（含相互冲突的记录）。" + HEADLINE_RULE,
    operation_id="list_project_investments",
    dependencies=[CanRead],
    responses=responses(404, 422),
)
async def list_project_investments(
    request: Request,
    session: ReadSession,
    project_id: ProjectId,
    params: Annotated[InvestmentFilters, Query()],
) -> Response:
    await deleted_for_staff(request, params)
    await records.get_live(session, PROJECTS, project_id)
    rows, cursor = await records.list_page(
        session,
        INVESTMENTS,
        params,
        within={"project_id": project_id},
    )
    return page_response(INVESTMENTS, rows, cursor)


@operations(
    "POST",
    "/projects/{id}/investments",
    status_code=201,
    response_model=InvestmentPublic,
    tags=[tag(PROJECTS)],
    summary="给项目添加投资额记录（如计划总投资）",
    description=(
        "与 `POST /investments` 相同，所属项目取自路径：金额可带单位，如 "
        '`{"kind": "planned_total", "amount": "1.5", "unit": "亿元"}`。项目的总投资随之按总投资规则更新。'
        "成功返回 201，`Location` 指向新记录。" + HEADLINE_RULE
    ),
    operation_id="create_project_investment",
    dependencies=[CanWrite],
    responses=responses(404, 409, 422),
)
async def create_project_investment(
    session: WriteSession,
    project_id: ProjectId,
    body: Annotated[
        ProjectInvestmentCreate,
        Body(
            openapi_examples={
                "planned": {
                    "summary": "计划总投资 1.5 亿元",
                    "value": {"kind": "planned_total", "amount": "1.5", "unit": "亿元"},
                }
            }
        ),
    ],
) -> Response:
    await records.get_live(session, PROJECTS, project_id)  # 404 for none, or another park's
    data = InvestmentCreate.model_validate(
        {**body.model_dump(exclude_unset=True), "project_id": project_id}
    )
    record = await records.create(session, INVESTMENTS, data)
    return json_response(INVESTMENTS, record, 201, {"Location": f"/api/v1/investments/{record.id}"})
