"""Per-request facts: who is writing and under which request id (recorded with each write),
and the parks the caller is confined to (applied by every read and write of a record)."""

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
actor: ContextVar[str | None] = ContextVar("actor", default=None)
# Set by `deps.authorize` from the principal resolved once per request; None: every park (an
# unscoped account, an anonymous public read, the command line).
parks: ContextVar[frozenset[int] | None] = ContextVar("parks", default=None)
