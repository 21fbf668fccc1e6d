"""What the dashboard shows, gathered through the same service functions as the JSON API:
lists through `records.list_page`, target progress through `services.target` (as
`/chains/{id}/scorecard` and `/targets/{id}/progress`), sums through `services.stats` (as
`/stats/investment`). No query of its own, so the page and the API never disagree."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.models.chain import Chain
from app.models.common import ListParams
from app.models.park import Park
from app.models.target import Target
from app.resources import CHAINS, PARKS, TARGETS, ChainFilters, ParkFilters, TargetFilters
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

    return DashboardData(
        parks=parks,
        park=park,
        year=chosen,
        years=years,
        chains=chains,
        targets=rows,
        by_chain=await stats_service.investment(session, GroupBy.chain, park.id),
        by_stage=await stats_service.investment(session, GroupBy.stage, park.id),
    )


def total(groups: list[dict[str, Any]], field: str) -> Any:
    return sum((g[field] for g in groups), Decimal(0) if field == "total_investment" else 0)
