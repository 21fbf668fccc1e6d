"""Domain errors, and their one rendering: RFC 9457 `application/problem+json`."""

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("app.errors")
PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"


class FieldError(BaseModel):
    """一个字段的错误 (one offending field)."""

    field: str = Field(
        description="出错的字段，以点分隔的路径，如 `items.0.data.name` (dotted path of the field)"
    )
    location: str = Field(
        description=(
            "字段所在位置：body 请求体 / query 查询参数 / path 路径参数 / header 请求头"
            " (where the field was sent)"
        )
    )
    message: str = Field(description="错误说明 (what is wrong with it)")
    index: int | None = Field(default=None, description="批量请求中出错项的序号 (batch item index)")


class Problem(BaseModel):
    """错误响应：RFC 9457 problem details，媒体类型 `application/problem+json`。"""

    type: str = Field(
        description="错误类别的标识，`/problems/` 加类别名 (a URI reference naming the kind)",
        examples=["/problems/validation-error"],
    )
    title: str = Field(
        description="错误类别的简短标题，同一类别总是相同 (short, the same for every problem of a kind)",
        examples=["Validation error"],
    )
    status: int = Field(description="HTTP 状态码，与响应的一致 (the HTTP status)", examples=[422])
    detail: str | None = Field(
        default=None, description="这一次错误的具体说明 (what went wrong this time)"
    )
    instance: str | None = Field(
        default=None, description="出错的请求路径 (the path of the request that failed)"
    )
    field: str | None = Field(
        default=None, description="第一个出错的字段 (the first offending field)"
    )
    errors: list[FieldError] | None = Field(
        default=None, description="逐个字段的错误；校验失败时给出 (every offending field)"
    )
    children: dict[str, list[int]] | None = Field(
        default=None, description="阻止删除的下级记录 (live records that block a delete)"
    )


class AppError(Exception):
    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers


class NotFound(AppError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(AppError):
    status, slug, title = 409, "conflict", "Conflict"


class PreconditionFailed(AppError):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class PreconditionRequired(AppError):
    status, slug, title = 428, "precondition-required", "Precondition required"


class Invalid(AppError):
    """Input that parses but breaks a rule (a missing parent, a bad cursor, …)."""

    status, slug, title = 422, "validation-error", "Validation error"

    @classmethod
    def field(cls, field: str, message: str, location: str = "body") -> "Invalid":
        return cls(message, errors=[FieldError(field=field, location=location, message=message)])


class ServiceUnavailable(AppError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


def problem_response(
    request: Request,
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    *,
    errors: list[FieldError] | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["field"] = errors[0].field
        body["errors"] = [e.model_dump(exclude_none=True) for e in errors]
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# Pydantic's refusals in Chinese, with pydantic's own English after (the API's values, such as
# an enum's codes, stay as they are). Our own validators already speak Chinese.
_ZH: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda c: "必填",
    "extra_forbidden": lambda c: "没有这个字段，不接受",
    "enum": lambda c: f"应为以下之一：{c.get('expected')}",
    "literal_error": lambda c: f"应为以下之一：{c.get('expected')}",
    "greater_than_equal": lambda c: f"不能小于 {c.get('ge')}",
    "greater_than": lambda c: f"应大于 {c.get('gt')}",
    "less_than_equal": lambda c: f"不能大于 {c.get('le')}",
    "less_than": lambda c: f"应小于 {c.get('lt')}",
    "string_too_short": lambda c: (
        "不能为空" if c.get("min_length") == 1 else f"至少 {c.get('min_length')} 个字符"
    ),
    "string_too_long": lambda c: f"最多 {c.get('max_length')} 个字符",
    "string_pattern_mismatch": lambda c: "格式不符",
    "string_type": lambda c: "应为字符串",
    "int_parsing": lambda c: "应为整数",
    "int_from_float": lambda c: "应为整数",
    "int_type": lambda c: "应为整数",
    "bool_type": lambda c: "应为 true 或 false",
    "bool_parsing": lambda c: "应为 true 或 false",
    "decimal_parsing": lambda c: "应为数字",
    "decimal_type": lambda c: "应为数字或数字字符串",
    "decimal_max_digits": lambda c: f"最多 {c.get('max_digits')} 位数字",
    "decimal_max_places": lambda c: f"最多 {c.get('decimal_places')} 位小数",
    "decimal_whole_digits": lambda c: f"整数部分最多 {c.get('whole_digits')} 位",
    "too_short": lambda c: f"至少 {c.get('min_length')} 项",
    "too_long": lambda c: f"最多 {c.get('max_length')} 项",
    "list_type": lambda c: "应为数组",
    "dict_type": lambda c: "应为 JSON 对象",
    "model_type": lambda c: "应为 JSON 对象",
    "model_attributes_type": lambda c: "应为 JSON 对象",
    "json_invalid": lambda c: "不是有效的 JSON",
    "date_parsing": lambda c: "应为日期 YYYY-MM-DD",
    "date_from_datetime_parsing": lambda c: "应为日期 YYYY-MM-DD",
    "datetime_parsing": lambda c: "应为带时区的时间，如 2026-01-01T00:00:00+08:00",
    "datetime_from_date_parsing": lambda c: "应为带时区的时间，如 2026-01-01T00:00:00+08:00",
    "url_parsing": lambda c: "不是有效的网址",
}


def message(error: Mapping[str, Any]) -> str:
    """One pydantic error as the API says it: Chinese first, pydantic's English after."""
    english = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    zh = _ZH.get(str(error.get("type")))
    return f"{zh(dict(error.get('ctx') or {}))} ({english})" if zh else english


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        location = loc[0] if loc else "body"
        path = loc[1:] if len(loc) > 1 else loc
        out.append(
            FieldError(field=".".join(path) or location, location=location, message=message(err))
        )
    return out


async def _on_app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(
        request,
        exc.status,
        exc.slug,
        exc.title,
        exc.detail,
        errors=exc.errors,
        extra=exc.extra,
        headers=exc.headers,
    )


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    return problem_response(
        request, 422, "validation-error", "Validation error", detail, errors=errors
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    """Every method some route at this path answers. Starlette's own 405 names only the methods
    of the first route whose path matched (`GET` for `/parks/1`, which also takes PATCH and
    DELETE on other routes), so a client reading `Allow` would miss the others. Each method is
    tried against the routes as the router itself would, included routers and all."""
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {
        400: "Bad request",
        404: "Not found",
        405: "Method not allowed",
        408: "Request timeout",
        413: "Content too large",
    }
    title = titles.get(exc.status_code, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    slug = title.lower().replace(" ", "-")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(request, exc.status_code, slug, title, detail, headers=headers or None)


RETRY_AFTER_SECONDS = 2
# Errors that mean "the database cannot be reached right now", not "this request is wrong".
_UNAVAILABLE_NAMES = {
    "ConnectionDoesNotExistError",  # asyncpg: the server closed the connection (restart)
    "CannotConnectNowError",  # "the database system is starting up / shutting down"
    "AdminShutdownError",  # "terminating connection due to administrator command"
    "ConnectionFailureError",
    "TooManyConnectionsError",
    "InterfaceError",
    # asyncpg: a pooled connection the server dropped while idle (a restart) meets its next
    # statement mid-way through the server's goodbye; it is discarded (`db.Executor.doubtful`).
    "InternalClientError",
}


def database_unavailable(exc: BaseException) -> bool:
    """True for a lost or refused database connection, a full pool, or SQLite's lock timeout,
    anywhere along the exception's cause chain."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PoolTimeout | ConnectionError | TimeoutError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if type(current).__name__ in _UNAVAILABLE_NAMES:
            return True
        if "database is locked" in str(current) or "Multiple exceptions: [Errno 111]" in str(
            current
        ):
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return False


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if database_unavailable(exc):
        log.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        return problem_response(
            request,
            503,
            "service-unavailable",
            "Service unavailable",
            "The database is unavailable; retry shortly.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    # Logged with its traceback for us; the client learns nothing about our internals.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        request, 500, "internal-error", "Internal error", "An unexpected error occurred."
    )


class CatchAll:
    """Turns an unexpected exception into a 500 problem *inside* the other middleware, so the
    answer still carries the request id and CORS headers (Starlette's own last-resort handler
    sits outside them all)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if started:
                raise
            response = await _on_unexpected(Request(scope), exc)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(CatchAll)  # first added: the innermost of our middleware


def problems_in_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Every 4xx/5xx is documented as `application/problem+json` with the Problem schema,
    which is what the client receives (FastAPI would say `application/json`)."""
    ref = {"$ref": "#/components/schemas/Problem"}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                if status[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_JSON: {"schema": ref}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    components.setdefault("FieldError", FieldError.model_json_schema())
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the problems an operation can answer (see problems_in_openapi)."""
    text = {
        400: "请求有误 (bad request)",
        403: "无权：角色或园区范围不允许 (forbidden by role or park scope)",
        404: "记录不存在 (not found)",
        409: "冲突：唯一值重复或存在下级记录 (conflict)",
        412: "If-Match 版本已过期 (stale version)",
        422: "输入无效，指明字段 (validation error naming the field)",
        503: "暂不可用：数据库不可达或迁移未到最新，稍后重试 (unavailable; see Retry-After)",
    }
    return {s: {"model": Problem, "description": text.get(s, "Problem")} for s in statuses}
