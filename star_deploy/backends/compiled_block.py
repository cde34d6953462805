"""torch.compile of the transformer block alone (regional compilation), and a folder that keeps what was compiled.

Every block of the transformer runs the same code on tensors of the same shapes, so one
compiled block serves all of them: dynamo caches its graph on the block function's code
object and takes each block's weights as inputs. What compiles is one block per distinct
shape, not the whole unrolled step per scale. With ``dynamic``, the sequence lengths become
symbolic at the second scale, sizes 0 and 1 included (size-oblivious), so two graphs cover
the schedule: scale 0, whose query length 1 specialises attention, and every later scale.
Without it, each scale gets its own specialisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.fx.experimental._config
from torch._dynamo.utils import counters

from ..files.atomic import write_bytes
from ..model.transformer import BlockCall, call_block

log = logging.getLogger(__name__)

ARTIFACTS = "torch-compile-artifacts.bin"
"""The file of a compile cache folder holding ``torch.compiler.save_cache_artifacts``' bytes."""


def raise_recompile_limit(num_scales: int) -> None:
    """Room for one specialisation per scale, for a few backends of one process (each may use its own)."""
    limit = 4 * num_scales + 2
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))


@contextmanager
def size_oblivious() -> Iterator[None]:
    """Dynamic sizes that may be 0 or 1 stay symbolic (the cache length is 0 at scale 0, 1 at scale 1)."""
    config = torch.fx.experimental._config
    with config.patch(backed_size_oblivious=True) if hasattr(config, "backed_size_oblivious") else nullcontext():
        yield


def compiled_block(num_scales: int, backend: str = "inductor", dynamic: bool = True) -> BlockCall:
    """``call_block`` through torch.compile: shared by every block, one graph per distinct shape."""
    raise_recompile_limit(num_scales)
    compiled = torch.compile(call_block, backend=backend, dynamic=None if dynamic else False)
    if not dynamic:
        return compiled

    def call(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with size_oblivious():
            return compiled(*args)

    return call


def graphs_compiled() -> int:
    """Graphs dynamo compiled in this process so far (every backend, every function)."""
    return int(counters["stats"]["unique_graphs"])


class CompileCache:
    """A folder keeping compiled artefacts between processes: loaded at start, saved after new compiles.

    It holds ``torch.compiler.save_cache_artifacts``' bytes (inductor's and AOTAutograd's
    cache entries, portable to another machine with the same PyTorch and device), and
    inductor's own on-disk cache (``inductor/``, with the built kernels: this machine only),
    which it makes the process's inductor cache. A second process or a serving replica
    started with the same folder then compiles nothing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.file = self.folder / ARTIFACTS
        self.saved_at = graphs_compiled()
        self.loaded = False
        self.folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((self.folder / "inductor").resolve())
        if self.file.is_file():
            self.loaded = torch.compiler.load_cache_artifacts(self.file.read_bytes()) is not None
            log.info("compile cache: loaded %s", self.file)

    def save_if_new(self) -> bool:
        """Save the artefacts when something was compiled since the last save (or load)."""
        if graphs_compiled() == self.saved_at:
            return False
        saved = torch.compiler.save_cache_artifacts()
        self.saved_at = graphs_compiled()
        if saved is None:
            return False
        write_bytes(self.file, saved[0], overwrite=True)
        log.info("compile cache: saved %s (%d bytes)", self.file, len(saved[0]))
        return True
