"""ONNX Runtime backend: numpy in and out, no torch; runs on any installed execution provider.

The KV cache and the text context live on the provider's device as ORT-owned buffers,
bound by address: each step reads the cache prefix and writes its new keys/values straight
into the next slot (no copies). Everything the scale loop sees is a numpy array.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..artifacts.manifest import Manifest
from ..core.config import SamplingConfig
from ..core.dtypes import numpy_type
from ..core.fast import ScalePlan, scale_plans
from ..core.graphs import OPTIONAL_GRAPHS, PRUNED_STEP, Role, TensorSpec, scale_dims
from ..core.pruning import kept_index
from ..core.sampling import PortableSampler
from ..core.tables import build_scale_tables
from ..errors import ArtifactError, BackendUnavailableError
from .base import HostClock
from .ort_sessions import create_session, create_sessions, default_provider, provider_entry
from .text_cache import UnconditionalTextCache

log = logging.getLogger(__name__)


def import_ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
        ) from None
    return onnxruntime


class DeviceTensor:
    """An ORT-owned buffer on the provider's device, and views of its leading rows."""

    def __init__(self, ort: ModuleType, shape: tuple[int, ...], dtype: type, device: tuple[str, int]) -> None:
        self.value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, *device)
        self.shape, self.dtype, self.device = shape, dtype, device
        self.row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize

    def bind(self, binding: Any, name: str, start: int, count: int, output: bool, rows: int | None = None) -> None:
        """Bind rows [start, start + count) under ``name``; ``rows`` views the buffer with fewer rows per position."""
        inner = list(self.shape[1:]) if rows is None else [rows, *self.shape[2:]]
        row_bytes = int(np.prod(inner)) * np.dtype(self.dtype).itemsize
        args = (name, *self.device, self.dtype, [count, *inner], self.value.data_ptr() + start * row_bytes)
        (binding.bind_output if output else binding.bind_input)(*args)


class OrtKVCache:
    """Keys then values of every layer for the whole schedule, (L, rows, H, D) each, allocated once.

    Where guidance stops (fast modes), ``keep_conditional_rows`` compacts each layer's filled
    prefix to its conditional rows in place; the layers are then bound with ``rows`` = B.
    """

    def __init__(self, ort: ModuleType, backend: OrtBackend, rows: int) -> None:
        t, config = backend.config.transformer, backend.config
        shape = (config.total_tokens, rows, t.heads, t.head_dim)
        self.layers = [DeviceTensor(ort, shape, backend.kv_dtype, backend.io_device) for _ in range(2 * t.depth)]
        self.capacity = self.rows = rows
        self.length = 0

    def reset(self) -> None:
        self.rows, self.length = self.capacity, 0

    def layer(self, tensor: TensorSpec) -> DeviceTensor:
        """The buffer behind a cache tensor: keys of every layer come first, then values."""
        depth = len(self.layers) // 2
        return self.layers[tensor.layer + (depth if tensor.is_value else 0)]

    def bind(self, binding: Any, tensor: TensorSpec, start: int, count: int, output: bool) -> None:
        self.layer(tensor).bind(binding, tensor.name, start, count, output, self.rows)

    def keep_conditional_rows(self) -> None:
        """Compact every layer's prefix to its first half of rows, in place (on the host for device buffers)."""
        keep = self.rows // 2
        for layer in self.layers:
            host = layer.value.numpy()
            compact_rows(host.reshape(-1), self.length, self.rows, keep, int(np.prod(layer.shape[2:])))
            if host.ctypes.data != layer.value.data_ptr():
                layer.value.update_inplace(host)
        self.rows = keep

    def prefix(self, layer: DeviceTensor) -> np.ndarray:
        """The filled prefix of one layer (a host copy for device buffers)."""
        flat = layer.value.numpy().reshape(-1)
        return flat[: self.length * self.rows * int(np.prod(layer.shape[2:]))].reshape(
            self.length, self.rows, *layer.shape[2:]
        )


def compact_rows(flat: np.ndarray, length: int, rows: int, keep: int, row_size: int) -> None:
    """Move the first ``keep`` of ``rows`` rows of each of ``length`` positions to the front of ``flat``, in place.

    Position s moves from s·rows·R to s·keep·R; the chunks of positions [s, 2s) copied in order
    never overlap their sources (see ``backends/kv_cache.py``).
    """
    positions = flat[: length * rows * row_size].reshape(length, rows * row_size)
    start = 1
    while start < length:
        end = min(2 * start, length)
        flat[start * keep * row_size : end * keep * row_size] = positions[start:end, : keep * row_size].reshape(-1)
        start = end


class OrtBackend:
    """Runs ``manifest``'s graphs with ONNX Runtime on ``provider`` (default: CPU, or CUDA for a cuda device)."""

    name = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        device: str = "cpu",
        threads: int = 0,
        provider: str | None = None,
        provider_options: dict[str, Any] | None = None,
        session_options: Any = None,
    ) -> None:
        ort = import_ort()
        self.ort, self.manifest, self.config = ort, manifest, manifest.config
        device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        self.provider = provider or default_provider(device)
        entry, self.io_device = provider_entry(ort, self.provider, device_id, provider_options)
        self.device = device
        self.dtype = "float16" if manifest.precision == "fp16" else "float32"
        self.kv_dtype = numpy_type(manifest.graphs["transformer_step"].with_role(Role.CACHE_SLOT)[0].dtype)
        self._session_args = (entry, self.provider, threads, session_options)
        self.sessions = create_sessions(ort, manifest, *self._session_args, skip=OPTIONAL_GRAPHS)
        self.scale_steps: dict[int, Any] = {}
        self.tables = [t.arrays() for t in build_scale_tables(self.config)]
        self.cache: OrtKVCache | None = None
        self.text: dict[str, DeviceTensor] = {}
        self.text_cache = UnconditionalTextCache(self._encode_rows, np.concatenate)

    def step_scales_with(self, manifest: Manifest, scales: Sequence[int]) -> None:
        """Run the step of ``scales`` with ``manifest``'s step graph instead (same I/O, another precision).

        The KV cache is explicit float32 I/O, so scales can switch graphs: e.g. int8 steps at the
        small scales and float32 at the large ones, or the reverse.
        """
        mine, theirs = self.manifest.graphs["transformer_step"], manifest.graphs["transformer_step"]
        if [t.name for t in mine.inputs + mine.outputs] != [t.name for t in theirs.inputs + theirs.outputs]:
            raise ValueError(f"{manifest.root}: its step graph's inputs and outputs differ from this backend's")
        session = create_session(self.ort, manifest, "transformer_step", *self._session_args)
        self.scale_steps.update({k % self.config.num_scales: session for k in scales})

    def _run(
        self, graph: str, inputs: dict[str, np.ndarray], dims: dict[str, int], bound=None, session=None
    ) -> dict[str, np.ndarray]:
        """Run ``graph``: host ``inputs``, ``bound(binding)`` for device buffers, host outputs for the rest."""
        spec, session = self.manifest.graphs[graph], session or self.sessions[graph]
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array, dtype=numpy_type(spec.tensor(name).dtype)))
        device_outputs = bound(binding) if bound is not None else set()
        outputs = {}
        for t in spec.outputs:
            if t.name not in device_outputs:
                outputs[t.name] = np.empty(t.concrete(dims), dtype=numpy_type(t.dtype))
                binding.bind_output(
                    t.name, "cpu", 0, outputs[t.name].dtype, list(outputs[t.name].shape), outputs[t.name].ctypes.data
                )
        session.run_with_iobinding(binding)
        return outputs

    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.text_cache(input_ids, attention_mask)

    def _encode_rows(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._run(
            "text_encoder", {"input_ids": input_ids, "attention_mask": attention_mask}, {"rows": input_ids.shape[0]}
        )
        return out["text_hidden"], out["text_pooled"]

    def session(self, graph: str):
        """The session of ``graph``, created on first use for the optional graphs (their weights load only if used)."""
        if graph not in self.sessions:
            check_fast_export(self.manifest)
            self.sessions[graph] = create_session(self.ort, self.manifest, graph, *self._session_args)
        return self.sessions[graph]

    def begin(
        self,
        hidden: np.ndarray,
        attention_mask: np.ndarray,
        pooled: np.ndarray,
        plans: tuple[ScalePlan, ...] | None = None,
    ) -> np.ndarray:
        if plans is not None and plans != scale_plans(self.config):
            check_fast_export(self.manifest)
        b = hidden.shape[0] // 2
        dims = {"batch": b, "rows": 2 * b}
        spec = self.manifest.graphs["text_context"]
        self.text = {
            t.name: DeviceTensor(self.ort, t.concrete(dims), numpy_type(t.dtype), self.io_device)
            for t in spec.with_role(Role.TEXT_CONTEXT)
        }

        def bind_text(binding: Any) -> set[str]:
            for name, buf in self.text.items():
                buf.bind(binding, name, 0, buf.shape[0], output=True)
            return set(self.text)

        inputs = {"text_hidden": hidden[:b], "attention_mask": attention_mask[:b], "text_pooled": pooled}
        start = self._run("text_context", inputs, dims, bind_text)["start_tokens"]
        if self.cache is None or self.cache.capacity != 2 * b:
            self.cache = None
            self.cache = OrtKVCache(self.ort, self, 2 * b)
        self.cache.reset()
        return start

    def keep_conditional_rows(self) -> None:
        self.cache.keep_conditional_rows()

    def _bind_state(self, graph: str, tokens: int) -> Any:
        """A ``bound`` callback of ``_run``: the text context, the cache prefix and the slot of ``tokens`` tokens."""
        spec, cache = self.manifest.graphs[graph], self.cache

        def bind(binding: Any) -> set[str]:
            for t in spec.with_role(Role.TEXT_CONTEXT):
                self.text[t.name].bind(binding, t.name, 0, self.text[t.name].shape[0], output=False)
            for t in spec.with_role(Role.CACHE_PREFIX):
                cache.bind(binding, t, 0, cache.length, output=False)
            for t in spec.with_role(Role.CACHE_SLOT):
                cache.bind(binding, t, cache.length, tokens, output=True)
            return {t.name for t in spec.with_role(Role.CACHE_SLOT)}

        return bind

    def step(self, scale: int, x: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("begin() must run before step()")
        tokens = x.shape[1]
        t = self.tables[scale]
        dims = {"rows": x.shape[0], "tokens": tokens}
        inputs = {"x": x, "rope_cos": t["rope_cos"], "rope_sin": t["rope_sin"]}
        bind = self._bind_state("transformer_step", tokens)
        logits = self._run("transformer_step", inputs, dims, bind, self.scale_steps.get(scale))
        self.cache.length += tokens
        return logits["logits"]

    def pruned_step(
        self, scale: int, x: np.ndarray, kept: int, prior: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None:
            raise RuntimeError("begin() must run before pruned_step()")
        rows, tokens, width = x.shape
        side, t = self.config.patch_nums[scale], self.tables[scale]
        if prior is None:
            before = self.config.patch_nums[scale - 1] if scale else 1
            prior = np.zeros((rows, before, before, width), dtype=x.dtype)
        inputs = {
            "x": x.reshape(rows, side, side, width),
            "kept_index": kept_index(x, kept, self.cache.capacity // 2),
            "rope_cos": t["rope_cos"],
            "rope_sin": t["rope_sin"],
            "prior_residual": prior,
            "restore": t["restore"],
        }
        dims = {"rows": rows, "tokens": tokens, "side": side}
        out = self._run(PRUNED_STEP, inputs, dims, self._bind_state(PRUNED_STEP, kept), self.session(PRUNED_STEP))
        self.cache.length += kept
        return out["logits"], out["residual"]

    def update(self, scale: int, tokens: np.ndarray, f_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.tables[scale]
        inputs = {
            "tokens": tokens,
            "f_hat": f_hat,
            **{k: t[k] for k in ("upsample", "downsample", "phi_weights", "next_level")},
        }
        out = self._run("scale_update", inputs, scale_dims(self.config, tokens.shape[0], scale))
        return out["f_hat_out"], out["next_x"]

    def decode(self, f_hat: np.ndarray) -> np.ndarray:
        return self._run("vq_decoder", {"f_hat": f_hat}, {"batch": f_hat.shape[0]})["image"]

    preview = decode

    def new_f_hat(self, batch: int) -> np.ndarray:
        side = self.config.final_side
        return np.zeros((batch, self.config.vae.cvae, side, side), dtype=np.float32)

    def sampler(self, sampling: SamplingConfig, seeds: Sequence[int]):
        """The portable sampler on numpy; the official one through torch on the CPU, where installed."""
        if sampling.sampler == "portable":
            return PortableSampler(sampling, seeds, self.config.num_scales)
        return official_sampler(sampling, seeds, self.config.num_scales)

    def to_numpy(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    asarray = to_numpy

    def cached_kv(self) -> list[np.ndarray]:
        """The filled KV-cache prefix: keys of every layer, then values."""
        return [self.cache.prefix(layer) for layer in self.cache.layers]

    def synchronize(self) -> None:
        """ONNX Runtime runs synchronously: every output is ready on return."""

    def clock(self) -> HostClock:
        return HostClock(self.synchronize)


def check_fast_export(manifest: Manifest) -> None:
    """Refuse fast modes on an export made before them (its step graph takes both CFG rows only)."""
    if not manifest.runs_fast_modes:
        raise ArtifactError(
            f"{manifest.root}: exported before fast modes (no {PRUNED_STEP}.onnx); export it again to use --fast"
        )


def official_sampler(sampling: SamplingConfig, seeds: Sequence[int], num_scales: int):
    """The official torch.Generator draws over numpy logits (needs torch)."""
    try:
        import torch

        from .torch_sampling import OfficialSampler
    except ImportError:
        raise BackendUnavailableError(
            "the official sampler draws with torch: pip install 'star-deploy[torch]', or use the portable sampler"
        ) from None
    sampler = OfficialSampler(sampling, seeds, num_scales, torch.device("cpu"))
    return lambda logits, scale: sampler(torch.from_numpy(logits), scale).numpy()
