"""Settings, read from the environment (and an optional `.env` file)."""

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_DIR / "var" / "registry.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: str = f"sqlite:///{DEFAULT_SQLITE_PATH}"
    # A pool as large as the concurrency we expect keeps connections from churning under load.
    db_pool_size: int = 20
    db_max_overflow: int = 10
    docs_enabled: bool = True
    cors_origins: list[str] = []
    page_max: int = 500
    page_default: int = 50
    log_level: str = "info"


@lru_cache
def get_settings() -> Settings:
    return Settings()
