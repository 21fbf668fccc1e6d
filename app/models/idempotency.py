from datetime import datetime

from sqlalchemy import JSON, Index, LargeBinary, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db_types import UTCDateTime


class IdempotencyKey(SQLModel, table=True):
    """A POST's `Idempotency-Key`, scoped to its caller, and the response it produced."""

    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("scope", "key"), Index(None, "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(sa_type=String(200))
    key: str = Field(sa_type=String(200))
    method: str = Field(sa_type=String(10))
    path: str = Field(sa_type=String(500))
    request_hash: str = Field(sa_type=String(64))
    done: bool = Field(default=False)
    response_status: int | None = None
    response_headers: list[list[str]] | None = Field(default=None, sa_type=JSON)
    response_body: bytes | None = Field(default=None, sa_type=LargeBinary)
    created_at: datetime = Field(sa_type=UTCDateTime)
