"""The HTTP request body: validated by pydantic with strict types ("5" is not a number), unknown fields refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core.config import MAX_CFG, StarConfig
from ..core.fast import resolve_fast
from ..errors import ConfigError
from .errors import BadRequest
from .model import Job

MAX_PROMPT_CHARS = 1000
"""CLIP reads 77 tokens; anything far longer is a client mistake, refused rather than truncated."""

MAX_SEED = 2**63 - 1
MAX_TOP_K = 1_000_000


class ImageRequest(BaseModel):
    """Body of POST /v1/images and /v1/images:stream."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, str_max_length=MAX_PROMPT_CHARS)

    prompt: str = Field(
        description="What to draw; the empty prompt draws unconditionally.",
        examples=["a red circle on a blue background"],
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Random seed: the same seed and settings give the same image.")
    cfg: float | None = Field(
        None, ge=0.0, le=MAX_CFG, description="Classifier-free guidance (default: the model's, 4.0 officially)."
    )
    top_k: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_K,
        description="Keep the k most likely tokens (0: off; default: the model's, 600 officially; capped).",
    )
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="Nucleus sampling mass (default: the model's, 0.8 officially)."
    )
    fast: int = Field(
        0, ge=0, le=2, description="Fast mode: 0 exact; 1 guidance stops early; 2 also prunes tokens (approximations)."
    )
    cfg_until: int | None = Field(None, ge=1, description="Fast modes: guidance on the first K scales only.")
    response_format: Literal["png", "json"] | None = Field(
        None, description="png (image/png) or json (base64 PNG); default: from the Accept header, else png."
    )

    def job(self) -> Job:
        return Job(
            prompt=self.prompt,
            seed=self.seed,
            cfg=self.cfg,
            top_k=self.top_k,
            top_p=self.top_p,
            fast=self.fast,
            cfg_until=self.cfg_until,
        )


def wants_json(request: ImageRequest, accept: str | None) -> bool:
    """JSON if asked by ``response_format``, else if the Accept header prefers JSON over PNG."""
    if request.response_format is not None:
        return request.response_format == "json"
    accept = (accept or "").lower()
    return "application/json" in accept and "image/png" not in accept


def check_fast(fast: int, cfg_until: int | None, config: dict) -> None:
    """Refuse (400) a fast mode the served model cannot run: ``cfg_until`` beyond its scales, no preset."""
    try:
        resolve_fast(StarConfig.from_dict(config), fast, cfg_until)
    except ConfigError as exc:
        raise BadRequest(str(exc).replace("--cfg-until", "cfg_until").replace("--fast", "fast")) from None
