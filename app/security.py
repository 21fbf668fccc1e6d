"""Who is calling: passwords (Argon2), short-lived JWTs for staff, hashed API tokens for services."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from anyio import to_thread
from pwdlib import PasswordHash

from app.config import Settings
from app.errors import AppError
from app.models.user import Role, Scope

RANK = {Role.viewer: 1, Role.editor: 2, Role.admin: 3}
SCOPE_ROLE = {Scope.read: Role.viewer, Scope.write: Role.editor, Scope.admin: Role.admin}
TOKEN_PREFIX = "pir_"
ALGORITHM = "HS256"

_hasher = PasswordHash.recommended()


class Unauthorized(AppError):
    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str = "missing or invalid credentials") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    status, slug, title = 403, "forbidden", "Forbidden"


class TooManyRequests(AppError):
    status, slug, title = 429, "too-many-requests", "Too many requests"


@dataclass(frozen=True)
class Principal:
    name: str  # recorded as the actor of every write
    role: Role
    kind: str  # "user" or "token"

    def allows(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


async def hash_password(password: str) -> str:
    # Argon2 is slow on purpose: off the event loop.
    return await to_thread.run_sync(_hasher.hash, password)


async def verify_password(password: str, password_hash: str) -> bool:
    return await to_thread.run_sync(_hasher.verify, password, password_hash)


def issue_access_token(settings: Settings, username: str, role: Role) -> tuple[str, int]:
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims = {
        "sub": username,
        "role": role.value,
        "iat": now,
        "exp": now + lifetime,
        "typ": "access",
    }
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM), int(
        lifetime.total_seconds()
    )


def read_access_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[ALGORITHM],  # never "none", never a key-confusion algorithm
            options={"require": ["exp", "iat", "sub"]},
        )
        if claims.get("typ") != "access":
            raise Unauthorized("not an access token")
        return Principal(name=str(claims["sub"]), role=Role(claims["role"]), kind="user")
    except (jwt.PyJWTError, KeyError, ValueError) as exc:
        raise Unauthorized("invalid or expired token") from exc


def new_api_token(token_id: int) -> tuple[str, str]:
    """The token to show once, and the hash to store."""
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", token_digest(secret)


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_api_token(token: str) -> tuple[int, str] | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    ident, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not ident.isdigit() or not secret:
        return None
    return int(ident), secret


def digest_matches(secret: str, stored: str) -> bool:
    return hmac.compare_digest(token_digest(secret), stored)


def role_of_scopes(scopes: list[str]) -> Role:
    return max((SCOPE_ROLE[Scope(s)] for s in scopes), key=RANK.__getitem__)
