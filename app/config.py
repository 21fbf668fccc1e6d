"""Settings, read from the environment (and an optional `.env` file)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_DIR / "var" / "registry.db"
DEV_SECRET = "dev-only-secret-change-me-in-production-0000"


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
    secret_key: str = DEV_SECRET
    access_token_minutes: int = 30
    # Reads without logging in; writes always need an editor.
    public_read: bool = False
    registry_admin_password: str | None = None
    max_body_bytes: int = 1024 * 1024
    # The spreadsheet import's own cap: large enough for a whole park's export.
    import_max_body_bytes: int = 64 * 1024 * 1024
    login_failures_per_minute: int = 10
    # On SIGTERM /readyz answers 503 this long while requests are still served, so that balancers
    # (which probe every few seconds) stop sending before the server stops listening.
    shutdown_drain_seconds: float = 5.0

    @model_validator(mode="after")
    def _safe_for_production(self) -> "Settings":
        if self.registry_admin_password is not None and len(self.registry_admin_password) < 8:
            raise ValueError("REGISTRY_ADMIN_PASSWORD must have at least 8 characters")
        if not 1 <= self.access_token_minutes <= 30:
            raise ValueError("ACCESS_TOKEN_MINUTES must be between 1 and 30")
        if self.environment == "production" and (
            self.secret_key == DEV_SECRET or len(self.secret_key) < 32
        ):
            raise ValueError(
                "ENVIRONMENT=production needs its own SECRET_KEY of at least 32 characters"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
