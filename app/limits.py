"""Refuses request bodies over the configured size before they are read whole."""

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.errors import problem_response

# Uploads that are meant to be large, by path: the setting that caps each. Their multipart
# files are spooled to disk past 1 MiB, so a large cap does not mean a large process.
LARGE_UPLOADS = {
    f"/api/v1/{name}/import": "import_max_body_bytes" for name in ("projects", "investments")
}


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def limit(self, scope: Scope) -> int:
        """MAX_BODY_BYTES, or a large upload's own cap (never below it)."""
        setting = LARGE_UPLOADS.get(scope["path"])
        if setting is None:
            return self.max_bytes
        app_state = getattr(scope.get("app"), "state", None)
        settings: Settings = getattr(app_state, "settings", None) or get_settings()
        return max(self.max_bytes, int(getattr(settings, setting)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI re-raises HTTPException from body reading; the handler renders it.
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            Request(scope),
            413,
            "content-too-large",
            "Content too large",
            f"request body exceeds {limit} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
