"""`python -m app serve`: uvicorn, stopped by SIGTERM without resetting a request that reached it.

uvicorn stops by closing its listening socket, then every connection with no request in progress;
it finishes the requests in progress (with `Connection: close`). Under load, most SIGTERMs still
lost 1-2 requests (see the SIGTERM test in tests/test_reliability.py), each ended by a TCP reset
although it had reached this host, none of them seen by the app:
- a connection the kernel had completed but uvicorn had not accepted yet: closing the listening
  socket resets it, with the client's request already sent;
- a connection uvicorn had accepted whose request sat unread in the socket (the event loop had not
  got to it yet): closing a socket with unread data makes the kernel answer with a reset.
The client cannot tell either from a request that was processed and then lost. Here the server
first accepts what the kernel has queued, then closes the listening socket, and gives every idle
connection a moment to deliver a request already on its way (answered with `Connection: close`),
never closing one while bytes are waiting in it. What remains is refusal: a client that connects
after that gets ECONNREFUSED before it has sent anything, and may retry elsewhere.
"""

import asyncio
import fcntl
import logging
import signal
import socket
import struct
import termios
from asyncio import TimerHandle
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")

# How long an idle connection stays open once the stop has begun: long enough for a request the
# client sent just before to arrive and be answered; a client that keeps its connection alive is
# told `Connection: close` and reconnects (to be refused) instead of having the connection closed
# under its next request.
IDLE_GRACE_SECONDS = 0.5
# Waiting for the rest of a request that arrived only in part ends here.
PARTIAL_REQUEST_SECONDS = 5.0
GRACEFUL_TIMEOUT_SECONDS = 30


class StoppingState(ServerState):
    def __init__(self) -> None:
        super().__init__()
        self.stopping = False


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for this connection that the event loop has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])
    except OSError:
        return 0


class GracefulHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, except how an idle connection is closed at shutdown."""

    _grace: TimerHandle | None = None
    _deadline = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if getattr(self.server_state, "stopping", False):
            self.shutdown()  # taken from the kernel's queue after the stop began

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            super().shutdown()  # a request in progress: answered, then the connection is closed
        elif self._grace is None:
            self._deadline = self.loop.time() + PARTIAL_REQUEST_SECONDS
            self._grace = self.loop.call_later(IDLE_GRACE_SECONDS, self._close_when_idle)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._grace is not None and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with `Connection: close`, then closed

    def _close_when_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # its response closes the connection
        if _unread_bytes(self.transport) and self.loop.time() < self._deadline:
            # A request is in the socket: the event loop reads it next; closing now would reset it.
            self._grace = self.loop.call_later(0.05, self._close_when_idle)
            return
        self.transport.close()


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.server_state: StoppingState = StoppingState()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.server_state.stopping = True
        queued = self._take_queued_connections()
        loop = asyncio.get_running_loop()
        for conn in queued:
            try:
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()
        if queued:
            log.info("Accepted %d queued connection(s) before closing the socket", len(queued))
        await super().shutdown(sockets)

    def _take_queued_connections(self) -> list[socket.socket]:
        """Accept what the kernel has queued, then close the listening sockets at once (no await
        in between): a client that connects after that is refused instead of reset."""
        queued: list[socket.socket] = []
        for server in self.servers:
            for listener in server.sockets:
                with socket.fromfd(listener.fileno(), listener.family, listener.type) as taker:
                    taker.setblocking(False)
                    while True:
                        try:
                            conn, _ = taker.accept()
                        except ConnectionAbortedError:
                            continue  # the client gave up while queued
                        except OSError:  # none left (EAGAIN), or no file descriptor to spare
                            break
                        queued.append(conn)
            server.close()
        return queued

    def _protocol(self) -> asyncio.Protocol:
        return GracefulHttpProtocol(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )


class Supervisor(Multiprocess):
    """uvicorn's supervisor of several workers, except that it lets go of the listening socket
    when it stops them. Holding it, the kernel goes on completing connections that no worker will
    accept, and resets them, requests sent, when the supervisor exits (up to the graceful timeout
    later); let go, the socket closes with the last worker, and later clients are refused."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def _stopped_on_request(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(*, host: str, port: int, workers: int, access_log: bool) -> int:
    config = uvicorn.Config(
        "app.main:app",
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        access_log=access_log,
        http=GracefulHttpProtocol,
        timeout_graceful_shutdown=GRACEFUL_TIMEOUT_SECONDS,
    )
    if workers > 1:
        # uvicorn's supervisor runs its own server class in each worker: the protocol above (no
        # reset of an unread request) applies; the accepting of queued connections does not.
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return 0
    server = GracefulServer(config)
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
