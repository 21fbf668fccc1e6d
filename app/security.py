"""Who is calling: passwords (Argon2), short-lived JWTs for staff, hashed API tokens for services."""

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from anyio import CapacityLimiter, to_thread
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
    # The parks whose records it may see and change; None: every park (the city's view).
    parks: frozenset[int] | None = None

    def allows(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]

    def covers(self, parks: "frozenset[int] | None") -> bool:
        """Whether its scope holds all of `parks` (None: every park)."""
        return self.parks is None or (parks is not None and parks <= self.parks)


# Argon2 is slow on purpose (~50 ms of a core, 64 MiB): off the event loop, and only this many
# at once (LOGIN_HASH_CONCURRENCY, set when the app is built), so that a burst of logins queues
# here instead of taking every core and thread from the requests of others. Callers hold no
# database connection or lock while they wait or hash.
hashing = CapacityLimiter(2)


async def hash_password(password: str) -> str:
    return await to_thread.run_sync(_hasher.hash, password, limiter=hashing)


async def verify_password(password: str, password_hash: str) -> bool:
    return await to_thread.run_sync(_hasher.verify, password, password_hash, limiter=hashing)


_DECOY: list[str] = []


async def decoy_hash() -> str:
    """A hash no password is known for, made once: verified against for an unknown account."""
    if not _DECOY:
        _DECOY.append(await hash_password(secrets.token_urlsafe(32)))
    return _DECOY[0]


@dataclass(frozen=True)
class StaffClaims:
    """What a staff token says, before the account it names is looked up (`deps.caller`)."""

    user_id: int
    username: str
    credentials: str  # `credentials_stamp` of the password hash it was issued under


def credentials_stamp(settings: Settings, password_hash: str) -> str:
    """A keyed digest of the stored password hash: carried by a staff token, so that a
    changed password ends every token issued before it (the hash itself never leaves)."""
    key = settings.secret_key.encode()
    return hmac.new(key, password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def issue_access_token(
    settings: Settings, user_id: int, username: str, role: Role, password_hash: str
) -> tuple[str, int]:
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims = {
        "sub": username,
        "uid": user_id,
        "cred": credentials_stamp(settings, password_hash),
        "role": role.value,  # shown to clients; the account's current role is what applies
        "iat": now,
        "exp": now + lifetime,
        "typ": "access",
    }
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM), int(
        lifetime.total_seconds()
    )


def read_access_token(settings: Settings, token: str) -> StaffClaims:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[ALGORITHM],  # never "none", never a key-confusion algorithm
            options={"require": ["exp", "iat", "sub", "uid", "cred"]},
        )
        if claims.get("typ") != "access":
            raise Unauthorized("not an access token")
        user_id, username, credentials = claims["uid"], claims["sub"], claims["cred"]
        if not (isinstance(user_id, int) and isinstance(username, str)):
            raise Unauthorized("invalid or expired token")
        if not isinstance(credentials, str):
            raise Unauthorized("invalid or expired token")
        return StaffClaims(user_id=user_id, username=username, credentials=credentials)
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
    # ASCII digits only: "¹".isdigit() is true, and int() refuses it.
    if not (ident.isascii() and ident.isdigit()) or not secret:
        return None
    return int(ident), secret


def digest_matches(secret: str, stored: str) -> bool:
    return hmac.compare_digest(token_digest(secret), stored)


def park_scope(value: Any) -> frozenset[int] | None:
    """A stored `park_ids` (JSON: a list, null, or its text) as a principal's scope."""
    if isinstance(value, str):
        value = json.loads(value)
    return None if value is None else frozenset(int(v) for v in value)


def role_of_scopes(scopes: list[str]) -> Role:
    return max((SCOPE_ROLE[Scope(s)] for s in scopes), key=RANK.__getitem__)
