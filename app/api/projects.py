"""Project routes beyond the standard five: a project's own investment records."""

from typing import Annotated, Any

from fastapi import Path, Query, Request, Response

from app.api.crud import Operations, page_response, tag
from app.api.deps import CanRead, ReadSession, deleted_for_staff
from app.errors import responses
from app.models.common import MAX_ID, Page
from app.models.investment import InvestmentPublic
from app.resources import INVESTMENTS, PROJECTS, InvestmentFilters
from app.services import records
from app.services.project import HEADLINE_RULE

operations = Operations()
_page: Any = Page[InvestmentPublic]


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
    project_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="项目编号")],
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
