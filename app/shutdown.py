"""`python -m app serve`: uvicorn, with a drain before its own graceful shutdown.

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
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import get_settings

log = logging.getLogger("uvicorn.error")

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
