"""ONNX -> TensorRT plans, one per graph, with per-scale profiles, a timing cache and a sidecar.

API references (TensorRT 10.x / 11 Python API):
  Builder, create_network, NetworkDefinitionCreationFlag:
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html
  IBuilderConfig (set_memory_pool_limit, builder_optimization_level, set_flag,
  create_timing_cache / set_timing_cache / get_timing_cache, add_optimization_profile):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
  IOptimizationProfile.set_shape(input, min, opt, max):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/OptimizationProfile.html
  OnnxParser.parse_from_file / num_errors / get_error:
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/parsers/Onnx/pyOnnx.html
  Timing cache usage: https://docs.nvidia.com/deeplearning/tensorrt/latest/performance/builder-performance.html
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from ..artifacts.manifest import Manifest, graph_digest
from ..artifacts.readiness import check_graph
from ..atomic import atomic_file
from ..errors import ArtifactError, ConfigError, StarDeployError
from ..version import __version__
from .profiles import Profile, check_batch_sizes, profile_table
from .sidecar import ENGINES_DIR, EngineSidecar, RuntimeInfo, plan_path, sidecar_path, write_sidecar
from .trt_api import cuda_device, import_tensorrt, major_version, make_logger, runtime_info

log = logging.getLogger(__name__)

TYPING_MODES = ("strong", "fp16-flag")
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings recorded in every sidecar."""

    batch_sizes: tuple[int, ...] = (1,)
    workspace_gib: float = 8.0
    optimization_level: int = 3
    typing: str = "strong"
    timing_cache: Path | None = None

    def validate(self, tensorrt_version: str) -> None:
        check_batch_sizes(list(self.batch_sizes))
        if self.typing not in TYPING_MODES:
            raise ConfigError(f"--typing must be one of {', '.join(TYPING_MODES)}, got {self.typing!r}")
        if self.typing == "fp16-flag" and major_version(tensorrt_version) >= 11:
            raise ConfigError(
                "--typing fp16-flag: TensorRT 11 removed the FP16 builder flag; use --typing strong with an fp16 export"
            )
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"--opt-level must be in 0..5, got {self.optimization_level}")
        if self.workspace_gib <= 0:
            raise ConfigError(f"--workspace must be positive, got {self.workspace_gib}")

    def record(self) -> dict[str, object]:
        data = asdict(self)
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        data["batch_sizes"] = list(self.batch_sizes)
        return data


def engine_precision(manifest: Manifest, typing: str) -> str:
    """Precision of the engines: strongly typed follows the ONNX types, the FP16 flag gives fp16."""
    return "fp16" if typing == "fp16-flag" else manifest.precision


def create_network(trt: ModuleType, builder, typing: str):
    """A network that is strongly typed (types from the ONNX) unless the FP16 flag is asked for."""
    flags = 0
    if typing == "strong":
        # Ignored (always on) in TensorRT 11, required for strong typing in 10.x (Builder.html).
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def parse_onnx(trt: ModuleType, network, logger, path: Path) -> object:
    """Parse ``path`` (external data beside it is found by parse_from_file)."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{path}: TensorRT could not parse it ({errors}); run `star-deploy check` on the folder")
    return parser


def add_profiles(builder, config, profiles: list[Profile]) -> None:
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, shape in p.shapes.items():
            profile.set_shape(name, shape, shape, shape)  # min = opt = max: exact shapes of this scale
        config.add_optimization_profile(profile)


def builder_config(trt: ModuleType, builder, options: BuildOptions, cache_blob: bytes):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.optimization_level
    if options.typing == "fp16-flag":
        config.set_flag(trt.BuilderFlag.FP16)  # weakly typed TensorRT 10 networks only
    # An empty buffer creates a new cache; ignore_mismatch=False rejects a cache from another device.
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, False)
    return config


def build_plan(
    trt: ModuleType, onnx_path: Path, profiles: list[Profile], options: BuildOptions, cache_blob: bytes
) -> tuple[bytes, bytes]:
    """Serialized plan and updated timing cache for one ONNX graph."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(trt, builder, options.typing)
    parser = parse_onnx(trt, network, logger, onnx_path)  # owns the weights until the build is done
    config = builder_config(trt, builder, options, cache_blob)
    add_profiles(builder, config, profiles)
    serialized = builder.build_serialized_network(network, config)
    del parser
    if serialized is None:
        raise StarDeployError(
            f"{onnx_path}: TensorRT failed to build an engine (see the messages above; run with -v for details)"
        )
    cache = config.get_timing_cache()
    return bytes(memoryview(serialized)), bytes(memoryview(cache.serialize()))


def engine_sidecar(
    manifest: Manifest, graph: str, options: BuildOptions, info: RuntimeInfo, profiles: list[Profile]
) -> EngineSidecar:
    """The sidecar of ``graph``'s plan; its ONNX digest is the manifest's (``graph_digest``: .onnx and .onnx.data)."""
    return EngineSidecar(
        graph=graph,
        precision=engine_precision(manifest, options.typing),
        typing=options.typing,
        onnx_sha256=graph_digest(manifest.root, manifest.graphs[graph]),
        runtime=info,
        batch_sizes=sorted(set(options.batch_sizes)),
        profiles=profiles,
        builder=options.record() | {"star_deploy": __version__},
    )


def write_plan(root: Path, sidecar: EngineSidecar, plan: bytes) -> Path:
    """Write the plan then its sidecar, each atomically; a plan without sidecar is never loaded."""
    target = plan_path(root, sidecar.graph)
    sidecar_path(root, sidecar.graph).unlink(missing_ok=True)
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_bytes(plan)
    write_sidecar(sidecar_path(root, sidecar.graph), sidecar)
    return target


def check_ready(manifest: Manifest, graphs: list[str]) -> None:
    problems = [p for g in graphs for p in check_graph(manifest.path(g), manifest.graphs[g]).problems]
    if problems:
        raise ArtifactError(
            f"{manifest.root}: not ready for TensorRT: {problems[0]} ({len(problems)} problem(s); see `star-deploy "
            "check`)"
        )


def check_outputs(root: Path, graphs: list[str], overwrite: bool) -> None:
    existing = [plan_path(root, g) for g in graphs if plan_path(root, g).exists()]
    if existing and not overwrite:
        raise StarDeployError(f"{existing[0]}: already exists; pass --overwrite to rebuild")


def build_engines(
    manifest: Manifest,
    options: BuildOptions,
    graphs: list[str] | None = None,
    device: str = "cuda",
    overwrite: bool = False,
    on_graph: Callable[[str], None] | None = None,
) -> list[Path]:
    """Build ``graphs`` (default: all) of ``manifest`` into DIR/engines/<graph>.plan + .json."""
    graphs = list(graphs or manifest.graphs)
    unknown = sorted(set(graphs) - set(manifest.graphs))
    if unknown:
        raise ConfigError(f"unknown graph(s) {unknown}; choose from {', '.join(manifest.graphs)}")
    trt = import_tensorrt()
    dev = cuda_device(device)
    info: RuntimeInfo = runtime_info(trt, dev)
    options.validate(info.tensorrt_version)
    check_ready(manifest, graphs)
    root = manifest.root
    check_outputs(root, graphs, overwrite)
    (root / ENGINES_DIR).mkdir(exist_ok=True)
    cache_path = options.timing_cache or root / ENGINES_DIR / TIMING_CACHE
    cache_blob = cache_path.read_bytes() if cache_path.is_file() else b""
    written = []
    for graph in graphs:
        spec, onnx_path = manifest.graphs[graph], manifest.path(graph)
        profiles = profile_table(manifest.config, spec, list(options.batch_sizes))
        log.info("building %s (%d profile(s)) on %s", graph, len(profiles), info.gpu_name)
        plan, cache_blob = build_plan(trt, onnx_path, profiles, options, cache_blob)
        sidecar = engine_sidecar(manifest, graph, options, info, profiles)
        written.append(write_plan(root, sidecar, plan))
        with atomic_file(cache_path, overwrite=True) as tmp:
            tmp.write_bytes(cache_blob)
        if on_graph is not None:
            on_graph(graph)
    return written
