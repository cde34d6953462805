"""Where a batch job puts its images: the default layout, or GenEval's folders that its evaluation reads as they are."""

from __future__ import annotations

import json

from ..errors import ConfigError
from .prompts import PromptLine

LAYOUTS = ("default", "geneval")
SHARD = 1000
"""Default layout: prompts per folder of images/ (each image write scans its folder for stale temporaries)."""
METADATA = "metadata.jsonl"


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout}: unknown; choose one of {', '.join(LAYOUTS)}")
    return layout


def image_file(layout: str, position: int, image: int) -> str:
    """The image's path in the output folder.

    default: ``images/SSSS/PPPPPP_JJJJ.png`` (prompt P, its image J, SSSS = P // 1000);
    geneval: ``PPPPP/samples/JJJJ.png`` beside ``PPPPP/metadata.jsonl``.
    """
    if layout == "geneval":
        return f"{position:05d}/samples/{image:04d}.png"
    return f"images/{position // SHARD:04d}/{position:06d}_{image:04d}.png"


def image_folders(layout: str, prompts: list[PromptLine]) -> list[str]:
    """Every folder that holds images, in order."""
    if layout == "geneval":
        return [f"{p.position:05d}/samples" for p in prompts]
    return [f"images/{shard:04d}" for shard in sorted({p.position // SHARD for p in prompts})]


def layout_files(layout: str, prompts: list[PromptLine]) -> dict[str, bytes]:
    """Files the layout needs beside the images: GenEval's ``metadata.jsonl``, the prompt's line, per prompt."""
    if layout != "geneval":
        return {}
    return {f"{p.position:05d}/{METADATA}": (json.dumps(p.record, ensure_ascii=False) + "\n").encode() for p in prompts}
