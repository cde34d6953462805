"""The FastAPI ingress: validation, PNG/JSON responses, server-sent previews, the web page, draining.

No ``from __future__ import annotations`` here: FastAPI must see the real types of the route parameters."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..files.images import png_bytes
from . import calls
from .docs import docs_asset, docs_page
from .errors import ServiceUnavailable, error_response, install_handlers
from .model import Job
from .openai_images import GenerationRequest, check_servable, generation_response, preview_scales, stream_event
from .options import ServeOptions
from .png import b64_png
from .schema import ImageRequest, check_fast, wants_json
from .streams import EventStream

log = logging.getLogger("star_deploy.serve")

app = FastAPI(
    title="STAR text-to-image",
    description="Scale-wise autoregressive text-to-image: final images, or a preview per scale as server-sent events.",
    version="1",
    docs_url=None,
)
install_handlers(app)


def settings(job: Job, result: dict[str, Any]) -> dict[str, Any]:
    """The prompt and the settings an image was made with (as applied), typed as in the request."""
    return {
        "prompt": job.prompt,
        "seed": job.seed,
        "cfg": result["cfg"],
        "top_k": result["top_k"],
        "top_p": result["top_p"],
        "fast": result["fast"],
        "backend": result["backend"],
        "software": "star-deploy serve",
    }


def png_text(used: dict[str, Any]) -> dict[str, str]:
    """``settings`` as the PNG's text chunks."""
    return {key: str(value) for key, value in used.items()}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


MODEL_ID = "star"
"""The id of the served model in the OpenAI-compatible routes."""

STARTED = int(time.time())
"""The ``created`` time of the model object: when the server process started."""

PING_TIMEOUT_S = 2.0
"""How long /healthz waits for a model replica's answer before reporting none alive."""


@serve.deployment(name="StarIngress", ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class StarIngress:
    """HTTP front of the application; forwards jobs to the StarReplica replicas."""

    def __init__(self, model: DeploymentHandle, options: ServeOptions) -> None:
        self.model = model
        self.options = options
        self.in_flight = 0
        self.draining = False

    async def model_info(self, timeout_s: float = PING_TIMEOUT_S) -> dict[str, Any]:
        """A live replica's model info; ServiceUnavailable when none answers within ``timeout_s``."""
        try:
            return await asyncio.wait_for(self.model.info.remote(), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise ServiceUnavailable(
                "no model replica is alive (loading or restarting); retry in a few seconds"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a dead or restarting replica
            raise ServiceUnavailable(f"no model replica answered ({calls.cause(exc)}); retry later") from None

    async def check_fast(self, fast: int, cfg_until: int | None) -> None:
        """A fast mode the model cannot run is a bad request (400), refused before any work starts."""
        if fast or cfg_until is not None:
            check_fast(fast, cfg_until, (await self.model_info(timeout_s=10.0))["config"])

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

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        return docs_page(app.title)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_assets(self, name: str) -> FileResponse:
        return docs_asset(name)

    @app.get("/healthz", summary="Liveness: 200 while a model replica answers, 503 while none does or when draining")
    async def healthz(self) -> JSONResponse:
        if self.draining:
            return error_response(503, "draining: the server is shutting down")
        try:
            await self.model_info()
        except ServiceUnavailable as exc:
            return error_response(503, str(exc))
        return JSONResponse({"status": "ok", "in_flight": self.in_flight})

    @app.get("/v1/model", summary="Model config, backend and precision")
    async def model_card(self) -> dict[str, Any]:
        info = await self.model_info(timeout_s=10.0)
        return {**info, **self.scaling()}

    @app.get("/v1/models", summary="The served model, as OpenAI's model list")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [await self.model_object()]}

    @app.get("/v1/models/{model_id}", summary="The served model, as OpenAI's model object (404 for another id)")
    async def model(self, model_id: str) -> dict[str, Any]:
        if model_id != MODEL_ID:
            raise HTTPException(404, f"no model {model_id!r}: this server runs one model, {MODEL_ID!r}")
        return await self.model_object()

    async def model_object(self) -> dict[str, Any]:
        """The served model as OpenAI's model object (its id, created, owner), with the image size it draws."""
        info = await self.model_info(timeout_s=10.0)
        size = f"{info['resolution']}x{info['resolution']}"
        return {"id": MODEL_ID, "object": "model", "created": STARTED, "owned_by": "star-deploy", "size": size}

    def scaling(self) -> dict[str, Any]:
        """Max batch size and replicas (a count, or the autoscaling bounds)."""
        auto = self.options.autoscaling_config
        replicas = self.options.replicas if auto is None else {"min": auto.min_replicas, "max": auto.max_replicas}
        return {"max_batch_size": self.options.max_batch_size, "replicas": replicas}

    @app.post(
        "/v1/images",
        summary="Generate one image",
        responses={200: {"content": {"image/png": {}, "application/json": {}}}, 422: {}, 503: {}},
    )
    async def images(self, body: ImageRequest, accept: str | None = Header(None)) -> Response:
        await self.check_fast(body.fast, body.cfg_until)
        self.admit()
        try:
            result = await calls.generate(self.model, body.job(), self.options.retries)
        except calls.ModelError as exc:
            return error_response(500, f"generation failed: {exc}")
        finally:
            self.in_flight -= 1
        used = settings(body.job(), result)
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
    async def images_stream(self, body: ImageRequest) -> EventStream:
        await self.check_fast(body.fast, body.cfg_until)
        self.admit(count=False)  # counted by the stream itself, which may never start if the client leaves
        return EventStream(self.events(body))

    async def events(self, body: ImageRequest) -> AsyncGenerator[bytes, None]:
        """preview events (one per scale), then final (or error)."""
        self.in_flight += 1
        try:
            async for event in calls.stream(self.model, body.job(), self.options.retries):
                if event.get("final"):
                    used = settings(body.job(), event)
                    image = b64_png(event["pixels"], png_text(used))
                    yield sse("final", {"image": image, "batch_size": event["batch_size"], **used})
                else:
                    image = b64_png(event["pixels"], compress_level=1)
                    yield sse("preview", {"scale": event["scale"], "num_scales": event["num_scales"], "image": image})
        except (ServiceUnavailable, calls.ModelError) as exc:
            yield sse("error", {"error": str(exc)})
        finally:
            self.in_flight -= 1

    @app.post(
        "/v1/images/generations",
        summary="OpenAI-compatible image generation (b64_json; stream: partial images per scale)",
        responses={400: {}, 422: {}, 503: {}},
    )
    async def generations(self, body: GenerationRequest) -> Response:
        self.admit(count=False)
        info = await self.model_info(timeout_s=10.0)
        check_servable(body, info["resolution"], info["num_scales"])
        check_fast(body.fast, body.cfg_until, info["config"])
        size = f"{info['resolution']}x{info['resolution']}"
        if body.stream:
            scales = preview_scales(body.partial_images, info["num_scales"])
            events = self.openai_events(body, size, scales)
            return EventStream(events)
        self.in_flight += 1
        try:
            jobs = body.jobs()
            results = await asyncio.gather(*(calls.generate(self.model, job, self.options.retries) for job in jobs))
        except calls.ModelError as exc:
            return error_response(500, f"generation failed: {exc}", openai=True)
        finally:
            self.in_flight -= 1
        images = [b64_png(r["pixels"], png_text(settings(job, r))) for job, r in zip(jobs, results)]
        return JSONResponse(generation_response(int(time.time()), images))

    async def openai_events(self, body: GenerationRequest, size: str, scales: set[int]) -> AsyncGenerator[bytes, None]:
        """For each image in turn: the previews of ``scales`` as partial images, then image_generation.completed."""
        self.in_flight += 1
        try:
            for job in body.jobs():
                sent = 0
                async for event in calls.stream(self.model, job, self.options.retries):
                    if event.get("final"):
                        image = b64_png(event["pixels"], png_text(settings(job, event)))
                        yield sse(
                            "image_generation.completed", stream_event("completed", int(time.time()), size, image)
                        )
                    elif event["scale"] in scales:
                        image = b64_png(event["pixels"], compress_level=1)
                        data = stream_event("partial_image", int(time.time()), size, image, sent)
                        yield sse("image_generation.partial_image", data)
                        sent += 1
        except (ServiceUnavailable, calls.ModelError) as exc:
            yield sse("error", {"error": {"message": str(exc), "type": "server_error"}})
        finally:
            self.in_flight -= 1
