"""The service's limits: upload bounds enforced before any request body reaches the application, the
formats it scores, and memory handed back after large requests.

A request whose declared ``Content-Length`` is over the limit gets 413 without a byte of its body
being read; a body without a length (chunked) is counted as it arrives and refused with 413 the
moment it passes the limit. Bodies within the limit are handed on unchanged. Only PNG, JPEG and
DICOM are scored, told by content by the reader every command uses (``lungcls.data.pixels.images``):
Pillow would read GIF, BMP, TIFF and more, which no X-ray workflow produces. Decoding large images leaves freed memory
in the C allocator's arenas (threads decode in parallel); it is handed back to the system after
each large request (glibc's ``malloc_trim``), so the server returns to its level after a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import io
import json
from typing import Any, AsyncIterator, Callable

from lungcls.data.pixels.images import READ_FORMATS, content_format

SCORED_FORMATS = READ_FORMATS


def upload_format(data: bytes, name: str) -> str | None:
    """``PNG``, ``JPEG`` or ``DICOM`` from the upload's content (as every command decides); None
    for anything else."""
    return content_format(data[:132], name)


def other_image_format(data: bytes) -> str | None:
    """The format Pillow sees in an upload that is not scored (GIF, BMP, TIFF...), or None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the caller says "not an image"
        return None


def upload_pixels(data: bytes, name: str) -> int:
    """Pixels an upload will decode to, from its header alone (0 where the header does not say: the
    decoder then refuses the file)."""
    from PIL import Image

    from lungcls.data.pixels.dicom import summarised_warnings

    try:
        if upload_format(data, name) == "DICOM":
            import pydicom

            with summarised_warnings(f"DICOM {name}", "pydicom"):
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
                return int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)
        with Image.open(io.BytesIO(data)) as img:
            return int(img.size[0]) * int(img.size[1])
    except Exception:  # noqa: BLE001 - any damaged header: decoding says what is wrong
        return 0


async def pixels_asked(files: Any, max_pixels: int) -> int:
    """The decoded pixels a request's uploads (Starlette ``UploadFile``) ask for, from their headers."""
    total = 0
    for upload in files:
        data = await upload.read()
        await upload.seek(0)
        total += min(upload_pixels(data, upload.filename or ""), max_pixels)
    return total


class PixelBudget:
    """The decoded pixels of every request in flight together, at most ``capacity``
    (``serve.max_pixels_in_flight``): a request takes its images' pixels (from their headers) at
    once before decoding and gives them back after its response, and waits while they would not
    fit, so concurrent large uploads queue instead of multiplying the server's memory."""

    def __init__(self, capacity: int):
        self.capacity, self.used, self.peak, self.waiting = int(capacity), 0, 0, 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        pixels = min(int(pixels), self.capacity)  # one request never waits for more than there is
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self.used + pixels <= self.capacity)
            finally:
                self.waiting -= 1
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._changed:
                self.used -= pixels
                self._changed.notify_all()

    @property
    def stats(self) -> dict[str, int]:
        return {"pixels_in_flight": self.used, "peak_pixels_in_flight": self.peak, "waiting_for_pixels": self.waiting}


def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc); a no-op elsewhere."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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
