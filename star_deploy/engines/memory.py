"""Device memory the TensorRT engines need per batch size, and the refusal of a build that cannot fit the GPU.

What the runtime holds at batch B: every engine's weights (their ONNX initializers, in the export's
precision), the KV cache of the whole schedule, the text context and the largest transient I/O
(``buffers.buffer_plan``). On top of that, if TensorRT does not fuse the attention of the last scale
into one kernel, its float32 scores (2B, heads, last-scale tokens, all tokens) are materialised:
about 8.7 GiB at 1024-d30 batch 1, 35 GiB at batch 4. Whether TensorRT fuses depends on its version,
the GPU and the precision, so that figure is reported and warned about, not refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..artifacts.manifest import Manifest
from ..core.config import StarConfig
from ..core.dtypes import tensor_bytes
from ..core.graphs import OPTIONAL_GRAPHS
from ..errors import StarDeployError
from .buffers import BufferPlan, buffer_plan
from .profiles import check_batch_sizes
from .sidecar import built_batch_sizes, sidecar_path

log = logging.getLogger(__name__)

GIB = float(1 << 30)


def size(n: int) -> str:
    """Bytes in GiB, or in MiB below a tenth of a GiB."""
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def attention_scores_bytes(config: StarConfig, batch: int, queries: int | None = None) -> int:
    """float32 self-attention scores of the last scale: (2B, heads, its tokens, all tokens so far); of at most
    ``queries`` of its tokens where the attention runs in pieces."""
    t = config.transformer
    last = config.patch_nums[-1] ** 2
    return tensor_bytes((2 * batch, t.heads, min(last, queries or last), config.total_tokens), "float32")


def weights_bytes(manifest: Manifest, graphs: Iterable[str]) -> int:
    """Bytes of ``graphs``' ONNX files and external data: the weights their engines keep on the GPU."""
    files = [manifest.path(g) for g in graphs]
    files += [f.with_name(f.name + ".data") for f in files]
    return sum(f.stat().st_size for f in files if f.is_file())


@dataclass(frozen=True)
class DeviceMemory:
    """The engines' device memory at one batch size."""

    batch: int
    weights: int
    buffers: BufferPlan
    attention_scores: int

    @property
    def required(self) -> int:
        """Held whatever TensorRT fuses: weights and runtime buffers."""
        return self.weights + self.buffers.total

    @property
    def unfused(self) -> int:
        """``required`` plus the float32 attention scores of the last scale, if attention is not fused."""
        return self.required + self.attention_scores

    def line(self) -> str:
        b = self.buffers
        return (
            f"device memory at batch {self.batch}: {size(self.required)} (weights {size(self.weights)}, KV cache "
            f"{size(b.kv_cache)}, text context {size(b.text_context)}, largest transient I/O "
            f"{size(b.transient_peak)}); {size(self.unfused)} if TensorRT does not fuse attention (fp32 scores of "
            f"the last scale {size(self.attention_scores)})"
        )


def reported_batch_sizes(manifest: Manifest, given: list[int] | None) -> list[int]:
    """``given``, else the batch sizes the folder's engines are built for, else 1."""
    if given:
        return check_batch_sizes(list(given))
    required = [g for g in manifest.graphs if g not in OPTIONAL_GRAPHS]  # the pruned step is built for --fast 2 only
    if all(sidecar_path(manifest.root, g).is_file() for g in required):
        return built_batch_sizes(manifest.root, required)
    return [1]


def engine_graphs(manifest: Manifest) -> list[str]:
    """The graphs whose engines a run holds: every required one, and an optional one where its engine is built."""
    root = manifest.root
    return [g for g in manifest.graphs if g not in OPTIONAL_GRAPHS or sidecar_path(root, g).is_file()]


def device_memory(
    manifest: Manifest, batch_sizes: list[int], graphs: Iterable[str] | None = None
) -> list[DeviceMemory]:
    """The device memory of ``graphs``' engines (default: ``engine_graphs``) at each batch size, smallest first."""
    weights = weights_bytes(manifest, engine_graphs(manifest) if graphs is None else graphs)
    return [
        DeviceMemory(
            b,
            weights,
            buffer_plan(manifest.config, manifest.graphs, b, manifest.precision),
            attention_scores_bytes(manifest.config, b),
        )
        for b in sorted(set(batch_sizes))
    ]


def check_fits(memory: list[DeviceMemory], total: int, gpu: str) -> None:
    """Refuse batch sizes whose weights and buffers exceed the GPU's memory; warn where unfused attention would."""
    over = [m for m in memory if m.required > total]
    if over:
        m = over[0]
        fits = [str(x.batch) for x in memory if x.required <= total]
        raise StarDeployError(
            f"--batch-size {m.batch}: the engines need {size(m.required)} of device memory (weights "
            f"{size(m.weights)}, KV cache {size(m.buffers.kv_cache)}), more than the {size(total)} of {gpu}; "
            "build for a smaller batch size" + (f" ({', '.join(fits)} fit)" if fits else "")
        )
    for m in memory:
        if m.unfused > total:
            log.warning(
                "batch %d: %s of device memory if TensorRT does not fuse the last scale's attention (%s of fp32 "
                "scores), more than the %s of %s",
                m.batch,
                size(m.unfused),
                size(m.attention_scores),
                size(total),
                gpu,
            )
