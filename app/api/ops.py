"""Liveness and readiness, for load balancers and orchestrators."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import migrate, shutdown
from app.db import Database
from app.errors import problem_response, responses

router = APIRouter(tags=["运维 Operations"])


@router.get(
    "/healthz",
    summary="存活检查 (liveness)",
    description="进程在运行即返回 200，不查数据库；供负载均衡器探活。",
    operation_id="healthz",
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="就绪检查：数据库可达且迁移到最新 (readiness)",
    description=(
        "数据库可达且 schema 已迁移到最新版本时返回 200，否则 503；不就绪的实例不应接流量。"
        "实例收到停止信号后在排空期内也返回 503，但仍处理请求。"
    ),
    operation_id="readyz",
    responses=responses(503),
)
async def readyz(request: Request) -> JSONResponse:
    """Ready: 200 with the schema revision. Not ready: 503 problem+json with `Retry-After`;
    also while this process drains before it stops (app/shutdown.py)."""
    retry = {"Retry-After": "5"}
    if shutdown.draining():
        return problem_response(
            request,
            503,
            "service-unavailable",
            "Service unavailable",
            "实例正在停止 (shutting down)",
            extra={"shutting_down": True},
            headers=retry,
        )
    db: Database = request.app.state.db
    head = request.app.state.schema_head
    try:
        current = await migrate.current_revision(db.engine)
    except Exception:
        return problem_response(
            request,
            503,
            "service-unavailable",
            "Service unavailable",
            "the database cannot be reached",
            extra={"database": "unreachable"},
            headers=retry,
        )
    if current != head:
        return problem_response(
            request,
            503,
            "service-unavailable",
            "Service unavailable",
            f"the database schema is at {current}, not at {head}: run `python -m app migrate`",
            extra={"database": "ok", "schema": current, "head": head},
            headers=retry,
        )
    return JSONResponse({"status": "ok", "database": "ok", "schema": current, "head": head})
