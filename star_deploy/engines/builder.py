"""ONNX -> TensorRT plans through Polygraphy, one per graph, with per-scale profiles, a timing cache and a sidecar.

The build goes through Polygraphy's TensorRT loaders, as NVIDIA's demo/Diffusion builds its engines:
``network_from_onnx_path`` (strongly typed unless the FP16 flag is asked for), ``CreateConfig`` (profiles,
workspace limit, optimization level, TF32) with ``PostprocessConfig`` attaching the timing cache, and
``engine_bytes_from_network``. Only the timing cache is handled here: Polygraphy ignores ``set_timing_cache``'s
result and writes its cache file in place, while a cache made on another GPU must be replaced (with a warning)
and every file written atomically.

API references (TensorRT 10.x / 11 Python API; Polygraphy 0.49+):
  Polygraphy TensorRT loaders: https://docs.nvidia.com/deeplearning/tensorrt/polygraphy/docs/backend/trt/loader.html
  CreateConfig, Profile: https://docs.nvidia.com/deeplearning/tensorrt/polygraphy/docs/backend/trt/config.html
  IBuilderConfig (create_timing_cache / set_timing_cache / get_timing_cache):
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html
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
from ..artifacts.readiness import check_graph, load_ops_table
from ..core.config import StarConfig
from ..core.fast import FastMode, scale_plans
from ..core.graphs import OPTIONAL_GRAPHS, PRUNED_STEP
from ..errors import ArtifactError, ConfigError, StarDeployError
from ..files.atomic import atomic_file
from ..version import __version__
from .gpu import cuda
from .memory import check_fits, device_memory
from .polygraphy_calls import polygraphy_errors
from .profiles import Profile, Shape, check_batch_sizes, profile_table
from .sidecar import ENGINES_DIR, EngineSidecar, RuntimeInfo, plan_path, sidecar_path, write_sidecar
from .trt_api import cuda_device, import_tensorrt, major_version, runtime_info

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
    fast: FastMode | None = None
    """The fast mode the engines run besides exact generation: its cut adds the conditional rows' profiles,
    its pruned scales the pruned step's engine (one profile per pruned scale)."""

    @property
    def step_conditional_rows(self) -> bool:
        """Whether the step engine gets its B-row profiles (asked for, or a fast mode that stops guidance)."""
        return self.conditional_rows or (self.fast is not None and self.fast.cfg_until is not None)

    def prunes(self, config: StarConfig) -> bool:
        """Whether the fast mode runs the pruned step on ``config``'s schedule."""
        return self.fast is not None and any(p.residual for p in scale_plans(config, self.fast))

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
        data["fast"] = self.fast.record() if self.fast is not None else None
        return data


def engine_precision(manifest: Manifest, typing: str) -> str:
    """Precision of the engines: strongly typed follows the ONNX types, the FP16 flag gives fp16."""
    return "fp16" if typing == "fp16-flag" else manifest.precision


def polygraphy_profiles(profiles: list[Profile]):
    """Polygraphy ``Profile`` objects with min = opt = max = the exact shapes of each scale."""
    from polygraphy.backend.trt import Profile as PolygraphyProfile

    out = []
    for p in profiles:
        profile = PolygraphyProfile()
        for name, shape in p.shapes.items():
            profile.add(name, shape, shape, shape)
        out.append(profile)
    return out


def parse_network(onnx_path: Path, typing: str):
    """(builder, network, parser) of ``onnx_path``; strongly typed unless the FP16 flag is asked for."""
    from polygraphy.backend.trt import network_from_onnx_path

    fix = "run `star-deploy check` on the folder"
    with polygraphy_errors(f"{onnx_path}: TensorRT could not parse it", ArtifactError, fix):
        return network_from_onnx_path(str(onnx_path), strongly_typed=typing == "strong")


def attach_timing_cache(config, cache_blob: bytes, source: Path) -> None:
    """Reuse ``cache_blob``, or start a fresh cache when TensorRT refuses it (made on another GPU, or not a cache)."""
    # ignore_mismatch=False: a cache from a device with other CUDA properties is refused (returns False).
    cache = config.create_timing_cache(cache_blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    log.warning("%s: timing cache made on another GPU or TensorRT (or unreadable); a fresh one replaces it", source)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise StarDeployError(f"TensorRT refused a fresh timing cache; build without {source} (see the messages above)")


def builder_config(trt: ModuleType, network, profiles: list[Profile], options: BuildOptions, cache: tuple[bytes, Path]):
    """The IBuilderConfig of one graph: Polygraphy's CreateConfig, then the timing cache."""
    from polygraphy.backend.trt import CreateConfig, PostprocessConfig

    create = CreateConfig(
        tf32=options.tf32,  # TF32 is on by default in TensorRT, even strongly typed: cleared unless asked for
        fp16=options.typing == "fp16-flag",  # weakly typed TensorRT 10 networks only
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(options.workspace_gib * (1 << 30))},
        builder_optimization_level=options.optimization_level,
        profiles=polygraphy_profiles(profiles),
    )
    config_of = PostprocessConfig(create, lambda _builder, _network, config: attach_timing_cache(config, *cache))
    fix = "the ONNX inputs do not match the manifest: export the folder again"
    with polygraphy_errors(
        f"TensorRT refused the optimization profiles ({first_profile(profiles)})", StarDeployError, fix
    ):
        config = config_of(network[0], network[1])
    if config.num_optimization_profiles != len(profiles):
        raise StarDeployError(
            f"TensorRT kept {config.num_optimization_profiles} of {len(profiles)} optimization profiles; {fix}"
        )
    return config


def first_profile(profiles: list[Profile]) -> str:
    """The first profile with an impossible shape (negative size), else the first one."""
    bad = next((p for p in profiles if any(d < 0 for s in p.shapes.values() for d in s)), profiles[0])
    return f"profile {bad.index}: {describe_shapes(bad.shapes)}"


def describe_shapes(shapes: dict[str, Shape]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    profiles: list[Profile],
    options: BuildOptions,
    cache_blob: bytes,
    cache_path: Path,
) -> tuple[bytes, bytes]:
    """Serialized plan and updated timing cache for one ONNX graph (on the current device)."""
    from polygraphy.backend.trt import engine_bytes_from_network

    network = parse_network(onnx_path, options.typing)  # the parser owns the weights until the build is done
    config = builder_config(trt, network, profiles, options, (cache_blob, cache_path))
    fix = "see the messages above; run with -v for TensorRT's log"
    with polygraphy_errors(f"{onnx_path}: TensorRT failed to build an engine", StarDeployError, fix):
        serialized = engine_bytes_from_network(network, config=config)
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


def check_ready(manifest: Manifest, graphs: list[str], tensorrt_version: str) -> None:
    """Refuse graphs the ONNX parser of ``tensorrt_version`` cannot build."""
    table = load_ops_table(version=tensorrt_version)
    problems = [p for g in graphs for p in check_graph(manifest.path(g), manifest.graphs[g], table).problems]
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


def default_graphs(manifest: Manifest, options: BuildOptions) -> list[str]:
    """The five graphs, and the pruned step where the fast mode built for prunes a scale (refused if not exported)."""
    graphs = [g for g in manifest.graphs if g not in OPTIONAL_GRAPHS]
    if not options.prunes(manifest.config):
        return graphs
    if PRUNED_STEP not in manifest.graphs:
        raise ArtifactError(
            f"{manifest.root}: exported before fast modes (no {PRUNED_STEP}.onnx); export it again to build --fast 2"
        )
    return [*graphs, PRUNED_STEP]


def build_engines(
    manifest: Manifest,
    options: BuildOptions,
    graphs: list[str] | None = None,
    device: str = "cuda",
    overwrite: bool = False,
    on_graph: Callable[[str], None] | None = None,
) -> list[Path]:
    """Build ``graphs`` (default: all) of ``manifest`` into DIR/engines/<graph>.plan + .json."""
    graphs = list(graphs or default_graphs(manifest, options))
    unknown = sorted(set(graphs) - set(manifest.graphs))
    if unknown:
        raise ConfigError(f"unknown graph(s) {unknown}; choose from {', '.join(manifest.graphs)}")
    if PRUNED_STEP in graphs and not options.prunes(manifest.config):
        raise ConfigError(
            f"--graph {PRUNED_STEP}: its profiles are the scales a fast mode prunes; "
            "add --fast 2 (with --keep R1,R2 for a model without a preset)"
        )
    trt = import_tensorrt()
    dev = cuda_device(device)
    info: RuntimeInfo = runtime_info(trt, dev)
    options.validate(info.tensorrt_version)
    check_ready(manifest, graphs, info.tensorrt_version)
    root = manifest.root
    check_outputs(root, graphs, overwrite)
    memory = device_memory(manifest, list(options.batch_sizes), default_graphs(manifest, options))
    check_fits(memory, cuda().total_memory(dev), info.gpu_name)
    (root / ENGINES_DIR).mkdir(exist_ok=True)
    cache_path = options.timing_cache or default_timing_cache(root, info)
    cache_blob = cache_path.read_bytes() if cache_path.is_file() else b""
    written = []
    with cuda().current(dev):  # the builder builds for the current device (trtexec: cudaSetDevice first)
        for graph in graphs:
            spec, onnx_path = manifest.graphs[graph], manifest.path(graph)
            profiles = profile_table(
                manifest.config, spec, list(options.batch_sizes), options.step_conditional_rows, options.fast
            )
            log.info("building %s (%d profile(s)) on %s (%s)", graph, len(profiles), info.gpu_name, dev)
            cuda().release_cached(dev)  # TensorRT's builder allocates outside torch's caching allocator
            plan, cache_blob = build_plan(trt, onnx_path, profiles, options, cache_blob, cache_path)
            sidecar = engine_sidecar(manifest, graph, options, info, profiles)
            written.append(write_plan(root, sidecar, plan))
            with atomic_file(cache_path, overwrite=True) as tmp:
                tmp.write_bytes(cache_blob)
            if on_graph is not None:
                on_graph(graph)
    return written
