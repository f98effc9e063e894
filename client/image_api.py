"""The image classification web API: upload an image, get the top-5 ImageNet classes and an
account of where the time went.

    POST /classify   multipart upload (field ``file``): JSON with ``top5`` and ``latency_ms``
                     (upload read, decode and preprocess, Triton queue and transport, inference,
                     total, all measured on the server side) and a ``Server-Timing`` header
    GET  /metrics    Prometheus histograms per stage, requests by status
    GET  /           a page to upload an image and see the answer and its timings
    GET  /health     whether Triton's ``image_pipeline`` is ready

Run by ``make image-api`` (``python -m client image-api``) under uvicorn, in front of Triton's
``image_pipeline`` ensemble (``IMAGE_API_TRITON``, default 127.0.0.1:8001).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from python_backend import settings
from python_backend.image import IMAGE, IMAGE_PIPELINE, MAX_IMAGE_BYTES

PAGE = Path(__file__).with_name("image_page.html")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
STAGES = ("upload_read", "decode_preprocess", "triton_queue_and_transport", "inference", "total")
#: Room for the multipart envelope around the largest accepted image.
MAX_BODY_BYTES = MAX_IMAGE_BYTES + 64 * 1024

registry = CollectorRegistry()
STAGE_SECONDS = Histogram(
    "image_api_stage_seconds",
    "Server-side time per request and stage",
    ["stage"],
    registry=registry,
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0),
)
REQUESTS = Counter(
    "image_api_requests_total", "Requests by HTTP status", ["status"], registry=registry
)

app = FastAPI(title="Image classification (EfficientNet-Lite0 on Triton)")
_triton: dict = {}


def multipart(filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one file field named ``file``."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def triton():
    """One asyncio gRPC client per process, made on first use inside the event loop."""
    if "client" not in _triton:
        import tritonclient.grpc.aio as grpcaio

        url = settings.IMAGE_API_TRITON.get()
        _triton["client"] = grpcaio.InferenceServerClient(url)
    return _triton["client"]


def problem(status: int, message: str) -> JSONResponse:
    REQUESTS.labels(str(status)).inc()
    return JSONResponse({"error": message}, status_code=status)


#: An oversized upload is read and thrown away up to this many bytes so that its sender gets
#: the 413: a server that answers and closes with the body unread resets the connection, and
#: the client sees only the reset. Past it the connection is closed.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


async def _drain(receive, more: bool) -> bool:
    """Read and discard the rest of a request body (at most DRAIN_LIMIT_BYTES); whether all
    of it was read."""
    read = 0
    while more and read <= DRAIN_LIMIT_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return False
        read += len(message.get("body", b""))
        more = message.get("more_body", False)
    return not more


class UploadLimit:
    """ASGI middleware for ``/classify``: a body over ``MAX_BODY_BYTES``, declared by its
    ``Content-Length`` or counted as a chunked one arrives, is refused with a 413 that says
    the limit, before the form is parsed; the rest of the body is read first so the answer
    reaches the client."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/classify":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await problem(400, "Content-Length: not a number of bytes")(
                    scope, receive, send
                )
            if int(declared) > MAX_BODY_BYTES:
                await _drain(receive, True)
                return await self._refuse(scope, receive, send, f"upload of {int(declared):,}")
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                await _drain(receive, more)
                return await self._refuse(scope, receive, send, "chunked upload of over")
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)

    @staticmethod
    async def _refuse(scope, receive, send, what: str) -> None:
        message = (
            f"{what} bytes: the limit is {MAX_IMAGE_BYTES:,} bytes per image; send a smaller "
            "image (resize or recompress it)"
        )
        await problem(413, message)(scope, receive, send)


app.add_middleware(UploadLimit)


@app.middleware("http")
async def arrival_time(request: Request, call_next):
    """Stamp arrival before the body is read."""
    request.state.arrived = time.perf_counter()
    return await call_next(request)


@app.post("/classify")
async def classify(request: Request, file: Annotated[UploadFile, File()]) -> Response:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    data = await file.read()
    read_done = time.perf_counter()
    if file.content_type not in CONTENT_TYPES:
        return problem(
            415, f"file: content type {file.content_type!r}; send one of {', '.join(CONTENT_TYPES)}"
        )
    if len(data) > MAX_IMAGE_BYTES:
        return problem(413, f"file: {len(data):,} bytes, the limit is {MAX_IMAGE_BYTES:,}")
    if not data:
        return problem(422, "file: empty upload")
    image = grpcclient.InferInput(IMAGE.name, [1, 1], IMAGE.wire_dtype)
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    sent = time.perf_counter()
    try:
        result = await triton().infer(
            IMAGE_PIPELINE.name,
            [image],
            outputs=[grpcclient.InferRequestedOutput(o.name) for o in IMAGE_PIPELINE.outputs],
            client_timeout=10,
        )
    except InferenceServerException as err:
        message = err.message() or str(err)
        if "IMAGE:" in message:  # the preprocessing refused it: the caller's to fix
            return problem(422, message[message.index("IMAGE:") :].replace("IMAGE:", "file:", 1))
        if err.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
            return problem(503, f"the model server did not answer, retry later: {message}")
        return problem(500, f"the model server failed on this image: {message}")
    answered = time.perf_counter()
    preprocess_ms = float(result.as_numpy("PREPROCESS_US")[0, 0]) / 1000
    inference_ms = float(result.as_numpy("INFER_US")[0, 0]) / 1000
    triton_ms = (answered - sent) * 1000
    labels = [b.decode() for b in result.as_numpy("LABELS")[0]]
    probabilities = result.as_numpy("PROBABILITIES")[0].tolist()
    ids = result.as_numpy("CLASS_IDS")[0].tolist()
    done = time.perf_counter()
    latency = {
        "upload_read": (read_done - request.state.arrived) * 1000,
        "decode_preprocess": preprocess_ms,
        "triton_queue_and_transport": max(0.0, triton_ms - preprocess_ms - inference_ms),
        "inference": inference_ms,
        "total": (done - request.state.arrived) * 1000,
    }
    for stage, ms in latency.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000)
    REQUESTS.labels("200").inc()
    timing = ", ".join(f"{k};dur={v:.2f}" for k, v in latency.items())
    body = {
        "filename": file.filename,
        "bytes": len(data),
        "top5": [
            {"label": label, "class_id": int(i), "probability": round(float(p), 5)}
            for label, i, p in zip(labels, ids, probabilities, strict=True)
        ],
        "latency_ms": {k: round(v, 3) for k, v in latency.items()},
        "model": "efficientnet-lite0",
    }
    return JSONResponse(body, headers={"Server-Timing": timing})


@app.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@app.get("/health")
async def health() -> JSONResponse:
    try:
        ready = await triton().is_model_ready(IMAGE_PIPELINE.name)
    except Exception:
        ready = False
    return JSONResponse({"ready": bool(ready)}, status_code=200 if ready else 503)


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    return PAGE.read_text()
