"""`make bench`: seed a deterministic data set on PostgreSQL and on SQLite, start our app and the
reference app (`bench/reference.py`) as real uvicorn processes on loopback, load each endpoint with
wrk at fixed settings, and print ours / reference per endpoint and against the goals of issue 6.

Nothing is asserted: the bench prints figures and PASS/FAIL marks, and exits 0 once it has printed
them. See bench/README.md for how to read them.
"""

import argparse
import asyncio
import base64
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "lua"
sys.path[:0] = [str(ROOT), str(BENCH)]

import dataset  # noqa: E402

THREADS, CONNECTIONS, DURATION, WARMUP = 2, 32, 12, 2
# Each endpoint's DURATION is measured in ROUNDS turns per server, taken in alternation.
ROUNDS = 3
# Our server as `python -m app serve` runs it: uvicorn with each connection behind the bounds
# on slow and oversized requests (`app.shutdown.Connection`).
OURS = [sys.executable, "-m", "uvicorn", "app.main:app", "--http", "app.shutdown:Connection"]
HOST = "127.0.0.1"
ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_DB = "registry_bench"
# `Authorization` for every request: BENCH_AUTH_HEADER if set ("Bearer x" or a whole header line),
# else one the bench provisions on its own database when the app asks for credentials
# (BENCH_AUTH_KIND=token: a service token, the default; jwt: a staff login).
AUTH = os.environ.get("BENCH_AUTH_HEADER", "")
AUTH_KIND = os.environ.get("BENCH_AUTH_KIND", "token")
ADMIN_PASSWORD = "bench-admin-password-0000"
# The list under load: one filter, one sort, a page from the middle of the filtered set.
LIST_FILTER = ("stage", "under_construction")
LIST_SORT = "-total_investment"
LIST_LIMIT = 50
PATCH_IDS = range(25, dataset.N_PROJECTS + 1, 25)  # 4,000 projects, 2,000 per wrk thread
GOALS_NOTE = "n/a (endpoint not implemented yet)"
T0 = time.monotonic()


def log(message: str) -> None:
    elapsed = int(time.monotonic() - T0)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- HTTP (setup and checks only)


def auth_headers() -> dict[str, str]:
    if not AUTH:
        return {}
    name, sep, value = AUTH.partition(":")
    if sep and " " not in name:
        return {name.strip(): value.strip()}
    return {"Authorization": AUTH}


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=body, method=method, headers={**auth_headers(), **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- servers


class Server:
    def __init__(self, label: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.label, self.argv, self.env, self.logdir = label, argv, env, logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        logfile = open(self.logdir / f"{self.label}.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            [
                *self.argv,
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                status, _, _ = http("GET", f"{self.base}/api/v1/projects/1", timeout=5)
                if status in (200, 401):
                    return
            except OSError:
                pass
            time.sleep(0.25)
        tail = (self.logdir / f"{self.label}.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.label} did not start:\n{tail}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def reset_peak(self) -> bool:
        """Start VmHWM afresh (Linux: `5` > clear_refs), so a peak belongs to one run and not to
        start-up work such as hashing the admin password. False when not permitted."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self) -> tuple[float, float]:
        """(peak RSS VmHWM, current VmRSS) in MiB."""
        assert self.proc is not None
        values = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, kb = line.split(":")
                    values[key] = int(kb.split()[0]) / 1024
        return values.get("VmHWM", 0.0), values.get("VmRSS", 0.0)


# ---------------------------------------------------------------- engines


class Engine:
    name = ""
    url = ""

    def prepare(self, ds: dataset.DataSet) -> None: ...
    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...
    def bulk_insert_seconds(self, rows: list[tuple[Any, ...]]) -> float: ...
    def teardown(self, keep: bool) -> None: ...

    def money_text(self, value: Any) -> str | None:
        return None if value is None else str(value)


class Postgres(Engine):
    name = "PostgreSQL"

    def __init__(self) -> None:
        parts = urlsplit(ADMIN_URL)
        self.url = urlunsplit(parts._replace(path=f"/{BENCH_DB}"))

    def _run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    async def _admin(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def prepare(self, ds: dataset.DataSet) -> None:
        from app import migrate

        self._run(
            self._admin(
                f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)", f"CREATE DATABASE {BENCH_DB}"
            )
        )
        migrate.upgrade(self.url)
        self._run(dataset.load_postgres(self.url, ds))

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return self._run(go())

    def bulk_insert_seconds(self, rows: list[tuple[Any, ...]]) -> float:
        async def go() -> float:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                tx = conn.transaction()
                await tx.start()
                start = time.perf_counter()
                await conn.copy_records_to_table(
                    "project", records=rows, columns=list(dataset.PROJECT_COLS)
                )
                elapsed = time.perf_counter() - start
                await tx.rollback()
                return elapsed
            finally:
                await conn.close()

        return self._run(go())

    def teardown(self, keep: bool) -> None:
        if not keep:
            self._run(self._admin(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))


class Sqlite(Engine):
    name = "SQLite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
        self.path = self.dir / "registry.db"
        self.url = f"sqlite:///{self.path}"

    def prepare(self, ds: dataset.DataSet) -> None:
        from app import migrate

        migrate.upgrade(self.url)
        dataset.load_sqlite(str(self.path), ds)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import re
        import sqlite3

        db = sqlite3.connect(self.path)
        try:
            return db.execute(re.sub(r"\$\d+", "?", sql), args).fetchall()
        finally:
            db.close()

    def money_text(self, value: Any) -> str | None:
        return None if value is None else f"{value // 100}.{value % 100:02d}"

    def bulk_insert_seconds(self, rows: list[tuple[Any, ...]]) -> float:
        import sqlite3

        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            cols = dataset.PROJECT_COLS
            values = dataset.sqlite_rows(cols, rows)
            db.execute("BEGIN IMMEDIATE")
            start = time.perf_counter()
            db.executemany(
                f"INSERT INTO project ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                values,
            )
            elapsed = time.perf_counter() - start
            db.execute("ROLLBACK")
            return elapsed
        finally:
            db.close()

    def teardown(self, keep: bool) -> None:
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- credentials


def provision_auth(engine: Engine, ours: Server) -> str:
    """A credential for the bench's own database, unless BENCH_AUTH_HEADER gave one or the app
    needs none (an app without auth answers 200 to an anonymous read)."""
    global AUTH
    if os.environ.get("BENCH_AUTH_HEADER"):
        return AUTH
    AUTH = ""
    if http("GET", ours.base + "/api/v1/projects/1")[0] != 401:
        return AUTH
    if AUTH_KIND == "jwt":
        form = f"username=admin&password={ADMIN_PASSWORD}".encode()
        status, _, body = http(
            "POST",
            ours.base + "/api/v1/auth/token",
            form,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            raise RuntimeError(f"staff login for the bench failed: {status} {body[:200]!r}")
        AUTH = "Bearer " + json.loads(body)["access_token"]
        return AUTH
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "create-token",
            "--name",
            f"bench-{time.time_ns()}",
            "--scopes",
            "read,write",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": engine.url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    tokens = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("pir_")]
    if proc.returncode != 0 or not tokens:
        raise RuntimeError(f"could not create a service token: {proc.stderr.strip()[-300:]}")
    AUTH = "Bearer " + tokens[-1]
    return AUTH


# ---------------------------------------------------------------- wrk


@dataclass
class Run:
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    fallback: int = 0
    peak_mib: float = 0.0
    cpu_ms: float = 0.0  # server CPU time per request
    note: str = ""
    peak_reset: bool = True


@dataclass
class Endpoint:
    key: str
    label: str
    path: str
    script: str
    env: dict[str, str] = field(default_factory=dict)
    before: Callable[[str], dict[str, str]] | None = None  # per app label → extra env


def wrk(base: str, ep: Endpoint, extra_env: dict[str, str], seconds: int) -> Run:
    env = {
        **os.environ,
        **ep.env,
        **extra_env,
        "BENCH_LUA_DIR": str(LUA),
        "BENCH_THREADS": str(THREADS),
        "BENCH_AUTH_HEADER": AUTH,
    }
    argv = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA / ep.script),
        base + ep.path,
    ]
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            r = json.loads(line.removeprefix("BENCH_JSON "))
            errors = sum(
                r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
            )
            return Run(
                rps=r["requests"] / (r["duration_us"] / 1e6),
                p50_ms=r["p50_us"] / 1000,
                p99_ms=r["p99_us"] / 1000,
                errors=errors,
                fallback=r["fallback"],
            )
    return Run(note=f"wrk failed: {(proc.stderr or proc.stdout).strip()[-300:]}")


# ---------------------------------------------------------------- one engine


def encode_cursor(sort: str, values: list[Any]) -> str:
    """The app's cursor format (base64url of {"s": sort, "v": values}), built from the database."""
    raw = json.dumps({"s": sort, "v": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def middle_cursor(engine: Engine) -> str:
    column, value = LIST_FILTER
    total = engine.rows(
        f"SELECT count(*) FROM project WHERE deleted_at IS NULL AND {column} = $1", value
    )[0][0]
    row = engine.rows(
        f"SELECT total_investment, id FROM project WHERE deleted_at IS NULL AND {column} = $1 "
        f"ORDER BY total_investment DESC NULLS FIRST, id DESC LIMIT 1 OFFSET {total // 2}",
        value,
    )[0]
    return encode_cursor("-total_investment,-id", [engine.money_text(row[0]), row[1]])


def patch_file(engine: Engine, path: Path) -> dict[str, str]:
    ids = list(PATCH_IDS)
    rows = engine.rows(
        "SELECT id, version FROM project WHERE id >= $1 AND id <= $2 AND id % 25 = 0",
        ids[0],
        ids[-1],
    )
    path.write_text("".join(f"{i} {v}\n" for i, v in sorted(rows)))
    return {"BENCH_PATCH_FILE": str(path)}


def compare(
    name: str,
    a: tuple[int, dict[str, str], bytes],
    b: tuple[int, dict[str, str], bytes],
    ignore: tuple[str, ...] = (),
) -> str:
    if a[0] != b[0]:
        return f"{name}: status {a[0]} vs {b[0]}"
    if a[0] in (200, 201):
        ja, jb = json.loads(a[2]), json.loads(b[2])
        for doc in (ja, jb):
            for key in ignore:
                doc.pop(key, None)
        if ja != jb:
            if isinstance(ja, dict) and isinstance(jb, dict):
                diff = sorted(k for k in ja.keys() | jb.keys() if ja.get(k) != jb.get(k))
                return f"{name}: body differs in {diff[:5]}"
            return f"{name}: body differs"
        if a[1].get("etag") != b[1].get("etag") and "version" not in ignore:
            return f"{name}: ETag {a[1].get('etag')} vs {b[1].get('etag')}"
    return ""


def parity(ours: Server, ref: Server, paths: dict[str, str]) -> list[str]:
    """Same request to both apps, same answer (writes: same shape and values bar id and times)."""
    problems = []
    for name, path in paths.items():
        problems.append(compare(name, http("GET", ours.base + path), http("GET", ref.base + path)))
    body = json.dumps(
        {"park_id": 1, "chain_id": 3, "name": "对照项目", "stage": "signed", "year": 2025}
    ).encode()
    json_h = {"Content-Type": "application/json"}
    made = [http("POST", s.base + "/api/v1/projects", body, json_h) for s in (ours, ref)]
    volatile = ("id", "created_at", "updated_at")
    problems.append(compare("create", made[0], made[1], volatile))
    patched = []
    for server, created in zip((ours, ref), made, strict=True):
        if created[0] != 201:
            continue
        new_id = json.loads(created[2])["id"]
        url = f"{server.base}/api/v1/projects/{new_id}"
        patched.append(http("PATCH", url, b'{"is_key": true}', {**json_h, "If-Match": '"1"'}))
        patched.append(http("PATCH", url, b'{"is_key": false}', {**json_h, "If-Match": '"1"'}))
    if len(patched) == 4:
        problems.append(compare("patch", patched[0], patched[2], volatile))
        problems.append(compare("patch stale If-Match", patched[1], patched[3], volatile))
        if patched[1][0] != 412:
            problems.append(f"stale If-Match answered {patched[1][0]}, not 412")
    return [p for p in problems if p]


EXPORT_PATH = "/api/v1/projects/export?format=csv"
IMPORT_PATH = "/api/v1/projects/import"
IO_TIMEOUT = 300  # seconds for one export or one import: keeps the bench bounded
IMPORT_SAMPLE = 200  # rows imported first, to project the time of the full import
IMPORT_BUDGET = 180  # seconds: a full import projected to take longer is not run


def _missing(resp: tuple[int, dict[str, str], bytes]) -> bool:
    """The endpoint does not exist yet: 404/405, or `export` fell into `/projects/{id}` (422 on
    the path's id)."""
    if resp[0] in (404, 405):
        return True
    if resp[0] == 422:
        try:
            return json.loads(resp[2]).get("field") == "id"
        except ValueError:
            return False
    return False


def _import_body(csv_body: bytes, prefix: str, limit: int) -> tuple[bytes, str, int]:
    """The export turned into 100,000 new records: blank id and version, fresh external ids and
    codes; sent as the multipart upload (`file`) the import endpoint takes."""
    import csv
    import io
    import uuid

    fields: dict[str, str] = {}
    try:  # the export's headers are the layout's (Chinese) headers; else take them as field names
        from app.services.tabular import PROJECT_LAYOUT

        fields = {c.header: c.field for c in PROJECT_LAYOUT.columns if c.role != "derived"}
    except ImportError:
        pass
    reader = csv.reader(io.StringIO(csv_body.decode("utf-8-sig")))
    header = next(reader)
    names = [fields.get(h.strip(), h.strip()) for h in header]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    count = 0
    for row in reader:
        if len(row) != len(header):
            continue
        if count == limit:
            break
        count += 1
        for i, name in enumerate(names):
            if name in ("id", "version"):
                row[i] = ""
            elif name == "external_id":
                row[i] = f"{prefix}-{count}"
            elif name == "code":
                row[i] = f"{prefix.upper()}-{count:06d}"
        writer.writerow(row)
    boundary = "bench" + uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="projects.csv"'
        "\r\nContent-Type: text/csv\r\n\r\n"
    ).encode()
    body += ("\ufeff" + out.getvalue()).encode() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}", count


def export_import(engine: Engine, ours: Server, ds: dataset.DataSet) -> dict[str, Any]:
    """Export of all projects as CSV (time, peak RSS during it) and an import of 100,000 new
    projects (time) against a plain bulk insert of the same rows; n/a while the endpoints do not
    exist. Runs last: the import adds rows."""
    out: dict[str, Any] = {}
    rows = [
        (dataset.N_PROJECTS * 10 + r[0], *r[1:12], f"IMP-{r[0]:06d}", *r[13:]) for r in ds.projects
    ]
    out["bulk_seconds"] = engine.bulk_insert_seconds(rows)
    if not ours.reset_peak():
        ours.stop()
        ours.start()
    start = time.perf_counter()
    try:
        status, _, csv_body = http("GET", ours.base + EXPORT_PATH, timeout=IO_TIMEOUT)
    except OSError as exc:
        status, csv_body = 0, b""
        out["export"] = f"no answer within {IO_TIMEOUT} s ({exc})"
    elapsed = time.perf_counter() - start
    if status and _missing((status, {}, csv_body)):
        out["export"] = GOALS_NOTE
        csv_body = b""
    elif status:
        peak, _ = ours.memory_mib()
        lines = csv_body.count(b"\n")
        out["export"] = (
            f"{elapsed:.1f} s, {lines:,} lines, {len(csv_body) / 2**20:.1f} MiB, "
            f"peak RSS {peak:.0f} MiB" + ("" if status == 200 else f" (status {status})")
        )
        if status == 200:
            out["export_peak"] = peak
        else:
            csv_body = b""
    probe = http("POST", ours.base + IMPORT_PATH, b"", {"Content-Type": "text/csv"})
    if _missing(probe):
        out["import"] = GOALS_NOTE
        return out
    if not csv_body:
        out["import"] = "not measured: no export to import"
        return out
    # A sample first: an import far slower than the budget is projected, not run in full.
    timings = []
    for prefix, limit in (("imp-sample", IMPORT_SAMPLE), ("imp-full", dataset.N_PROJECTS)):
        body, content_type, count = _import_body(csv_body, prefix, limit)
        if timings:
            projected = timings[0][1] / timings[0][0] * count
            if projected > IMPORT_BUDGET:
                out["import_projected"] = projected
                out["import"] = (
                    f"≥ {projected:.0f} s projected for {count:,} rows ({timings[0][0]:,} rows took"
                    f" {timings[0][1]:.1f} s; not run in full, over the {IMPORT_BUDGET} s budget)"
                )
                return out
        start = time.perf_counter()
        try:
            status, _, answer = http(
                "POST", ours.base + IMPORT_PATH, body, {"Content-Type": content_type}, IO_TIMEOUT
            )
        except OSError as exc:
            out["import"] = f"no answer within {IO_TIMEOUT} s for {count:,} rows ({exc})"
            return out
        elapsed = time.perf_counter() - start
        if status not in (200, 201):
            out["import"] = f"status {status}: {answer[:160].decode(errors='replace')}"
            return out
        timings.append((count, elapsed))
    count, elapsed = timings[-1]
    out["import_seconds"] = elapsed
    out["import"] = f"{elapsed:.1f} s for {count:,} rows"
    return out


def measure(
    engine: Engine, eps: list[Endpoint], servers: dict[str, "Server"], args: argparse.Namespace
) -> dict[str, dict[str, Run]]:
    """Endpoints on each server: a warm-up each, then ROUNDS measured rounds taking turns
    (ours, ref, ours, ref, ...; with several endpoints, each endpoint on each server in turn), so
    that a slow spell of a shared machine falls on every figure compared; each figure is that
    of its best round (most requests per second)."""
    extra: dict[tuple[str, str], dict[str, str]] = {}
    for ep in eps:
        for label, server in servers.items():
            tag = extra[ep.key, label] = {"BENCH_RUN": f"{label}-{engine.name}"}
            if ep.before:
                tag.update(ep.before(label))
            wrk(server.base, ep, {**tag, "BENCH_RUN": tag["BENCH_RUN"] + "-w"}, WARMUP)
    best: dict[str, dict[str, Run]] = {ep.key: {} for ep in eps}
    resets = {label: server.reset_peak() for label, server in servers.items()}
    seconds = max(1, round(args.duration / ROUNDS))
    for round_no in range(ROUNDS):
        for ep in eps:
            for label, server in servers.items():
                tag = {"BENCH_RUN": f"{extra[ep.key, label]['BENCH_RUN']}-{round_no}"}
                if ep.before:
                    time.sleep(1.5)  # requests still in flight when wrk stopped commit first
                    tag.update(ep.before(label))
                cpu_before = server.cpu_seconds()
                run = wrk(server.base, ep, {**extra[ep.key, label], **tag}, seconds)
                if run.rps:
                    run.cpu_ms = 1000 * (server.cpu_seconds() - cpu_before) / (run.rps * seconds)
                run.peak_mib = server.memory_mib()[0]
                run.peak_reset = resets[label]
                log(
                    f"{engine.name} {ep.key} {label} round {round_no + 1}/{ROUNDS}: "
                    f"{run.rps:,.0f} req/s, p99 {run.p99_ms:.1f} ms"
                    f"{', errors ' + str(run.errors) if run.errors else ''}{run.note}"
                )
                kept = best[ep.key].get(label)
                if kept is None or run.rps > kept.rps:
                    if kept is not None:
                        run.peak_mib = max(run.peak_mib, kept.peak_mib)
                        run.errors += kept.errors
                    best[ep.key][label] = run
                else:
                    kept.peak_mib = max(kept.peak_mib, run.peak_mib)
                    kept.errors += run.errors
    return best


def bench_engine(
    engine: Engine, ds: dataset.DataSet, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"engine": engine.name, "runs": {}, "parity": []}
    if not args.skip_load:
        log(f"{engine.name}: migrating and loading the data set")
        start = time.monotonic()
        engine.prepare(ds)
        result["load_seconds"] = time.monotonic() - start
        log(f"{engine.name}: loaded in {result['load_seconds']:.0f} s")
    from app.config import get_settings

    env = {
        **os.environ,
        "DATABASE_URL": engine.url,
        "REGISTRY_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "IMPORT_MAX_BODY_BYTES": str(512 * 2**20),  # the import of 100,000 rows is one upload
    }
    ours = Server(f"{engine.name}-ours", OURS, env, workdir)
    ref_env = {
        **env,
        "REF_POOL_SIZE": os.environ.get("REF_POOL_SIZE", "20"),
        "REF_SECRET_KEY": getattr(get_settings(), "secret_key", ""),
    }
    ref = Server(
        f"{engine.name}-ref",
        [sys.executable, "-m", "uvicorn", "reference:app", "--app-dir", str(BENCH)],
        ref_env,
        workdir,
    )
    try:
        ours.start()
        result["startup_peak"] = ours.memory_mib()[0]
        if provision_auth(engine, ours):
            ref_env["REF_REQUIRE_AUTH"] = "1"
            result["auth"] = (
                "BENCH_AUTH_HEADER"
                if os.environ.get("BENCH_AUTH_HEADER")
                else "staff JWT"
                if AUTH_KIND == "jwt"
                else "service token"
            )
        ref.start()
        cursor = middle_cursor(engine)
        list_path = (
            f"/api/v1/projects?limit={LIST_LIMIT}&{LIST_FILTER[0]}={LIST_FILTER[1]}"
            f"&sort={LIST_SORT}&cursor={cursor}"
        )
        result["parity"] = parity(
            ours,
            ref,
            {
                "list": list_path,
                "get": f"/api/v1/projects/{min(12345, dataset.N_PROJECTS // 2)}",
                "feed start": "/api/v1/changes?after=0",
                "feed end": f"/api/v1/changes?after={dataset.N_CHANGES - 100}",
            },
        )
        max_seq = engine.rows("SELECT max(seq) FROM change")[0][0]
        result["feed_after"] = max_seq - 100
        # The two pages hold different entries (creates at the start, updates at the end), so
        # their sizes are printed beside their ratio.
        result["feed_bytes"] = [
            len(http("GET", f"{ours.base}/api/v1/changes?after={after}")[2])
            for after in (0, max_seq - 100)
        ]
        endpoints = [
            Endpoint("list", "list (50, filter+sort, mid cursor)", list_path, "static.lua"),
            Endpoint(
                "get",
                "get by id (random ids)",
                "/api/v1/projects/1",
                "get.lua",
                {"BENCH_MAX_ID": str(dataset.N_PROJECTS)},
            ),
            Endpoint("feed_start", "change feed after=0", "/api/v1/changes?after=0", "static.lua"),
            Endpoint(
                "feed_end",
                "change feed end",
                f"/api/v1/changes?after={max_seq - 100}",
                "static.lua",
            ),
            Endpoint(
                "create",
                "create",
                "/api/v1/projects",
                "create.lua",
                {"BENCH_CHAINS": str(dataset.N_CHAINS)},
            ),
            Endpoint(
                "patch",
                "patch (true If-Match)",
                "/api/v1/projects/1",
                "patch.lua",
                before=lambda label: patch_file(engine, workdir / f"patch-{label}.txt"),
            ),
        ]
        # The feed's two pages are compared with each other (end ≤ 1.2× start), so their
        # rounds are taken in turn too, not minutes apart: one group; every other endpoint alone.
        groups: list[list[Endpoint]] = []
        for ep in endpoints:
            if args.endpoints and ep.key not in args.endpoints:
                continue
            if ep.key.startswith("feed_") and groups and groups[-1][0].key.startswith("feed_"):
                groups[-1].append(ep)
            else:
                groups.append([ep])
        for group in groups:
            measured = measure(engine, group, {"ours": ours, "ref": ref}, args)
            for ep in group:
                pair = measured[ep.key]
                result["peak_reset"] = all(r.peak_reset for r in pair.values())
                result["runs"][ep.key] = (ep.label, pair["ours"], pair["ref"])
        runs = result["runs"].values()
        result["peak_ours"] = max((o.peak_mib for _, o, _ in runs), default=0.0)
        result["peak_ref"] = max((r.peak_mib for _, _, r in runs), default=0.0)
        ref.stop()
        if isinstance(engine, Postgres) and (not args.endpoints or "scale" in args.endpoints):
            log(f"{engine.name}: scale-out rehearsal (two app processes, one database)")
            loads = {ep.key: ep for ep in endpoints if ep.key in ("get", "create")}
            result["scale"] = scale_out(engine, ours, env, workdir, args.duration, loads)
        if not args.endpoints or "export" in args.endpoints:
            log(f"{engine.name}: export / import")
            result["io"] = export_import(engine, ours, ds)
    finally:
        ours.stop()
        ref.stop()
        engine.teardown(args.keep)
    return result


# ---------------------------------------------------------------- scale-out


def scale_out(
    engine: Engine,
    ours: Server,
    env: dict[str, str],
    workdir: Path,
    seconds: int,
    loads: dict[str, Endpoint],
) -> dict[str, Any]:
    """Issue 6's rehearsal: the same load on one app process, then split over two processes on
    the same database (each with its own wrk). Reads should add up as far as the machine's cores
    allow; creates share the feed's lock; the feed must stay one entry per write either way."""
    second = Server(f"{engine.name}-ours-b", OURS, env, workdir)
    out: dict[str, Any] = {}
    try:
        second.start()
        for key, ep in loads.items():
            before = engine.rows("SELECT coalesce(max(seq), 0) FROM change")[0][0]
            one = wrk(ours.base, ep, {"BENCH_RUN": f"scale1-{key}"}, seconds)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                runs = list(
                    pool.map(
                        lambda pair, ep=ep: wrk(pair[0], ep, {"BENCH_RUN": pair[1]}, seconds),
                        [(ours.base, f"scale2a-{key}"), (second.base, f"scale2b-{key}")],
                    )
                )
            out[key] = {
                "one": one.rps,
                "two": sum(r.rps for r in runs),
                "errors": one.errors + sum(r.errors for r in runs),
            }
            if key == "create":
                time.sleep(2)  # requests in flight when wrk stopped commit first
                entries = engine.rows(
                    "SELECT count(*), count(DISTINCT record_id), min(seq), max(seq)"
                    " FROM change WHERE seq > $1 AND resource = 'projects' AND op = 'create'",
                    before,
                )[0]
                created = engine.rows(
                    "SELECT count(*) FROM project WHERE id > (SELECT coalesce(max(record_id), 0)"
                    " FROM change WHERE seq <= $1 AND resource = 'projects')",
                    before,
                )[0][0]
                all_new = engine.rows("SELECT count(*) FROM change WHERE seq > $1", before)[0][0]
                out["feed"] = {
                    "entries": entries[0],
                    "distinct": entries[1],
                    "created": created,
                    "span": (entries[3] or 0) - (entries[2] or 0) + 1 if entries[0] else 0,
                    "all_new": all_new,
                }
    finally:
        second.stop()
    return out


# ---------------------------------------------------------------- report


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_engine(r: dict[str, Any]) -> None:
    print()
    print(
        f"== {r['engine']}: {dataset.N_PROJECTS:,} projects, {dataset.N_CHANGES:,} changes; "
        f"wrk {THREADS} threads, {CONNECTIONS} connections, {WARMUP} s warm-up, then "
        f"{ROUNDS} alternating rounds of {max(1, round(r.get('duration', DURATION) / ROUNDS))} s, "
        "best round each =="
    )
    if r.get("load_seconds"):
        print(f"data set loaded in {r['load_seconds']:.0f} s (not measured)")
    print(
        f"auth: {r.get('auth', 'none (the app asked for no credentials)')}; "
        "parity (same request, same JSON): " + ("ok" if not r["parity"] else "; ".join(r["parity"]))
    )
    head = (
        f"{'endpoint':<36} {'ours req/s':>10} {'ref req/s':>10} {'ratio':>6}  "
        f"{'ours p50/p99 ms':>16} {'ref p50/p99 ms':>16} {'p99 x':>6} "
        f"{'ours RSS':>9} {'ref RSS':>8} {'CPU ms/req ours/ref':>20}  errors"
    )
    print(head)
    print("-" * len(head))
    for _key, (label, ours, ref) in r["runs"].items():
        ratio = ours.rps / ref.rps if ref.rps else 0
        p99x = ours.p99_ms / ref.p99_ms if ref.p99_ms else 0
        errors = "" if not (ours.errors or ref.errors) else f"{ours.errors}/{ref.errors}"
        if not ours.rps or not ref.rps:
            errors += " no responses from " + ("ours" if not ours.rps else "the reference")
        if ours.fallback or ref.fallback:
            errors += f" If-Match:* fallbacks {ours.fallback}/{ref.fallback}"
        if ours.note or ref.note:
            errors += f" {ours.note or ref.note}"
        print(
            f"{label:<36} {ours.rps:>10,.0f} {ref.rps:>10,.0f} {ratio:>5.2f}x  "
            f"{ours.p50_ms:>7.1f}/{ours.p99_ms:<8.1f} {ref.p50_ms:>7.1f}/{ref.p99_ms:<8.1f} "
            f"{p99x:>5.1f}x {ours.peak_mib:>5.0f} MiB {ref.peak_mib:>4.0f} MiB "
            f"{ours.cpu_ms:>10.2f}/{ref.cpu_ms:<9.2f}  {errors}"
        )
    io = r.get("io", {})
    if io:
        plain = "COPY" if r["engine"] == "PostgreSQL" else "executemany"
        print(f"{'export of all projects (csv)':<36} {io.get('export', '')}")
        bulk = io.get("bulk_seconds")
        line = f"{'import of 100,000 rows':<36} {io.get('import', '')}"
        if bulk is not None:
            line += f"; plain {plain} of the same rows {bulk:.2f} s"
            taken = io.get("import_seconds") or io.get("import_projected")
            if taken:
                line += f" ({taken / bulk:.0f}×)"
        print(line)
    scale = r.get("scale")
    if scale:
        for key in ("get", "create"):
            if key in scale:
                x = scale[key]
                ratio = x["two"] / x["one"] if x["one"] else 0
                errors = f", errors {x['errors']}" if x["errors"] else ""
                print(
                    f"{'scale-out ' + key + ': 1 process / 2':<36} {x['one']:>10,.0f} "
                    f"{x['two']:>10,.0f} {ratio:>5.2f}x  (req/s; two processes on one database"
                    f"{errors})"
                )
        feed = scale.get("feed")
        if feed:
            exact = (
                feed["entries"] == feed["created"] == feed["distinct"]
                and feed["span"] == feed["all_new"] == feed["entries"]
            )
            print(
                f"{'scale-out feed':<36} {feed['created']:,} projects created through both "
                f"processes, {feed['entries']:,} create entries ({feed['distinct']:,} distinct), "
                f"seq span {feed['span']:,}: {'exact' if exact else 'NOT EXACT'}"
            )
    during = "during" if r.get("peak_reset") else "up to the end of"
    print(
        f"RSS = peak resident set (VmHWM) of each server process {during} that endpoint's run"
        f" (ours at start-up: {r.get('startup_peak', 0):.0f} MiB); CPU ms/req = server process"
        " CPU per request (robust to a busy machine); errors = non-2xx or socket errors ours/ref"
    )


def print_goals(r: dict[str, Any]) -> None:
    runs = r["runs"]
    scope = (
        "PostgreSQL, one worker"
        if r["engine"] == "PostgreSQL"
        else "SQLite, informational: the goals are set on PostgreSQL"
    )
    print()
    print(f"Goals of issue 6 ({scope}; ratios to the reference in this run)")

    def line(text: str, value: str, verdict: str) -> None:
        print(f"  {text:<52} {value:<28} {verdict}")

    def suspect(*keys: str) -> str:
        bad = [
            k
            for k in keys
            if k in runs
            and (runs[k][1].errors or runs[k][2].errors or runs[k][1].note or runs[k][2].note)
        ]
        return f" (errors in {', '.join(bad)}: figure suspect)" if bad else ""

    for key, text, goal in (
        ("list", "list page of 50, filtered and sorted ≥ 0.5× ref req/s", 0.5),
        ("get", "get by id ≥ 0.5× ref req/s", 0.5),
        ("create", "create ≥ 0.4× ref req/s", 0.4),
    ):
        if key in runs:
            ours, ref = runs[key][1], runs[key][2]
            ratio = ours.rps / ref.rps if ref.rps else 0
            line(text, f"{ratio:.2f}×", mark(ratio >= goal) + suspect(key))
    p99 = {k: (v[1].p99_ms / v[2].p99_ms if v[2].p99_ms else float("inf")) for k, v in runs.items()}
    if p99:
        worst = max(p99, key=lambda k: p99[k])
        over = [k for k, v in p99.items() if v > 3]
        line(
            "p99 latency at 32 connections ≤ 3× ref p99",
            f"worst {p99[worst]:.1f}× ({worst})",
            mark(not over) + (f" over: {', '.join(over)}" if over else ""),
        )
    if "feed_start" in runs and "feed_end" in runs:
        start, end = runs["feed_start"][1], runs["feed_end"][1]
        ratio = start.rps / end.rps if end.rps else float("inf")
        line(
            "change-feed page at the end ≤ 1.2× the page at the start",
            f"{ratio:.2f}× (time per page)",
            mark(ratio <= 1.2) + suspect("feed_start", "feed_end"),
        )
        ref_start, ref_end = runs["feed_start"][2], runs["feed_end"][2]
        sizes = r.get("feed_bytes")
        print(
            f"  {'':<52}   the reference's end page: "
            f"{ref_start.rps / ref_end.rps if ref_end.rps else float('inf'):.2f}× its start page"
            + (
                f"; pages of {sizes[0] / 1024:.0f} KiB and {sizes[1] / 1024:.0f} KiB"
                if sizes
                else ""
            )
        )
    io = r.get("io", {})
    if io:
        if "export_peak" in io:
            line(
                "export of 100,000 rows: peak RSS < 200 MiB",
                f"{io['export_peak']:.0f} MiB",
                mark(io["export_peak"] < 200),
            )
        else:
            line("export of 100,000 rows: peak RSS < 200 MiB", "—", io.get("export", ""))
        if io.get("bulk_seconds") and ("import_seconds" in io or "import_projected" in io):
            taken = io.get("import_seconds", io.get("import_projected", 0.0))
            ratio = taken / io["bulk_seconds"]
            kind = "" if "import_seconds" in io else " (projected, at least)"
            line(
                "import of 100,000 rows ≤ 3× plain bulk insert",
                f"{ratio:.0f}×{kind}",
                mark(ratio <= 3),
            )
        else:
            line("import of 100,000 rows ≤ 3× plain bulk insert", "—", io.get("import", ""))
    if "peak_ours" in r:
        line(
            "server RSS under load ≤ 150 MiB per worker",
            f"{r['peak_ours']:.0f} MiB peak",
            mark(r["peak_ours"] <= 150),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines", default="postgresql,sqlite", help="comma-separated: postgresql, sqlite"
    )
    parser.add_argument(
        "--endpoints",
        default="",
        help="only these (list,get,feed_start,feed_end,create,patch,scale,export)",
    )
    parser.add_argument("--duration", type=int, default=DURATION, help="seconds per measured run")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument(
        "--skip-load",
        action="store_true",
        help="reuse a kept PostgreSQL bench database (no reload)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="shrink the data set for a quick smoke test (e.g. 0.05)",
    )
    args = parser.parse_args()
    if args.scale != 1.0:
        global PATCH_IDS
        dataset.N_ENTERPRISES = max(100, int(dataset.N_ENTERPRISES * args.scale))
        dataset.N_PROJECTS = max(1000, int(dataset.N_PROJECTS * args.scale))
        dataset.N_CHANGES = max(10_000, int(dataset.N_CHANGES * args.scale))
        PATCH_IDS = range(25, dataset.N_PROJECTS + 1, 25)
    args.endpoints = [e for e in args.endpoints.split(",") if e]
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk); nothing measured.")
        return 1

    log("building the data set")
    ds = dataset.build()
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-run-"))
    results = []
    try:
        for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
            engine: Engine = Postgres() if name.startswith("postgres") else Sqlite()
            if args.skip_load and isinstance(engine, Sqlite):
                args_engine = argparse.Namespace(**{**vars(args), "skip_load": False})
            else:
                args_engine = args
            try:
                r = bench_engine(engine, ds, args_engine, workdir)
                r["duration"] = args.duration
                results.append(r)
            except Exception as exc:  # one engine failing must not hide the other's figures
                print(f"\n== {engine.name}: not measured: {type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in results:
        print_engine(r)
    for r in results:
        print_goals(r)
    wall = time.monotonic() - T0
    print(f"\nbench wall time: {int(wall // 60)} min {int(wall % 60)} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, default=lambda o: o.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
