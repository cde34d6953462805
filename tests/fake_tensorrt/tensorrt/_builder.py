"""Builder side of the fake: network from ONNX, profiles, builder config, timing cache, plan.

Exactly what star-deploy's builder and Polygraphy's TensorRT loaders (network_from_onnx_path, CreateConfig,
engine_bytes_from_network, which star-deploy builds through) call. Rules cite TensorRT 11.1's include/NvInfer.h
and include/NvInferRuntime.h (the same text is in 10.x unless a release is named), the Python bindings
(python/src/infer/pyCore.cpp) and docstrings (python/docstrings/infer/pyCoreDoc.h), and trtexec
(samples/common/sampleOptions.cpp).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from . import _cuda
from ._types import (
    ONNX_TYPES,
    TYPED_PRECISION_FLAGS,
    BuilderFlag,
    DataType,
    DeviceType,
    ILogger,
    MemoryPoolType,
    NetworkDefinitionCreationFlag,
    refuse,
)

PLAN_MAGIC = b"FAKETRT\x00"
INTEGER_POW_FROM = (10, 12)
"""NvInfer.h of release/10.1 to release/10.11, ElementWiseOperation: "Operation kPOW must have inputs of
floating-point type or DataType::kINT8"; from release/10.12 on: "All other operations must have inputs of
floating-point type, DataType::kINT8, DataType::kINT32, or DataType::kINT64"."""
POW_TYPES_BEFORE = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8}


def version() -> str:
    from . import __version__

    return __version__


def version_tuple() -> tuple[int, int]:
    major, minor = version().split(".")[:2]
    return int(major), int(minor)


class ITensor:
    """A network input or output as the parser declares it: name, type, dims (-1 dynamic)."""

    def __init__(self, io: dict) -> None:
        self.name = io["name"]
        self.dtype = DataType(io["dtype"])
        self.shape = tuple(io["dims"])
        self.is_shape_tensor = False


class Network:
    """INetworkDefinition as the ONNX parser fills it: I/O names, types, dims (-1 dynamic), dim names.

    The fake keeps no layers: iterating it (what Polygraphy does to find layers with a precision set) yields none.
    """

    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.strongly_typed = bool(flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        self.inputs: list[dict] = []
        self.outputs: list[dict] = []
        self.model: bytes | None = None

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        return bool(self.flags & (1 << int(flag)))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> ITensor:
        return ITensor(self.inputs[index])

    def get_output(self, index: int) -> ITensor:
        return ITensor(self.outputs[index])

    @property
    def num_layers(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())


def _io(value) -> dict:
    dims = value.type.tensor_type.shape.dim
    return {
        "name": value.name,
        "dtype": int(ONNX_TYPES[value.type.tensor_type.elem_type]),
        "dims": [d.dim_value if d.HasField("dim_value") else -1 for d in dims],
        "symbols": [d.dim_param if d.HasField("dim_param") else None for d in dims],
    }


def init_libnvinfer_plugins(logger: ILogger, namespace: str) -> bool:
    """Registers TensorRT's plugins; the fake has none to register."""
    return True


class OnnxParser:
    def __init__(self, network: Network, logger: ILogger) -> None:
        self.network, self.logger, self.errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        """Load the model with its external data (parse_from_file finds .onnx.data beside the file), check it, and
        refuse layers the TensorRT version in use cannot build."""
        try:
            model = onnx.load(path)
            onnx.checker.check_model(model)
        except Exception as exc:  # noqa: BLE001 - the parser reports every failure as an error
            self.errors.append(f"{Path(path).name}: {exc}")
            return False
        self.errors += [f"{Path(path).name}: {problem}" for problem in _unbuildable(model)]
        if self.errors:
            return False
        initializers = {i.name for i in model.graph.initializer}
        self.network.inputs = [_io(v) for v in model.graph.input if v.name not in initializers]
        self.network.outputs = [_io(v) for v in model.graph.output]
        self.network.model = model.SerializeToString()
        return True


def _unbuildable(model: onnx.ModelProto) -> list[str]:
    """Nodes the version in use refuses: integer Pow before 10.12 (see INTEGER_POW_FROM)."""
    if version_tuple() >= INTEGER_POW_FROM:
        return []
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    types |= {t.name: t.data_type for t in inferred.initializer}
    return [
        f"{node.name} (Pow): Operation kPOW must have inputs of floating-point type or DataType::kINT8"
        for node in inferred.node
        if node.op_type == "Pow" and types.get(node.input[0], onnx.TensorProto.FLOAT) not in POW_TYPES_BEFORE
    ]


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[list[int], list[int], list[int]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the API's argument names
        """pyCore.cpp wraps the three IOptimizationProfile::setDimensions calls and raises RuntimeError "Shape provided
        for min is inconsistent with other shapes." (opt, max alike) when one returns false; NvInferRuntime.h,
        setDimensions: "(1) minDims.nbDims == optDims.nbDims == maxDims.nbDims" and
        "(2) 0 <= minDims.d[i] <= optDims.d[i] <= maxDims.d[i]" (a zero-length dimension is allowed)."""
        low, mid, high = list(min), list(opt), list(max)
        checks = (
            ("min", all(d >= 0 for d in low)),
            ("opt", len(mid) == len(low) and all(a <= b for a, b in zip(low, mid))),
            ("max", len(high) == len(mid) and all(b <= c for b, c in zip(mid, high))),
        )
        for which, ok in checks:  # in the order pyCore.cpp sets them
            if not ok:
                raise RuntimeError(f"Shape provided for {which} is inconsistent with other shapes.")
        self.shapes[input] = (low, mid, high)

    def __bool__(self) -> bool:
        """isValid: every shape was set consistently (set_shape refuses the others), and at least one."""
        return bool(self.shapes)


class TimingCache:
    """ITimingCache: tactic timings stamped with the CUDA device they were measured on (None: not known)."""

    def __init__(self, device: list[str] | None, entries: list[str]) -> None:
        self.device, self.entries = device, entries

    def serialize(self) -> bytes:
        return json.dumps({"format": "fake-timing-cache", "device": self.device, "entries": self.entries}).encode()


class BuilderConfig:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        # NvInfer.h, BuilderFlag::kTF32: "Allow (but not require) computations on tensors of type
        # DataType::kFLOAT to use TF32 ... Enabled by default."
        self.flags = {BuilderFlag.TF32}
        self.pools: dict[MemoryPoolType, int] = {}
        self.builder_optimization_level = 3
        self.profiles: list[OptimizationProfile] = []
        self.cache: TimingCache | None = None
        self.DLA_core = -1
        self.default_device_type = DeviceType.GPU

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self.pools.get(pool, 0)

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        """pyCoreDoc.h, add_optimization_profile: "The index of the optimization profile (starting from 0)
        if the input is valid, or -1 if the input is not valid" (valid: ``bool(profile) == True``)."""
        if not profile:
            refuse(self.logger, f"optimization profile {profile.shapes} is not valid")
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache | None:
        """NvInfer.h, createTimingCache: "Size 0 means create a new cache from scratch"; it returns "the pointer to
        ITimingCache created". A blob TensorRT cannot read gives a null pointer (None): NVIDIA's own samples check
        for it (samples/common/timingCache.cpp, updateTimingCacheFile: "Failed to create timingCache from" the file;
        sampleEngines.cpp: "TimingCache creation failed")."""
        if not serialized_timing_cache:
            return TimingCache(None, [])
        try:
            data = json.loads(bytes(serialized_timing_cache))
            return TimingCache(data["device"], list(data["entries"]))
        except (ValueError, KeyError, TypeError):
            refuse(self.logger, "not a serialized timing cache")
            return None

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        """NvInfer.h, setTimingCache: "A failure will be reported if the CUDA device property in the provided
        cache is different from current environment"; returns "true if set successfully, false otherwise". The
        binding takes an ITimingCache (a reference in C++): anything else, None included, raises TypeError."""
        if not isinstance(cache, TimingCache):
            raise TypeError(f"set_timing_cache(): incompatible function arguments (got {type(cache).__name__})")
        here = list(_cuda.DEVICES[_cuda.current_device()])
        if cache.device is not None and cache.device != here and not ignore_mismatch:
            refuse(self.logger, f"timing cache made on {cache.device}, the current device is {here}")
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> TimingCache | None:
        """pyCoreDoc.h, get_timing_cache: "or `None` if no timing cache is set"."""
        return self.cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network(flags)

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig(self.logger)

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        """The plan for the current device (TensorRT builds for the device current when it builds)."""
        problem = _profile_problem(network, config.profiles) or _flag_problem(network, config)
        if problem:
            refuse(self.logger, problem)
            return None
        device = _cuda.current_device()
        if config.cache is not None:
            config.cache.device = list(_cuda.DEVICES[device])
            config.cache.entries.append(f"{len(config.cache.entries)}")
        header = {
            "version": version(),
            "device": device,
            "gpu": list(_cuda.DEVICES[device]),
            "tf32": BuilderFlag.TF32 in config.flags,
            "fp16": BuilderFlag.FP16 in config.flags,
            "strongly_typed": network.strongly_typed,
            "inputs": network.inputs,
            "outputs": network.outputs,
            "profiles": [p.shapes for p in config.profiles],
        }
        blob = json.dumps(header).encode()
        return PLAN_MAGIC + len(blob).to_bytes(8, "little") + blob + network.model


def _flag_problem(network: Network, config: BuilderConfig) -> str | None:
    """Builder.html, STRONGLY_TYPED: every tensor's type follows "only type inference rules and the inputs/operator
    annotations"; trtexec (sampleOptions.cpp, release/10.13): "setting fp16 mode is not allowed if graph is strongly
    typed" (likewise int8, bf16, fp8). TF32 concerns FLOAT tensors and stays allowed."""
    if not network.strongly_typed:
        return None
    refused = [f.name for f in TYPED_PRECISION_FLAGS if f in config.flags]
    if refused:
        return f"builder flag(s) {', '.join(refused)} are not allowed on a strongly typed network"
    return None


def _profile_problem(network: Network, profiles: list[OptimizationProfile]) -> str | None:
    """What makes the profiles unusable for ``network``, per NvInferRuntime.h IOptimizationProfile::setDimensions:
    "This function must be called three times ... for any network input tensor that has dynamic dimensions",
    "(1) ... == networkDims.nbDims" and "(3) if networkDims.d[i] != -1, then minDims.d[i] == optDims.d[i] ==
    maxDims.d[i] == networkDims.d[i]"; and NvInfer.h addOptimizationProfile: "This function must be called at
    least once if the network has dynamic or shape input tensors"."""
    if network.model is None:
        return "the network is empty (nothing was parsed)"
    dynamic = [t for t in network.inputs if -1 in t["dims"]]
    if dynamic and not profiles:
        return "the network has dynamic inputs and no optimization profile"
    by_name = {t["name"]: t for t in network.inputs}
    for index, profile in enumerate(profiles):
        for name in set(profile.shapes) - set(by_name):
            return f"profile {index} sets {name}, which is not a network input"
        for t in dynamic:
            if t["name"] not in profile.shapes:
                return f"profile {index} does not set the dynamic input {t['name']}"
        for name, bounds in profile.shapes.items():
            dims = by_name[name]["dims"]
            for shape in bounds:
                if len(shape) != len(dims) or any(d != -1 and s != d for s, d in zip(shape, dims)):
                    return f"profile {index}: {name} {shape} does not agree with the network dims {dims}"
    return None


def read_plan(data: bytes) -> tuple[dict, bytes] | None:
    """The header and ONNX model of a fake plan, None for anything else."""
    data = bytes(data)
    if not data.startswith(PLAN_MAGIC):
        return None
    size = int.from_bytes(data[8:16], "little")
    return json.loads(data[16 : 16 + size]), data[16 + size :]
