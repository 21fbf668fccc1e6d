"""The seven resources, declared: what each stores, how it is listed, what it hangs from."""

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db import Record, one, run, statement
from app.errors import FieldError, Invalid
from app.models.chain import Chain, ChainCreate, ChainPublic, ChainRole
from app.models.common import YEAR_MAX, YEAR_MIN, Id, ListParams, QueryText, partial
from app.models.enterprise import Enterprise, EnterpriseCreate, EnterprisePublic
from app.models.investment import Investment, InvestmentCreate, InvestmentKind, InvestmentPublic
from app.models.park import Park, ParkCreate, ParkLevel, ParkPublic
from app.models.project import Project, ProjectCreate, ProjectPublic, Stage
from app.models.source import Source, SourceCreate, SourcePublic
from app.models.target import Metric, Recurrence, Target, TargetCreate, TargetPublic
from app.money import AMOUNT_TEXT_PATTERN, MoneyUnit, amount_text, to_yuan
from app.services import project as project_service
from app.services.records import (
    ONE_WRITE,
    PARKS_OF,
    Child,
    ResourceSpec,
    apply_update,
    log_change,
)

COMMON_SORT = ("id", "created_at", "updated_at")
# An amount in a query: yuan, or with its unit as staff write it (`1亿`, `5000万`); exact to
# the fen, not negative, within the column's range (`money.to_yuan`).
QueryAmount = Annotated[
    Decimal,
    BeforeValidator(amount_text),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_TEXT_PATTERN}),
]


# ---------------------------------------------------------------- rules


async def same_park(session: AsyncSession, record: Any, data: dict[str, Any]) -> None:
    """A chain, enterprise or project referred to must belong to the record's own park."""
    park_id = data.get("park_id", getattr(record, "park_id", None))
    errors = []
    for fk, model in (("chain_id", Chain), ("enterprise_id", Enterprise)):
        if fk not in data and not (record is not None and "park_id" in data):
            continue
        ref = data.get(fk, getattr(record, fk, None))
        if ref is None:
            continue
        known = session.info.get(PARKS_OF, {})
        key = (model.__tablename__, ref)
        if key in known:  # read by the parent check of this same write
            other_park = known[key]
        else:
            other_park = await session.scalar(
                select(col(model.park_id)).where(col(model.id) == ref)
            )
        if other_park is not None and other_park != park_id:
            errors.append(
                FieldError(
                    field=fk,
                    location="body",
                    message=f"{fk} {ref} belongs to park {other_park}, not park {park_id}",
                )
            )
    if errors:
        raise Invalid("; ".join(e.message for e in errors), errors=errors)


async def target_period(session: AsyncSession, record: Any, data: dict[str, Any]) -> None:
    """A range of end years (`period_end_year_earliest` … `period_end_year`) is a range: it has
    both ends, in order, and starts no earlier than the period does."""
    await same_park(session, record, data)

    def value(name: str) -> Any:
        return data[name] if name in data else getattr(record, name, None)

    earliest, end = value("period_end_year_earliest"), value("period_end_year")
    start = value("period_start_year")
    if earliest is None:
        return
    if end is None:
        raise Invalid.field(
            "period_end_year_earliest",
            "给出最早截止年份时，period_end_year 须为范围的上限，不能为空 "
            "(a range of end years needs period_end_year as its upper end)",
        )
    if earliest > end:
        raise Invalid.field(
            "period_end_year_earliest",
            f"最早截止年份 {earliest} 晚于截止年份 {end} (the range's lower end is above its upper end)",
        )
    if start is not None and earliest < start:
        raise Invalid.field(
            "period_end_year_earliest",
            f"最早截止年份 {earliest} 早于起始年份 {start} (the range ends before the period starts)",
        )


async def investment_amount(session: AsyncSession, record: Any, data: dict[str, Any]) -> None:
    """`amount` + `unit` on input → exact yuan in `amount`; the unit itself is not stored."""
    unit = data.pop("unit", None)
    if "amount" not in data:
        if unit is not None:
            raise Invalid.field("unit", "unit applies to an amount; send amount with it")
        return
    if data["amount"] is None:
        raise Invalid.field("amount", "amount cannot be null")
    try:
        data["amount"] = to_yuan(Decimal(data["amount"]), MoneyUnit(unit or MoneyUnit.YUAN))
    except ValueError as exc:
        raise Invalid.field("amount", str(exc)) from exc


async def investment_park(session: AsyncSession, record: Any, data: dict[str, Any]) -> None:
    """An investment is filed under its project's park (kept with it: `Investment.park_id`),
    read by the parent check of this same write. On PostgreSQL a write through the API reads
    it again holding the project's row (FOR UPDATE) until it commits: a move of the project
    committed meanwhile would otherwise miss this investment (`project_moved`), and the
    foreign key's own lock does not stop that update."""
    project_id = data.get("project_id")
    if project_id is None:
        return
    if session.info.get(ONE_WRITE) and session.get_bind().dialect.name == "postgresql":
        held = one(
            await run(session, statement(("project-park",), _project_park), {"id": project_id})
        )
        data["park_id"] = (held or {"park_id": session.info[PARKS_OF][("project", project_id)]})[
            "park_id"
        ]
    else:
        data["park_id"] = session.info[PARKS_OF][("project", project_id)]


def _project_park() -> Any:
    table = PROJECTS.table
    # FOR UPDATE, as `investment_written` takes it next to refresh the project's totals: a
    # shared lock taken first would deadlock two writers upgrading it at once.
    return select(table.c.park_id).where(table.c.id == bindparam("id")).with_for_update()


async def project_moved(session: AsyncSession, record: Any, before: Any) -> None:
    """A project moved to another park takes its live investments along, each a change of its
    own: a reader of the old park sees them go, one of the new park sees them come."""
    if before is None or before.park_id == record.park_id:
        return
    table = INVESTMENTS.table
    moving = await session.execute(
        select(table).where(table.c.project_id == record.id, table.c.deleted_at.is_(None))
    )
    for row in moving.mappings().all():
        await apply_update(session, INVESTMENTS, Record(row), {"park_id": record.park_id})


async def investment_written(session: AsyncSession, record: Any, before: Any) -> None:
    """An investment record moves its project's headline: recompute, and feed that change too."""
    if before is not None and all(
        before[k] == record[k] for k in record if k not in ("park_id", "version", "updated_at")
    ):
        return  # moved with its project: nothing the headline reads has changed
    project_ids = {record.project_id} | ({before.project_id} if before is not None else set())
    for project_id in sorted(project_ids):
        project = await project_service.refresh_totals(session, project_id)
        if project is not None:
            await log_change(session, PROJECTS, project, "update")


# ---------------------------------------------------------------- filters


class SourceFilters(ListParams):
    publisher: QueryText | None = Field(default=None, description="发布者")


class ParkFilters(ListParams):
    level: ParkLevel | None = Field(default=None, description="级别")
    province: QueryText | None = Field(default=None, description="省份")
    city: QueryText | None = Field(default=None, description="城市")


class ChainFilters(ListParams):
    park_id: Id | None = Field(default=None, description="园区编号")
    role: ChainRole | None = Field(default=None, description="定位 leading/pillar/sector/other")
    code: QueryText | None = Field(default=None, description="代码")


class EnterpriseFilters(ListParams):
    park_id: Id | None = Field(default=None, description="园区编号")
    chain_id: Id | None = Field(default=None, description="产业链编号")
    credit_code: QueryText | None = Field(default=None, description="统一社会信用代码")
    is_high_tech: bool | None = Field(default=None, description="高新技术企业")
    is_above_scale: bool | None = Field(default=None, description="规上企业")
    is_leading: bool | None = Field(default=None, description="头部企业")
    landed_year: int | None = Field(default=None, ge=YEAR_MIN, le=YEAR_MAX, description="落地年份")


class ProjectFilters(ListParams):
    park_id: Id | None = Field(default=None, description="园区编号")
    chain_id: Id | None = Field(default=None, description="产业链编号")
    enterprise_id: Id | None = Field(default=None, description="企业编号")
    stage: Stage | None = Field(default=None, description="阶段，如 signed 签约")
    is_key: bool | None = Field(default=None, description="重点项目")
    year: int | None = Field(default=None, ge=YEAR_MIN, le=YEAR_MAX, description="年度")
    code: QueryText | None = Field(default=None, description="项目代码")
    investment_conflict: bool | None = Field(default=None, description="投资额有冲突")
    # The column's own precision: a bound it cannot hold cannot be bound to the query.
    min_investment: QueryAmount | None = Field(
        default=None,
        description="总投资下限（含）：元，或带单位，如 1亿、1.5亿元、5000万",
        examples=["1亿"],
    )
    max_investment: QueryAmount | None = Field(
        default=None,
        description="总投资上限（含）：元，或带单位，如 10亿、3000万元",
        examples=["10亿"],
    )


class InvestmentFilters(ListParams):
    project_id: Id | None = Field(default=None, description="项目编号")
    kind: InvestmentKind | None = Field(default=None, description="类型")
    source_id: Id | None = Field(default=None, description="来源编号")


class TargetFilters(ListParams):
    park_id: Id | None = Field(default=None, description="园区编号")
    chain_id: Id | None = Field(default=None, description="产业链编号")
    metric: Metric | None = Field(default=None, description="指标")
    recurrence: Recurrence | None = Field(default=None, description="周期")


# ---------------------------------------------------------------- the resources

SOURCES = ResourceSpec(
    name="sources",
    singular="source",
    title_zh="来源",
    model=Source,
    public=SourcePublic,
    create=SourceCreate,
    update=partial(SourceCreate, "SourceUpdate"),
    filters=SourceFilters,
    sort_fields=(*COMMON_SORT, "title", "published_date"),
    search_fields=("title", "publisher"),
    children=(
        Child("parks", Park, "source_id"),
        Child("chains", Chain, "source_id"),
        Child("enterprises", Enterprise, "source_id"),
        Child("projects", Project, "source_id"),
        Child("investments", Investment, "source_id"),
        Child("targets", Target, "source_id"),
    ),
    park=None,  # shared by every park
    edit_example={"url": "https://example.org/article"},
)

PARKS = ResourceSpec(
    name="parks",
    singular="park",
    title_zh="园区",
    model=Park,
    public=ParkPublic,
    create=ParkCreate,
    update=partial(ParkCreate, "ParkUpdate"),
    filters=ParkFilters,
    sort_fields=(*COMMON_SORT, "name", "level"),
    parents={"source_id": Source},
    children=(
        Child("chains", Chain, "park_id"),
        Child("enterprises", Enterprise, "park_id"),
        Child("projects", Project, "park_id"),
        Child("targets", Target, "park_id"),
    ),
    unique=(("external_id",), ("name",)),
    park="id",
    edit_example={"positioning": "全市高质量发展重要引擎"},
)

CHAINS = ResourceSpec(
    name="chains",
    singular="chain",
    title_zh="产业链",
    model=Chain,
    public=ChainPublic,
    create=ChainCreate,
    update=partial(ChainCreate, "ChainUpdate"),
    filters=ChainFilters,
    sort_fields=(*COMMON_SORT, "name", "code", "role"),
    search_fields=("name", "name_en", "code"),
    parents={"park_id": Park, "source_id": Source},
    children=(
        Child("enterprises", Enterprise, "chain_id"),
        Child("projects", Project, "chain_id"),
        Child("targets", Target, "chain_id"),
    ),
    unique=(("external_id",), ("park_id", "code")),
    edit_example={"role": "pillar"},
)

ENTERPRISES = ResourceSpec(
    name="enterprises",
    singular="enterprise",
    title_zh="企业",
    model=Enterprise,
    public=EnterprisePublic,
    create=EnterpriseCreate,
    update=partial(EnterpriseCreate, "EnterpriseUpdate"),
    filters=EnterpriseFilters,
    sort_fields=(*COMMON_SORT, "name", "landed_year"),
    search_fields=("name", "credit_code"),
    parents={"park_id": Park, "chain_id": Chain, "source_id": Source},
    children=(Child("projects", Project, "enterprise_id"),),
    unique=(("external_id",), ("credit_code",)),
    validate=same_park,
    edit_example={"is_high_tech": True, "landed_year": 2021},
)

PROJECTS = ResourceSpec(
    name="projects",
    singular="project",
    title_zh="项目",
    model=Project,
    public=ProjectPublic,
    create=ProjectCreate,
    update=partial(ProjectCreate, "ProjectUpdate"),
    filters=ProjectFilters,
    sort_fields=(*COMMON_SORT, "name", "year", "stage", "total_investment", "code"),
    search_fields=("name", "code"),
    parents={"park_id": Park, "chain_id": Chain, "enterprise_id": Enterprise, "source_id": Source},
    children=(Child("investments", Investment, "project_id"),),
    unique=(("external_id",), ("code",)),
    filter_ops={
        "min_investment": lambda v: Project.total_investment >= v,
        "max_investment": lambda v: Project.total_investment <= v,
    },
    validate=same_park,
    after_write=project_moved,
    children_follow=True,
    edit_example={"stage": "signed"},
)

INVESTMENTS = ResourceSpec(
    name="investments",
    singular="investment",
    title_zh="投资额",
    model=Investment,
    public=InvestmentPublic,
    create=InvestmentCreate,
    update=partial(InvestmentCreate, "InvestmentUpdate"),
    filters=InvestmentFilters,
    sort_fields=(*COMMON_SORT, "amount", "as_of_date", "kind"),
    search_fields=("quote", "note"),
    parents={"project_id": Project, "source_id": Source},
    prepare=investment_amount,
    validate=investment_park,
    after_write=investment_written,
    edit_example={"as_of_date": "2021-12-31"},
)

TARGETS = ResourceSpec(
    name="targets",
    singular="target",
    title_zh="目标",
    model=Target,
    public=TargetPublic,
    create=TargetCreate,
    update=partial(TargetCreate, "TargetUpdate"),
    filters=TargetFilters,
    sort_fields=(*COMMON_SORT, "metric", "period_start_year"),
    search_fields=("quote", "note", "unit"),
    parents={"park_id": Park, "chain_id": Chain, "source_id": Source},
    validate=target_period,
    edit_example={"value": "120"},
)

ALL = (PARKS, CHAINS, ENTERPRISES, PROJECTS, INVESTMENTS, TARGETS, SOURCES)
BY_NAME = {spec.name: spec for spec in ALL}
