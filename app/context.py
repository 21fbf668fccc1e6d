"""Per-request facts that the write path records: who, and under which request id."""

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
actor: ContextVar[str | None] = ContextVar("actor", default=None)
