"""Graceful shutdown of `python -m app serve`, against real server processes, as a load balancer
sees it: on SIGTERM `/readyz` turns 503 while requests are still served for the drain period;
clients that stop sending when it does lose no request; then the server stops and exits 0."""

import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import shutdown
from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API
from tests.servers import server

pytestmark = pytest.mark.slow

DRAIN_SECONDS = 2.0
PROBE_EVERY_SECONDS = 0.15  # a balancer's health check, only more often than a real one's
PAGE = 200  # projects per list page


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def poll(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Outcome:
    kind: str
    name: str
    started: float
    ended: float
    result: str  # "completed", or what went wrong
    record_id: int | None = None


# What uvicorn logs as its graceful shutdown begins, before it stops listening.
STOPPING = "Shutting down"


class Balancer(threading.Thread):
    """Probes `/readyz` as a load balancer does, until a probe fails (the server has gone);
    `out` is set at the first 503, when a balancer stops sending the instance new requests."""

    def __init__(self, base: str, log: Path) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.log = log
        self.out = threading.Event()
        self.done = threading.Event()
        self.probes: list[tuple[float, int | str]] = []  # (sent at, status or transport error)
        self.answered: list[float] = []  # when each probe's answer came, in the same order
        self.first_503: httpx.Response | None = None
        # When a probe failed, and whether the server had logged by then that it was stopping.
        self.failed_at: float | None = None
        self.stop_logged_by_then: bool | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as http:
            while not self.done.is_set():
                sent = time.monotonic()
                try:
                    answer = http.get("/readyz")
                except httpx.TransportError as exc:  # after the drain: the server has gone
                    self.failed_at = time.monotonic()
                    self.stop_logged_by_then = STOPPING in self.log.read_text()
                    self.probes.append((sent, repr(exc)))
                    self.answered.append(self.failed_at)
                    return
                self.probes.append((sent, answer.status_code))
                self.answered.append(time.monotonic())
                if answer.status_code == 503 and self.first_503 is None:
                    self.first_503 = answer
                    self.out.set()
                self.done.wait(PROBE_EVERY_SECONDS)


def send(http: httpx.Client, kind: str, name: str) -> Outcome:
    """A list page or a single write; what came of it."""
    started, record_id = time.monotonic(), None
    try:
        if kind == "list":
            r = http.get(f"{API}/projects", params={"limit": PAGE})
            done = r.status_code == 200 and len(r.json()["items"]) == PAGE
        else:
            r = http.post(f"{API}/parks", json={"name": name, "level": "other"})
            done = r.status_code == 201 and r.json()["name"] == name
            record_id = r.json()["id"] if done else None
        result = "completed" if done else f"answered {r.status_code}: {r.text[:200]}"
    except httpx.TransportError as exc:
        result = repr(exc)
    return Outcome(kind, name, started, time.monotonic(), result, record_id)


class Client(threading.Thread):
    """Sends list pages or single writes, on a new connection per request (`fresh`) or on one
    kept alive, until the balancer takes the instance out."""

    def __init__(self, base: str, token: str, kind: str, fresh: bool, out: threading.Event):
        super().__init__(daemon=True)
        self.base, self.token, self.kind, self.fresh, self.out = base, token, kind, fresh, out
        self.outcomes: list[Outcome] = []

    def connect(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=auth(self.token), timeout=60)

    def run(self) -> None:
        kept = self.connect()
        deadline = time.monotonic() + 120  # bounded even if no 503 is ever seen
        for i in itertools.count():
            if self.out.is_set() or time.monotonic() > deadline:
                break
            name = f"{self.kind}-{'fresh' if self.fresh else 'kept'}-{self.ident}-{i}"
            if self.fresh:
                with self.connect() as http:
                    self.outcomes.append(send(http, self.kind, name))
            else:
                self.outcomes.append(send(kept, self.kind, name))
        kept.close()


def _drain_under_load(
    db_factory: DatabaseFactory,
    token: str,
    log: Path,
    workers: int,
    clients: list[tuple[str, bool]],
) -> None:
    url = db_factory.fresh()
    env = {"SHUTDOWN_DRAIN_SECONDS": str(DRAIN_SECONDS)}
    with server(url, workers=workers, log=log, **env) as (base, process):
        # A connection kept alive from before the signal, used again during the drain.
        idle = httpx.Client(base_url=base, headers=auth(token), timeout=60)
        made = idle.post(f"{API}/parks", json={"name": "园区", "level": "other"})
        assert made.status_code == 201, made.text
        park_id = made.json()["id"]
        projects = [
            {"op": "create", "data": {"park_id": park_id, "name": f"p{i}", "stage": "planning"}}
            for i in range(PAGE)
        ]
        batch = idle.post(f"{API}/projects/batch", json={"items": projects})
        assert batch.status_code == 200, batch.text[:300]

        balancer = Balancer(base, log)
        load = [Client(base, token, kind, fresh, balancer.out) for kind, fresh in clients]
        for thread in [balancer, *load]:
            thread.start()
        try:
            poll(
                lambda: all(len(c.outcomes) >= 3 for c in load) and len(balancer.probes) >= 2,
                60,
                "the load to get going",
            )
            sigterm = time.monotonic()
            process.send_signal(signal.SIGTERM)
            poll(
                lambda: log.read_text().count("Draining for") == workers,
                30,
                f"each of the {workers} serving process(es) logging that it drains",
            )
            poll(
                lambda: balancer.out.is_set() or not balancer.is_alive(),
                30,
                "a 503 from /readyz, or the balancer finding the server gone",
            )
            assert balancer.out.is_set(), (
                f"no 503 from /readyz before the server had gone: {balancer.probes[-5:]}"
            )
            out = time.monotonic()
            # Requests a balancer had already sent this way are still served: on the connection
            # kept alive from before, and on a new one.
            late = [send(idle, "one", f"late-{i}") for i in range(2)]
            with httpx.Client(base_url=base, headers=auth(token), timeout=60) as http:
                late.append(send(http, "list", "late-list"))
            limit = DRAIN_SECONDS + shutdown.GRACEFUL_TIMEOUT_SECONDS + 5
            try:
                exit_code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"the server did not exit within {limit} s of SIGTERM"
                ) from None
            stopped = time.monotonic() - sigterm
            # The balancer probes on until a probe fails: the server has stopped listening.
            poll(
                lambda: not balancer.is_alive(),
                30,
                "a /readyz probe failing once the server had exited",
            )
        finally:
            balancer.out.set()
            balancer.done.set()
            for thread in [balancer, *load]:
                thread.join(timeout=60)
            idle.close()
        assert not any(t.is_alive() for t in [balancer, *load])

    outcomes = [o for c in load for o in c.outcomes] + late
    failed = [o for o in outcomes if o.result != "completed"]
    in_flight = [o for o in outcomes if o.started < sigterm < o.ended]
    after_sigterm = [o for o in outcomes if o.started > sigterm]
    # Answered before the signal was sent (one sent just before may be answered after it).
    before = [
        s for (_, s), a in zip(balancer.probes, balancer.answered, strict=True) if a < sigterm
    ]
    after = [(t - sigterm, s) for t, s in balancer.probes if t > sigterm]
    first_503 = min(t for t, s in balancer.probes if s == 503) - sigterm
    assert balancer.failed_at is not None
    last_answer = balancer.failed_at - sigterm
    print(
        f"\nSIGTERM ({db_factory.engine}, {workers} worker(s)): {len(outcomes)} requests, "
        f"{len(in_flight)} in flight at the signal, {len(after_sigterm)} sent after it, "
        f"{len(failed)} failed; /readyz 503 {first_503:.2f} s after the signal, and a probe "
        f"failed {last_answer:.2f} s after it; exit {exit_code} after {stopped:.2f} s"
    )
    assert failed == [], failed[:5]
    assert in_flight, "the signal should come with requests in flight"
    # The 503 came while the server still served: requests sent after it were answered.
    assert late and all(o.started > out for o in late)
    # The balancer: 200 until the signal; then 503, and nothing but 503 until the server stopped
    # listening: every probe was answered up to the last, which failed only once the server had
    # logged that it was stopping, and not before the drain was over.
    assert before and all(s == 200 for s in before)
    answered = [(t, s) for t, s in after if isinstance(s, int)]
    assert all(s == 503 for t, s in answered if t >= first_503), after
    assert all(isinstance(s, int) for _, s in balancer.probes[:-1]), balancer.probes
    assert balancer.stop_logged_by_then, (
        f"a /readyz probe failed before the server logged {STOPPING!r}: {balancer.probes[-1]}"
    )
    assert last_answer >= DRAIN_SECONDS, (
        f"the server stopped listening {last_answer:.2f} s after SIGTERM"
    )
    assert balancer.first_503 is not None
    problem = balancer.first_503
    assert problem.headers["content-type"].startswith("application/problem+json")
    assert problem.headers["retry-after"]
    assert problem.json()["detail"] == "实例正在停止 (shutting down)"
    # Each process drained for the whole period, then stopped: exit 0 within drain + graceful.
    assert log.read_text().count("Draining for") == workers
    assert exit_code == 0
    assert DRAIN_SECONDS <= stopped < DRAIN_SECONDS + shutdown.GRACEFUL_TIMEOUT_SECONDS
    # Every write that got 2xx is stored, as a fresh app on the same database reads it.
    settings = Settings(database_url=url, registry_admin_password=ADMIN_PASSWORD)
    with TestClient(create_app(settings), headers=auth(token)) as fresh_app:
        for o in outcomes:
            if o.kind == "one":
                stored = fresh_app.get(f"{API}/parks/{o.record_id}")
                assert stored.status_code == 200 and stored.json()["name"] == o.name, o
    db_factory.drop(url)


def test_sigterm_drains_then_stops_losing_no_request(
    db_factory: DatabaseFactory, tokens: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM while list pages and single writes are in flight, on kept-alive and new
    connections, with a balancer probing `/readyz`: it sees 503 within the drain period while the
    server still answers; clients that stop sending then see no error and no 5xx; every write
    answered 2xx is stored; the process exits 0 within the drain plus the graceful timeout."""
    clients = [(kind, fresh) for kind in ("list", "one") for fresh in (False, True)] * 2
    _drain_under_load(db_factory, tokens["admin"], tmp_path / "server.log", 1, clients)


def test_sigterm_drains_every_worker(
    db_factory: DatabaseFactory, tokens: dict[str, str], tmp_path: Path
) -> None:
    """The same with `--workers 2`: the supervisor passes the signal on, each worker drains
    (its `/readyz` says 503) while the socket stays open, then they stop."""
    clients = [(kind, fresh) for kind in ("list", "one") for fresh in (False, True)]
    _drain_under_load(db_factory, tokens["admin"], tmp_path / "server.log", 2, clients)
