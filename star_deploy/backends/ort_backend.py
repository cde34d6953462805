"""ONNX Runtime backend: runs an artefact directory's graphs with IOBinding.

The KV cache is one preallocated tensor per layer for the whole schedule; each step reads
its prefix and writes the new keys/values straight into the next slot (no copies).
"""

from __future__ import annotations

import logging

import torch

from ..errors import BackendUnavailableError
from ..export.manifest import Manifest
from ..graphs import scale_dims
from ..model.tables import ScaleTables
from .torch_backend import KVCache

log = logging.getLogger(__name__)

NUMPY_TYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from None
    return onnxruntime


class OrtBackend:
    """Runs ``manifest``'s graphs; CUDA execution provider when available and asked for."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, device: str = "cpu", threads: int = 0) -> None:
        ort = import_ort()
        self.manifest = manifest
        self.config = manifest.config
        self.device = torch.device(device)
        self.dtype = torch.float16 if manifest.precision == "fp16" else torch.float32
        providers = self._providers(ort)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {
            name: ort.InferenceSession(str(manifest.path(name)), options, providers=providers)
            for name in manifest.graphs
        }
        self.cache: KVCache | None = None
        self.text: list[torch.Tensor] = []

    def _providers(self, ort) -> list[str]:
        if self.device.type == "cpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                "onnxruntime has no CUDA execution provider: pip install onnxruntime-gpu, or use --device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]

    def _bind(self, binding, name: str, tensor: torch.Tensor, output: bool = False) -> None:
        """Bind ``tensor``'s memory; the caller keeps it alive and contiguous until the run ends."""
        args = (name, self.device.type, self.device.index or 0, NUMPY_TYPES[tensor.dtype], list(tensor.shape), tensor.data_ptr())
        (binding.bind_output if output else binding.bind_input)(*args)

    def _run(self, graph: str, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``graph`` reading ``inputs`` and writing into preallocated ``outputs`` (spec order)."""
        spec = self.manifest.graphs[graph]
        session = self.sessions[graph]
        binding = session.io_binding()
        inputs = [t.to(self.device).contiguous() for t in inputs]
        for name, tensor in zip(spec.input_names, inputs):
            self._bind(binding, name, tensor)
        for name, tensor in zip(spec.output_names, outputs):
            self._bind(binding, name, tensor, output=True)
        session.run_with_iobinding(binding)
        return outputs

    def _empty(self, graph: str, output: str, dims: dict[str, int]) -> torch.Tensor:
        spec = self.manifest.graphs[graph].tensor(output)
        dtype = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}[spec.dtype]
        return torch.empty(spec.concrete(dims), dtype=dtype, device=self.device)

    def _outputs(self, graph: str, dims: dict[str, int]) -> list[torch.Tensor]:
        return [self._empty(graph, name, dims) for name in self.manifest.graphs[graph].output_names]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dims = {"rows": input_ids.shape[0]}
        hidden, pooled = self._run("text_encoder", [input_ids, attention_mask], self._outputs("text_encoder", dims))
        return hidden, pooled

    def begin(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        outs = self._run("text_context", [hidden, attention_mask, pooled], self._outputs("text_context", {"batch": b, "rows": 2 * b}))
        start, *self.text = outs
        if self.cache is None or self.cache.rows != 2 * b:
            self.cache = KVCache(self.config, 2 * b, self.dtype, self.device)
        self.cache.length = 0
        return start

    def step(self, scale: int, x: torch.Tensor, tables: ScaleTables) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("begin() must run before step()")
        cache, rows, tokens = self.cache, x.shape[0], x.shape[1]
        logits = self._empty("transformer_step", "logits", {"rows": rows, "tokens": tokens})
        slots = [t[cache.length : cache.length + tokens] for t in cache.keys + cache.values]
        inputs = [x.to(self.dtype), tables.rope_cos, tables.rope_sin, *self.text, *cache.past()]
        self._run("transformer_step", inputs, [logits, *slots])
        cache.length += tokens
        return logits

    def update(
        self, scale: int, tokens: torch.Tensor, f_hat: torch.Tensor, tables: ScaleTables
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dims = scale_dims(self.config, tokens.shape[0], scale)
        inputs = [tokens, f_hat, tables.upsample, tables.downsample, tables.phi_weights, tables.next_level]
        f_hat_out, next_x = self._run("scale_update", inputs, self._outputs("scale_update", dims))
        return f_hat_out, next_x

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        (image,) = self._run("vq_decoder", [f_hat], self._outputs("vq_decoder", {"batch": f_hat.shape[0]}))
        return image

    preview = decode
