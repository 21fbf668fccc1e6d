"""Issue 16, point 9, against a real server, as an attacker's requests, on both engines: inputs
that were answered 500 are refused 4xx with a problem naming what is wrong; an oversized head is
refused 431 and a slow or silent client is cut off (MAX_REQUEST_HEADER_BYTES,
CLIENT_TIMEOUT_SECONDS) while everyone else is served as before; the documentation pages send a
Content-Security-Policy that does not break them."""

import base64
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_PASSWORD, DatabaseFactory
from tests.helpers import API, CHROMIUM, CHROMIUM_ARGS, chromium_or_skip, probing, sheet, xlsx
from tests.servers import server

CLIENT_TIMEOUT = 2.0  # CLIENT_TIMEOUT_SECONDS of the server under test
MAX_HEAD = 16 * 1024  # MAX_REQUEST_HEADER_BYTES, left at its default
MIB = 1024 * 1024
PROBLEM_JSON = "application/problem+json"


@dataclass
class Served:
    base: str
    port: int
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.auth, timeout=30)


@pytest.fixture(scope="module")
def served(db_factory: DatabaseFactory) -> Iterator[Served]:
    """One server per engine for the module: nothing here depends on what another test wrote."""
    url = db_factory.fresh()
    try:
        with server(url, CLIENT_TIMEOUT_SECONDS=str(CLIENT_TIMEOUT)) as (base, _):
            yield Served(base, int(base.rsplit(":", 1)[1]), db_factory.tokens["admin"])
    finally:
        db_factory.drop(url)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Raw:
    """One TCP connection, written byte for byte as an attacker (or a careful client) would."""

    def __init__(self, served: Served) -> None:
        self.sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def trickle(self, data: bytes, every: float) -> float:
        """Sends `data` a byte at a time until the server answers or hangs up: how long it took."""
        started = time.monotonic()
        for i in range(len(data)):
            try:
                self.sock.send(data[i : i + 1])
            except OSError:  # the server has closed the connection
                break
            if select.select([self.sock], [], [], every)[0]:
                break
        return time.monotonic() - started

    def _more(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self._more()
            assert chunk, f"connection closed with {len(self.buffer)} of {size} bytes read"
            self.buffer += chunk
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self._more()
            assert chunk, "connection closed before an answer"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def answer(self) -> Answer:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                self._take(2)
            self._line()
        else:
            body = self._take(int(headers.get("content-length", "0")))
        return Answer(status, headers, body)

    def closed_within(self, seconds: float) -> bool:
        """Whether the server hangs up within `seconds`, sending nothing more."""
        self.sock.settimeout(seconds)
        try:
            rest = self._more()
        except TimeoutError:
            return False
        assert rest == b"", rest[:200]
        return True

    def rest(self, seconds: float) -> bytes:
        """All the server sends until it hangs up (at most `seconds`)."""
        self.sock.settimeout(seconds)
        while chunk := self._more():
            self.buffer += chunk
        return self.buffer

    def close(self) -> None:
        self.sock.close()


def get(path: str, *headers: bytes) -> bytes:
    return b"\r\n".join([f"GET {path} HTTP/1.1".encode(), b"Host: test", *headers, b"", b""])


def post(path: str, body: bytes, *headers: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1".encode(), b"Host: test", *headers]
    head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join([*head, b"", b""]) + body


def problem(answer: httpx.Response | Answer, status: int, naming: str | None = None) -> Any:
    """The answer is `status` as problem+json, naming `naming` (a field, or a setting) if given."""
    if isinstance(answer, httpx.Response):
        answer = Answer(answer.status_code, dict(answer.headers), answer.content)
    assert answer.status == status, answer.body[:500]
    assert answer.headers["content-type"].startswith(PROBLEM_JSON), answer.headers
    found = answer.json()
    assert found["status"] == status
    if naming is not None:
        assert naming == found.get("field") or naming in found["detail"], found
    return found


# ---------------------------------------------------------------- inputs that were 500s


def cursor_of(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_inputs_that_were_answered_500_are_refused_naming_what_is_wrong(served: Served) -> None:
    with served.http() as http:
        park = http.post(f"{API}/parks", json={"name": "园区甲", "level": "national"})
        assert park.status_code == 201, park.text
        http.post(f"{API}/parks", json={"name": "园区乙", "level": "national"})
        park_id = park.json()["id"]
        made = http.post(
            f"{API}/projects", json={"park_id": park_id, "name": "项目", "stage": "signed"}
        )
        assert made.status_code == 201, made.text
        project_id = made.json()["id"]

        # A forged cursor: the real one works; one holding a time past year 9999 in UTC, or
        # JSON nested deeper than the parser goes, is refused naming the cursor.
        page = http.get(f"{API}/parks", params={"limit": 1, "sort": "-updated_at"})
        real = page.json()["next_cursor"]
        decoded = json.loads(base64.urlsafe_b64decode(real + "=" * (-len(real) % 4)))
        assert http.get(f"{API}/parks", params={"sort": "-updated_at", "cursor": real}).is_success
        for when in ("9999-12-31T23:59:59-23:00", "0001-01-01T00:00:00+00:04"):
            forged = cursor_of({**decoded, "v": [when, *decoded["v"][1:]]})
            answer = http.get(f"{API}/parks", params={"sort": "-updated_at", "cursor": forged})
            problem(answer, 422, "cursor")
        nested = base64.urlsafe_b64encode(b"[" * 5000).decode()
        problem(http.get(f"{API}/parks", params={"cursor": nested}), 422, "cursor")
        problem(
            http.get(f"{API}/parks", params={"created_after": "9999-12-31T23:59:59-23:00"}), 422
        )

        # JSON bodies nested deeper than the parser goes.
        json_type = {"Content-Type": "application/json"}
        problem(http.post(f"{API}/parks", content=b"[" * 100_000, headers=json_type), 422)

        # Amounts: beyond any Decimal context, past NUMERIC(18, 2), finer than a fen, not numbers.
        investment = (
            b'{"project_id": %d, "kind": "planned_total", "unit": "\xe5\x85\x83", "amount": '
        )
        for amount in (
            b"1e1000000",
            b"-1e1000000",
            b"1e-1000000",
            b'"1E+999999999999999999"',
            b"0." + b"1" * 5000,
            b"10000000000000000",
            b"0.001",
            b"NaN",
            b"Infinity",
            b'"-Infinity"',
        ):
            body = investment % project_id + amount + b"}"
            answer = http.post(f"{API}/investments", content=body, headers=json_type)
            problem(answer, 422, "amount")
        # More digits than Python reads as an integer: refused as malformed JSON.
        body = investment % project_id + b"1" * 5000 + b"}"
        problem(http.post(f"{API}/investments", content=body, headers=json_type), 422)
        problem(http.get(f"{API}/projects", params={"min_investment": "1e1000000"}), 422)
        ok = investment % project_id + b'"30"}'
        assert http.post(f"{API}/investments", content=ok, headers=json_type).status_code == 201

        # A NUL, which PostgreSQL cannot hold in text: in a path, a query filter, a JSON body.
        key = "a\x00b"
        answer = http.put(f"{API}/parks/by-external-id/a%00b", json={"name": "园区丙"})
        problem(answer, 422, "external_id")
        problem(http.get(f"{API}/parks", params={"external_id": key}), 422, "external_id")
        problem(http.get(f"{API}/parks", params={"q": key}), 422, "q")
        problem(http.post(f"{API}/parks", json={"name": key, "level": "national"}), 422, "name")
        problem(http.post(f"{API}/parks", json=key), 422)  # a body that is one string

        # An XML error inside an uploaded sheet.
        broken = xlsx(sheet([b'<row r="2"><c r="A2"><v>1</v></row>']))  # <c> never closed
        sheet_file = {"file": ("项目.xlsx", broken)}
        answer = http.post(f"{API}/projects/import", params={"dry_run": "true"}, files=sheet_file)
        problem(answer, 422, "XML")

    # A token of non-ASCII digits, as raw bytes (no client library would send it).
    raw = Raw(served)
    raw.send(get(f"{API}/auth/me", b"Authorization: Bearer pir_\xb9_x"))
    problem(raw.answer(), 401)
    raw.close()


# ---------------------------------------------------------------- oversized heads


def test_an_oversized_head_is_refused_431_and_the_server_goes_on(served: Served) -> None:
    cookie = b"Cookie: " + b"a" * 20 * 1024
    raw = Raw(served)
    raw.send(get("/healthz", cookie))
    found = problem(raw.answer(), 431, "MAX_REQUEST_HEADER_BYTES")
    assert found["title"] == "Request header fields too large"
    assert raw.closed_within(2)

    # Counted however the head is cut up: many small headers, sent a few hundred bytes at a time.
    raw = Raw(served)
    many = get("/healthz", *[b"X-Filler-%05d: %s" % (i, b"f" * 40) for i in range(400)])
    for at in range(0, len(many), 300):
        try:
            raw.send(many[at : at + 300])
        except OSError:
            break
    problem(raw.answer(), 431)

    # A head just within the bound passes, whole or cut up, and so does a large body behind it.
    within = get("/healthz", b"Cookie: " + b"c" * (MAX_HEAD - 200))
    assert len(within) <= MAX_HEAD
    raw = Raw(served)
    raw.send(within)
    assert raw.answer().status == 200
    for at in range(0, len(within), 1000):
        raw.send(within[at : at + 1000])
        time.sleep(0.01)
    assert raw.answer().status == 200
    body = json.dumps({"name": "园区", "level": "national", "note": "n" * 3000}).encode()
    raw.send(
        post(
            f"{API}/parks",
            body,
            f"Authorization: Bearer {served.token}".encode(),
            b"Content-Type: application/json",
            b"Cookie: " + b"c" * (MAX_HEAD - 400),
        )
    )
    assert raw.answer().status == 201
    raw.close()

    # Pipelined behind a request still in the app (a login: slow by design), a head is bounded
    # as well; as no answer of ours can go in the middle of that request's, the connection is
    # closed unanswered.
    raw = Raw(served)
    login = f"username=admin&password={ADMIN_PASSWORD}".encode()
    form = b"Content-Type: application/x-www-form-urlencoded"
    with contextlib.suppress(OSError):  # closed before all of it was sent
        raw.send(post(f"{API}/auth/token", login, form) + get("/healthz", b"Cookie: " + b"p" * MIB))
    assert b'{"status":"ok"}' not in raw.rest(seconds=5)
    assert httpx.get(f"{served.base}/healthz").status_code == 200


# ---------------------------------------------------------------- slow and silent clients


@dataclass
class Outcome:
    seconds: float = 0.0
    answer: Answer | None = None
    closed: bool = False
    error: str = ""


def _in_thread(target: Any, outcome: Outcome) -> threading.Thread:
    def run() -> None:
        try:
            target(outcome)
        except Exception as exc:  # reported by the test, with what the thread saw
            outcome.error = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_slow_and_silent_clients_are_cut_off_while_others_are_served(served: Served) -> None:
    def slowloris(outcome: Outcome) -> None:
        raw = Raw(served)
        head = get("/healthz", b"X-Slow: " + b"s" * 200)
        outcome.seconds = raw.trickle(head, every=0.3)
        outcome.answer = raw.answer()
        outcome.closed = raw.closed_within(2)

    def slow_body(outcome: Outcome) -> None:
        raw = Raw(served)
        body = json.dumps({"name": "慢" * 300, "level": "national"}).encode().ljust(1000)
        request = post(
            f"{API}/parks",
            body,
            f"Authorization: Bearer {served.token}".encode(),
            b"Content-Type: application/json",
        )
        head, _, body = request.partition(b"\r\n\r\n")
        raw.send(head + b"\r\n\r\n")
        outcome.seconds = raw.trickle(body, every=0.1)  # 10 bytes a second
        outcome.answer = raw.answer()
        outcome.closed = raw.closed_within(2)

    def answered_early(outcome: Outcome) -> None:
        raw = Raw(served)
        request = post("/nowhere", b"x" * 1000)
        raw.send(request[:-990])
        outcome.answer = raw.answer()
        outcome.seconds = raw.trickle(request[-990:], every=0.1)
        outcome.closed = raw.closed_within(2)

    def silent(outcome: Outcome) -> None:
        raw = Raw(served)
        started = time.monotonic()
        outcome.closed = raw.closed_within(CLIENT_TIMEOUT + 3)
        outcome.seconds = time.monotonic() - started

    clients = {
        "slowloris": slowloris,
        "slow body": slow_body,
        "body after an early answer": answered_early,
        "silent": silent,
    }
    outcomes = {name: Outcome() for name in clients}
    with probing(served.base) as others:  # a well-behaved client asking all the while
        threads = [_in_thread(clients[name], outcomes[name]) for name in clients]
        for thread in threads:
            thread.join(timeout=20)

    for name, outcome in outcomes.items():
        assert not outcome.error, f"{name}: {outcome.error}"
        assert outcome.closed, f"{name}: the connection was kept"
        assert CLIENT_TIMEOUT - 0.2 < outcome.seconds < CLIENT_TIMEOUT + 1.5, (name, outcome)
    for name in ("slowloris", "slow body"):
        answer = outcomes[name].answer
        assert answer is not None
        problem(answer, 408, "CLIENT_TIMEOUT_SECONDS")
        assert answer.headers["connection"] == "close"
    early = outcomes["body after an early answer"].answer
    assert early is not None and early.status == 404
    assert others.slowest < 1.0, sorted(others.latencies)[-5:]


# ---------------------------------------------------------------- well-behaved clients


def test_keep_alive_pipelining_uploads_and_early_answers_work_as_before(served: Served) -> None:
    auth = f"Authorization: Bearer {served.token}".encode()
    json_type = b"Content-Type: application/json"

    # Several requests on one connection, over longer than CLIENT_TIMEOUT in all.
    raw = Raw(served)
    started = time.monotonic()
    for i in range(5):
        raw.send(get("/healthz"))
        assert raw.answer().status == 200
        body = json.dumps({"name": f"长连接 {i}", "level": "national"}).encode()
        raw.send(post(f"{API}/parks", body, auth, json_type))
        assert raw.answer().status == 201
        time.sleep(0.5)
    raw.send(get(f"{API}/projects/export?format=csv", auth))  # a streamed answer
    export = raw.answer()
    assert export.status == 200 and export.headers.get("transfer-encoding") == "chunked"
    raw.send(get("/healthz"))
    assert raw.answer().status == 200
    assert time.monotonic() - started > CLIENT_TIMEOUT

    # Pipelined: three requests in one write, three answers in order.
    raw.send(get("/healthz") + get(f"{API}/parks?limit=1", auth) + get("/healthz"))
    assert [raw.answer().status for _ in range(3)] == [200, 200, 200]

    # A body sent in pieces within the time, and a chunked one.
    body = json.dumps({"name": "分段", "level": "national"}).encode().ljust(600)
    request = post(f"{API}/parks", body, auth, json_type)
    for at in range(0, len(request), 100):
        raw.send(request[at : at + 100])
        time.sleep(0.1)
    assert raw.answer().status == 201
    pieces = [b'{"name": "chunked', b'", "level": "national"}']
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = f"POST {API}/parks HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n".encode()
    raw.send(head + auth + b"\r\n" + json_type + b"\r\n\r\n" + chunked)
    assert raw.answer().status == 201

    # Answered before its body was read (no such path, no such method): the rest of the body is
    # read and dropped, and the next request on the connection is answered as any other.
    for path, status in (("/nowhere", 404), ("/healthz", 405)):
        request = post(path, b"x" * 300_000)
        raw.send(request[:2000])
        time.sleep(0.3)
        raw.send(request[2000:])
        assert raw.answer().status == status
        raw.send(get("/healthz"))
        assert raw.answer().status == 200
    raw.close()

    # A large upload: refused for what it holds, not for its size or the time it took.
    with served.http() as http:
        csv = b"name,stage\r\n" + b"x" * (20 * 1024 * 1024) + b",signed\r\n"
        answer = http.post(
            f"{API}/projects/import", params={"dry_run": "true"}, files={"file": ("p.csv", csv)}
        )
        assert answer.status_code == 422, answer.text[:300]


# ---------------------------------------------------------------- the documentation's policy


def test_docs_pages_send_a_csp_that_breaks_neither(served: Served) -> None:
    for path, inline_styles in (
        ("/docs", False),
        ("/docs/oauth2-redirect", False),
        ("/redoc", True),
    ):
        answer = httpx.get(served.base + path)
        assert answer.status_code == 200
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        scripts = policy.split("script-src ")[1].split(";")[0]
        assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
        assert ("'unsafe-inline'" in policy) is inline_styles
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    # Every violation the page reports, whether or not it shows on the console.
    listen = (
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(listen)

            page.goto(served.base + "/docs")
            page.locator(".swagger-ui .info .title").wait_for()
            page.locator(".opblock-tag-section").first.wait_for()
            assert page.locator(".opblock-tag-section").count() > 3
            assert page.evaluate("window.violations") == []
            assert errors == []

            page.goto(served.base + "/redoc")
            page.locator(".api-content h1").first.wait_for()
            assert page.locator("[data-section-id]").count() > 10
            # Its footer's logo, from Redocly's CDN, is the one thing kept out.
            blocked = page.evaluate("window.violations")
            assert all(v.startswith("img-src https://cdn.redoc.ly/") for v in blocked), blocked
        finally:
            browser.close()
