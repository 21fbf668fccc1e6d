"""Real server processes for the tests that need one (concurrency, limits, mirrors)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.config import PROJECT_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_until_up(base: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


@contextmanager
def server(
    database_url: str,
    workers: int = 1,
    log: Path | None = None,
    access_log: bool = False,
    **env: str,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m app serve` (the production command) on a free loopback port, its output (and
    a line per request if `access_log`) in `log` if given; stopped with SIGTERM afterwards."""
    port = free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        # Tests that stop a server have no balancer to drain for, unless they set one.
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "REGISTRY_ADMIN_PASSWORD": "admin-password-for-tests",
        **env,
    }
    output = log.open("ab") if log is not None else None
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            *([] if access_log else ["--no-access-log"]),
        ],
        cwd=PROJECT_DIR,
        env=full_env,
        stdout=output or subprocess.DEVNULL,
        stderr=output or subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        yield base, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if output is not None:
            output.close()


class Mirror(subprocess.Popen[bytes]):
    """A running mirror process, with the lines it wrote to its stderr so far (`log`), read as
    they come by a thread of their own so a full pipe never blocks it."""

    log: list[bytes]


@contextmanager
def mirror(source: str, token: str, database_url: str) -> Iterator[Mirror]:
    """`python -m app mirror` following `source` into `database_url` with `token`, polling
    every 0.05 s when idle (its errors in `log`); stopped afterwards."""
    command = ["mirror", "--source", source, "--token", token, "--interval", "0.05"]
    process = Mirror(
        [sys.executable, "-m", "app", *command],
        cwd=PROJECT_DIR,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    process.log = []
    stream = process.stderr
    assert stream is not None

    def read() -> None:
        for line in stream:
            process.log.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---------------------------------------------------------------- waiting on what a server shows


def wait_for(
    condition: Callable[[], object], seconds: float, what: str, every: float = 0.01
) -> Any:
    """Polls `condition` until it returns something true, and returns that; fails naming what
    did not happen if `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"within {seconds:g} s: {what} did not happen")
        time.sleep(every)


def worker_pids(supervisor: int) -> list[int]:
    """The serving processes a `--workers N` server's supervisor has started (multiprocessing's
    spawned children, not its resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def serving_pid(client: socket.socket, pids: list[int]) -> int | None:
    """Which of `pids` holds the server's end of the loopback TCP connection `client`, from the
    kernel's socket table (the connection's inode, then the process with a descriptor for it);
    None while no process has accepted it."""
    local, server = client.getsockname()[1], client.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ours, theirs = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if ours == server and theirs == local and fields[9] != "0":
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
                except FileNotFoundError:
                    continue
        except FileNotFoundError:
            continue
    return None


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (`T`: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
