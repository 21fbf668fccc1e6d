"""The bench's reference: the registry's project and change-feed endpoints with the least
machinery: raw ASGI, asyncpg (PostgreSQL) or sqlite3 (SQLite), orjson. It imports nothing from
`app`, serves the same JSON for the same requests, and does the same database work per request
(same filters, sort, keyset formula, parent checks, version check, change-log row with the feed
lock), so that ours / reference measures our own machinery.

Run: DATABASE_URL=postgresql://… python -m uvicorn reference:app --app-dir bench

Endpoints (all under /api/v1): GET /projects, GET /projects/{id}, POST /projects,
PATCH /projects/{id}, GET /changes. Anything else answers 404.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

DATABASE_URL = os.environ.get("DATABASE_URL", "")
POOL_SIZE = int(os.environ.get("REF_POOL_SIZE", "20"))
IS_SQLITE = DATABASE_URL.startswith("sqlite")
FEED_LOCK = 0x5EED  # the app's advisory lock key: writers to the feed serialise on it
# Credentials, checked with the app's semantics when the bench runs the app with auth on:
# service tokens `pir_<id>_<secret>` (SHA-256 of the secret, looked up per request, so revocation
# is immediate) and staff JWTs (HS256, signed with the app's secret key).
REQUIRE_AUTH = os.environ.get("REF_REQUIRE_AUTH") == "1"
SECRET_KEY = os.environ.get("REF_SECRET_KEY", "")
SCOPE_RANK = {"read": 1, "write": 2, "admin": 3}
ROLE_RANK = {"viewer": 1, "editor": 2, "admin": 3}

COLS = (
    "id",
    "external_id",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
    "source_id",
    "quote",
    "note",
    "inferred",
    "park_id",
    "chain_id",
    "enterprise_id",
    "code",
    "name",
    "stage",
    "is_key",
    "year",
    "total_investment",
    "investment_conflict",
    "investment_figures",
)
SELECT = ", ".join(COLS)
SORTABLE = ("id", "created_at", "updated_at", "name", "year", "stage", "total_investment", "code")
TIME_COLS = {"created_at", "updated_at", "deleted_at"}
STAGES = {
    "planning",
    "negotiating",
    "signed",
    "under_construction",
    "completed",
    "operating",
    "cancelled",
}
INT_FILTERS = ("park_id", "chain_id", "enterprise_id", "year")
BOOL_FILTERS = ("is_key", "investment_conflict")
STR_FILTERS = ("code", "external_id")
LIST_PARAMS = {
    "limit",
    "cursor",
    "sort",
    "q",
    "updated_after",
    "include_deleted",
    "stage",
    "min_investment",
    "max_investment",
    *INT_FILTERS,
    *BOOL_FILTERS,
    *STR_FILTERS,
}
WRITABLE = {
    "external_id",
    "source_id",
    "quote",
    "note",
    "inferred",
    "park_id",
    "chain_id",
    "enterprise_id",
    "code",
    "name",
    "stage",
    "is_key",
    "year",
}
NOT_NULL = {"park_id", "name", "inferred"}
JSON_COLS = {"inferred", "investment_figures"}
FEED_RESOURCES = {"parks", "chains", "enterprises", "projects", "investments", "targets", "sources"}
JSON_HEADERS = [(b"content-type", b"application/json")]
PROBLEM_HEADERS = [(b"content-type", b"application/problem+json")]
YI, WAN = Decimal(100_000_000), Decimal(10_000)
EXTERNAL_ID = re.compile(r"^[^/\s]+$")


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        field: str | None = None,
        location: str = "body",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status, self.detail, self.field, self.location = status, detail, field, location
        self.headers = headers or []


TITLES = {
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    409: ("conflict", "Conflict"),
    412: ("precondition-failed", "Precondition failed"),
    422: ("validation-error", "Validation error"),
    500: ("internal", "Internal error"),
}


# ---------------------------------------------------------------- shaping


def display(amount: Decimal | None) -> str | None:
    """`30亿元`, `1.5亿元`, `2000万元`, `800元` (the app's money display rule)."""
    if amount is None:
        return None
    if abs(amount) >= YI:
        return f"{format((amount / YI).normalize(), 'f')}亿元"
    if abs(amount) >= WAN:
        return f"{format((amount / WAN).normalize(), 'f')}万元"
    return f"{format(amount.normalize(), 'f')}元"


def sqlite_time(value: str | None) -> datetime | None:
    """SQLite keeps 'YYYY-MM-DD HH:MM:SS[.ffffff]' naive UTC text."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def sqlite_money(fen: int | None) -> str | None:
    if fen is None:
        return None
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def project_dict(row: Any) -> dict[str, Any]:
    """A row (asyncpg Record, total as text; or sqlite tuple) → ProjectPublic's JSON shape."""
    d = dict(zip(COLS, row, strict=True))
    if IS_SQLITE:
        for col in TIME_COLS:
            d[col] = sqlite_time(d[col])
        d["total_investment"] = sqlite_money(d["total_investment"])
        d["is_key"] = None if d["is_key"] is None else bool(d["is_key"])
        d["investment_conflict"] = bool(d["investment_conflict"])
    for name in JSON_COLS:  # json text from both drivers
        if isinstance(d[name], str):
            d[name] = orjson.loads(d[name])
    total = d["total_investment"]
    d["total_investment_display"] = None if total is None else display(Decimal(total))
    figures = d["investment_figures"]
    d["total_investment_range_display"] = None
    if figures:
        amounts = [Decimal(f["amount"]) for f in figures]
        d["total_investment_range_display"] = (
            f"{display(min(amounts))}–{display(max(amounts))}，{len(amounts)}条记录不一致"
        )
    return d


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


# ---------------------------------------------------------------- database glue


class PgDb:
    def __init__(self) -> None:
        self.pool: Any = None

    async def start(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(
            DATABASE_URL,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            server_settings={"application_name": "bench-reference", "timezone": "UTC"},
        )

    async def stop(self) -> None:
        await self.pool.close()

    @staticmethod
    def ph(n: int) -> str:
        return f"${n}"

    @staticmethod
    def bind(col: str, value: Any) -> Any:
        return orjson.dumps(value).decode() if col in JSON_COLS else value

    async def fetch(self, sql: str, args: list[Any]) -> list[Any]:
        async with self.pool.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, args: list[Any]) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def write(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        import asyncpg

        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    return await fn(PgTx(conn))
            except asyncpg.UniqueViolationError as exc:
                raise Problem(409, "the project conflicts with another record") from exc


class PgTx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetchrow(self, sql: str, args: list[Any]) -> Any:
        return await self.conn.fetchrow(sql, *args)

    async def lock_feed(self) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK)


class SqliteDb:
    """One connection used synchronously on the event loop: queries take microseconds, and one
    writer at a time is all SQLite allows anyway."""

    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None

    async def start(self) -> None:
        path = DATABASE_URL.split(":///", 1)[1]
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            "busy_timeout=30000",
            "foreign_keys=ON",
            "synchronous=NORMAL",
        ):
            self.db.execute(f"PRAGMA {pragma}")

    async def stop(self) -> None:
        assert self.db is not None
        self.db.close()

    @staticmethod
    def ph(n: int) -> str:
        return "?"

    @staticmethod
    def bind(col: str, value: Any) -> Any:
        if value is None:
            return None
        if col in TIME_COLS or col == "changed_at":
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        if col == "total_investment":
            return int(value * 100)
        if col in JSON_COLS:
            return orjson.dumps(value).decode()
        if isinstance(value, bool):
            return int(value)
        return value

    async def fetch(self, sql: str, args: list[Any]) -> list[Any]:
        assert self.db is not None
        return self.db.execute(sql, args).fetchall()

    async def fetchrow(self, sql: str, args: list[Any]) -> Any:
        assert self.db is not None
        return self.db.execute(sql, args).fetchone()

    async def write(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        assert self.db is not None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = await fn(self)  # no await inside does real I/O: the transaction is atomic
        except sqlite3.IntegrityError as exc:
            self.db.execute("ROLLBACK")
            raise Problem(409, "the project conflicts with another record") from exc
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return result

    async def lock_feed(self) -> None:
        return None


DB: Any = SqliteDb() if IS_SQLITE else PgDb()
# aliased: ORDER BY total_investment must sort the numeric column, not this text
TOTAL_SQL = "total_investment" if IS_SQLITE else "total_investment::text AS total_text"
SELECT_SQL = SELECT.replace("total_investment,", f"{TOTAL_SQL},")


# ---------------------------------------------------------------- who is calling


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers=[(b"www-authenticate", b"Bearer")])


async def caller(headers: dict[bytes, bytes], write: bool) -> str | None:
    """The caller's name (the change log's actor); 401 / 403 as the app answers them."""
    raw = headers.get(b"authorization")
    if raw is None:
        if REQUIRE_AUTH:
            raise unauthorized("missing or invalid credentials")
        return None
    scheme, _, token = raw.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("use Authorization: Bearer <token>")
    if token.startswith("pir_"):
        ident, _, secret = token[4:].partition("_")
        if not ident.isdigit() or not secret:
            raise unauthorized("invalid token")
        row = await DB.fetchrow(
            f"SELECT token_hash, scopes, expires_at, revoked_at, name FROM api_token"
            f" WHERE id = {DB.ph(1)}",
            [int(ident)],
        )
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if row is None or not hmac.compare_digest(digest, row[0]):
            raise unauthorized("invalid token")
        expires = sqlite_time(row[2]) if IS_SQLITE else row[2]
        if row[3] is not None:
            raise unauthorized("token revoked")
        if expires is not None and expires <= datetime.now(UTC):
            raise unauthorized("token expired")
        scopes = orjson.loads(row[1]) if isinstance(row[1], str) else row[1]
        rank = max(SCOPE_RANK[s] for s in scopes)
        name = f"token:{row[4]}"
    else:
        import jwt

        try:
            claims = jwt.decode(
                token, SECRET_KEY, algorithms=["HS256"], options={"require": ["exp", "iat", "sub"]}
            )
            if claims.get("typ") != "access":
                raise unauthorized("not an access token")
            rank, name = ROLE_RANK[claims["role"]], str(claims["sub"])
        except (jwt.PyJWTError, KeyError) as exc:
            raise unauthorized("invalid or expired token") from exc
    if rank < (2 if write else 1):
        raise Problem(403, f"{name} may not do this")
    return name


# ---------------------------------------------------------------- list: filters, sort, keyset


def parse_sort(raw: str | None) -> list[tuple[str, bool]]:
    keys: list[tuple[str, bool]] = []
    for part in (raw or "id").split(","):
        part = part.strip()
        desc = part.startswith("-")
        name = part.lstrip("-+")
        if name not in SORTABLE:
            raise Problem(422, f"cannot sort by '{name}'", "sort", "query")
        if any(k == name for k, _ in keys):
            raise Problem(422, f"'{name}' appears twice", "sort", "query")
        keys.append((name, desc))
    if not any(k == "id" for k, _ in keys):
        keys.append(("id", keys[-1][1]))  # the tie-break runs in the last key's direction
    return keys


def cursor_value(col: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value  # totals are already decimal text on both engines


def encode_cursor(sort: str, values: list[Any]) -> str:
    raw = json.dumps({"s": sort, "v": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, keys: list[tuple[str, bool]]) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if raw["s"] != sort or len(raw["v"]) != len(keys):
            raise Problem(422, "this cursor belongs to another sort order", "cursor", "query")
        out = []
        for (k, _), v in zip(keys, raw["v"], strict=True):
            if v is not None and k in TIME_COLS:
                v = datetime.fromisoformat(v)
            elif v is not None and k == "total_investment":
                v = Decimal(v)
            out.append(v)
        return out
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Problem(422, "not a cursor this API issued", "cursor", "query") from exc


class Sql:
    def __init__(self) -> None:
        self.args: list[Any] = []

    def arg(self, col: str, value: Any) -> str:
        self.args.append(DB.bind(col, value))
        return DB.ph(len(self.args))


def keyset(sql: Sql, keys: list[tuple[str, bool]], values: list[Any]) -> str:
    """Rows strictly after the cursor: asc is nulls last, desc the exact reverse."""
    clauses = []
    for i, (name, desc) in enumerate(keys):
        parts = [
            f"{k} IS NULL" if v is None else f"{k} = {sql.arg(k, v)}"
            for (k, _), v in zip(keys[:i], values[:i], strict=True)
        ]
        v = values[i]
        if v is None:
            parts.append(f"{name} IS NOT NULL" if desc else "1 = 0")
        elif desc:
            parts.append(f"{name} < {sql.arg(name, v)}")
        else:
            parts.append(f"({name} > {sql.arg(name, v)} OR {name} IS NULL)")
        clauses.append("(" + " AND ".join(parts) + ")")
    keyset = "(" + " OR ".join(clauses) + ")"
    # The same index bound on the first key as the app adds (records._leading_bound).
    first, desc = keys[0]
    if values[0] is None and not desc:
        return f"{first} IS NULL AND {keyset}"
    if values[0] is not None and desc:
        return f"{first} <= {sql.arg(first, values[0])} AND {keyset}"
    return keyset


def as_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise Problem(422, f"{name}: not an integer", name, "query") from None


def as_bool(name: str, raw: str) -> bool:
    low = raw.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise Problem(422, f"{name}: not a boolean", name, "query")


def as_money(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise Problem(422, f"{name}: not a decimal", name, "query") from None
    if not value.is_finite() or value < 0:
        raise Problem(422, f"{name}: must be ≥ 0", name, "query")
    return value


async def list_projects(query: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - LIST_PARAMS
    if unknown:
        name = sorted(unknown)[0]
        raise Problem(422, f"{name}: extra inputs are not permitted", name, "query")
    limit = as_int("limit", params.get("limit", "50"))
    if not 1 <= limit <= 500:
        raise Problem(422, "limit: must be between 1 and 500", "limit", "query")
    keys = parse_sort(params.get("sort"))
    sort = ",".join(("-" if d else "") + k for k, d in keys)
    sql = Sql()
    where = []
    if not as_bool("include_deleted", params.get("include_deleted", "false")):
        where.append("deleted_at IS NULL")
    if "updated_after" in params:
        try:
            after = datetime.fromisoformat(params["updated_after"])
        except ValueError:
            raise Problem(422, "updated_after: not a datetime", "updated_after", "query") from None
        if after.tzinfo is None:
            raise Problem(
                422, "updated_after: a time zone offset is required", "updated_after", "query"
            )
        where.append(f"updated_at > {sql.arg('updated_at', after)}")
    if params.get("q"):
        pattern = "%" + re.sub(r"([/%_])", r"/\1", params["q"].lower()) + "%"
        like = "LIKE" if IS_SQLITE else "ILIKE"
        where.append(
            f"(lower(name) {like} {sql.arg('q', pattern)} ESCAPE '/' OR "
            f"lower(code) {like} {sql.arg('q', pattern)} ESCAPE '/')"
        )
    for name in INT_FILTERS:
        if name in params:
            where.append(f"{name} = {sql.arg(name, as_int(name, params[name]))}")
    for name in BOOL_FILTERS:
        if name in params:
            where.append(f"{name} = {sql.arg(name, as_bool(name, params[name]))}")
    for name in STR_FILTERS:
        if name in params:
            where.append(f"{name} = {sql.arg(name, params[name])}")
    if "stage" in params:
        if params["stage"] not in STAGES:
            raise Problem(422, "stage: not a stage", "stage", "query")
        where.append(f"stage = {sql.arg('stage', params['stage'])}")
    if "min_investment" in params:
        value = as_money("min_investment", params["min_investment"])
        where.append(f"total_investment >= {sql.arg('total_investment', value)}")
    if "max_investment" in params:
        value = as_money("max_investment", params["max_investment"])
        where.append(f"total_investment <= {sql.arg('total_investment', value)}")
    if params.get("cursor"):
        where.append(keyset(sql, keys, decode_cursor(params["cursor"], sort, keys)))
    order = ", ".join(f"{k} DESC NULLS FIRST" if d else f"{k} ASC NULLS LAST" for k, d in keys)
    text = (
        f"SELECT {SELECT_SQL} FROM project"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {order} LIMIT {int(limit) + 1}"
    )
    rows = await DB.fetch(text, sql.args)
    items = [project_dict(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(sort, [cursor_value(k, last[k]) for k, _ in keys])
    return 200, JSON_HEADERS, dumps({"items": items, "next_cursor": next_cursor})


# ---------------------------------------------------------------- one project, writes


def etag_header(version: int) -> tuple[bytes, bytes]:
    return (b"etag", f'"{version}"'.encode())


def etags(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    return [t.strip() for t in raw.split(",") if t.strip()]


async def get_project(pid: int, headers: dict[bytes, bytes]) -> tuple[int, list[Any], bytes]:
    row = await DB.fetchrow(
        f"SELECT {SELECT_SQL} FROM project WHERE id = {DB.ph(1)} AND deleted_at IS NULL", [pid]
    )
    if row is None:
        raise Problem(404, f"project {pid} does not exist")
    version = row[2]
    tag = f'"{version}"'
    none_match = etags(headers[b"if-none-match"].decode()) if b"if-none-match" in headers else None
    if none_match is not None and (
        "*" in none_match or tag in [t.removeprefix("W/") for t in none_match]
    ):
        return 304, [etag_header(version)], b""
    return 200, [*JSON_HEADERS, etag_header(version)], dumps(project_dict(row))


def validate_body(raw: bytes, partial: bool) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Problem(422, "body: not valid JSON", "body") from None
    if not isinstance(body, dict):
        raise Problem(422, "body: an object is required", "body")
    for name in body:
        if name not in WRITABLE:
            raise Problem(422, f"{name}: extra inputs are not permitted", name)
    if not partial:
        for name in ("park_id", "name"):
            if name not in body:
                raise Problem(422, f"{name}: field required", name)
    out: dict[str, Any] = {}
    for name, value in body.items():
        if value is None:
            if name in NOT_NULL:
                raise Problem(422, f"{name}: cannot be null", name)
            out[name] = None
            continue
        if name in ("park_id", "chain_id", "enterprise_id", "source_id", "year"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise Problem(422, f"{name}: not an integer", name)
            if name == "year" and not 1949 <= value <= 2100:
                raise Problem(422, "year: must be between 1949 and 2100", name)
        elif name == "is_key":
            if not isinstance(value, bool):
                raise Problem(422, "is_key: not a boolean", name)
        elif name == "inferred":
            if not isinstance(value, dict) or len(value) > 50:
                raise Problem(422, "inferred: an object of at most 50 fields", name)
            for field, reason in value.items():
                if field not in WRITABLE - {
                    "external_id",
                    "source_id",
                    "quote",
                    "note",
                    "inferred",
                }:
                    raise Problem(422, f"inferred: {field} is not a field", name)
                if not isinstance(reason, str) or len(reason) > 1000 or not reason.strip():
                    raise Problem(422, "inferred: a reason is 1..1000 characters", name)
                if "\x00" in reason:
                    raise Problem(422, "inferred: no NUL character", name)
            value = {k: v.strip() for k, v in value.items()}
        else:
            if not isinstance(value, str):
                raise Problem(422, f"{name}: not a string", name)
            value = value.strip()
            limit = {"name": 200, "code": 64, "external_id": 100}.get(name, 4000)
            if len(value) > limit or (name in ("name", "code", "external_id") and not value):
                raise Problem(422, f"{name}: length must be 1..{limit}", name)
            if name == "stage" and value not in STAGES:
                raise Problem(422, "stage: not a stage", name)
            if name == "external_id" and not EXTERNAL_ID.match(value):
                raise Problem(422, "external_id: no slashes or spaces", name)
        out[name] = value
    return out


async def check_parents(tx: Any, park_id: int, data: dict[str, Any]) -> None:
    """Parents exist and are live; a chain or enterprise belongs to the project's park."""
    p = DB.ph
    row = await tx.fetchrow(
        f"SELECT (SELECT 1 FROM park WHERE id = {p(1)} AND deleted_at IS NULL),"
        f" (SELECT park_id FROM chain WHERE id = {p(2)} AND deleted_at IS NULL),"
        f" (SELECT park_id FROM enterprise WHERE id = {p(3)} AND deleted_at IS NULL),"
        f" (SELECT 1 FROM source WHERE id = {p(4)} AND deleted_at IS NULL)",
        [park_id, data.get("chain_id"), data.get("enterprise_id"), data.get("source_id")],
    )
    if "park_id" in data and row[0] is None:
        raise Problem(422, f"park {park_id} does not exist", "park_id")
    for i, fk in ((1, "chain_id"), (2, "enterprise_id")):
        if data.get(fk) is not None:
            if row[i] is None:
                raise Problem(422, f"{fk.removesuffix('_id')} {data[fk]} does not exist", fk)
            if row[i] != park_id:
                raise Problem(422, f"{fk} {data[fk]} belongs to park {row[i]}", fk)
    if data.get("source_id") is not None and row[3] is None:
        raise Problem(422, f"source {data['source_id']} does not exist", "source_id")


async def log_change(
    tx: Any, op: str, item: dict[str, Any], actor: str | None, request_id: str
) -> None:
    await tx.lock_feed()
    p = DB.ph
    await tx.fetchrow(
        "INSERT INTO change (resource, record_id, external_id, op, version, changed_at, actor,"
        f" request_id, data) VALUES ('projects', {p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}, {p(6)},"
        f" {p(7)}, {p(8)})",
        [
            item["id"],
            item["external_id"],
            op,
            item["version"],
            DB.bind("changed_at", datetime.now(UTC)),
            actor,
            request_id,
            dumps(item).decode(),
        ],
    )


async def create_project(raw: bytes, actor: str | None) -> tuple[int, list[Any], bytes]:
    data = validate_body(raw, partial=False)
    request_id = uuid.uuid4().hex

    async def work(tx: Any) -> dict[str, Any]:
        await check_parents(tx, data["park_id"], data)
        now = datetime.now(UTC)
        values = {
            **data,
            "version": 1,
            "created_at": now,
            "updated_at": now,
            "inferred": data.get("inferred", {}),
            "investment_conflict": False,
        }
        cols = list(values)
        row = await tx.fetchrow(
            f"INSERT INTO project ({', '.join(cols)}) VALUES"
            f" ({', '.join(DB.ph(i) for i in range(1, len(cols) + 1))}) RETURNING {SELECT_SQL}",
            [DB.bind(c, values[c]) for c in cols],
        )
        item = project_dict(row)
        await log_change(tx, "create", item, actor, request_id)
        return item

    item = await DB.write(work)
    return (
        201,
        [
            *JSON_HEADERS,
            etag_header(item["version"]),
            (b"location", f"/api/v1/projects/{item['id']}".encode()),
        ],
        dumps(item),
    )


async def patch_project(
    pid: int, raw: bytes, headers: dict[bytes, bytes], actor: str | None
) -> tuple[int, list[Any], bytes]:
    data = validate_body(raw, partial=True)
    if_match = etags(headers[b"if-match"].decode()) if b"if-match" in headers else None
    request_id = uuid.uuid4().hex

    async def work(tx: Any) -> dict[str, Any]:
        lock = "" if IS_SQLITE else " FOR UPDATE"
        row = await tx.fetchrow(
            f"SELECT {SELECT_SQL} FROM project WHERE id = {DB.ph(1)} AND deleted_at IS NULL{lock}",
            [pid],
        )
        if row is None:
            raise Problem(404, f"project {pid} does not exist")
        current = project_dict(row)
        tag = f'"{current["version"]}"'
        if if_match is not None and "*" not in if_match and tag not in if_match:
            raise Problem(
                412, f"version {current['version']} is current", headers=[(b"etag", tag.encode())]
            )
        changed = {k: v for k, v in data.items() if current[k] != v}
        if not changed:
            return current
        if changed.keys() & {"park_id", "chain_id", "enterprise_id", "source_id"}:
            park_id = changed.get("park_id", current["park_id"])
            scope = dict(changed)
            if "park_id" in changed:  # a new park: the kept chain and enterprise must follow
                scope.setdefault("chain_id", current["chain_id"])
                scope.setdefault("enterprise_id", current["enterprise_id"])
            await check_parents(tx, park_id, scope)
        sets = [f"{k} = {DB.ph(i)}" for i, k in enumerate(changed, start=1)]
        n = len(sets)
        args = [DB.bind(k, v) for k, v in changed.items()]
        row = await tx.fetchrow(
            f"UPDATE project SET {', '.join(sets)}, version = version + 1,"
            f" updated_at = {DB.ph(n + 1)} WHERE id = {DB.ph(n + 2)} RETURNING {SELECT_SQL}",
            [*args, DB.bind("updated_at", datetime.now(UTC)), pid],
        )
        item = project_dict(row)
        await log_change(tx, "update", item, actor, request_id)
        return item

    item = await DB.write(work)
    return 200, [*JSON_HEADERS, etag_header(item["version"])], dumps(item)


# ---------------------------------------------------------------- change feed


async def list_changes(query: str) -> tuple[int, list[Any], bytes]:
    params = dict(parse_qsl(query, keep_blank_values=True))
    after = as_int("after", params.get("after", "0"))
    limit = as_int("limit", params.get("limit", "100"))
    if after < 0:
        raise Problem(422, "after: must be ≥ 0", "after", "query")
    if not 1 <= limit <= 1000:
        raise Problem(422, "limit: must be between 1 and 1000", "limit", "query")
    resource = params.get("resource")
    if resource is not None and resource not in FEED_RESOURCES:
        raise Problem(422, "resource: not a resource", "resource", "query")
    args: list[Any] = [after]
    extra = ""
    if resource is not None:
        args.append(resource)
        extra = f" AND resource = {DB.ph(2)}"
    rows = await DB.fetch(
        "SELECT seq, resource, record_id, external_id, op, version, changed_at, actor, request_id,"
        f" data FROM change WHERE seq > {DB.ph(1)}{extra} ORDER BY seq LIMIT {limit}",
        args,
    )
    items = [
        {
            "seq": r[0],
            "resource": r[1],
            "id": r[2],
            "external_id": r[3],
            "op": r[4],
            "version": r[5],
            "changed_at": sqlite_time(r[6]) if IS_SQLITE else r[6],
            "actor": r[7],
            "request_id": r[8],
            "data": None if r[9] is None else orjson.loads(r[9]),
        }
        for r in rows
    ]
    last_seq = items[-1]["seq"] if items else after
    return 200, JSON_HEADERS, dumps({"items": items, "last_seq": last_seq})


# ---------------------------------------------------------------- ASGI


PREFIX = "/api/v1/"


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def route(scope: Any, receive: Any) -> tuple[int, list[Any], bytes]:
    path: str = scope["path"]
    method: str = scope["method"]
    query = scope["query_string"].decode("latin-1")
    if not path.startswith(PREFIX):
        raise Problem(404, "no such resource")
    rest = path[len(PREFIX) :]
    headers = dict(scope["headers"])
    actor = await caller(headers, write=method != "GET")
    if rest == "projects":
        if method == "GET":
            return await list_projects(query)
        if method == "POST":
            return await create_project(await read_body(receive), actor)
    elif rest.startswith("projects/"):
        raw_id = rest[len("projects/") :]
        try:
            pid = int(raw_id)
        except ValueError:
            raise Problem(422, "id: not an integer", "id", "path") from None
        if pid < 1:
            raise Problem(422, "id: must be ≥ 1", "id", "path")
        if method == "GET":
            return await get_project(pid, headers)
        if method == "PATCH":
            return await patch_project(pid, await read_body(receive), headers, actor)
    elif rest == "changes" and method == "GET":
        return await list_changes(query)
    else:
        raise Problem(404, "no such resource")
    raise Problem(405, "method not allowed")


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await DB.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await DB.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    try:
        status, headers, body = await route(scope, receive)
    except Problem as p:
        slug, title = TITLES.get(p.status, ("error", "Error"))
        problem: dict[str, Any] = {
            "type": f"/problems/{slug}",
            "title": title,
            "status": p.status,
            "detail": p.detail,
            "instance": urlsplit(scope["path"]).path,
        }
        if p.field:
            problem["field"] = p.field
            problem["errors"] = [{"field": p.field, "location": p.location, "message": p.detail}]
        status, headers, body = p.status, [*PROBLEM_HEADERS, *p.headers], dumps(problem)
    except Exception:
        status, headers = 500, PROBLEM_HEADERS
        body = dumps({"type": "/problems/internal", "title": "Internal error", "status": 500})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
