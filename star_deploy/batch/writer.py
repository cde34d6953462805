"""Generating a chunk and writing its images: PNGs with their settings in text chunks, each written atomically.

The same code runs in-process and in every Ray worker. An image whose file is already there from an
earlier attempt (a worker killed after writing it, a job stopped before indexing it) is taken as it
is when its text chunks carry the image's key: it is never written twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.call_options import CallOptions
from ..errors import OutputError
from ..files.atomic import write_bytes
from ..files.images import png_bytes, read_png
from .index import sha256_file
from .plan import Chunk, ImageTask

if TYPE_CHECKING:
    from ..api import StarPipeline

KEY_CHUNK = "batch_key"
"""The PNG text chunk that holds the image's key (``ImageTask.key``)."""


def png_text(task: ImageTask, applied: dict[str, Any], pipe: StarPipeline, sampler: str) -> dict[str, str]:
    """The PNG's text chunks: what ``run`` writes, plus the item id, the precision and the key."""
    return {
        "prompt": task.prompt,
        "seed": str(task.seed),
        "cfg": str(applied["cfg"]),
        "top_k": str(applied["top_k"]),
        "top_p": str(applied["top_p"]),
        "sampler": sampler,
        "fast": applied["fast"],
        "backend": pipe.backend_name,
        "precision": pipe.precision,
        "software": "star-deploy",
        "id": task.item,
        KEY_CHUNK: task.key,
    }


def index_row(task: ImageTask, text: dict[str, str], sha256: str, node: str | None) -> dict[str, Any]:
    """The image's index line, its settings read back from the PNG's text chunks."""
    return {
        "id": task.item,
        "image": task.image,
        "prompt": task.prompt,
        "seed": task.seed,
        "cfg": float(text["cfg"]),
        "top_k": int(text["top_k"]),
        "top_p": float(text["top_p"]),
        "sampler": text["sampler"],
        "fast": text["fast"],
        "file": task.file,
        "sha256": sha256,
        "backend": text["backend"],
        "precision": text["precision"],
        "node": node,
        "key": task.key,
    }


def existing_image(out: Path, task: ImageTask) -> dict[str, str] | None:
    """The text chunks of the task's file if an earlier attempt wrote it; None if there is no file.

    A file there that this job did not write (another key, not a PNG) is refused, not replaced.
    """
    path = out / task.file
    if not path.exists():
        return None
    try:
        _, text = read_png(path)
    except (OSError, ValueError):
        text = {}
    if text.get(KEY_CHUNK) != task.key:
        raise OutputError(
            f"{path}: exists and was not made by this job; remove it, or pass --overwrite to start the job over"
        )
    return text


class ChunkRunner:
    """Generates chunks with one loaded pipeline and writes their images into ``out``."""

    def __init__(self, pipe: StarPipeline, out: Path, sampler: str, node: str | None = None) -> None:
        self.pipe = pipe
        self.out = out
        self.sampler = sampler
        self.node = node

    def applied(self, task: ImageTask) -> dict[str, Any]:
        """The settings the pipeline applies: the task's, the model's defaults for the rest, top-k capped."""
        d, s = self.pipe.defaults, task.sampling
        top_k = d.top_k if s.top_k is None else s.top_k
        mode = CallOptions(fast=s.fast, cfg_until=s.cfg_until, keep=s.keep).fast_mode(
            self.pipe.config, self.pipe.decoder
        )
        return {
            "cfg": d.cfg if s.cfg is None else s.cfg,
            "top_k": min(top_k, self.pipe.config.transformer.vocab_size),
            "top_p": d.top_p if s.top_p is None else s.top_p,
            "fast": mode.label(),
        }

    def generate(self, tasks: tuple[ImageTask, ...]) -> list[np.ndarray]:
        """The chunk's images as (H, W, 3) uint8, generated together."""
        s = tasks[0].sampling
        result = self.pipe(
            [t.prompt for t in tasks],
            seed=[t.seed for t in tasks],
            guidance_scale=s.cfg,
            top_k=s.top_k,
            top_p=s.top_p,
            sampler=self.sampler,
            batch_size=len(tasks),
            fast=s.fast,
            cfg_until=s.cfg_until,
            keep=s.keep,
        )
        return [np.asarray(image) for image in result.images]

    def write(self, task: ImageTask, pixels: np.ndarray) -> dict[str, Any]:
        """Write one image atomically (never over an existing file); its index line."""
        text = png_text(task, self.applied(task), self.pipe, self.sampler)
        data = png_bytes(pixels, text)
        write_bytes(self.out / task.file, data)
        return index_row(task, text, hashlib.sha256(data).hexdigest(), self.node)

    def __call__(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The index lines of the chunk's images to do, generating the chunk unless every one is already there."""
        todo = [t for t in chunk.tasks if t.ordinal in set(chunk.todo)]
        found = {t.ordinal: existing_image(self.out, t) for t in todo}
        rows = {
            t.ordinal: index_row(t, found[t.ordinal], sha256_file(self.out / t.file), self.node)
            for t in todo
            if found[t.ordinal] is not None
        }
        if len(rows) < len(todo):
            for task, pixels in zip(chunk.tasks, self.generate(chunk.tasks)):
                if task.ordinal in found and task.ordinal not in rows:
                    rows[task.ordinal] = self.write(task, pixels)
        return [rows[t.ordinal] for t in todo]
