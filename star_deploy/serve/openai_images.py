"""The OpenAI-compatible images API: ``POST /v1/images/generations`` request body, checks and response shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core.config import MAX_CFG
from .errors import BadRequest
from .model import Job
from .schema import MAX_PROMPT_CHARS, MAX_SEED, MAX_TOP_K

MAX_IMAGES = 10
"""The most images one request may ask for (``n``), as in OpenAI's API."""


class GenerationRequest(BaseModel):
    """Body of POST /v1/images/generations (OpenAI's fields, plus STAR's sampler settings)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, str_max_length=MAX_PROMPT_CHARS)

    prompt: str = Field(description="What to draw.", examples=["a red circle on a blue background"])
    model: str | None = Field(None, description="Accepted for compatibility; the server runs one model.")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="Images to generate: image i uses seed + i.")
    size: str | None = Field(None, description="WIDTHxHEIGHT; only the model's own size (see /v1/models) or auto.")
    response_format: Literal["b64_json", "url"] | None = Field(None, description="b64_json (url is not offered).")
    output_format: Literal["png"] | None = Field(None, description="png only.")
    stream: bool = Field(False, description="Server-sent events: partial images, then image_generation.completed.")
    partial_images: int = Field(0, ge=0, description="Per-scale previews sent before each final image (stream).")
    user: str | None = Field(None, description="Accepted for compatibility, not used.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the first image.")
    cfg: float | None = Field(None, ge=0.0, le=MAX_CFG, description="Classifier-free guidance (default: the model's).")
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K, description="Top-k (0 off; default: the model's).")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass (default: the model's).")

    fast: int = Field(
        0,
        ge=0,
        le=2,
        description="Extension: fast mode 0 exact, 1 guidance stops early, 2 also prunes tokens.",
    )
    cfg_until: int | None = Field(None, ge=1, description="Extension, fast modes: guidance on the first K scales only.")

    def jobs(self) -> list[Job]:
        """One job per image: seeds seed, seed + 1, ..."""
        settings = {"cfg": self.cfg, "top_k": self.top_k, "top_p": self.top_p, "fast": self.fast}
        settings["cfg_until"] = self.cfg_until
        return [Job(prompt=self.prompt, seed=self.seed + i, **settings) for i in range(self.n)]


def check_servable(request: GenerationRequest, resolution: int, num_scales: int) -> None:
    """Refuse (400) what this model cannot do: another size, URLs, more partial images than scales."""
    size = f"{resolution}x{resolution}"
    if request.size not in (None, "auto", size):
        raise BadRequest(f"size {request.size} is not available: this model draws {size} only")
    if request.response_format == "url":
        raise BadRequest("response_format url is not offered: the server keeps no images; use b64_json")
    if request.partial_images and not request.stream:
        raise BadRequest("partial_images needs stream: true")
    if request.partial_images > num_scales - 1:
        raise BadRequest(f"partial_images {request.partial_images}: at most {num_scales - 1} (one per scale)")
    if request.seed + request.n - 1 > MAX_SEED:
        raise BadRequest(f"seed {request.seed} + n {request.n} - 1 exceeds the largest seed {MAX_SEED}")


def preview_scales(partial_images: int, num_scales: int) -> set[int]:
    """The scales whose previews are sent: ``partial_images`` of them, spread over the scales before the last."""
    return {(i + 1) * (num_scales - 1) // (partial_images + 1) for i in range(partial_images)}


def generation_response(created: int, images: list[str]) -> dict[str, Any]:
    """The non-streaming answer: {created, data: [{b64_json, revised_prompt}]}."""
    return {"created": created, "data": [{"b64_json": image, "revised_prompt": None} for image in images]}


def stream_event(kind: str, created: int, size: str, image: str, index: int | None = None) -> dict[str, Any]:
    """An ``image_generation.partial_image`` (with ``index``) or ``image_generation.completed`` event."""
    event = {
        "type": f"image_generation.{kind}",
        "b64_json": image,
        "created_at": created,
        "size": size,
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
    }
    if index is not None:
        event["partial_image_index"] = index
    return event
