"""The hottest reads — one record by id, a page of a list, and a page of the change feed —
answered below FastAPI, on the driver's connection underneath SQLAlchemy's pool (asyncpg's, or
aiosqlite's through `db.SqliteDriver`: each statement one hand-off to its thread).

The bench (issue 6) measured what a GET costs in our stack against a raw ASGI + asyncpg reference:
SQLAlchemy's async execution ~0.2-0.3 ms of CPU per statement (raw asyncpg: ~0.06), FastAPI's
dependency solving ~0.2 ms, the pydantic validation of every listed row. For these reads
none of that buys anything, so this layer does the same work directly:

- the same credentials (service token looked up per request, staff JWT, anonymous reads only
  where `PUBLIC_READ` allows them), the same ETag and `If-None-Match` → 304;
- the same SQL as `records.read_row` / `records.list_page` (same filters, keyset formula with its
  index bound, `NULLS` order, `limit + 1`), written as text once per shape of request, and as
  `changes.page_json` for the feed, whose page is written by the same `changes.page_bytes`;
- the same values: each column goes through its SQLAlchemy type's own result processor (and each
  parameter through its bind processor), and rows are shaped by the same pydantic-core
  validator and serialiser as the full path, so the JSON is byte-for-byte the same.

It answers only what it can prove is a success (200 or 304). Anything else — a missing record,
bad input, a rejected credential, a filter it does not know, a database error — goes to the
full application unchanged, which answers it (problem+json and all) exactly as before; so does
every request with `FAST_READS=0`. CORS, the request id and the other
middleware wrap this layer as they wrap the application. `tests/test_fastpath.py` checks
that both paths answer the same bytes.
"""

from collections.abc import Callable
from typing import Any, get_args
from urllib.parse import parse_qsl

from pydantic import BaseModel, PlainSerializer, ValidationError, WrapSerializer
from pydantic_core import to_json
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.changes import MAX_FEED_PAGE, MAX_SEQ
from app.api.deps import none_match_tags, principal_from
from app.db import SqliteDriver
from app.errors import AppError
from app.models.change import Change
from app.models.common import MAX_ID, DecimalString, ListParams
from app.models.user import Role
from app.resources import BY_NAME
from app.services import changes, records
from app.services.records import ResourceSpec

# The change feed's page (`changes.page_json`): its columns, the data as the JSON text stored.
_FEED_SQL = (
    "SELECT seq, resource, record_id, external_id, op, version, changed_at, actor, request_id,"
    " CAST(data AS TEXT) FROM change WHERE seq > $1"
)
_CHANGED_AT = Change.__table__.c.changed_at  # type: ignore[attr-defined]

# The list parameters every resource shares, other than plain column filters.
COMMON = set(ListParams.model_fields) - {"external_id"}


class Delegate(Exception):
    """This request is not one the fast path answers: the full application does."""


def single_headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The request's headers by name, or None if one is repeated: what a repeated header means
    is the full application's to decide."""
    headers = dict(scope["headers"])
    return headers if len(headers) == len(scope["headers"]) else None


class _Shape:
    """What the fast path needs of one resource's table, worked out once per dialect."""

    def __init__(self, spec: ResourceSpec, dialect: Any) -> None:
        table = spec.table
        self.spec = spec
        self.names = [c.key for c in table.columns]
        self.select = (
            "SELECT " + ", ".join(f'"{c.name}"' for c in table.columns) + f' FROM "{table.name}"'
        )
        self.dialect = dialect
        # Each column's result processor, which can depend on the type the server reports
        # (asyncpg: the OID): known after the first statement is prepared (see `ready`).
        self.results: list[Callable[[Any], Any] | None] | None = None
        self.binds: dict[str, Callable[[Any], Any] | None] = {
            c.key: c.type._cached_bind_processor(dialect) for c in table.columns
        }
        self.by_id = f"{self.select} WHERE id = $1 AND deleted_at IS NULL"
        self.version_at = self.names.index("version")
        self.fields = set(spec.filters.model_fields)
        self.plain = _plain_fields(spec.public, set(self.names))

    async def ready(self, conn: Any) -> None:
        if self.results is None:
            self.results = await _result_processors(
                conn, self.by_id, list(self.spec.table.columns), self.dialect
            )

    def row(self, record: Any) -> dict[str, Any]:
        """A record as its columns' Python values, as SQLAlchemy would hand them over."""
        assert self.results is not None
        return {
            name: value if proc is None or value is None else proc(value)
            for name, proc, value in zip(self.names, self.results, record, strict=True)
        }

    def public(self, record: Any) -> Any:
        """What the public model would serialise for this record: its fields, in its order,
        then its computed fields (see `_plain_fields`); or the model itself where that
        cannot be said."""
        row = self.row(record)
        if self.plain is None:
            return self.spec.public_of(row)
        fields, computed = self.plain
        out = {name: row[name] for name in fields}
        if computed:
            view = _View(out)
            for name, compute in computed:
                out[name] = compute(view)
        return out


async def _result_processors(conn: Any, sql: str, columns: list[Any], dialect: Any) -> list[Any]:
    """Each column's SQLAlchemy result processor for this statement's rows (None for a column
    passed through): on asyncpg they depend on the type the server reports (the OID), known
    once the statement is prepared; SQLite reports none."""
    if isinstance(conn, SqliteDriver):
        types = [None] * len(columns)
    else:
        types = [a.type.oid for a in (await conn.prepare(sql)).get_attributes()]
    return [
        None if c is None else c.type._cached_result_processor(dialect, t)
        for c, t in zip(columns, types, strict=True)
    ]


class _View:
    """Attribute access to a row, for a computed field's function."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


# A Decimal is written as its `str()` both by this annotation's serialiser and by pydantic's
# serialiser for untyped values, which is what `_plain_fields` relies on.
_SAME_WHEN_PLAIN = set(map(id, get_args(DecimalString)[1:]))


def _plain_fields(
    model: type[BaseModel], columns: set[str]
) -> tuple[list[str], list[tuple[str, Callable[[Any], Any]]]] | None:
    """The public model's fields and computed fields, if serialising the stored values as plain
    Python data (`pydantic_core.to_json`: Decimal and datetime as pydantic writes them, enums by
    value) writes the same JSON as the model's own serialiser — no alias, no custom serialiser,
    every field a column. Validating each row into the model first costs ~4 µs a row and
    changes nothing for values the database gives back. `None`: use the model."""
    decorators = model.__pydantic_decorators__
    if decorators.field_serializers or decorators.model_serializers:
        return None
    fields = []
    for name, info in model.model_fields.items():
        if info.alias or info.serialization_alias or info.exclude or name not in columns:
            return None
        if any(
            isinstance(m, PlainSerializer | WrapSerializer) and id(m) not in _SAME_WHEN_PLAIN
            for m in info.metadata
        ):
            return None
        fields.append(name)
    computed = []
    for name, computed_info in model.__pydantic_computed_fields__.items():
        if computed_info.alias and computed_info.alias != name:
            return None
        computed.append((name, getattr(model, name).fget))
    return fields, computed


class _Sql:
    def __init__(self, shape: _Shape) -> None:
        self.shape = shape
        self.args: list[Any] = []

    def arg(self, column: str, value: Any) -> str:
        proc = self.shape.binds[column]
        self.args.append(value if proc is None or value is None else proc(value))
        return f"${len(self.args)}"


def _keyset(sql: _Sql, keys: list[tuple[str, bool]], values: list[Any]) -> str:
    """`records._keyset` and `records._leading_bound`, as SQL text."""
    clauses = []
    for i, (name, desc) in enumerate(keys):
        parts = [
            f'"{k}" IS NULL' if v is None else f'"{k}" = {sql.arg(k, v)}'
            for (k, _), v in zip(keys[:i], values[:i], strict=True)
        ]
        value = values[i]
        if value is None:
            parts.append(f'"{name}" IS NOT NULL' if desc else "false")
        elif desc:
            parts.append(f'"{name}" < {sql.arg(name, value)}')
        else:
            parts.append(f'("{name}" > {sql.arg(name, value)} OR "{name}" IS NULL)')
        clauses.append("(" + " AND ".join(parts) + ")")
    keyset = "(" + " OR ".join(clauses) + ")"
    first, desc = keys[0]
    if values[0] is None and not desc:
        return f'"{first}" IS NULL AND {keyset}'
    if values[0] is not None and desc:
        return f'"{first}" <= {sql.arg(first, values[0])} AND {keyset}'
    return keyset


class FastReads:
    """ASGI middleware: answers GET /api/v1/{resource}/{id}, GET /api/v1/{resource} and
    GET /api/v1/changes when it can, and hands everything else to the application
    behind it."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/") + "/"
        self.shapes: dict[str, _Shape] | None = None
        self.changed_at: Callable[[Any], Any] | None = None  # the feed time's result processor
        self.answered = 0  # requests answered here rather than by the application (tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not scope["path"].startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        try:
            status, headers, body = await self._answer(scope)
        except Delegate:
            await self.app(scope, receive, send)
            return
        if status != 304:  # as Starlette writes them: the route's headers, length, type
            headers.append((b"content-length", str(len(body)).encode()))
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.answered += 1

    async def _answer(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        app = scope["app"]
        settings = app.state.settings
        db = getattr(app.state, "db", None)
        if db is None or not settings.fast_reads or scope.get("root_path"):
            raise Delegate
        rest = scope["path"][len(self.prefix) :].split("/")
        if rest == ["changes"]:
            return await self._feed(app, db, scope)
        spec = BY_NAME.get(rest[0])
        if spec is None or len(rest) > 2:
            raise Delegate
        record_id = None
        if len(rest) == 2:
            raw_id = rest[1]
            if not (raw_id.isascii() and raw_id.isdigit()):  # a query string is ignored, as there
                raise Delegate
            record_id = int(raw_id)
            if not 1 <= record_id <= MAX_ID:
                raise Delegate
        headers = single_headers(scope)
        if headers is None:
            raise Delegate
        shapes = self.shapes
        if shapes is None:
            dialect = db.engine.dialect
            shapes = self.shapes = {name: _Shape(s, dialect) for name, s in BY_NAME.items()}
        shape = shapes[spec.name]
        # Parse the list's query before taking a connection: bad input never costs one.
        query = None if record_id is not None else self._list_query(shape, scope)

        try:
            async with db.driver_connection() as conn:
                await self._authorise(app, conn, headers.get(b"authorization"))
                await shape.ready(conn)
                if record_id is not None:
                    return await self._get(conn, shape, record_id, headers.get(b"if-none-match"))
                assert query is not None
                return await self._list(conn, shape, *query)
        except Delegate:
            raise
        except Exception as exc:
            # No connection, or a statement failed: the full path meets the same condition
            # and answers it (a 503 while the database is away).
            raise Delegate from exc

    async def _feed(
        self, app: Any, db: Any, scope: Scope
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """`GET /changes` (`api.changes.list_changes`): the same query, columns and JSON
        (`changes.page_bytes`)."""
        raw: dict[str, str] = {}
        for key, value in parse_qsl(
            scope["query_string"].decode("latin-1"), keep_blank_values=True
        ):
            if key in raw or key not in ("after", "limit", "resource"):
                raise Delegate
            raw[key] = value
        after, limit = raw.get("after", "0"), raw.get("limit", "100")
        if not (after.isascii() and after.isdigit() and limit.isascii() and limit.isdigit()):
            raise Delegate  # what else FastAPI would read as a number, it can read itself
        seq, count = int(after), int(limit)
        resource = raw.get("resource")
        if seq > MAX_SEQ or not 1 <= count <= MAX_FEED_PAGE or resource not in (None, *BY_NAME):
            raise Delegate
        sql = (
            _FEED_SQL + (" AND resource = $2" if resource else "") + f" ORDER BY seq LIMIT {count}"
        )
        headers = single_headers(scope)
        if headers is None:
            raise Delegate
        try:
            async with db.driver_connection() as conn:
                await self._authorise(app, conn, headers.get(b"authorization"))
                if self.changed_at is None:
                    columns = [None] * 6 + [_CHANGED_AT] + [None] * 3
                    self.changed_at = (
                        await _result_processors(conn, sql, columns, db.engine.dialect)
                    )[6]
                found = await conn.fetch(sql, seq, *([resource] if resource else []))
        except Delegate:
            raise
        except Exception as exc:
            raise Delegate from exc
        at = self.changed_at
        rows = [(*r[:6], r[6] if at is None or r[6] is None else at(r[6]), *r[7:]) for r in found]
        return 200, [], changes.page_bytes(rows, seq)

    @staticmethod
    async def _authorise(app: Any, conn: Any, authorization: bytes | None) -> None:
        """Succeeds exactly where `deps.require(Role.viewer)` lets a request through: the same
        `deps.principal_from` decides, on the connection already held."""
        try:
            principal = await principal_from(
                app, None if authorization is None else authorization.decode("latin-1"), conn
            )
        except AppError as exc:
            raise Delegate from exc  # the full path answers the 401
        if principal is None:
            if app.state.settings.public_read:
                return
            raise Delegate
        if not principal.allows(Role.viewer):
            raise Delegate

    @staticmethod
    async def _get(
        conn: Any, shape: _Shape, record_id: int, if_none_match: bytes | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        record = await conn.fetchrow(shape.by_id, record_id)
        if record is None:
            raise Delegate  # the full path answers the 404
        tag = f'"{record[shape.version_at]}"'
        etag = (b"etag", tag.encode())
        tags = none_match_tags(None if if_none_match is None else if_none_match.decode("latin-1"))
        if tags is not None and ("*" in tags or tag in tags):
            return 304, [etag], b""
        return 200, [etag], to_json(shape.public(record))

    @staticmethod
    def _list_query(shape: _Shape, scope: Scope) -> tuple[str, list[Any], int, str, list[str]]:
        """The page's SQL text and arguments, as `records.list_page` builds its statement."""
        raw: dict[str, str] = {}
        for key, value in parse_qsl(
            scope["query_string"].decode("latin-1"), keep_blank_values=True
        ):
            if key in raw or key not in shape.fields or value == "":
                raise Delegate
            raw[key] = value
        if "q" in raw:  # substring search with escaping: the full path's
            raise Delegate
        try:
            # Query text is UTF-8 percent-encoded; parse_qsl decoded it as such.
            params = shape.spec.filters.model_validate(
                {k: v.encode("latin-1").decode("utf-8") for k, v in raw.items()}
            )
        except (ValidationError, UnicodeError) as exc:
            raise Delegate from exc
        spec = shape.spec
        sql = _Sql(shape)
        where = []
        if not params.include_deleted:
            where.append("deleted_at IS NULL")
        if params.updated_after is not None:
            where.append(f'"updated_at" > {sql.arg("updated_at", params.updated_after)}')
        for name in params.model_fields_set - COMMON:
            value = getattr(params, name)
            if value is None:
                continue
            if name in spec.filter_ops or name not in shape.binds:
                raise Delegate
            where.append(f'"{name}" = {sql.arg(name, value)}')
        try:
            keys = records._parse_sort(spec, params.sort)
            sort = ",".join(("-" if d else "") + k for k, d in keys)
            if params.cursor:
                values = records._decode_cursor(spec, params.cursor, sort, keys)
                where.append(_keyset(sql, keys, values))
        except AppError as exc:
            raise Delegate from exc
        order = ", ".join(
            f'"{k}" DESC NULLS FIRST' if d else f'"{k}" ASC NULLS LAST' for k, d in keys
        )
        text = (
            shape.select
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY {order} LIMIT {params.limit + 1}"
        )
        return text, sql.args, params.limit, sort, [k for k, _ in keys]

    @staticmethod
    async def _list(
        conn: Any, shape: _Shape, text: str, args: list[Any], limit: int, sort: str, keys: list[str]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        found = await conn.fetch(text, *args)
        items = [shape.public(r) for r in found[:limit]]
        cursor = None
        if len(found) > limit:
            last = shape.row(found[limit - 1])
            cursor = records._encode_cursor(sort, [last[k] for k in keys])
        # `crud.page_response`'s shape, `{"items": [...], "next_cursor": ...}`.
        return 200, [], to_json({"items": items, "next_cursor": cursor})
