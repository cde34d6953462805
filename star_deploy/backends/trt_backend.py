"""TensorRT backend: runs the plans of DIR/engines with torch CUDA tensors as I/O buffers.

One TrtEngine per plan; all engines run on one CUDA stream. The transformer step selects
profile k at scale k, reads the KV-cache prefix and writes its new keys/values straight
into the next slot of the cache (preallocated once for the whole schedule). The text
cross-attention K/V are computed once per prompt in ``begin``.

API references (TensorRT 10.x / 11 Python API):
  Runtime.deserialize_cuda_engine:
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
  ICudaEngine (num_io_tensors, get_tensor_name, get_tensor_mode, get_tensor_dtype,
  num_optimization_profiles, create_execution_context):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html
  IExecutionContext (set_optimization_profile_async, set_input_shape, get_tensor_shape,
  set_tensor_address, execute_async_v3):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch

from ..artifacts.manifest import Manifest
from ..engines.buffers import binding_plan, bound_tensor, check_engine_names
from ..engines.profiles import Profile, select_profile
from ..engines.sidecar import RuntimeInfo, check_sidecar, load_sidecar, plan_path, sidecar_path
from ..engines.trt_api import cuda_device, import_tensorrt, make_logger, runtime_info, torch_dtype
from ..errors import ArtifactError, StarDeployError
from ..graphs import Role, scale_dims
from .kv_cache import KVCache
from .torch_arrays import TorchArrays, device_tables

log = logging.getLogger(__name__)


class TrtEngine:
    """One plan's life: check its sidecar, deserialize, bind tensors by name, run a profile."""

    def __init__(
        self, trt: ModuleType, runtime, manifest: Manifest, graph: str, info: RuntimeInfo, stream: torch.cuda.Stream
    ) -> None:
        path = plan_path(manifest.root, graph)
        sidecar = load_sidecar(sidecar_path(manifest.root, graph))
        check_sidecar(sidecar, info, manifest.graph_hashes[graph], path)
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; build it with `star-deploy build-engine {manifest.root}`")
        self.graph, self.spec, self.stream = graph, manifest.graphs[graph], stream
        self.profiles = sidecar.profiles
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"{path}: TensorRT could not deserialize it; rebuild with `star-deploy build-engine {manifest.root} "
                "--overwrite`"
            )
        self._check_io(trt)
        self.context = self.engine.create_execution_context()
        self.active_profile = -1

    def _check_io(self, trt: ModuleType) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        check_engine_names(self.spec, inputs, [n for n in names if n not in inputs])
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise ArtifactError(
                f"the {self.graph} engine has {self.engine.num_optimization_profiles} profiles, "
                f"its sidecar lists {len(self.profiles)}; rebuild with `star-deploy build-engine DIR --overwrite`"
            )
        self.dtypes = {n: torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def profile(self, batch: int, scale: int | None = None) -> Profile:
        return select_profile(self.profiles, self.spec, batch, scale)

    def run(self, profile: Profile, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Execute with ``profile`` reading ``inputs`` and writing into the given ``outputs`` buffers."""
        ctx, handle = self.context, self.stream.cuda_stream
        if profile.index != self.active_profile:
            if not ctx.set_optimization_profile_async(profile.index, handle):
                raise StarDeployError(f"{self.graph}: TensorRT refused optimization profile {profile.index}")
            self.active_profile = profile.index
        keep = []
        for name, tensor in inputs.items():
            tensor = tensor.to(self.stream.device, self.dtypes[name]).contiguous()
            keep.append(tensor)
            if not ctx.set_input_shape(name, tuple(tensor.shape)):
                raise StarDeployError(
                    f"{self.graph}: input {name} of shape {tuple(tensor.shape)} is outside profile {profile.index}"
                )
            ctx.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in outputs.items():
            self._check_output(name, tensor)
            ctx.set_tensor_address(name, tensor.data_ptr())
        current = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(current)
        if not ctx.execute_async_v3(handle):
            raise StarDeployError(f"{self.graph}: TensorRT execution failed (run with -v for TensorRT's messages)")
        current.wait_stream(self.stream)
        del keep

    def _check_output(self, name: str, tensor: torch.Tensor) -> None:
        shape = tuple(self.context.get_tensor_shape(name))
        if shape != tuple(tensor.shape) or tensor.dtype != self.dtypes[name] or not tensor.is_contiguous():
            raise StarDeployError(
                f"{self.graph}: output {name} buffer is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the engine writes {shape} {self.dtypes[name]} (contiguous)"
            )


class TrtBackend(TorchArrays):
    """Runs the TensorRT plans built by `star-deploy build-engine` for ``manifest``."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, device: str = "cuda") -> None:
        trt = import_tensorrt()
        self.device = cuda_device(device)
        self.manifest, self.config = manifest, manifest.config
        torch.cuda.set_device(self.device)
        info = runtime_info(trt, self.device)
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.stream = torch.cuda.Stream(self.device)
        self.engines = {g: TrtEngine(trt, self.runtime, manifest, g, info, self.stream) for g in manifest.graphs}
        self.plans = {g: binding_plan(spec) for g, spec in manifest.graphs.items()}
        step_dtypes = self.engines["transformer_step"].dtypes
        self.dtype = step_dtypes["x"]
        self.cache_dtype = step_dtypes["new_key.0"]
        self.tables = device_tables(self.config, self.device)
        self.cache: KVCache | None = None
        self.text: dict[str, torch.Tensor] = {}

    def _outputs(self, graph: str, dims: dict[str, int]) -> dict[str, torch.Tensor]:
        engine, spec = self.engines[graph], self.manifest.graphs[graph]
        return {
            t.name: torch.empty(t.concrete(dims), dtype=engine.dtypes[t.name], device=self.device) for t in spec.outputs
        }

    def encode_text(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        rows = input_ids.shape[0]
        engine = self.engines["text_encoder"]
        outs = self._outputs("text_encoder", {"rows": rows, "batch": rows // 2})
        inputs = {"input_ids": self.asarray(input_ids), "attention_mask": self.asarray(attention_mask)}
        engine.run(engine.profile(rows // 2), inputs, outs)
        return outs["text_hidden"], outs["text_pooled"]

    def begin(self, hidden: torch.Tensor, attention_mask, pooled: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0] // 2
        engine = self.engines["text_context"]
        outs = self._outputs("text_context", {"batch": b, "rows": 2 * b})
        inputs = {"text_hidden": hidden[:b], "attention_mask": self.asarray(attention_mask)[:b], "text_pooled": pooled}
        engine.run(engine.profile(b), inputs, outs)
        start = outs["start_tokens"]
        self.text = {t.name: outs[t.name] for t in engine.spec.with_role(Role.TEXT_CONTEXT)}
        if self.cache is None or self.cache.rows != 2 * b:
            self.cache = None  # free the old cache before allocating the new one
            self.cache = KVCache(self.config, 2 * b, self.cache_dtype, self.device)
        self.cache.length = 0
        return start

    def step(self, scale: int, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("begin() must run before step()")
        expected = self.config.scale_offsets()[scale]
        if self.cache.length != expected:
            raise RuntimeError(f"scale {scale} expects a cache of {expected} tokens, found {self.cache.length}")
        rows, tokens = x.shape[0], x.shape[1]
        engine = self.engines["transformer_step"]
        logits = torch.empty(
            (rows, tokens, self.config.transformer.vocab_size), dtype=engine.dtypes["logits"], device=self.device
        )
        tables = self.tables[scale]
        inputs = {"x": x, "rope_cos": tables["rope_cos"], "rope_sin": tables["rope_sin"]}
        outputs = {"logits": logits}
        for b in self.plans["transformer_step"]:
            if b.role in (Role.TEXT_CONTEXT, Role.CACHE_PREFIX):
                inputs[b.name] = bound_tensor(b, self.cache, self.text, tokens)
            elif b.role is Role.CACHE_SLOT:
                outputs[b.name] = bound_tensor(b, self.cache, self.text, tokens)
        engine.run(engine.profile(rows // 2, scale), inputs, outputs)
        self.cache.length += tokens
        return logits

    def update(self, scale: int, tokens, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = tokens.shape[0]
        dims = scale_dims(self.config, b, scale)
        engine = self.engines["scale_update"]
        outs = self._outputs("scale_update", dims)
        inputs = {
            "tokens": self.asarray(tokens),
            "f_hat": f_hat,
            **{k: v for k, v in self.tables[scale].items() if k not in ("rope_cos", "rope_sin")},
        }
        engine.run(engine.profile(b, scale), inputs, outs)
        return outs["f_hat_out"], outs["next_x"]

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        engine = self.engines["vq_decoder"]
        outs = self._outputs("vq_decoder", {"batch": f_hat.shape[0]})
        engine.run(engine.profile(f_hat.shape[0]), {"f_hat": f_hat}, outs)
        return outs["image"]

    preview = decode
