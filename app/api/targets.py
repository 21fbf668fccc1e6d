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
    "每条可能计入的记录按三值判断：条件都已知且成立则计入（counted），有条件已知不成立则排除（excluded），"
    "否则跳过（skipped）并注明原因。status: complete 完整 / partial 部分数据（actual 为下限，"
    "actual_upper 为上限）/ no_data 数据不足（该年没有可判断的记录：actual 与 ratio 为空，绝不显示为 0%）"
    "/ not_computable 无法计算。"
    " Actuals are computed from the registry; records whose facts are unknown are skipped with"
    " the reason, and a target with nothing known is no_data, never 0%. Rules per metric: "
    + " | ".join(f"{m.value}: {rule}" for m, rule in target_service.RULES.items())
)
Year = Annotated[int, Query(ge=1949, le=2100, description="统计年份", examples=[2021])]


class Counted(BaseModel):
    resource: str = Field(
        description="资源: projects 项目 / enterprises 企业", examples=["projects"]
    )
    id: int = Field(description="记录编号", examples=[1])
    name: str = Field(description="名称", examples=["鲁南大数据中心"])


class SkippedRecords(BaseModel):
    reason: str = Field(
        description="原因代码: "
        + " / ".join(f"{k} {v}" for k, v in target_service.REASONS.items()),
        examples=["no_year"],
    )
    label: str = Field(description="原因", examples=["未填项目年度"])
    count: int = Field(description="因此原因跳过的记录数", examples=[2])
    records: list[Counted] = Field(description=f"这些记录（最多列出 {target_service.LISTED} 条）")


class TargetProgress(BaseModel):
    target: TargetPublic = Field(description="目标本身 (the target)")
    year: int = Field(description="统计年份", examples=[2021])
    in_period: bool = Field(description="该年是否在目标期内")
    computable: bool = Field(description="能否由登记册计算（产业规模等不在登记册中）")
    status: target_service.Status = Field(
        description=(
            "数据状态: complete 完整 / partial 部分数据（有记录缺数据，actual 为下限）/ "
            "no_data 数据不足（actual、ratio 为空）/ not_computable 无法计算"
        ),
        examples=["no_data"],
    )
    status_label: str = Field(description="数据状态（中文）", examples=["数据不足"])
    target_value: DecimalString = Field(description="目标值")
    actual: DecimalString | None = Field(
        description="实际值（由登记册计算）；partial 时为下限；no_data、not_computable 时为空"
    )
    actual_upper: DecimalString | None = Field(
        description="实际值上限：跳过的记录若都计入时的值；complete 时等于 actual"
    )
    ratio: DecimalString | None = Field(
        description=(
            "完成率 actual / target；partial 时为下限（按已计入的记录）；no_data、not_computable 时为空"
        ),
        examples=["0.5000"],
    )
    rule: str = Field(description="计算规则")
    records_counted: int = Field(description="计入的记录数", examples=[0])
    records_excluded: int = Field(description="已知不符合规则而排除的记录数", examples=[0])
    records_skipped: int = Field(description="因数据未知而跳过的记录数", examples=[2])
    counted: list[Counted] = Field(description="计入的记录")
    skipped: list[SkippedRecords] = Field(
        description="跳过的记录，按原因分组（一条记录可有多个原因）"
    )


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
        status=p.status,
        status_label=target_service.STATUS_ZH[p.status],
        target_value=p.target.value,
        actual=p.actual,
        actual_upper=p.actual_upper,
        ratio=p.ratio,
        rule=p.rule,
        records_counted=len(p.counted),
        records_excluded=p.records_excluded,
        records_skipped=p.records_skipped,
        counted=[Counted(**c) for c in p.counted],
        skipped=[
            SkippedRecords(
                reason=s.reason,
                label=s.label,
                count=s.count,
                records=[Counted(**r) for r in s.records],
            )
            for s in p.skipped.values()
        ],
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
