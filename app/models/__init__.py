"""Every table, imported so that `SQLModel.metadata` knows them all."""

from app.models.chain import Chain
from app.models.change import Change, MirrorState
from app.models.common import metadata
from app.models.enterprise import Enterprise
from app.models.idempotency import IdempotencyKey
from app.models.investment import Investment
from app.models.park import Park
from app.models.project import Project
from app.models.source import Source
from app.models.target import Target
from app.models.user import ApiToken, AuditEvent, User

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Chain",
    "Change",
    "Enterprise",
    "IdempotencyKey",
    "Investment",
    "MirrorState",
    "Park",
    "Project",
    "Source",
    "Target",
    "User",
    "metadata",
]
