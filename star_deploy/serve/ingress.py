"""The FastAPI ingress: validation, PNG/JSON responses, server-sent previews, the web page, draining.

No ``from __future__ import annotations`` here: FastAPI must see the real types of the route parameters."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Header
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..images import png_bytes
from . import calls
from .errors import ServiceUnavailable, error_response, install_handlers
from .options import ServeOptions
from .png import b64_png
from .schema import ImageRequest, wants_json

log = logging.getLogger("star_deploy.serve")

app = FastAPI(
    title="STAR text-to-image",
    description="Scale-wise autoregressive text-to-image: final images, or a preview per scale as server-sent events.",
    version="1",
)
install_handlers(app)


def settings(body: ImageRequest, result: dict[str, Any], backend: str) -> dict[str, Any]:
    """The prompt and the settings an image was made with (top_k as applied), typed as in the request."""
    return {
        "prompt": body.prompt,
        "seed": body.seed,
        "cfg": body.cfg,
        "top_k": result["top_k"],
        "top_p": body.top_p,
        "backend": backend,
        "software": "star-deploy serve",
    }


def png_text(used: dict[str, Any]) -> dict[str, str]:
    """``settings`` as the PNG's text chunks."""
    return {key: str(value) for key, value in used.items()}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@serve.deployment(name="StarIngress", ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class StarIngress:
    """HTTP front of the application; forwards jobs to the StarModel replicas."""

    def __init__(self, model: DeploymentHandle, options: ServeOptions) -> None:
        self.model = model
        self.options = options
        self.in_flight = 0
        self.draining = False
        self.info: dict[str, Any] | None = None

    async def model_info(self) -> dict[str, Any]:
        if self.info is None:
            self.info = await self.model.info.remote()  # waits while no replica is ready
        return self.info

    def admit(self, count: bool = True) -> None:
        """Refuse a request while draining, else count it in (unless ``count`` is False)."""
        if self.draining:
            raise ServiceUnavailable("server is shutting down; retry on another instance")
        self.in_flight += count

    async def drain(self, timeout_s: float = 60.0) -> int:
        """Refuse new requests and wait for in-flight ones; return how many were still running at the timeout."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8"))

    @app.get("/healthz", summary="Readiness: 200 once a model replica answers, 503 while loading or draining")
    async def healthz(self) -> JSONResponse:
        if self.draining:
            return error_response(503, "draining: the server is shutting down")
        try:
            await asyncio.wait_for(self.model_info(), timeout=2.0)
        except asyncio.TimeoutError:
            return error_response(503, "no model replica is ready yet (loading); retry in a few seconds")
        return JSONResponse({"status": "ok", "in_flight": self.in_flight})

    @app.get("/v1/model", summary="Model config, backend and precision")
    async def model_card(self) -> dict[str, Any]:
        info = await self.model_info()
        return {**info, "max_batch_size": self.options.max_batch_size, "replicas": self.options.replicas}

    @app.post(
        "/v1/images",
        summary="Generate one image",
        responses={200: {"content": {"image/png": {}, "application/json": {}}}, 422: {}, 503: {}},
    )
    async def images(self, body: ImageRequest, accept: str | None = Header(None)) -> Response:
        self.admit()
        try:
            result = await calls.generate(self.model, body.job(), self.options.retries)
        except calls.ModelError as exc:
            return error_response(500, f"generation failed: {exc}")
        finally:
            self.in_flight -= 1
        info = await self.model_info()
        used = settings(body, result, info["backend"])
        text = png_text(used)
        headers = {"X-Batch-Size": str(result["batch_size"])}
        if wants_json(body, accept):
            payload = {
                "image": b64_png(result["pixels"], text),
                "format": "png",
                **used,
                "batch_size": result["batch_size"],
            }
            return JSONResponse(payload, headers=headers)
        return Response(png_bytes(result["pixels"], text), media_type="image/png", headers=headers)

    @app.post("/v1/images:stream", summary="Generate one image, streaming a preview per scale (text/event-stream)")
    async def images_stream(self, body: ImageRequest) -> StreamingResponse:
        self.admit(count=False)  # counted by the stream itself, which may never start if the client leaves
        return StreamingResponse(
            self.events(body), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def events(self, body: ImageRequest) -> AsyncGenerator[bytes, None]:
        """preview events (one per scale), then final (or error)."""
        self.in_flight += 1
        try:
            backend = (await self.model_info())["backend"]
            async for event in calls.stream(self.model, body.job(), self.options.retries):
                if event.get("final"):
                    used = settings(body, event, backend)
                    image = b64_png(event["pixels"], png_text(used))
                    yield sse("final", {"image": image, "batch_size": event["batch_size"], **used})
                else:
                    image = b64_png(event["pixels"], compress_level=1)
                    yield sse("preview", {"scale": event["scale"], "num_scales": event["num_scales"], "image": image})
        except (ServiceUnavailable, calls.ModelError) as exc:
            yield sse("error", {"error": str(exc)})
        finally:
            self.in_flight -= 1
