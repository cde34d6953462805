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
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from ..artifacts.manifest import Manifest, graph_digest
from ..artifacts.readiness import check_graph
from ..core.graphs import OPTIONAL_GRAPHS
from ..errors import ArtifactError, ConfigError, StarDeployError
from ..files.atomic import atomic_file
from ..version import __version__
from .gpu import cuda
from .profiles import Profile, Shape, check_batch_sizes, profile_table
from .sidecar import ENGINES_DIR, EngineSidecar, RuntimeInfo, plan_path, sidecar_path, write_sidecar
from .trt_api import cuda_device, import_tensorrt, major_version, make_logger, runtime_info

log = logging.getLogger(__name__)

TYPING_MODES = ("strong", "fp16-flag")


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings recorded in every sidecar."""

    batch_sizes: tuple[int, ...] = (1,)
    workspace_gib: float = 8.0
    optimization_level: int = 3
    typing: str = "strong"
    timing_cache: Path | None = None
    tf32: bool = False
    conditional_rows: bool = False
    """Also build the step's profiles for B conditional rows, which fast modes run after guidance stops."""

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
    """One optimization profile per entry, at the index the runtime selects it by."""
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, shape in p.shapes.items():
            profile.set_shape(name, shape, shape, shape)  # min = opt = max: exact shapes of this scale
        index = config.add_optimization_profile(profile)  # -1 for an invalid profile
        if index != p.index:
            raise StarDeployError(
                f"TensorRT refused optimization profile {p.index} ({describe_shapes(p.shapes)}); "
                "the ONNX inputs do not match the manifest: export the folder again"
            )


def describe_shapes(shapes: dict[str, Shape]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())


def attach_timing_cache(config, cache_blob: bytes, source: Path) -> None:
    """Reuse ``cache_blob``, or start a fresh cache when TensorRT refuses it (made on another GPU)."""
    # ignore_mismatch=False: a cache from a device with other CUDA properties is refused (returns False).
    cache = config.create_timing_cache(cache_blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    log.warning("%s: timing cache made on another GPU or TensorRT; a fresh one replaces it", source)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise StarDeployError(f"TensorRT refused a fresh timing cache; build without {source} (see the messages above)")


def builder_config(trt: ModuleType, builder, options: BuildOptions, cache_blob: bytes, cache_path: Path):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.optimization_level
    if options.typing == "fp16-flag":
        config.set_flag(trt.BuilderFlag.FP16)  # weakly typed TensorRT 10 networks only
    # TF32 is on by default and applies to FLOAT tensors even in strongly typed networks.
    if options.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    attach_timing_cache(config, cache_blob, cache_path)
    return config


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    profiles: list[Profile],
    options: BuildOptions,
    cache_blob: bytes,
    cache_path: Path,
) -> tuple[bytes, bytes]:
    """Serialized plan and updated timing cache for one ONNX graph (on the current device)."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(trt, builder, options.typing)
    parser = parse_onnx(trt, network, logger, onnx_path)  # owns the weights until the build is done
    config = builder_config(trt, builder, options, cache_blob, cache_path)
    add_profiles(builder, config, profiles)
    serialized = builder.build_serialized_network(network, config)
    del parser
    if serialized is None:
        raise StarDeployError(
            f"{onnx_path}: TensorRT failed to build an engine (see the messages above; run with -v for details)"
        )
    cache = config.get_timing_cache()
    updated = bytes(memoryview(cache.serialize())) if cache is not None else cache_blob
    return bytes(memoryview(serialized)), updated


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


def default_timing_cache(root: Path, info: RuntimeInfo) -> Path:
    """DIR/engines/timing-<GPU>-trt<version>.cache: a cache is only valid for the GPU and TensorRT that made it."""
    gpu = re.sub(r"[^A-Za-z0-9.-]+", "_", info.gpu_name).strip("_")
    return root / ENGINES_DIR / f"timing-{gpu}-trt{info.tensorrt_version}.cache"


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
    graphs = list(graphs or (g for g in manifest.graphs if g not in OPTIONAL_GRAPHS))
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
    cache_path = options.timing_cache or default_timing_cache(root, info)
    cache_blob = cache_path.read_bytes() if cache_path.is_file() else b""
    written = []
    with cuda().current(dev):  # the builder builds for the current device (trtexec: cudaSetDevice first)
        for graph in graphs:
            spec, onnx_path = manifest.graphs[graph], manifest.path(graph)
            profiles = profile_table(manifest.config, spec, list(options.batch_sizes), options.conditional_rows)
            log.info("building %s (%d profile(s)) on %s (%s)", graph, len(profiles), info.gpu_name, dev)
            plan, cache_blob = build_plan(trt, onnx_path, profiles, options, cache_blob, cache_path)
            sidecar = engine_sidecar(manifest, graph, options, info, profiles)
            written.append(write_plan(root, sidecar, plan))
            with atomic_file(cache_path, overwrite=True) as tmp:
                tmp.write_bytes(cache_blob)
            if on_graph is not None:
                on_graph(graph)
    return written
