"""Real server processes for the tests that need one (concurrency, limits, mirrors)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def mirror(source: str, token: str, database_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m app mirror` following `source` into `database_url` with `token`, polling
    every 0.05 s when idle (its errors in its `stderr`); stopped afterwards."""
    command = ["mirror", "--source", source, "--token", token, "--interval", "0.05"]
    process = subprocess.Popen(
        [sys.executable, "-m", "app", *command],
        cwd=PROJECT_DIR,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
