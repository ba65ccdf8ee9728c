"""Upload bounds enforced before any request body reaches the application.

A request whose declared ``Content-Length`` is over the limit gets 413 without a byte of its body
being read; a body without a length (chunked) is counted as it arrives and refused with 413 the
moment it passes the limit. Bodies within the limit are handed on unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Callable


class BodyTooLarge(Exception):
    pass


async def _send_json(send: Callable, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 with a one-line JSON error for bodies over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int, setting: str = "serve.max_upload_mb"):
        self.app, self.max_bytes, self.setting = app, int(max_bytes), setting

    def _message(self) -> dict[str, str]:
        mb = self.max_bytes / 2**20
        return {"error": f"upload larger than the limit of {mb:g} MB; send fewer or smaller files (the server's {self.setting})"}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, self._message())
        if declared is not None:
            return await self.app(scope, self._counting(receive), send)
        chunks, size = [], 0  # no declared length: read (bounded) before the application sees it
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await _send_json(send, 413, self._message())
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _counting(self, receive: Callable) -> Callable:
        """A declared length may lie: stop reading past the limit all the same."""
        size = 0

        async def counted() -> dict:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise BodyTooLarge(self._message()["error"])
            return message

        return counted
