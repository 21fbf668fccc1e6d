"""The read-only dashboard page at /dashboard: charts drawn as SVG by this server.

Who may see it is decided exactly as for `GET /api/v1/...` reads:
- PUBLIC_READ=true, or a request that carries a valid `Authorization: Bearer` token: the page
  comes with its charts rendered inside it (works with scripts off, prints, projects).
- otherwise the page is a shell holding no data: a sign-in form whose small inline script logs
  in through `POST /api/v1/auth/token` (the same OAuth2 password flow as Swagger's Authorize),
  keeps the short-lived JWT in sessionStorage, and fetches `/dashboard/panel` with it. That
  fragment is the same server-rendered HTML and is guarded by `CanRead` like any API read.
No cookie is ever set, so there is no session for another site to ride on (no CSRF surface).

Every response carries a Content-Security-Policy: `default-src 'self'`, with the page's one
inline style and script allowed by a per-response nonce. Nothing is loaded from anywhere else.
"""

import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.api.deps import CanRead, ReadSession, authorize, caller
from app.dashboard.data import collect
from app.dashboard.page import page, panel
from app.errors import AppError
from app.models.user import Role

router = APIRouter(include_in_schema=False)

Year = Annotated[
    int | None,
    Query(ge=1949, le=2100, description="统计年份；默认为数据中最晚的目标起始年份，没有则 2021"),
]
ParkId = Annotated[int | None, Query(ge=1, description="园区编号；默认为第一个园区")]


def _headers(nonce: str | None = None) -> dict[str, str]:
    inline = f" 'nonce-{nonce}'" if nonce else ""
    csp = (
        "default-src 'self'; "
        f"script-src 'self'{inline}; style-src 'self'{inline}; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
        "form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


async def _may_read(request: Request) -> bool:
    """The page itself opens for anyone (with a sign-in form); its figures by the same rule
    as every read, for the caller resolved once (`deps.caller`)."""
    try:
        authorize(request.app.state.settings, await caller(request), Role.viewer)
    except AppError:  # none, or a malformed, expired or revoked token: the sign-in form
        return False
    return True


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(
    request: Request, session: ReadSession, year: Year = None, park_id: ParkId = None
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(18)
    content = panel(await collect(session, year, park_id)) if await _may_read(request) else None
    return HTMLResponse(page(nonce, content), headers=_headers(nonce))


@router.get("/dashboard/panel", response_class=HTMLResponse, dependencies=[CanRead])
async def dashboard_panel(
    session: ReadSession, year: Year = None, park_id: ParkId = None
) -> HTMLResponse:
    return HTMLResponse(panel(await collect(session, year, park_id)), headers=_headers())
