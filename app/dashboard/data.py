"""What the dashboard shows, gathered through the same service functions as the JSON API:
lists through `records.list_page`, target progress through `services.target` (as
`/chains/{id}/scorecard` and `/targets/{id}/progress`), sums through `services.stats` (as
`/stats/investment`), the projects whose investment records disagree as
`GET /projects?investment_conflict=true` lists them, and their sources as `GET /sources/{id}`
reads them. No query of its own, so the page and the API never disagree."""

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models.chain import Chain
from app.models.common import ListParams
from app.models.park import Park
from app.models.target import Target
from app.resources import (
    CHAINS,
    PARKS,
    PROJECTS,
    SOURCES,
    TARGETS,
    ChainFilters,
    ParkFilters,
    ProjectFilters,
    TargetFilters,
)
from app.services import records
from app.services import stats as stats_service
from app.services import target as target_service
from app.services.records import ResourceSpec
from app.services.stats import GroupBy

DEFAULT_YEAR = 2021


@dataclass
class TargetRow:
    scope: str  # the park (park-level target) or the chain's name
    chain_id: int | None
    progress: target_service.Progress


@dataclass
class DashboardData:
    parks: list[Park]
    park: Park | None
    year: int
    years: list[int]
    chains: list[Chain]
    targets: list[TargetRow]  # only those whose period holds `year`
    by_chain: list[dict[str, Any]]
    by_stage: list[dict[str, Any]]
    # All the park's projects as one group (`stats.group`): the total, or none when no project
    # has an amount, its range when figures disagree, and what it leaves out.
    overall: dict[str, Any] = field(default_factory=dict)
    # The projects whose investment records disagree (rows with `investment_figures`), and the
    # sources their figures cite, by id.
    conflicts: list[Any] = field(default_factory=list)
    sources: dict[int, Any] = field(default_factory=dict)


async def _all(
    session: AsyncSession,
    spec: ResourceSpec,
    params: ListParams,
    within: dict[str, Any] | None = None,
) -> list[Any]:
    """Every live record of a list, page after page, exactly as `GET /{resource}` pages it."""
    rows: list[Any] = []
    cursor: str | None = None
    while True:
        page, cursor = await records.list_page(
            session, spec, params.model_copy(update={"cursor": cursor}), within
        )
        rows += page
        if cursor is None:
            return rows


async def collect(session: AsyncSession, year: int | None, park_id: int | None) -> DashboardData:
    parks = await _all(session, PARKS, ParkFilters(limit=500))
    if park_id is not None:
        park: Park | None = await records.get_live(session, PARKS, park_id)
    else:
        park = parks[0] if parks else None
    if park is None:
        chosen = year or DEFAULT_YEAR
        return DashboardData(parks, None, chosen, [chosen], [], [], [], [])

    chains: list[Chain] = await _all(session, CHAINS, ChainFilters(park_id=park.id, limit=500))
    park_targets: list[Target] = await _all(
        session,
        TARGETS,
        TargetFilters(park_id=park.id, limit=500),
        within={"chain_id": None},
    )
    scoped: list[tuple[str, int | None, Target]] = [(park.name, None, t) for t in park_targets]
    for chain in chains:
        assert chain.id is not None
        for target in await target_service.chain_targets(session, chain.id):
            scoped.append((chain.name, chain.id, target))

    starts = [t.period_start_year for _, _, t in scoped if t.period_start_year is not None]
    chosen = year or (max(starts) if starts else DEFAULT_YEAR)

    rows: list[TargetRow] = []
    for scope, chain_id, target in scoped:
        progress = await target_service.progress(session, target, chosen)
        if progress.in_period:
            rows.append(TargetRow(scope, chain_id, progress))

    by_year = await stats_service.investment(session, GroupBy.year, park.id)
    known = {chosen, *starts}
    known |= {t.period_end_year for _, _, t in scoped if t.period_end_year is not None}
    known |= {r["key"] for r in by_year if r["key"] is not None}
    # Every year between the first and the last, unless they lie decades apart.
    span = max(known) - min(known)
    years = list(range(min(known), max(known) + 1)) if span <= 30 else sorted(known)

    by_stage = await stats_service.investment(session, GroupBy.stage, park.id)
    conflicts = await _all(
        session, PROJECTS, ProjectFilters(park_id=park.id, investment_conflict=True, limit=500)
    )
    return DashboardData(
        parks=parks,
        park=park,
        year=chosen,
        years=years,
        chains=chains,
        targets=rows,
        by_chain=await stats_service.investment(session, GroupBy.chain, park.id),
        by_stage=by_stage,
        overall=overall(by_stage),
        conflicts=conflicts,
        sources=await _sources(session, conflicts),
    )


async def _sources(session: AsyncSession, projects: list[Any]) -> dict[int, Any]:
    """The sources the disagreeing figures cite, each read as `GET /sources/{id}` reads it."""
    ids = sorted(
        {f["source_id"] for p in projects for f in p.investment_figures or () if f["source_id"]}
    )
    found: dict[int, Any] = {}
    for source_id in ids:
        try:
            found[source_id] = await records.read_row(session, SOURCES, source_id)
        except NotFound:  # deleted since: the figure still names its source by number
            continue
    return found


def overall(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Groups that partition the projects (e.g. by stage, unknown stage included) as one."""
    known = [g["total_investment"] for g in groups if g["total_investment"] is not None]
    amount = sum(known, Decimal(0)) if known else None
    spread = None
    conflicting = total(groups, "conflicting_projects")
    if conflicting and amount is not None:
        ranged = [g for g in groups if g["total_investment_low"] is not None]
        spread = (
            sum((g["total_investment"] - g["total_investment_low"] for g in ranged), Decimal(0)),
            sum((g["total_investment_high"] - g["total_investment"] for g in ranged), Decimal(0)),
        )
    return stats_service.group(
        None,
        "全部 All",
        total(groups, "project_count"),
        total(groups, "projects_with_investment"),
        amount,
        conflicting,
        spread,
    )


def total(groups: list[dict[str, Any]], name: str) -> int:
    """A count summed over groups (amounts are summed by `overall`: some may be unknown)."""
    return sum(int(g[name]) for g in groups)
