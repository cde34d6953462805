"""Runtime side of the fake: engines whose execution runs the plan's ONNX graph with ONNX Runtime on the host.

Each rule cites the TensorRT documentation it enforces: include/NvInferRuntime.h of TensorRT 11.1 (same
text in 10.x), the Python docstrings (python/docstrings/infer/pyCoreDoc.h), or the Developer Guide.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import onnxruntime as ort

from . import _cuda
from ._builder import read_plan, version
from ._types import NUMPY, DataType, ExecutionContextAllocationStrategy, ILogger, TensorIOMode, refuse

ALIGNMENT = 256


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        """pyCoreDoc.h, deserialize_cuda_engine: "The ICudaEngine, or None if it could not be deserialized"; the
        Support Matrix, "Engine Portability": only engines built with the version-compatible flag run on newer
        TensorRT versions, and without hardware compatibility mode "engines are not portable across different GPU
        architectures" (neither mode is used here). The engine is bound to the device current now (Developer
        Guide, FAQ "How do I use TensorRT on multiple GPUs?": "Each ICudaEngine object is bound to a specific GPU
        when it is instantiated, either by the builder or on deserialization")."""
        plan = read_plan(serialized_engine)
        if plan is None:
            refuse(self.logger, "not a serialized engine")
            return None
        header, model = plan
        device = _cuda.current_device()
        if header["version"] != version():
            refuse(self.logger, f"the plan was built by TensorRT {header['version']}, this is {version()}")
            return None
        if header["gpu"][1] != _cuda.DEVICES[device][1]:
            refuse(self.logger, f"the plan is for compute capability {header['gpu'][1]}, device {device} is not")
            return None
        return ICudaEngine(header, model, device, self.logger)


class ICudaEngine:
    def __init__(self, header: dict, model: bytes, device: int, logger: ILogger) -> None:
        self.header, self.model, self.device, self.logger = header, model, device, logger
        self.tensors = {t["name"]: (TensorIOMode.INPUT, t) for t in header["inputs"]}
        self.tensors |= {t["name"]: (TensorIOMode.OUTPUT, t) for t in header["outputs"]}
        self.session: ort.InferenceSession | None = None
        self.shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.header["profiles"])

    @property
    def tf32(self) -> bool:
        """Not TensorRT API: whether the builder allowed TF32 (tests read it)."""
        return self.header["tf32"]

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0] if name in self.tensors else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self.tensors[name][1]["dtype"])

    def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
        """Activation memory of a profile: here, twice its largest input volume in bytes, rounded to 256."""
        largest = max(
            (
                math.prod(bounds[2]) * np.dtype(NUMPY[self.get_tensor_dtype(name)]).itemsize
                for name, bounds in self.header["profiles"][profile_index].items()
            ),
            default=0,
        )
        return ALIGNMENT * math.ceil((2 * largest + 1024) / ALIGNMENT)

    @property
    def device_memory_size_v2(self) -> int:
        return max(self.get_device_memory_size_for_profile_v2(i) for i in range(self.num_optimization_profiles))

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> IExecutionContext:
        """NvInferRuntime.h, createExecutionContext: kSTATIC "will pre-allocate a block of device memory that is
        sufficient for all profiles"; "The newly created execution context will be assigned optimization profile 0"."""
        if strategy != ExecutionContextAllocationStrategy.USER_MANAGED:
            _cuda.STATS.context_memory += self.device_memory_size_v2
        return IExecutionContext(self, strategy)

    def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Output shapes for these input shapes (TensorRT infers them at build time; here one run on zeros)."""
        key = tuple(sorted(shapes.items()))
        if key not in self.shapes:
            feeds = {n: np.zeros(s, NUMPY[self.get_tensor_dtype(n)]) for n, s in shapes.items()}
            self.shapes[key] = {n: tuple(a.shape) for n, a in self.run(feeds).items()}
        return self.shapes[key]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        names = [t["name"] for t in self.header["outputs"]]
        return dict(zip(names, self.session.run(names, feeds)))


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy) -> None:
        self.engine, self.logger, self.strategy = engine, engine.logger, strategy
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        self.last_run_profile: int | None = None

    def set_device_memory(self, memory: int, size: int) -> None:
        """pyCoreDoc.h, set_device_memory: ":arg memory: 256-byte aligned device memory"."""
        if not memory or memory % ALIGNMENT:
            refuse(self.logger, f"device memory {memory:#x} is not non-null and 256-byte aligned")
            self.memory = None
            return
        self.memory = (memory, size)

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        """NvInferRuntime.h, setOptimizationProfileAsync: "The value must lie between 0 and
        getEngine().getNbOptimizationProfiles() - 1"; "\\return true if the call succeeded, else false", which
        pyCore.cpp turns into RuntimeError "Error in set optimization profile async." (True otherwise)."""
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            refuse(self.logger, f"profile {profile_index} is out of range")
            raise RuntimeError("Error in set optimization profile async.")
        if not self._stream_ok(stream_handle):
            raise RuntimeError("Error in set optimization profile async.")
        if profile_index != self.profile:
            # "setOptimizationProfileAsync() must be called before calling setInputShape() for all dynamic
            # input tensors": shapes set under the previous profile do not carry over.
            self.shapes.clear()
            if self.last_run_profile is not None:
                # "This function will trigger layer resource updates on the next call of enqueueV3()".
                _cuda.STATS.profile_switches += 1
        self.profile = profile_index
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        """NvInferRuntime.h, setInputShape: "false if the provided name does not map to an input tensor";
        "Each dimension must agree with the network dimension unless the latter was -1"; and it must lie in the
        selected profile's [min, max] (IOptimizationProfile)."""
        mode, spec = self.engine.tensors.get(name, (TensorIOMode.NONE, None))
        shape = tuple(int(d) for d in shape)
        if mode != TensorIOMode.INPUT:
            refuse(self.logger, f"{name} is not an input tensor")
            return False
        dims = spec["dims"]
        if len(shape) != len(dims) or any(d != -1 and s != d for s, d in zip(shape, dims)):
            refuse(self.logger, f"{name} {shape} does not agree with the network dims {dims}")
            return False
        bounds = self.engine.header["profiles"][self.profile].get(name)
        if bounds is not None and not all(lo <= s <= hi for lo, s, hi in zip(bounds[0], shape, bounds[2])):
            refuse(self.logger, f"{name} {shape} is outside profile {self.profile} ({bounds[0]}..{bounds[2]})")
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """NvInferRuntime.h, getTensorShape: an input's shape as set, with -1 wildcards "if ... setInputShape() has
        not yet been called for this tensor"; an output's runtime dimension is -1 while "setInputShape() has NOT been
        called for some input tensor(s) with a runtime shape", else the shape the input shapes give."""
        mode, spec = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, tuple(spec["dims"]))
        inputs = self._names(TensorIOMode.INPUT)
        if any(n not in self.shapes for n in inputs):
            return tuple(spec["dims"])
        return self.engine.output_shapes({n: self.shapes[n] for n in inputs})[name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        """NvInferRuntime.h, setTensorAddress: "Return false if the provided name does not map to an input or
        output tensor"; "The pointer must have at least 256-byte alignment" (setOutputTensorAddress: false if it
        "does not meet alignment requirements")."""
        if name not in self.engine.tensors:
            refuse(self.logger, f"{name} is not an input or output tensor")
            return False
        if memory % ALIGNMENT:
            refuse(self.logger, f"the address {memory:#x} of {name} is not 256-byte aligned")
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        """Check every precondition of enqueueV3, then run the graph on the bound memory."""
        problem = self._stream_problem(stream_handle) or self._memory_problem() or self._binding_problem()
        if problem:
            refuse(self.logger, problem)
            return False
        outputs = self.engine.run({name: self._read(name) for name in self._names(TensorIOMode.INPUT)})
        for name, array in outputs.items():
            self._write(name, array)
        if self.last_run_profile is None or self.last_run_profile != self.profile:
            self.last_run_profile = self.profile
        _cuda.STATS.executions += 1
        return True

    def _stream_ok(self, handle: int) -> bool:
        problem = self._stream_problem(handle)
        if problem:
            refuse(self.logger, problem)
        return problem is None

    def _stream_problem(self, handle: int) -> str | None:
        """Developer Guide FAQ, multiple GPUs: "Each IExecutionContext is bound to the same GPU as the engine from
        which it was created. When calling execute() or enqueue(), ensure that the thread is associated with the
        correct device by calling cudaSetDevice() if necessary"; and a stream belongs to its device."""
        here, owner = _cuda.current_device(), _cuda.stream_device(handle)
        if here != self.engine.device:
            return f"the current device is {here}, the engine is on device {self.engine.device}"
        if owner != self.engine.device:
            return f"stream {handle:#x} is not a stream of device {self.engine.device}"
        return None

    def _memory_problem(self) -> str | None:
        """NvInferRuntime.h, setDeviceMemoryV2: "its size must be large enough for performing inference with the
        given network inputs. getDeviceMemorySizeV2() and getDeviceMemorySizeForProfileV2() report upper bounds"."""
        if self.strategy != ExecutionContextAllocationStrategy.USER_MANAGED:
            return None
        need = self.engine.get_device_memory_size_for_profile_v2(self.profile)
        if self.memory is None:
            return "a USER_MANAGED context has no device memory (set_device_memory)"
        if self.memory[1] < need:
            return f"device memory of {self.memory[1]} bytes, profile {self.profile} needs {need}"
        return None

    def _binding_problem(self) -> str | None:
        """NvInferRuntime.h: setOptimizationProfileAsync "must be called before calling setInputShape() for all
        dynamic input tensors"; setTensorAddress: "Before calling enqueueV3(), each input must have a non-null
        address and each output must have a non-null address", and "The pointer must point to a device buffer of
        sufficient size and alignment"; Developer Guide, "Empty Tensors": an empty tensor "still needs a non-null
        memory address, and different tensors should have different addresses"."""
        for name in self._names(TensorIOMode.INPUT):
            if name not in self.shapes and -1 in self.engine.tensors[name][1]["dims"]:
                return f"the shape of input {name} is not set for profile {self.profile}"
        for name in self.engine.tensors:
            if not self.addresses.get(name):
                return f"{name} has no address"
            room = _cuda.room(self.addresses[name])
            if room is not None and room < self._bytes(name):
                return f"the buffer of {name} holds {room} bytes, the tensor needs {self._bytes(name)}"
        for name in self.engine.tensors:
            if self._bytes(name) == 0:
                shared = [n for n, a in self.addresses.items() if n != name and a == self.addresses[name]]
                if shared:
                    return f"the empty tensor {name} has the address of {shared[0]}"
        return None

    def _names(self, mode: TensorIOMode) -> list[str]:
        return [n for n, (m, _) in self.engine.tensors.items() if m == mode]

    def _layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        return self.get_tensor_shape(name), np.dtype(NUMPY[self.engine.get_tensor_dtype(name)])

    def _bytes(self, name: str) -> int:
        shape, dtype = self._layout(name)
        return math.prod(shape) * dtype.itemsize

    def _read(self, name: str) -> np.ndarray:
        shape, dtype = self._layout(name)
        size = self._bytes(name)
        if size == 0:
            return np.empty(shape, dtype)
        raw = (ctypes.c_uint8 * size).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    def _write(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=self._layout(name)[1])
        if array.nbytes:
            ctypes.memmove(self.addresses[name], array.ctypes.data, array.nbytes)
