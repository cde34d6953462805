"""The item plan: every image a job makes, its seed and settings, and the chunks generated together.

Everything here follows from the prompt file and the command's settings alone, never from how the
work is split: image i of the plan (in file order) uses seed ``--seed + i`` unless its line gives a
seed (then the line's images use seed, seed+1, ...), and chunks are consecutive runs of at most
``--batch-size`` images with the same sampler settings. A resumed job, a local run and a Ray run
therefore generate every chunk with the same images in it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..core.arguments import MAX_SEED
from ..errors import ConfigError
from .layout import image_file
from .prompts import PromptLine


@dataclass(frozen=True)
class ItemSampling:
    """The sampler settings an image asks for; None takes the model's default.

    Every per-image sampler setting lives here: chunks carry it to the worker that makes
    the image, and it is part of the image's key. ``fast``, ``cfg_until`` and ``keep`` are the
    job's fast mode (``CallOptions``), the same for every image.
    """

    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    fast: int = 0
    cfg_until: int | None = None
    keep: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.keep is not None:
            object.__setattr__(self, "keep", tuple(self.keep))  # a list once read back from JSON


@dataclass(frozen=True)
class ImageTask:
    """One image of the plan: ``image`` is its number within its item (prompt line)."""

    ordinal: int
    item: str
    image: int
    prompt: str
    seed: int
    sampling: ItemSampling
    file: str
    key: str
    """A digest of the job's settings and of everything above: the same key, the same image."""


@dataclass(frozen=True)
class Chunk:
    """Images generated together; only those in ``todo`` (ordinals) are written."""

    tasks: tuple[ImageTask, ...]
    todo: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps({"tasks": [asdict(t) for t in self.tasks], "todo": list(self.todo)})

    @classmethod
    def from_json(cls, text: str) -> Chunk:
        data = json.loads(text)
        tasks = tuple(ImageTask(**(t | {"sampling": ItemSampling(**t["sampling"])})) for t in data["tasks"])
        return cls(tasks, tuple(data["todo"]))


def line_sampling(line: PromptLine, default: ItemSampling) -> ItemSampling:
    """The line's own settings, the command's for those it leaves out."""
    return replace(
        default,
        cfg=default.cfg if line.cfg is None else line.cfg,
        top_k=default.top_k if line.top_k is None else line.top_k,
        top_p=default.top_p if line.top_p is None else line.top_p,
    )


def task_key(job_digest: str, fields: dict[str, Any]) -> str:
    text = json.dumps({"job": job_digest, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def plan_images(
    prompts: list[PromptLine], seed: int, per_prompt: int, sampling: ItemSampling, layout: str, job_digest: str
) -> list[ImageTask]:
    """Every image of the job in file order (``per_prompt`` images a line unless the line gives ``n``)."""
    tasks: list[ImageTask] = []
    for line in prompts:
        chosen = line_sampling(line, sampling)
        for j in range(line.n or per_prompt):
            ordinal = len(tasks)
            image_seed = seed + ordinal if line.seed is None else line.seed + j
            if image_seed >= MAX_SEED:
                raise ConfigError(
                    f"--seed {seed}: image {ordinal} would use seed {image_seed} >= 2**63; choose a smaller one"
                )
            fields = {"prompt": line.prompt, "seed": image_seed, "sampling": asdict(chosen), "item": line.id}
            file = image_file(layout, line.position, j)
            key = task_key(job_digest, fields | {"file": file})
            tasks.append(ImageTask(ordinal, line.id, j, line.prompt, image_seed, chosen, file, key))
    return tasks


def plan_chunks(tasks: list[ImageTask], batch_size: int) -> list[tuple[ImageTask, ...]]:
    """Consecutive runs of at most ``batch_size`` images with the same sampler settings."""
    chunks: list[tuple[ImageTask, ...]] = []
    current: list[ImageTask] = []
    for task in tasks:
        if current and (len(current) == batch_size or current[0].sampling != task.sampling):
            chunks.append(tuple(current))
            current = []
        current.append(task)
    if current:
        chunks.append(tuple(current))
    return chunks


def todo_chunks(chunks: list[tuple[ImageTask, ...]], done: set[int]) -> list[Chunk]:
    """The chunks with an image not yet done; each is generated whole so that its images stay the same."""
    found = []
    for tasks in chunks:
        todo = tuple(t.ordinal for t in tasks if t.ordinal not in done)
        if todo:
            found.append(Chunk(tasks, todo))
    return found
