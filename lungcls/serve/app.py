"""The web application: the page at ``/``, ``POST /api/predict``, ``GET /api/models``,
``GET /healthz`` and the OpenAPI description at ``/openapi.json``.

Safe by default: bodies are bounded (``BodyLimit``: 413), every upload is decoded to decide what it
is (400 with a one-line JSON error when it is not a PNG, JPEG or DICOM image lungcls can read,
when it has more pixels than ``max_pixels``, a side under ``min_side``, or the request's images
together more than ``max_request_pixels``; requests wait while all in flight would decode more
than ``max_pixels_in_flight``), upload names are only echoed back, never used as
paths, and the models are the checkpoints named on the command line, nothing a request can change.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import resource
from collections.abc import Sequence
from importlib import resources
from typing import Any, Optional

from fastapi import BackgroundTasks, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lungcls.data.pixels.dicom import PixelLimitError
from lungcls.data.pixels.images import read_gray
from lungcls.serve.settings import ServeSettings
from lungcls.errors import LungclsError
from lungcls.inference.scoring import UsedModel, model_card
from lungcls.serve.batching import Batcher
from lungcls.serve.limits import (SCORED_FORMATS, BodyLimit, PixelBudget, other_image_format, pixels_asked, release_memory,
                                  upload_format)

STATIC = resources.files("lungcls.serve") / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Screening(BaseModel):
    positive_class: str
    threshold: float
    flagged: bool


class MissCapResult(BaseModel):
    decision: str  # "Normal" or "refer"
    called: str  # the class called: the normal class, or the most likely disease class when referred
    alpha: float
    threshold: float


class ModelResult(BaseModel):
    probabilities: dict[str, float]
    prediction: str
    probability: float
    possible_missed_disease: bool
    screening: Optional[Screening] = None
    miss_cap: Optional[MissCapResult] = None
    overlay_png_base64: Optional[str] = None


class ImageResult(BaseModel):
    file: str
    width: int
    height: int
    models: dict[str, ModelResult]


class PredictResponse(BaseModel):
    results: list[ImageResult]


def display_name(filename: str | None, index: int) -> str:
    """The upload's base name, printable and short: shown to the user, never opened."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = re.sub(r"[^\w .()+,=@-]", "_", name).strip()[:120]
    return name or f"upload-{index + 1}"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def memory_mb() -> dict[str, float]:
    """Resident memory of the server process now and at its peak, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        now = peak
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(max(peak, now), 1)}  # two sources, rounded apart


def _decode_one(data: bytes, name: str, max_pixels: int, budget: int, request_limit: int, min_side: int = 1) -> Any:
    """One upload as uint8 grayscale: a scored format, at most ``max_pixels`` pixels and at most
    ``budget`` (what is left of ``serve.max_request_pixels``), both checked from the header, and
    no side under ``min_side``."""
    fmt = upload_format(data, name)
    if fmt is None:
        other = other_image_format(data)
        if other is not None:
            raise LungclsError(f"{name} is a {other} image; lungcls-serve scores PNG, JPEG and DICOM X-rays: convert it to PNG")
        raise LungclsError(f"{name} is not an image lungcls can read; send a PNG, JPEG or DICOM X-ray")
    key = "serve.max_pixels" if max_pixels <= budget else None
    try:
        return read_gray(io.BytesIO(data), max(1, min(max_pixels, budget)), name, key, min_side, "serve.min_side")
    except PixelLimitError as e:
        if key is None:
            raise LungclsError(f"the images of this request have more than serve.max_request_pixels={request_limit:,} pixels "
                               f"together ({name} has {e.pixels:,}); send fewer or smaller images per request") from None
        raise
    except LungclsError as e:
        if str(e).startswith(("cannot read image", "cannot read DICOM")):  # the decoder's own words say nothing more useful
            raise LungclsError(f"{name} is not an image lungcls can read (a damaged {fmt} file); send a PNG, JPEG or DICOM X-ray") from None
        raise


async def decode_uploads(files: Sequence[UploadFile], max_pixels: int, min_side: int, max_request_pixels: int) -> list[tuple[str, Any]]:
    """(name, uint8 grayscale) per upload, decoded off the event loop; LungclsError names the file."""
    decoded, used = [], 0
    for i, upload in enumerate(files):
        name = display_name(upload.filename, i)
        data = await upload.read()
        if not data:
            raise LungclsError(f"{name} is empty; send a PNG, JPEG or DICOM X-ray")
        gray = await run_in_threadpool(_decode_one, data, name, max_pixels, max_request_pixels - used, max_request_pixels, min_side)
        used += int(gray.size)
        decoded.append((name, gray))
    return decoded


def _result(name: str, gray, decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    models = {}
    for model_name, d in decisions.items():
        item = {k: v for k, v in d.items() if k != "overlay_png"}
        if d.get("overlay_png") is not None:
            item["overlay_png_base64"] = base64.b64encode(d["overlay_png"]).decode("ascii")
        models[model_name] = item
    return {"file": name, "height": int(gray.shape[0]), "width": int(gray.shape[1]), "models": models}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error the framework answers is the one-line JSON error too."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if where == "file":
            return _error(400, "no file sent; post multipart/form-data with one or more 'file' fields")
        return _error(400, f"bad request: {where} {first.get('msg', '')}".strip())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, exc.detail)


def create_app(models: Sequence[UsedModel], settings: ServeSettings) -> tuple[Any, Batcher]:
    """The ASGI application serving ``models`` (FastAPI inside the body limit) and its batcher,
    which the caller closes when the server stops."""
    batcher = Batcher(models, settings.batch_size, settings.max_wait_ms, settings.overlay_size)
    max_files, max_pixels = settings.max_files, settings.max_pixels
    min_side, max_request_pixels = settings.min_side, settings.max_request_pixels
    cam_default = settings.cam
    cards = [model_card(m) for m in models]
    limits = {"max_upload_mb": settings.max_upload_mb, "max_files": max_files, "max_pixels": max_pixels,
              "min_side": min_side, "max_request_pixels": max_request_pixels, "formats": list(SCORED_FORMATS)}
    app = FastAPI(title="lungcls", version="1", docs_url=None, redoc_url=None,
                  description="Chest X-ray classification with Grad-CAM, from trained lungcls checkpoints.")
    app.state.batcher = batcher
    in_flight = PixelBudget(settings.max_pixels_in_flight)

    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in ("app.js", "style.css"):
            return _error(404, "not found")
        return FileResponse(str(STATIC / name), headers=PAGE_HEADERS)

    @app.get("/healthz", summary="Liveness, queue and memory")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(models), **batcher.stats, "queued": batcher.jobs.qsize(), **in_flight.stats, **memory_mb()}

    @app.get("/api/models", summary="The model cards: backbone, fine-tune, training data, test metrics, thresholds")
    async def api_models() -> dict[str, Any]:
        return {"models": cards, "limits": limits}

    @app.post("/api/predict", response_model=PredictResponse, response_model_exclude_none=True,
              summary="Class probabilities, prediction, flags and Grad-CAM overlay per model for each uploaded X-ray",
              responses={400: {"description": "not an image, too many pixels, no file"}, 413: {"description": "upload too large"}})
    async def api_predict(background: BackgroundTasks,
                          file: list[UploadFile] = File(..., description="one or more PNG, JPEG or DICOM X-rays"),
                          cam: Optional[bool] = Query(None, description="include the Grad-CAM overlay (default: the server's serve.cam)")) -> Any:
        if len(file) > max_files:
            return _error(400, f"{len(file)} files in one request, more than {max_files}; send them in several requests")
        background.add_task(release_memory)  # after the response, when this request's images are freed
        async with in_flight.hold(await pixels_asked(file, max_pixels)):  # across requests: serve.max_pixels_in_flight
            try:
                decoded = await decode_uploads(file, max_pixels, min_side, max_request_pixels)
            except LungclsError as e:
                return _error(400, str(e))
            finally:
                for upload in file:
                    await upload.close()
            future = batcher.submit([g for _, g in decoded], cam_default if cam is None else bool(cam))
            per_image = await asyncio.wrap_future(future)
        return {"results": [_result(name, gray, d) for (name, gray), d in zip(decoded, per_image)]}

    return BodyLimit(app, int(settings.max_upload_mb * 2**20)), batcher
