"""The JSON sidecar written beside each plan: what the engine was built from, for, and how.

A serialized TensorRT plan runs only on the TensorRT version and GPU architecture that
built it, and only matches the ONNX file it came from: the runtime compares the sidecar
with the running system and refuses a mismatch with the command that fixes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.fast import FastMode
from ..core.graphs import OPTIONAL_GRAPHS, PRUNED_STEP
from ..errors import ArtifactError, ConfigError
from ..files.atomic import write_text
from ..files.records import read_record
from .profiles import Profile

SIDECAR_FORMAT = "star-deploy-engine"
SIDECAR_VERSION = 1
ENGINES_DIR = "engines"


@dataclass(frozen=True)
class RuntimeInfo:
    """The TensorRT and GPU an engine is built on or loaded on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineSidecar:
    """Everything recorded about one plan file."""

    graph: str
    precision: str
    typing: str
    onnx_sha256: str
    runtime: RuntimeInfo
    batch_sizes: list[int]
    profiles: list[Profile]
    builder: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "graph": self.graph,
            "precision": self.precision,
            "typing": self.typing,
            "onnx_sha256": self.onnx_sha256,
            **asdict(self.runtime),
            "batch_sizes": self.batch_sizes,
            "profiles": [p.to_dict() for p in self.profiles],
            "builder": self.builder,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EngineSidecar:
        runtime = RuntimeInfo(data["tensorrt_version"], data["gpu_name"], data["compute_capability"])
        profiles = [Profile.from_dict(p) for p in data["profiles"]]
        return cls(
            data["graph"],
            data["precision"],
            data["typing"],
            data["onnx_sha256"],
            runtime,
            list(data["batch_sizes"]),
            profiles,
            dict(data.get("builder", {})),
        )


def plan_path(root: Path, graph: str) -> Path:
    return root / ENGINES_DIR / f"{graph}.plan"


def sidecar_path(root: Path, graph: str) -> Path:
    return root / ENGINES_DIR / f"{graph}.json"


def write_sidecar(path: Path, sidecar: EngineSidecar) -> None:
    write_text(path, json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + "\n", overwrite=True)


def load_sidecar(path: Path) -> EngineSidecar:
    rebuild = "build the engines with `star-deploy build-engine DIR`"
    data = read_record(path, SIDECAR_FORMAT, SIDECAR_VERSION, "engine sidecar", rebuild)
    try:
        return EngineSidecar.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: incomplete sidecar ({exc}); {rebuild}") from None


def check_sidecar(sidecar: EngineSidecar, running: RuntimeInfo, onnx_sha256: str, path: Path) -> None:
    """Refuse a plan built for another TensorRT, GPU or ONNX file."""
    fix = f"rebuild with `star-deploy build-engine {path.parent.parent} --overwrite`"
    built = sidecar.runtime
    checks = [
        ("TensorRT version", built.tensorrt_version, running.tensorrt_version),
        ("GPU compute capability", built.compute_capability, running.compute_capability),
        ("GPU", built.gpu_name, running.gpu_name),
    ]
    for what, was, now in checks:
        if was != now:
            raise ArtifactError(f"{path}: built for {what} {was}, running {now}; {fix}")
    if sidecar.onnx_sha256 != onnx_sha256:
        raise ArtifactError(f"{path}: built from a different {sidecar.graph}.onnx (sha256 mismatch); {fix}")


def built_batch_sizes(root: Path, graphs: list[str]) -> list[int]:
    """The batch sizes every engine of ``graphs`` in ``root`` has profiles for, from their sidecars."""
    sizes = [set(load_sidecar(sidecar_path(root, g)).batch_sizes) for g in graphs if g not in OPTIONAL_GRAPHS]
    common = sorted(set.intersection(*sizes)) if sizes else []
    if not common:
        raise ArtifactError(f"{root / ENGINES_DIR}: the engines share no batch size; rebuild them together")
    return common


def prompts_for(root: Path, graphs: list[str], given: list[str] | None, defaults: list[str]) -> list[str]:
    """``given``, whose count must be a built batch size; else the defaults cut or repeated to the smallest one."""
    sizes = built_batch_sizes(root, graphs)
    if given:
        if len(given) not in sizes:
            raise ConfigError(
                f"{len(given)} --prompt value(s), but the engines in {root / ENGINES_DIR} are built for batch "
                f"size(s) {sizes}; give that many prompts or rebuild with --batch-size {len(given)}"
            )
        return list(given)
    return [defaults[i % len(defaults)] for i in range(sizes[0])]


def built_fast_mode(root: Path) -> FastMode | None:
    """The fast mode the folder's pruned-step engine was built for (``build-engine --fast 2``), if built."""
    path = sidecar_path(root, PRUNED_STEP)
    if not path.is_file():
        return None
    fast = load_sidecar(path).builder.get("fast")
    return FastMode(fast["level"], fast["cfg_until"], tuple(fast["keep"])) if isinstance(fast, dict) else None
