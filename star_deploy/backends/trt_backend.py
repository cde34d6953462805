"""TensorRT backend: runs the plans of DIR/engines with torch tensors as I/O buffers.

One TrtEngine per plan; all engines run on one stream of the chosen GPU, and every call runs
with that GPU current (worker threads included). Each optimization profile has its own
execution context, created with user-managed memory: all contexts share one device buffer
sized by the largest profile, and no profile is switched after start-up (a switch "will
trigger layer resource updates on the next call"). The transformer step uses profile k at
scale k, reads the KV-cache prefix and writes its new keys/values straight into the next
slot of the cache (preallocated once for the whole schedule). The pruned step (fast mode 2),
where built, does the same at the scales it prunes, writing its kept tokens' keys/values.
Every CUDA call goes through ``engines.gpu``.

API references (TensorRT 10.x / 11 Python API; NvInferRuntime.h):
  Runtime.deserialize_cuda_engine:
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
  ICudaEngine (num_io_tensors, get_tensor_name, get_tensor_mode, get_tensor_dtype, num_optimization_profiles,
  create_execution_context(ExecutionContextAllocationStrategy), get_device_memory_size_for_profile_v2):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Engine.html
  IExecutionContext (set_device_memory, set_optimization_profile_async, set_input_shape, get_tensor_shape,
  set_tensor_address, execute_async_v3):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch

from ..artifacts.manifest import Manifest
from ..core.fast import ScalePlan
from ..core.graphs import PRUNED_STEP, GraphSpec, Role, scale_dims
from ..engines.buffers import binding_plan, bound_tensor, check_engine_names
from ..engines.gpu import ALIGNMENT, aligned, cuda
from ..engines.profiles import Profile, select_profile, select_pruned_profile
from ..engines.sidecar import RuntimeInfo, check_sidecar, load_sidecar, plan_path, sidecar_path
from ..engines.trt_api import import_tensorrt, make_logger, runtime_info, torch_dtype
from ..errors import ArtifactError, ConfigError, StarDeployError
from .kv_cache import KVCache
from .torch_arrays import TorchArrays, device_tables
from .torch_pruning import kept_index

log = logging.getLogger(__name__)
REBUILD = "rebuild with `star-deploy build-engine {root} --overwrite`"


class TrtEngine:
    """One plan's life: check its sidecar, deserialize, one context per profile, bind tensors by name, run."""

    def __init__(self, trt: ModuleType, runtime, manifest: Manifest, graph: str, info: RuntimeInfo, owner) -> None:
        """``owner``: the TrtBackend whose GPU runtime, stream and memory device the engine uses."""
        path = plan_path(manifest.root, graph)
        sidecar = load_sidecar(sidecar_path(manifest.root, graph))
        check_sidecar(sidecar, info, manifest.graph_hashes[graph], path)
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; build it with `star-deploy build-engine {manifest.root}`")
        self.graph, self.spec = graph, manifest.graphs[graph]
        self.gpu, self.stream, self.device = owner.gpu, owner.stream, owner.device
        self.rebuild = REBUILD.format(root=manifest.root)
        self.profiles = sidecar.profiles
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{path}: TensorRT could not deserialize it; {self.rebuild}")
        self._check_io(trt)
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.contexts = [self.engine.create_execution_context(strategy) for _ in self.profiles]
        if any(ctx is None for ctx in self.contexts):
            raise StarDeployError(f"{graph}: TensorRT could not create an execution context (see the messages above)")
        self.scratch: dict[str, torch.Tensor] = {}

    def _check_io(self, trt: ModuleType) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        check_engine_names(self.spec, inputs, [n for n in names if n not in inputs])
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise ArtifactError(
                f"the {self.graph} engine has {self.engine.num_optimization_profiles} profiles, "
                f"its sidecar lists {len(self.profiles)}; {self.rebuild}"
            )
        self.dtypes = {n: torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def memory_bytes(self) -> int:
        """Device memory the largest profile needs (each context uses the shared buffer under one profile)."""
        return max(self.engine.get_device_memory_size_for_profile_v2(p.index) for p in self.profiles)

    def attach(self, memory: torch.Tensor) -> None:
        """Give every context the shared ``memory`` and select its profile, once."""
        for profile, ctx in zip(self.profiles, self.contexts):
            ctx.set_device_memory(memory.data_ptr(), memory.numel())
            index = profile.index
            try:  # the Python binding raises RuntimeError where the C++ call returns false (pyCore.cpp)
                self.stream.enqueue(lambda handle, c=ctx, i=index: c.set_optimization_profile_async(i, handle))
            except RuntimeError as exc:
                raise StarDeployError(
                    f"{self.graph}: TensorRT refused optimization profile {index} ({exc}); {self.rebuild}"
                ) from None

    def profile(self, batch: int, scale: int | None = None, rows: int | None = None) -> Profile:
        return select_profile(self.profiles, self.spec, batch, scale, rows)

    def run(self, profile: Profile, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        """Execute with ``profile`` reading ``inputs`` and writing into the given ``outputs`` buffers."""
        ctx = self.contexts[profile.index]
        keep = []
        for name, tensor in inputs.items():
            tensor = self._input(name, tensor)
            keep.append(tensor)
            if not ctx.set_input_shape(name, tuple(tensor.shape)):
                raise StarDeployError(
                    f"{self.graph}: TensorRT refused input {name} of shape {tuple(tensor.shape)} "
                    f"(profile {profile.index}: {list(profile.shapes.get(name, ()))}); {self.rebuild}"
                )
            self._bind(ctx, name, tensor)
        for name, tensor in outputs.items():
            self._check_output(ctx, name, tensor)
            self._bind(ctx, name, tensor)
        if not self.stream.enqueue(ctx.execute_async_v3):
            raise StarDeployError(f"{self.graph}: TensorRT execution failed (run with -v for TensorRT's messages)")
        del keep

    def _input(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on the engine's device and type, contiguous, in an aligned buffer."""
        tensor = tensor.to(self.device, self.dtypes[name]).contiguous()
        if tensor.numel() == 0 or aligned(tensor.data_ptr()):
            return tensor
        staged = self.gpu.empty(tuple(tensor.shape), tensor.dtype, self.device)
        return staged.copy_(tensor)

    def _bind(self, ctx, name: str, tensor: torch.Tensor) -> None:
        """Bind ``tensor``; an empty one gets its own scratch address (non-null, distinct from every other)."""
        address = self._scratch(name).data_ptr() if tensor.numel() == 0 else tensor.data_ptr()
        if not ctx.set_tensor_address(name, address):
            raise StarDeployError(
                f"{self.graph}: TensorRT refused the address {address:#x} of {name} "
                f"(it must be non-null and {ALIGNMENT}-byte aligned)"
            )

    def _scratch(self, name: str) -> torch.Tensor:
        if name not in self.scratch:
            self.scratch[name] = self.gpu.empty((ALIGNMENT,), torch.uint8, self.device)
        return self.scratch[name]

    def _check_output(self, ctx, name: str, tensor: torch.Tensor) -> None:
        shape = tuple(ctx.get_tensor_shape(name))
        if shape != tuple(tensor.shape) or tensor.dtype != self.dtypes[name] or not tensor.is_contiguous():
            raise StarDeployError(
                f"{self.graph}: output {name} buffer is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the engine writes {shape} {self.dtypes[name]} (contiguous)"
            )


def on_device(method: Callable) -> Callable:
    """Run ``method`` with the backend's GPU current in the calling thread (torch.cuda.device is per thread)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.gpu.current(self.cuda_device):
            return method(self, *args, **kwargs)

    return wrapper


class TrtBackend(TorchArrays):
    """Runs the TensorRT plans built by `star-deploy build-engine` for ``manifest``."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, device: str = "cuda") -> None:
        trt = import_tensorrt()
        self.gpu = cuda()
        self.cuda_device = self.gpu.device(device)
        self.device = self.gpu.memory_device(self.cuda_device)
        self.manifest, self.config = manifest, manifest.config
        with self.gpu.current(self.cuda_device):
            self._load(trt)

    def _load(self, trt: ModuleType) -> None:
        info = runtime_info(trt, self.cuda_device)
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.stream = self.gpu.stream(self.cuda_device)
        graphs = {g: s for g, s in self.manifest.graphs.items() if g != PRUNED_STEP or self._built(g)}
        self.engines = {g: TrtEngine(trt, self.runtime, self.manifest, g, info, self) for g in graphs}
        size = max(ALIGNMENT, *(e.memory_bytes() for e in self.engines.values()))
        self.context_memory = self.gpu.empty((size,), torch.uint8, self.device)
        for engine in self.engines.values():
            engine.attach(self.context_memory)
        self.plans = {g: binding_plan(spec) for g, spec in graphs.items()}
        step_dtypes = self.engines["transformer_step"].dtypes
        self.dtype = step_dtypes["x"]
        self.cache_dtype = step_dtypes["new_key.0"]
        self.tables = [{k: self._aligned(v) for k, v in t.items()} for t in device_tables(self.config, self.device)]
        self.cache: KVCache | None = None
        self.scale_plans: tuple[ScalePlan, ...] | None = None
        self.batch = 0
        self.text: dict[str, torch.Tensor] = {}

    def _built(self, graph: str) -> bool:
        """Whether the optional ``graph``'s plan was built (``build-engine --fast 2`` builds the pruned step)."""
        return plan_path(self.manifest.root, graph).is_file()

    def _aligned(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.gpu.empty(tuple(tensor.shape), tensor.dtype, self.device).copy_(tensor)

    def _outputs(self, graph: str, dims: dict[str, int]) -> dict[str, torch.Tensor]:
        engine, spec = self.engines[graph], self.manifest.graphs[graph]
        return {t.name: self.gpu.empty(t.concrete(dims), engine.dtypes[t.name], self.device) for t in spec.outputs}

    @on_device
    def encode_text(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        rows = input_ids.shape[0]
        engine = self.engines["text_encoder"]
        outs = self._outputs("text_encoder", {"rows": rows, "batch": rows // 2})
        inputs = {"input_ids": self.asarray(input_ids), "attention_mask": self.asarray(attention_mask)}
        engine.run(engine.profile(rows // 2), inputs, outs)
        return outs["text_hidden"], outs["text_pooled"]

    @on_device
    def begin(
        self, hidden: torch.Tensor, attention_mask, pooled: torch.Tensor, plans: tuple[ScalePlan, ...] | None = None
    ) -> torch.Tensor:
        """Start a generation of ``plans``: exact, guidance stopped after a scale (fast 1: engines built with
        conditional-row profiles) or pruned scales too (fast 2: the pruned step built for these ``plans``)."""
        b = hidden.shape[0] // 2
        self._check_plans(b, plans)
        self.scale_plans = plans
        engine = self.engines["text_context"]
        outs = self._outputs("text_context", {"batch": b, "rows": 2 * b})
        inputs = {"text_hidden": hidden[:b], "attention_mask": self.asarray(attention_mask)[:b], "text_pooled": pooled}
        engine.run(engine.profile(b), inputs, outs)
        start = outs["start_tokens"]
        self.text = {t.name: outs[t.name] for t in engine.spec.with_role(Role.TEXT_CONTEXT)}
        if self.cache is None or self.cache.rows != 2 * b:
            self.cache = None  # free the old cache before allocating the new one
            self.cache = KVCache(self.config, 2 * b, self.cache_dtype, self.device, self.gpu.empty)
        self.cache.reset()
        self.batch = b
        return start

    def _check_plans(self, batch: int, plans: tuple[ScalePlan, ...] | None) -> None:
        """Refuse, before any work, ``plans`` the engines have no profile for (naming the build that adds them)."""
        if plans is None:
            return
        pruned = [k for k, p in enumerate(plans) if p.residual]
        if pruned and PRUNED_STEP not in self.engines:
            raise ConfigError(
                f"--fast 2 runs the {PRUNED_STEP} engine, which {self.manifest.root} has not built; build it with "
                f"`star-deploy build-engine {self.manifest.root} --graph {PRUNED_STEP} --fast 2` and this run's "
                "--cfg-until, --keep and --batch-size"
            )
        for scale in pruned:
            self._pruned_profile(batch, scale, plans)
        if not all(p.guided for p in plans if not p.residual):
            self.engines["transformer_step"].profile(batch, 0, rows=batch)  # needs the conditional-row profiles

    def _pruned_profile(self, batch: int, scale: int, plans: tuple[ScalePlan, ...]) -> Profile:
        engine = self.engines[PRUNED_STEP]
        return select_pruned_profile(engine.profiles, engine.spec, self.config, batch, scale, plans)

    @on_device
    def keep_conditional_rows(self) -> None:
        """Guidance stops here: the cache keeps its conditional rows; later steps use the B-row profiles."""
        self.cache.keep_conditional_rows()

    @on_device
    def step(self, scale: int, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("begin() must run before step()")
        expected = self.config.scale_offsets()[scale]
        if self.cache.length != expected:
            raise RuntimeError(f"scale {scale} expects a cache of {expected} tokens, found {self.cache.length}")
        rows, tokens = x.shape[0], x.shape[1]
        engine = self.engines["transformer_step"]
        shape = (rows, tokens, self.config.transformer.vocab_size)
        logits = self.gpu.empty(shape, engine.dtypes["logits"], self.device)
        tables = self.tables[scale]
        inputs = {"x": x, "rope_cos": tables["rope_cos"], "rope_sin": tables["rope_sin"]}
        outputs = {"logits": logits}
        for b in self.plans["transformer_step"]:
            if b.role in (Role.TEXT_CONTEXT, Role.CACHE_PREFIX):
                inputs[b.name] = bound_tensor(b, self.cache, self.text, tokens)
            elif b.role is Role.CACHE_SLOT:
                outputs[b.name] = bound_tensor(b, self.cache, self.text, tokens)
        conditional = rows if rows != 2 * self.batch else None
        engine.run(engine.profile(self.batch, scale, conditional), inputs, outputs)
        self.cache.length += tokens
        return logits

    @on_device
    def pruned_step(
        self, scale: int, x: torch.Tensor, kept: int, prior: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``scale`` on its ``kept`` pivotal tokens (the others restored from ``prior``); logits and residual.

        The kept tokens' keys/values are written straight into the next slot of the cache.
        """
        if self.cache is None or self.scale_plans is None:
            raise RuntimeError("begin() with fast-mode plans must run before pruned_step()")
        rows, tokens, width = x.shape
        side, tables = self.config.patch_nums[scale], self.tables[scale]
        engine = self.engines[PRUNED_STEP]
        x = x.to(engine.dtypes["x"])
        if prior is None:
            before = self.config.patch_nums[scale - 1] if scale else 1
            prior = self.gpu.empty((rows, before, before, width), x.dtype, self.device).zero_()
        inputs = {
            "x": x.reshape(rows, side, side, width),
            "kept_index": kept_index(x, kept, self.batch),
            "rope_cos": tables["rope_cos"],
            "rope_sin": tables["rope_sin"],
            "prior_residual": prior,
            "restore": tables["restore"],
        }
        dims = {"rows": rows, "tokens": tokens, "side": side}
        outputs = {
            t.name: self.gpu.empty(t.concrete(dims), engine.dtypes[t.name], self.device)
            for t in engine.spec.with_role(Role.OUTPUT)
        }
        for b in self.plans[PRUNED_STEP]:
            if b.role in (Role.TEXT_CONTEXT, Role.CACHE_PREFIX):
                inputs[b.name] = bound_tensor(b, self.cache, self.text, kept)
            elif b.role is Role.CACHE_SLOT:
                outputs[b.name] = bound_tensor(b, self.cache, self.text, kept)
        engine.run(self._pruned_profile(self.batch, scale, self.scale_plans), inputs, outputs)
        self.cache.length += kept
        return outputs["logits"], outputs["residual"]

    @on_device
    def update(self, scale: int, tokens, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = tokens.shape[0]
        dims = scale_dims(self.config, b, scale)
        engine = self.engines["scale_update"]
        outs = self._outputs("scale_update", dims)
        inputs = {
            "tokens": self.asarray(tokens),
            "f_hat": f_hat,
            **{k: v for k, v in self.tables[scale].items() if k in engine.spec.input_names},
        }
        engine.run(engine.profile(b, scale), inputs, outs)
        return outs["f_hat_out"], outs["next_x"]

    @on_device
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        engine = self.engines["vq_decoder"]
        outs = self._outputs("vq_decoder", {"batch": f_hat.shape[0]})
        engine.run(engine.profile(f_hat.shape[0]), {"f_hat": f_hat}, outs)
        return outs["image"]

    preview = decode

    @on_device
    def run_graph(
        self, graph: str, scale: int | None, inputs: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        """One engine on host ``inputs``, outputs of ``shapes`` on the host: a recorded graph call replayed."""
        engine = self.engines[graph]
        outs = {n: self.gpu.empty(tuple(s), engine.dtypes[n], self.device) for n, s in shapes.items()}
        feeds = {n: self.asarray(a) for n, a in inputs.items()}
        engine.run(engine.profile(call_batch(engine.spec, inputs), scale), feeds, outs)
        return {n: self.to_numpy(t) for n, t in outs.items()}


def call_batch(spec: GraphSpec, inputs: dict[str, np.ndarray]) -> int:
    """The batch size of a call: the leading size of its first input with a batch (or 2 x batch rows) axis."""
    for t in spec.inputs:
        if t.shape and t.shape[0] in ("batch", "rows") and t.name in inputs:
            rows = len(inputs[t.name])
            return rows if t.shape[0] == "batch" else rows // 2
    raise ValueError(f"{spec.name}: no input with a batch axis among {sorted(inputs)}")
