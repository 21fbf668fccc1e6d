"""Settings, read from the environment (and an optional `.env` file)."""

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_DIR / "var" / "registry.db"
DEFAULT_SECRET_KEY_FILE = PROJECT_DIR / "var" / "secret_key"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    # A fixed pool (no overflow), like the bench's reference: requests beyond it wait their turn
    # (FIFO) for a connection; overflow connections opened and closed under load made the tail
    # longer at no gain in throughput (bench/README.md).
    db_pool_size: int = 20
    db_max_overflow: int = 0
    docs_enabled: bool = True
    cors_origins: list[str] = []
    log_level: str = "info"

    environment: Literal["development", "production"] = "development"
    # Signs staff tokens. Unset: a random key made on first start and kept in SECRET_KEY_FILE
    # (mode 0600) with the data, reused on restart; instances on several machines must share
    # one SECRET_KEY instead. There is no built-in key anyone could know.
    secret_key: str = Field(default="", repr=False)
    secret_key_file: Path = DEFAULT_SECRET_KEY_FILE
    access_token_minutes: int = 30
    # Reads without logging in; writes always need an editor.
    public_read: bool = False
    registry_admin_password: str | None = Field(default=None, repr=False)
    max_body_bytes: int = 1024 * 1024
    # The spreadsheet import's own cap: large enough for a whole park's export.
    import_max_body_bytes: int = 64 * 1024 * 1024
    # Spreadsheet import bounds: each refusal is a problem+json naming its limit and setting.
    import_max_rows: int = 200_000
    import_max_columns: int = 64
    import_max_cell_chars: int = 32_767  # Excel's own limit for one cell
    import_max_decompressed_bytes: int = 256 * 1024 * 1024  # an XLSX's XML, unzipped
    # Idempotent replay keeps answers up to this size; a larger one is remembered as done,
    # without its body.
    idempotency_max_stored_bytes: int = 64 * 1024
    # Failed logins: per (username, address) a minute, per address a minute (any username),
    # per username an hour (any address; the slow global backoff).
    login_failures_per_minute: int = 10
    login_failures_per_address_per_minute: int = 30
    login_failures_per_user_per_hour: int = 200
    # Peers (addresses or networks) whose X-Forwarded-For names the client; none by default,
    # so the address is the TCP peer's.
    trusted_proxies: list[str] = []
    # Password hashes computed at once (each ~50 ms of one core); more logins wait their turn,
    # holding no database connection.
    login_hash_concurrency: int = 2
    # Slow or oversized requests: the request line and headers together, and the time a client
    # may take to send a whole request (headers and body).
    max_request_header_bytes: int = 16 * 1024
    client_timeout_seconds: float = 30.0
    # On SIGTERM /readyz answers 503 this long while requests are still served, so that balancers
    # (which probe every few seconds) stop sending before the server stops listening.
    shutdown_drain_seconds: float = 5.0

    @model_validator(mode="after")
    def _checked_and_keyed(self) -> "Settings":
        if self.registry_admin_password is not None and len(self.registry_admin_password) < 8:
            raise ValueError("REGISTRY_ADMIN_PASSWORD must have at least 8 characters")
        if not 1 <= self.access_token_minutes <= 30:
            raise ValueError("ACCESS_TOKEN_MINUTES must be between 1 and 30")
        if self.secret_key and len(self.secret_key) < 32:
            raise ValueError("SECRET_KEY must have at least 32 characters (or be unset)")
        if not self.secret_key:
            self.secret_key = kept_secret(self.secret_key_file)
        return self


def kept_secret(path: Path) -> str:
    """The key kept at `path`, made on first use: 384 random bits, readable by this user only,
    published whole (written aside, then linked into place) so that several workers starting
    at once all read the one key that won."""
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if len(kept) >= 32:
        return kept
    draft = _private_draft(path, secrets.token_urlsafe(48) + "\n")
    try:
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink(missing_ok=True)
    kept = path.read_text().strip()
    if len(kept) < 32:
        raise ValueError(f"{path} holds no usable key: remove it, or set SECRET_KEY")
    return kept


def write_private(path: Path, text: str) -> None:
    """`text` in `path`, readable by this user only, replacing the file whole."""
    os.replace(_private_draft(path, text), path)


def _private_draft(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return draft


@lru_cache
def get_settings() -> Settings:
    return Settings()
