"""Liveness and readiness, for load balancers and orchestrators."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import migrate
from app.db import Database

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
    description="数据库可达且 schema 已迁移到最新版本时返回 200，否则 503；不就绪的实例不应接流量。",
    operation_id="readyz",
    responses={503: {"description": "数据库不可达或迁移未到最新"}},
)
async def readyz(request: Request) -> JSONResponse:
    db: Database = request.app.state.db
    head = request.app.state.schema_head
    try:
        current = await migrate.current_revision(db.engine)
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    ready = current == head
    body = {
        "status": "ok" if ready else "unavailable",
        "database": "ok",
        "schema": current,
        "head": head,
    }
    return JSONResponse(body, status_code=200 if ready else 503)
