"""`ResourceRoute`: the one request path of the resource operations (list, read, create, update,
delete, put by external id, batch, history, and the change feed).

FastAPI registers, routes and documents these operations as any other: the OpenAPI document comes
from each endpoint's signature. What differs is the handler this route class returns
(`APIRoute.get_route_handler`, FastAPI's extension point for it): instead of solving a dependency
graph per request, it works out once, from the same signature, how to fill each argument — path
and query parameters, a query model, headers, the JSON body, the session — and per request does
just that: the caller is resolved once (on the request's own connection, see `deps.caller`), the
route's role is checked, inputs are validated by the same pydantic types FastAPI would use (a
failure is the same `RequestValidationError`, rendered by the one problem+json handler), and the
endpoint runs and returns its `Response`. FastAPI's per-request dependency solving cost more than
the rest of a short read (bench/README.md).

An endpoint of this class may take: `Request`, path / query / header parameters
(`Annotated[T, Path(...)]` …), one query model (`Annotated[Model, Query()]`), one body
(`Annotated[Model, Body(...)]` or a model), and `ReadSession` or `WriteSession` (here a write
transaction on the driver, `Database.writing`); its route's `dependencies` hold only the role
check (`deps.require`). Anything else is refused when the app is built, not at request time.
"""

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi import params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from app.api import deps
from app.errors import Invalid
from app.models.user import Role

# An argument with no default: the request must give it.
REQUIRED: Any = object()


@dataclass(frozen=True)
class _Input:
    """How one argument of the endpoint is filled."""

    name: str  # the endpoint's argument
    kind: str  # path, query, header, query_model, body, request, session
    alias: str = ""  # the name in the request
    adapter: TypeAdapter[Any] | None = None
    default: Any = REQUIRED


def _inputs(endpoint: Callable[..., Any]) -> list[_Input]:
    hints = get_type_hints(endpoint, include_extras=True)
    found = []
    for name, parameter in inspect.signature(endpoint).parameters.items():
        hint = hints[name]
        base, meta = (
            (get_args(hint)[0], get_args(hint)[1:]) if get_origin(hint) is Annotated else (hint, ())
        )
        marker = next(
            (m for m in meta if isinstance(m, params.Depends | params.Param | params.Body)), None
        )
        default = REQUIRED if parameter.default is inspect.Parameter.empty else parameter.default
        if base is Request:
            found.append(_Input(name, "request"))
        elif isinstance(marker, params.Depends):
            if marker.dependency is deps.read_session:
                found.append(_Input(name, "session", "read"))
            elif marker.dependency is deps.write_session:
                found.append(_Input(name, "session", "write"))
            else:
                raise TypeError(
                    f"{endpoint.__name__}: dependency {marker.dependency} not supported"
                )
        elif (
            isinstance(marker, params.Query)
            and inspect.isclass(base)
            and issubclass(base, BaseModel)
        ):
            found.append(_Input(name, "query_model", adapter=TypeAdapter(base)))
        elif isinstance(marker, params.Path | params.Query | params.Header):
            kind = {params.Path: "path", params.Query: "query", params.Header: "header"}[
                type(marker)
            ]
            alias = marker.alias or (name.replace("_", "-") if kind == "header" else name)
            adapter: TypeAdapter[Any] = TypeAdapter(Annotated[base, marker])  # type: ignore[arg-type]  # a type built at run time
            if marker.default is not ... and not marker.is_required():
                default = marker.default
            found.append(
                _Input(name, kind, alias.lower() if kind == "header" else alias, adapter, default)
            )
        elif isinstance(marker, params.Body) or (
            inspect.isclass(base) and issubclass(base, BaseModel)
        ):
            found.append(_Input(name, "body", adapter=TypeAdapter(hint)))
        else:
            raise TypeError(f"{endpoint.__name__}: parameter {name} not supported")
    return found


def _errors(exc: ValidationError, *loc: Any) -> list[dict[str, Any]]:
    return [{**e, "loc": (*loc, *e["loc"])} for e in exc.errors(include_url=False)]


class ResourceRoute(APIRoute):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Starlette's match, after a test of the path's fixed part that rules most routes out
        at once: the router tries its routes in turn, and a full match per route was a
        noticeable part of a short read's cost."""
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            if not (path.startswith(self.head) if self.templated else path == self.head):
                return Match.NONE, {}
        try:
            return super().matches(scope)
        except ValueError:
            # `{id:int}` matches any run of digits, and Starlette's `int()` refuses one of more
            # than 4,300 (a 500 before this): no record has such an id.
            return Match.NONE, {}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # Called once, as the route is built: the path's fixed part, for `matches`.
        self.head, brace, _ = self.path.partition("{")
        self.templated = bool(brace)
        inputs = _inputs(self.endpoint)
        roles = [getattr(d.dependency, "role", None) for d in self.dependencies]
        if len(roles) != 1 or not isinstance(roles[0], Role):
            raise TypeError(f"{self.path}: a resource route takes exactly one role check")
        role: Role = roles[0]
        public: bool = self.dependencies[0].dependency.public  # type: ignore[union-attr]
        endpoint = self.endpoint
        writes = any(i.kind == "session" and i.alias == "write" for i in inputs)
        wants_body = any(i.kind == "body" for i in inputs)

        async def handler(request: Request) -> Response:
            # The body is read before a connection is taken: a slow upload holds none.
            body = await request.body() if wants_body else b""
            db = request.app.state.db
            async with db.writing() if writes else db.reading() as session:
                principal = await deps.caller(request, session)
                deps.authorize(request.app.state.settings, principal, role, public)
                arguments = _arguments(request, inputs, body, session)
                response: Response = await endpoint(**arguments)
                return response

        return handler


def _arguments(request: Request, inputs: list[_Input], body: bytes, session: Any) -> dict[str, Any]:
    """The endpoint's arguments from the request, or every validation error at once."""
    arguments: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    query: dict[str, str] | None = None
    for spec in inputs:
        if spec.kind == "session":
            arguments[spec.name] = session
            continue
        if spec.kind == "request":
            arguments[spec.name] = request
            continue
        if spec.kind in ("query", "query_model") and query is None:
            query = _single_valued(request)
        raw: Any
        if spec.kind == "path":
            raw = request.path_params.get(spec.alias)
        elif spec.kind == "query":
            raw = query.get(spec.alias) if query is not None else None
        elif spec.kind == "header":
            raw = request.headers.get(spec.alias)
        elif spec.kind == "query_model":
            raw = query
        else:
            try:
                raw = deps.decimal_json(body) if body else None
            # RecursionError: arrays or objects nested deeper than the parser goes (`[[[[…`).
            except (ValueError, RecursionError) as exc:
                pos = getattr(exc, "pos", 0)
                errors.append(
                    {
                        "type": "json_invalid",
                        "loc": ("body", pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": str(exc)},
                    }
                )
                continue
        if raw is None and spec.kind not in ("body", "query_model"):
            if spec.default is REQUIRED:
                errors.append(
                    {
                        "type": "missing",
                        "loc": (spec.kind, spec.alias),
                        "msg": "Field required",
                        "input": None,
                    }
                )
            else:
                arguments[spec.name] = spec.default
            continue
        if isinstance(raw, str) and spec.kind != "body" and "\x00" in raw:
            errors.append(_nul(spec.kind, spec.alias, raw))
            continue
        if spec.kind == "query_model":
            nul = [_nul("query", k, v) for k, v in raw.items() if "\x00" in k + v]
            if nul:
                errors += nul
                continue
        if raw is None and spec.kind == "body":
            errors.append(
                {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            )
            continue
        assert spec.adapter is not None
        try:
            arguments[spec.name] = spec.adapter.validate_python(raw)
        except ValidationError as exc:
            where = (
                ("query",)
                if spec.kind == "query_model"
                else ("body",)
                if spec.kind == "body"
                else (spec.kind, spec.alias)
            )
            errors += _errors(exc, *where)
    if errors:
        raise RequestValidationError(errors)
    return arguments


def _nul(location: str, name: str, value: str) -> dict[str, Any]:
    """A NUL character in a path, query or header value: PostgreSQL cannot hold one in text and
    refuses the statement (a 500 before this), and no record's key or value contains one, so
    every such argument is refused by name, whatever its type."""
    return {
        "type": "string_nul",
        "loc": (location, name),
        "msg": f"{name} 不能包含 NUL 字符 (U+0000) (text may not contain NUL)",
        "input": value,
    }


def _single_valued(request: Request) -> dict[str, str]:
    """The query's parameters, each given once: `?stage=signed&stage=planning` is refused with
    a 422 naming it, instead of being read as whichever came last."""
    seen: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in seen:
            raise Invalid.field(key, f"'{key}' is given more than once", "query")
        seen[key] = value
    return seen
