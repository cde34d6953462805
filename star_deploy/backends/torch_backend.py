"""The PyTorch reference backend: eager modules, static KV cache written in place, optional CUDA graphs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ..core.config import SamplingConfig
from ..core.cpu_isa import backend_isa, cpu_flags
from ..core.fast import ScalePlan, scale_plans
from ..model.graph_modules import DecoderGraph, PrunedStepGraph, ScaleUpdateGraph, StepGraph, TextContextGraph
from ..model.text import TextEncoderModule
from ..release.weights import StarTorchModel
from .compiled_block import CompileCache, compiled_block
from .cuda_graphs import CudaGraphs, GraphedSampler
from .decoder_layout import LayoutChoice, layout_name, measure_layout, set_layout
from .kv_cache import KVCache
from .text_cache import UnconditionalTextCache
from .torch_arrays import TorchArrays, device_tables
from .torch_pruning import kept_index
from .torch_sampling import PortableSampler

log = logging.getLogger(__name__)


@contextmanager
def cudnn_autotuned() -> Iterator[None]:
    """cuDNN benchmark mode inside the block only: each convolution shape picks its fastest kernel once."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def warn_if_emulated(dtype: str, flags: list[str] | None = None, option: str = "--dtype") -> None:
    """Say so when this CPU (or one with ``flags``) has no instructions for ``dtype``: its matmuls are then emulated,
    slower than float32; ``option`` is the load option that asked for it."""
    if backend_isa("fp32", dtype, cpu_flags() if flags is None else flags).endswith("emulated"):
        log.warning(
            "%s is emulated on this CPU (no AVX512-BF16, AVX512-FP16 or AMX), slower than float32; "
            "use %s float32, or the onnxruntime backend",
            dtype,
            option,
        )


class TorchBackend(TorchArrays):
    """Runs the reference modules; ``dtype`` applies to the transformer and decoder, ``decoder_dtype`` (default
    ``dtype``) to the decoder alone: the tokens never depend on it.

    With ``cuda_graphs``, the text context, every scale's step (with its cache write), its
    portable draw and its update, and the decoder are captured as CUDA graphs on the first
    generation and replayed afterwards; only the CLIP text encoder runs eagerly. Each plan of
    scales (exact, or a fast mode's, ``core/fast.py``) captures its own graphs in its own memory
    pool, so generations of different plans may alternate; a pruned step captures its choice of
    pivotal tokens too.

    With ``compile`` (True for inductor, or a torch.compile backend name), the transformer
    block runs through torch.compile, compiled once and shared by every block (regional
    compilation, see ``compiled_block.py``): the float32 islands fuse with their neighbours
    and the first generation pays the compilation. ``compile_dynamic`` makes the sequence
    lengths symbolic after the first scale (two graphs for the whole schedule), otherwise
    each scale is its own specialisation. ``compile_cache`` names a folder keeping the
    compiled artefacts, loaded at start and saved after a generation compiled something new.

    ``channels_last`` sets the decoder's convolution layout (NHWC when True, NCHW when
    False). ``"measure"`` times both at the first decode on this device and keeps the faster,
    recorded in ``decoder_layout``; it is the default on a GPU. On CPU the default is NCHW for
    float32 (channels-last gained ~6%, noisy, and made the decoder's result depend on the batch
    size by ~2e-5) and channels-last for a bfloat16/float16 decoder (oneDNN's NCHW kernels for
    them were 36x slower on an AVX2 CPU, and 4.7x slower for bf16 on an AMX CPU).
    """

    name = "torch"

    def __init__(
        self,
        model: StarTorchModel,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cuda_graphs: bool = False,
        compile: bool | str = False,
        channels_last: bool | str | None = None,
        compile_dynamic: bool = True,
        compile_cache: Path | None = None,
        decoder_dtype: torch.dtype | None = None,
    ) -> None:
        self.config = model.config
        self.compiled = compile
        self.device = torch.device(device)
        self.dtype = dtype
        self.decoder_dtype = dtype if decoder_dtype is None else decoder_dtype
        self.cuda_graphs = cuda_graphs
        self.graph_sets: dict[tuple[ScalePlan, ...], CudaGraphs] = {}
        self.graphs: CudaGraphs | None = None
        if self.device.type == "cpu" and dtype != torch.float32:
            warn_if_emulated(str(dtype).removeprefix("torch."))
        if self.device.type == "cpu" and self.decoder_dtype not in (dtype, torch.float32):
            warn_if_emulated(str(self.decoder_dtype).removeprefix("torch."), option="--decoder-dtype")
        model.to(self.device, dtype)
        model.vqvae.decoder.to(self.decoder_dtype)
        self.compile_cache = CompileCache(compile_cache) if compile and compile_cache is not None else None
        backend = compile if isinstance(compile, str) else "inductor"
        block_call = compiled_block(self.config.num_scales, backend, compile_dynamic) if compile else None
        self.text_graph = TextEncoderModule(model.text_encoder)
        self.context_graph = TextContextGraph(model.transformer)
        self.step_graph = StepGraph(model.transformer, block_call)
        self.pruned_graph = PrunedStepGraph(model.transformer, block_call)
        self.update_graph = ScaleUpdateGraph(model.transformer, model.vqvae)
        self.decoder_graph = DecoderGraph(model.vqvae)
        self.decoder_modules = (model.vqvae.post_quant_conv, model.vqvae.decoder)
        self.decoder_layout = self._initial_layout(channels_last)
        set_layout(self.decoder_modules, self.memory_format)
        self.tables = device_tables(self.config, self.device)
        self.cache: KVCache | None = None
        self.text: list[torch.Tensor] = []
        self.text_cache = UnconditionalTextCache(self._encode_rows, torch.cat)

    def _initial_layout(self, channels_last: bool | str | None) -> LayoutChoice | None:
        """The fixed layout asked for or the CPU default; None when it is to be measured at the first decode."""
        if channels_last is None:
            if self.device.type == "cuda":
                return None
            channels_last = self.decoder_dtype != torch.float32
        if channels_last == "measure":
            return None
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last={channels_last!r}: use True, False, None or 'measure'")
        return LayoutChoice(layout_name(torch.channels_last if channels_last else torch.contiguous_format))

    @property
    def memory_format(self) -> torch.memory_format:
        """The decoder's layout (NCHW until a measured choice is made)."""
        return torch.contiguous_format if self.decoder_layout is None else self.decoder_layout.memory_format

    def encode_text(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_cache(np.asarray(input_ids), np.asarray(attention_mask))

    @torch.inference_mode()
    def _encode_rows(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_graph(self.asarray(input_ids), self.asarray(attention_mask))

    @torch.inference_mode()
    def begin(
        self, hidden: torch.Tensor, attention_mask, pooled: torch.Tensor, plans: tuple[ScalePlan, ...] | None = None
    ) -> torch.Tensor:
        b = hidden.shape[0] // 2
        new_batch = self.cache is None or self.cache.capacity != 2 * b
        if new_batch:
            self.cache = None
            self.cache = KVCache(self.config, 2 * b, self.dtype, self.device)
            for graphs in self.graph_sets.values():
                graphs.reset()
        self.cache.reset()
        if self.cuda_graphs:
            self.graphs = self.graph_sets.setdefault(plans or scale_plans(self.config), CudaGraphs(self.device))
        args = (hidden[:b], self.asarray(attention_mask)[:b], pooled)
        start, *text = (
            self.context_graph(*args) if self.graphs is None else self.graphs.run("context", self.context_graph, *args)
        )
        if new_batch:
            self.text = [t.clone() for t in text]
        else:
            for dst, src in zip(self.text, text):
                dst.copy_(src)
        return start

    def keep_conditional_rows(self) -> None:
        """Guidance stops here: the cache keeps its conditional rows (eager copies, also with CUDA graphs)."""
        with torch.inference_mode():
            self.cache.keep_conditional_rows()

    def sampler(self, sampling: SamplingConfig, seeds: Sequence[int]):
        """The sampler ``sampling`` names; with CUDA graphs the portable one replays as a graph per scale."""
        sampler = super().sampler(sampling, seeds)
        if self.graphs is None or not isinstance(sampler, PortableSampler):
            return sampler
        return GraphedSampler(sampler, self.graphs)

    @torch.inference_mode()
    def step(self, scale: int, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("begin() must run before step()")
        t = self.tables[scale]
        if self.graphs is None:
            (logits,) = self._step(x, t["rope_cos"], t["rope_sin"])
        else:
            (logits,) = self.graphs.run(("step", scale), self._step, x, t["rope_cos"], t["rope_sin"])
        self.cache.length += x.shape[1]
        return logits

    def _step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor]:
        """The step over the cached prefix, writing its K/V into the next slot."""
        logits, *new = self.step_graph(x, cos, sin, *self.text, *self.cache.past())
        self.cache.write(new)
        return (logits,)

    @torch.inference_mode()
    def pruned_step(
        self, scale: int, x: torch.Tensor, kept: int, prior: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``scale`` on its ``kept`` pivotal tokens, the others restored from ``prior``; logits and residual."""
        if self.cache is None:
            raise RuntimeError("begin() must run before pruned_step()")
        t, side = self.tables[scale], self.config.patch_nums[scale]
        x = x.view(x.shape[0], side, side, x.shape[-1])
        if prior is None:
            before = self.config.patch_nums[scale - 1] if scale else 1
            prior = x.new_zeros(x.shape[0], before, before, x.shape[-1])
        args = (x, t["rope_cos"], t["rope_sin"], prior, t["restore"])
        run = functools.partial(self._pruned, kept)
        if self.graphs is None:
            logits, residual = run(*args)
        else:
            logits, residual = self.graphs.run(("pruned", scale), run, *args)
        self.cache.length += kept
        return logits, residual

    def _pruned(self, kept: int, x, cos, sin, prior, restore) -> tuple[torch.Tensor, torch.Tensor]:
        """The pivotal tokens' choice and the pruned step, writing the kept tokens' K/V into the next slot."""
        batch = self.cache.capacity // 2
        index = kept_index(x.flatten(1, 2), kept, batch)
        logits, residual, *new = self.pruned_graph(x, index, cos, sin, prior, restore, *self.text, *self.cache.past())
        self.cache.write(new)
        return logits, residual

    @torch.inference_mode()
    def update(self, scale: int, tokens, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tables[scale]
        args = (self.asarray(tokens), f_hat, t["upsample"], t["downsample"], t["phi_weights"], t["next_level"])
        if self.graphs is None:
            return self.update_graph(*args)
        return self.graphs.run(("update", scale), self.update_graph, *args)

    @torch.inference_mode()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """The image; the first one on a device chooses the decoder layout, and saves new compiled artefacts."""
        if self.decoder_layout is None:
            decode = functools.partial(self._decode, f_hat)
            self.decoder_layout = measure_layout(self.decoder_modules, decode, self.synchronize)
        if self.compile_cache is not None:
            self.compile_cache.save_if_new()
        if self.graphs is None:
            return self._decode(f_hat)
        (image,) = self.graphs.run("decode", lambda f: (self._decode(f),), f_hat.to(self.device))
        return image

    @torch.inference_mode()
    def preview(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Eager decode: a captured decoder graph must only replay in the scale loop's order."""
        return self._decode(f_hat)

    def _decode(self, f_hat: torch.Tensor, memory_format: torch.memory_format | None = None) -> torch.Tensor:
        """The image (B, 3, H, W), contiguous whatever layout the convolutions ran in."""
        f_hat = f_hat.to(self.device).contiguous(memory_format=memory_format or self.memory_format)
        with cudnn_autotuned() if self.device.type == "cuda" else nullcontext():
            return self.decoder_graph(f_hat).contiguous()
