"""Target progress and chain scorecards, computed from the registry."""

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from app.api.crud import tag
from app.api.deps import CanRead, ReadSession
from app.errors import responses
from app.models.chain import ChainPublic
from app.models.common import MAX_ID, DecimalString
from app.models.project import LANDED_STAGES
from app.models.target import TargetPublic
from app.resources import CHAINS, TARGETS
from app.services import records
from app.services import target as target_service

router = APIRouter()

LANDED = "、".join(LANDED_STAGES)
PROGRESS_DOC = (
    "实际值由登记册计算，从不手工填写。项目自 signed 签约起视为落地（"
    + LANDED
    + "），cancelled 终止的从不计入。"
    " Actuals are computed from the registry. Rules per metric: "
    + " | ".join(f"{m.value}: {rule}" for m, rule in target_service.RULES.items())
)
Year = Annotated[int, Query(ge=1949, le=2100, description="统计年份", examples=[2021])]


class Counted(BaseModel):
    resource: str = Field(
        description="资源: projects 项目 / enterprises 企业", examples=["projects"]
    )
    id: int = Field(description="记录编号", examples=[1])
    name: str = Field(description="名称", examples=["鲁南大数据中心"])


class TargetProgress(BaseModel):
    target: TargetPublic = Field(description="目标本身 (the target)")
    year: int = Field(description="统计年份", examples=[2021])
    in_period: bool = Field(description="该年是否在目标期内")
    computable: bool = Field(description="能否由登记册计算（产值等不在登记册中）")
    target_value: DecimalString = Field(description="目标值")
    actual: DecimalString | None = Field(description="实际值（由登记册计算）")
    ratio: DecimalString | None = Field(description="完成率 actual / target", examples=["0.5000"])
    rule: str = Field(description="计算规则")
    counted: list[Counted] = Field(description="计入的记录")


class Scorecard(BaseModel):
    chain: ChainPublic = Field(description="产业链 (the chain)")
    year: int = Field(description="统计年份", examples=[2021])
    items: list[TargetProgress] = Field(description="该产业链每个目标的完成进度")


def _public(p: target_service.Progress) -> TargetProgress:
    return TargetProgress(
        target=TargetPublic.model_validate(p.target),
        year=p.year,
        in_period=p.in_period,
        computable=p.computable,
        target_value=p.target.value,
        actual=p.actual,
        ratio=p.ratio,
        rule=p.rule,
        counted=[Counted(**c) for c in p.counted],
    )


@router.get(
    "/targets/{id}/progress",
    response_model=TargetProgress,
    tags=[tag(TARGETS)],
    summary="目标完成进度（由登记册计算）",
    description=PROGRESS_DOC,
    operation_id="get_target_progress",
    dependencies=[CanRead],
    responses=responses(404, 422),
)
async def target_progress(
    session: ReadSession,
    target_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="目标编号")],
    year: Year,
) -> TargetProgress:
    target = await records.get_live(session, TARGETS, target_id)
    return _public(await target_service.progress(session, target, year))


@router.get(
    "/chains/{id}/scorecard",
    response_model=Scorecard,
    tags=[tag(CHAINS)],
    summary="产业链记分卡：全部目标及完成进度",
    description=PROGRESS_DOC,
    operation_id="get_chain_scorecard",
    dependencies=[CanRead],
    responses=responses(404, 422),
)
async def chain_scorecard(
    session: ReadSession,
    chain_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="产业链编号")],
    year: Year,
) -> Scorecard:
    chain = await records.get_live(session, CHAINS, chain_id)
    items = [
        _public(await target_service.progress(session, t, year))
        for t in await target_service.chain_targets(session, chain_id)
    ]
    return Scorecard(chain=ChainPublic.model_validate(chain), year=year, items=items)
