"""`python -m app serve`: uvicorn, with a drain before its own graceful shutdown, and each
connection behind bounds on slow and oversized requests (`Connection`, `ClientTimeout`).

On the first SIGTERM (or SIGINT) a serving process goes on listening and answering as before, but
`/readyz` answers 503 (`draining()`) for `SHUTDOWN_DRAIN_SECONDS`: a load balancer probing it sees
that and stops sending new requests here. Then uvicorn's graceful shutdown runs: it stops listening,
finishes the requests in progress (within `GRACEFUL_TIMEOUT_SECONDS`) and exits. Each process
drains itself, whether it is the only one or one of `--workers N`.

A SIGINT during the drain (Ctrl+C again) ends it at once; a repeated SIGTERM does not, because a
supervisor passing the signal on and a service manager signalling the whole process group both
send one, which must not cut the drain short.

Public APIs relied on, and why:
- `uvicorn.Config(factory=True)` (the documented `--factory`): uvicorn calls `app_with_drain()` in
  every serving process when it loads the app. That is after `uvicorn.Server.serve()` has pointed
  SIGINT and SIGTERM at `Server.handle_exit` (`Server.capture_signals`), so `app_with_drain()`
  finds that handler with the standard `signal` module, puts the drain in front of it, and hands
  the signal on to it when the drain is over. It is the one place where code of ours runs in a
  worker under `--workers N`: uvicorn's supervisor starts its own `uvicorn.Server` there, so a
  subclass of `Server` would not be used. The order (handlers first, then the app) is uvicorn's,
  not a documented promise; if it changed, the drain would not happen, and tests/test_shutdown.py
  would fail.
- `uvicorn.Server(config).run()` with one worker; `Config.bind_socket()` and
  `uvicorn.supervisors.Multiprocess` with several, as `uvicorn.run` uses them (`Supervisor` below
  overrides its public `terminate_all`, for the reason given there).
- `uvicorn.Config(http=…)` takes a protocol class, which uvicorn makes for each connection with
  the keywords it gives its own (`config`, `server_state`, `app_state`, `_loop`); `Connection`
  takes them and makes the protocol `http="httptools"` names (`uvicorn.config.HTTP_PROTOCOLS`,
  as uvicorn resolves its own setting) with the same.
  uvicorn copies `app_state` into each request's `scope["state"]`, as the ASGI lifespan state.
"""

import asyncio
import json
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

import httptools
import uvicorn
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import HTTP_PROTOCOLS, STARTUP_FAILURE
from uvicorn.importer import import_from_string
from uvicorn.supervisors import Multiprocess

from app.config import get_settings
from app.errors import PROBLEM_BASE, PROBLEM_JSON

log = logging.getLogger("uvicorn.error")
# The protocol uvicorn itself loads for `--http httptools`, found as uvicorn finds it (by that
# setting's name), not by the module it lives in.
HTTPTOOLS: Any = import_from_string(HTTP_PROTOCOLS["httptools"])

# uvicorn's own limit on finishing the requests in progress once it has stopped listening.
GRACEFUL_TIMEOUT_SECONDS = 30
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any]


class Drain:
    """This process's handler for SIGINT and SIGTERM, in front of uvicorn's."""

    def __init__(
        self, seconds: float, loop: asyncio.AbstractEventLoop, handlers: dict[int, Handler]
    ) -> None:
        self.seconds = seconds
        self.loop = loop
        self.handlers = handlers  # uvicorn's, by signal
        self.started = False
        self.handed_on = False

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        if self.handed_on:
            self.handlers[sig](sig, frame)  # uvicorn's own: a further Ctrl+C forces the exit
        elif not self.started:
            self.started = True
            if self.seconds <= 0:
                self.hand_on(sig)
                return
            log.info(
                "Draining for %g s: /readyz answers 503, requests are still served", self.seconds
            )
            # The documented way to reach the event loop from a signal handler.
            self.loop.call_soon_threadsafe(self.loop.call_later, self.seconds, self.hand_on, sig)
        elif sig == signal.SIGINT:
            log.info("Interrupted again: the drain ends now")
            self.hand_on(sig)

    def hand_on(self, sig: int) -> None:
        if not self.handed_on:
            self.handed_on = True
            self.handlers[sig](sig, None)


_drain: Drain | None = None


def draining() -> bool:
    """Whether this process has been asked to stop (it still serves, but should get no new work)."""
    return _drain is not None and _drain.started


def app_with_drain() -> FastAPI:
    """The app, for uvicorn to load (`factory=True`) in each serving process, with the drain put
    in front of the stop handlers uvicorn has installed by then."""
    global _drain
    from app.main import app

    found = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    handlers: dict[int, Handler] = {sig: h for sig, h in found.items() if callable(h)}
    if len(handlers) < len(found) or threading.current_thread() is not threading.main_thread():
        log.warning("No stop handlers to put the drain in front of: stopping without a drain")
        return app
    seconds = max(0.0, get_settings().shutdown_drain_seconds)
    # uvicorn loads the app from within its event loop.
    _drain = Drain(seconds, asyncio.get_running_loop(), handlers)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _drain)
    return app


class Supervisor(Multiprocess):
    """uvicorn's supervisor of several workers, except that it lets go of its copy of the
    listening socket when it tells them to stop. The workers hold their own copies and go on
    accepting through the drain; once the last of them has stopped listening the socket is closed,
    and a later client is refused at once (it may retry elsewhere) instead of being queued by the
    kernel for a worker that will never accept it, and reset when the supervisor exits."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


# ---------------------------------------------------------------- slow and oversized requests

# The key under which each request's `scope["state"]` holds its connection's `Connection`.
CONNECTION = "connection"


class Connection(asyncio.Protocol):
    """One client connection: uvicorn's httptools protocol, behind the two bounds uvicorn does
    not set on what a client sends.

    - MAX_REQUEST_HEADER_BYTES on a request's head (request line, headers and any empty lines
      before them): httptools (llhttp) has no limit of its own, and uvicorn kept whatever came
      (a 64 MiB header was read whole). A longer head is answered 431 and the connection closed.
    - CLIENT_TIMEOUT_SECONDS on a head, from its first byte (from the connection's opening, for
      its first request) to its end: uvicorn's only timer is the keep-alive between requests,
      which any byte cancels, so a client that connected and sent nothing, or sent its head a
      byte at a time (slowloris), held the connection for ever. A head not complete in time is
      answered 408 (a connection that sent nothing is just closed). The body then has as long
      again, timed by `ClientTimeout` in the app, which tells this object when each request of
      the connection reaches the app and when it has been answered (through the request's
      `scope["state"]`, the ASGI lifespan state, which uvicorn copies into every request).

    Where each request begins and ends is known from a parser of our own (httptools, set as
    uvicorn sets its own), fed the same bytes first: no body is ever counted as a head. So a
    request answered before its body was read (a 404 to an upload) leaves the connection open
    for the next one: uvicorn reads the rest of the body and drops it, and this object closes the
    connection if that rest has not come by the deadline `ClientTimeout` set for it (unless a
    next request has reached the app). What it cannot place is where a head begins inside a
    read that began in a body (a request pipelined behind one with a body): such a head may
    exceed the bound by up to the rest of that read.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        settings = get_settings()
        self.max_head = settings.max_request_header_bytes
        self.seconds = settings.client_timeout_seconds
        self.loop = _loop or asyncio.get_event_loop()
        # Made as uvicorn makes the protocol it picks itself, with the arguments it gives any.
        self.inner = HTTPTOOLS(
            config=config,
            server_state=server_state,
            app_state={**app_state, CONNECTION: self},
            _loop=_loop,
        )
        self.parser = httptools.HttpRequestParser(self)
        # As uvicorn's own parser is set: bytes after a `Connection: close` request are ignored.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head = 0  # bytes read of the head to come (none of a read that began in a body)
        self.heads = 0  # heads parsed so far
        self.in_head = False  # a request's first byte has come, not yet the end of its head
        self.in_body = False  # its head has ended, not yet its body
        self.in_app = 0  # requests of this connection in the app, not yet answered

    # asyncio.Protocol: every event goes on to uvicorn's protocol.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass
        self._arm(self.loop.time() + self.seconds)
        self.inner.connection_made(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.in_body:  # body bytes, and any head pipelined behind them in this read
            self._parse(data)
        else:  # bytes of a head, or of the empty lines that may come before one
            ended = self.heads
            room = self.max_head - self.head
            if len(data) <= room:
                self._parse(data)
                if self.heads == ended:
                    self.head += len(data)
            else:
                view = memoryview(data)
                self._parse(view[:room])
                if self.heads == ended:
                    self._refuse(
                        431,
                        "Request header fields too large",
                        f"请求行和请求头合计超过 {self.max_head} 字节 (the request line and headers"
                        f" exceed MAX_REQUEST_HEADER_BYTES = {self.max_head})",
                    )
                    return
                self._parse(view[room:])
        if self.timer is None and (self.in_head or self.head):
            self._arm(self.loop.time() + self.seconds)  # the head to come has begun
        self.inner.data_received(data)

    def eof_received(self) -> None:
        self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # httptools: where requests begin and end.
    def on_message_begin(self) -> None:
        self.in_head = True

    def on_headers_complete(self) -> None:
        self.in_head, self.in_body = False, True
        self.head = 0
        self.heads += 1
        self._disarm()

    def on_message_complete(self) -> None:
        self.in_body = False

    # What `ClientTimeout` tells.
    def request_started(self) -> None:
        self.in_app += 1
        if not self.in_head:
            self._disarm()  # the rest of an earlier body came in time: this request is in

    def request_finished(self, deadline: float) -> None:
        """A request has been answered; its body had to arrive by `deadline`."""
        self.in_app -= 1
        if not self.in_app and self.in_body:
            self._arm(deadline)  # answered before its body came: the rest must come in time

    def _parse(self, data: bytes | memoryview) -> None:
        try:  # noqa: SIM105 (on every read: a try costs nothing, contextlib.suppress an object)
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            pass  # uvicorn's protocol, parsing the same bytes, answers 400 or hands over

    def _arm(self, when: float) -> None:
        self._disarm()
        self.timer = self.loop.call_at(when, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.in_head:
            self._refuse(
                408,
                "Request timeout",
                f"请求头未在 {self.seconds:g} 秒内发完 (the request head did not arrive within"
                f" CLIENT_TIMEOUT_SECONDS = {self.seconds:g})",
            )
        elif not self.in_app:  # nothing came, or not the rest of an answered request's body
            self._close()

    def _refuse(self, status: int, title: str, detail: str) -> None:
        """A problem+json answer of our own, then the connection closed. Only with no request of
        the connection in the app: then nothing else is writing to it."""
        if not self.in_app and self.transport is not None and not self.transport.is_closing():
            slug = title.lower().replace(" ", "-")
            problem = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
            body = json.dumps({**problem, "detail": detail}, ensure_ascii=False).encode()
            head = (
                f"HTTP/1.1 {status} {title}\r\ncontent-type: {PROBLEM_JSON}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        self._close()

    def _close(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()


class ClientTimeout:
    """A request's body must have arrived CLIENT_TIMEOUT_SECONDS after the request reached the
    app: a read past that is answered 408 and the connection closed. Under `python -m app
    serve` it also tells the request's `Connection` when the request starts and ends."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        connection: Connection | None = scope.get("state", {}).get(CONNECTION)
        if connection is not None:
            connection.request_started()
        read = False

        async def timed_receive() -> Message:
            nonlocal read
            if read:  # past the body, receive() waits for a disconnect: for as long as it takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"请求体未在 {self.seconds:g} 秒内发完 (the request body did not arrive"
                    f" within CLIENT_TIMEOUT_SECONDS = {self.seconds:g})",
                    headers={"Connection": "close"},
                ) from None
            read = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, timed_receive, send)
        finally:
            if connection is not None:
                connection.request_finished(deadline)


def _stopped_on_request(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(*, host: str, port: int, workers: int, access_log: bool) -> int:
    settings = get_settings()
    config = uvicorn.Config(
        "app.shutdown:app_with_drain",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # X-Forwarded-For names the client only when the peer is a trusted proxy; uvicorn's
        # default would trust any local peer.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies,
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_SECONDS,
        # Each connection behind the bounds on slow and oversized requests.
        http=Connection,
    )
    if workers > 1:
        # The supervisor passes SIGINT and SIGTERM on to every worker as SIGTERM, and waits for
        # them: each drains, then stops.
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return 0
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it, to the handler it found, so that the process
    # dies of it (status 143). A stop that was asked for and completed is a success: exit 0.
    previous = signal.signal(signal.SIGTERM, _stopped_on_request)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else STARTUP_FAILURE
