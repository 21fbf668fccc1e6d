"""The ASGI application: `app.main:app`."""

import base64
import gc
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import context, errors, migrate, security
from app.api import auth, changes, crud, dashboard, exchange, ops, projects, stats, targets
from app.api.deps import DecimalRoute
from app.config import Settings, get_settings, write_private
from app.dashboard.openapi_tags import OPENAPI_TAGS
from app.db import Database, make_engine
from app.idempotency import Idempotency
from app.limits import BodyLimit
from app.resources import ALL
from app.services import user as user_service
from app.services.project import HEADLINE_RULE
from app.shutdown import ClientTimeout

API_PREFIX = "/api/v1"

DESCRIPTION = f"""
园区招商项目登记系统 —— 记录园区的招商项目、企业、产业链、投资额与目标。首个园区：枣庄高新区。

The Park Investment Registry: an industrial park's investment projects, enterprises, industry
chains, investment amounts and targets.

**约定 Conventions**
- 金额以元为单位、十进制字符串精确表示（如 `"3000000000.00"`），另附显示形式（如 `30亿元`）；
  输入可用 `unit`: 元 / 万元 / 亿元。
- 时间为 UTC，ISO 8601 带时区。每条记录有 `id`、`version`、`created_at`、`updated_at`、可选 `external_id`。
- 列表：`limit`（默认 50，最多 500），`cursor` 游标翻页，`sort`，字段筛选，`q` 中文模糊搜索。
- 写入：`POST` 返回 201 + `Location` + `ETag`；`PATCH` 部分更新；`If-Match` 版本不符返回 412；
  `DELETE` 为软删除，有下级记录时返回 409。`GET` 支持 `If-None-Match` → 304。
- 错误一律为 RFC 9457 `application/problem+json`，并指明出错字段。

**总投资规则 Headline investment**: {HEADLINE_RULE}
"""


class RequestId:
    """Gives every request an id (or keeps the caller's `X-Request-ID`) for logs and the audit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:100]
        rid = incoming or uuid.uuid4().hex
        token = context.request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.request_id.reset(token)


# An inline <script> or <style> element of a documentation page: one without attributes (the
# pages' others load files: `<script src=…>`).
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


def docs_policy(html: bytes, *, drawn_at_run_time: bool = False) -> str:
    """The Content-Security-Policy of a documentation page, made from the page as sent: scripts
    and styles from this server, the page's own inline ones by their SHA-256, data: images (of
    Swagger UI's stylesheet), requests to this server alone. Swagger UI keeps the bearer token in
    the page, so no other script may run there. ReDoc (`drawn_at_run_time`) makes its styles as
    it runs (styled-components: refused without 'unsafe-inline', the page left blank) and its
    search in a worker from a blob: URL; its footer logo, from Redocly's CDN, stays blocked."""
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for kind, content in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    scripts = " ".join(["'self'", *hashes[b"script"]])
    styles = "'unsafe-inline'" if drawn_at_run_time else " ".join(hashes[b"style"])
    worker = "worker-src blob:; " if drawn_at_run_time else ""
    return (
        f"default-src 'none'; script-src {scripts}; style-src 'self' {styles}".rstrip()
        + f"; img-src 'self' data:; connect-src 'self'; {worker}"
        "form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
    )


class DocsPolicy:
    """Sends each documentation page (path → drawn at run time?) with its `docs_policy`. The
    pages are FastAPI's, by way of fastapi-offline (which serves their files from here, not a
    CDN), so the policy is made from what each page holds as sent, not from a copy kept here."""

    def __init__(self, app: ASGIApp, pages: dict[str, bool]) -> None:
        self.app = app
        self.pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.pages:
            await self.app(scope, receive, send)
            return
        drawn_at_run_time = self.pages[scope["path"]]
        start: Message = {}
        chunks: list[bytes] = []

        async def with_policy(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            html = b"".join(chunks)
            policy = docs_policy(html, drawn_at_run_time=drawn_at_run_time)
            fields = [*start.get("headers", []), (b"content-security-policy", policy.encode())]
            await send({**start, "headers": fields})
            await send({"type": "http.response.body", "body": html})

        await self.app(scope, receive, with_policy)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        app.state.db = Database(engine)
        app.state.schema_head = migrate.head_revision()
        generated = await user_service.ensure_admin(app.state.db, settings)
        if generated:
            # Kept beside the key, not printed: a console is often a log someone keeps.
            kept = settings.secret_key_file.with_name("admin_password")
            write_private(kept, generated + "\n")
            print(
                f"\n  Created user 'admin'; its password is in {kept} (readable by this user"
                " only).\n  Change it after logging in, then delete the file;"
                " or set REGISTRY_ADMIN_PASSWORD to choose it.\n",
                flush=True,
            )
        # What start-up built (routes, models, schemas) lives as long as the process: keep it
        # out of the collector's generations so full collections under load stay short.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.db.dispose()

    # Swagger UI and ReDoc served from this server (no CDN), or no documentation at all.
    factory: Any = FastAPIOffline if settings.docs_enabled else FastAPI
    docs: dict[str, Any] = (
        {} if settings.docs_enabled else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    )
    app: FastAPI = factory(
        title="园区招商项目登记 Park Investment Registry",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
        swagger_ui_parameters={
            "docExpansion": "none",
            "displayRequestDuration": True,
            "tryItOutEnabled": False,
            "persistAuthorization": True,
        },
        **docs,
    )
    app.state.settings = settings
    security.hashing.total_tokens = settings.login_hash_concurrency
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            # Credentials only for named origins: "*" with credentials would reflect any origin.
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["ETag", "Location", "X-Request-ID"],
        )
    app.add_middleware(Idempotency)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.docs_enabled:
        pages = {"/docs": False, "/docs/oauth2-redirect": False, "/redoc": True}
        app.add_middleware(DocsPolicy, pages=pages)
    app.add_middleware(RequestId)
    # Outermost: a body's time counts from when its request reached the app.
    app.add_middleware(ClientTimeout, seconds=settings.client_timeout_seconds)

    # The resource routes are registered on the application's own router, first: the router
    # tries routes in turn, and an included router's routes cost more to try (bench/README.md).
    # (No path of one matches a path of the other: ids are `{id:int}`.)
    app.router.route_class = DecimalRoute
    for spec in ALL:
        crud.add_crud_routes(app.router, spec, crud.model_example(spec.create), prefix=API_PREFIX)
    for module in (projects, changes):
        module.operations.register(app.router, API_PREFIX)
    for module in (auth, exchange, targets, stats):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(ops.router)
    app.include_router(dashboard.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = errors.problems_in_openapi(FastAPI.openapi(app))
        schema: dict[str, Any] = app.openapi_schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents overriding it so
    logging.getLogger("app").setLevel(settings.log_level.upper())
    return app


app = create_app()
