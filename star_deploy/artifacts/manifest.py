"""manifest.json: what an artefact directory holds, written at export, read by every runtime."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import SamplingConfig, StarConfig
from ..core.graphs import PRUNED_STEP, GraphSpec, graph_specs
from ..errors import ArtifactError
from ..files.records import read_record
from .graph_io import check_graph_file
from .schema import parse_config, parse_sampling, validate

MANIFEST = "manifest.json"
FORMAT = "star-deploy-artifacts"
FORMAT_VERSION = 2
"""2: a sha256 of every file the export wrote (``files``) and of the manifest itself."""
TOKENIZER_DIR = "tokenizer"
SELF_DIGEST = "manifest_sha256"


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def graph_files(folder: Path, spec: GraphSpec) -> list[Path]:
    """The graph file and, for graphs stored with external data, its ``.data`` file."""
    data = folder / f"{spec.file}.data"
    return [folder / spec.file, data] if data.is_file() else [folder / spec.file]


def combine(digests: list[str]) -> str:
    """One digest, or the sha256 of several concatenated."""
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """sha256 of one file, or of the concatenated digests of several."""
    return combine([sha256_file(p) for p in paths])


def graph_digest(folder: Path, spec: GraphSpec) -> str:
    """The one digest of a graph (its .onnx and any .onnx.data): manifests and engine sidecars both record it."""
    return sha256_files(graph_files(folder, spec))


def file_table(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` except the manifest, by relative POSIX path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def body_digest(data: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest."""
    body = {k: v for k, v in data.items() if k != SELF_DIGEST}
    return hashlib.sha256(dumps(body).encode()).hexdigest()


def sealed(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` with the file table of ``folder`` and the manifest's own digest added."""
    data = {k: v for k, v in data.items() if k != SELF_DIGEST} | {"files": file_table(folder)}
    return data | {SELF_DIGEST: body_digest(data)}


def sha256_tree(path: Path) -> str:
    """Hash of a file, or of every file below a folder (names and contents, sorted)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest of an artefact directory."""

    root: Path
    config: StarConfig
    precision: str
    graphs: dict[str, GraphSpec]
    graph_hashes: dict[str, str]
    sources: dict[str, dict[str, Any]]
    tools: dict[str, str]
    opset: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """The sampling defaults (cfg, top_k, top_p) recorded at export; the defaults for older manifests."""

    def path(self, graph: str) -> Path:
        return self.root / self.graphs[graph].file

    @property
    def runs_fast_modes(self) -> bool:
        """Whether the export has what fast modes need: the pruned step, and a step graph taking B or 2B rows.

        Both came with the same version of the exporter.
        """
        return PRUNED_STEP in self.graphs

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def graph_bytes(self) -> int:
        """Size of every graph file with its external data: about the weights a runtime loads."""
        return sum(f.stat().st_size for spec in self.graphs.values() for f in graph_files(self.root, spec))


def manifest_dict(
    config: StarConfig,
    precision: str,
    specs: dict[str, GraphSpec],
    folder: Path,
    sources: dict[str, dict[str, Any]],
    tools: dict[str, str],
    opset: int,
    sampling: SamplingConfig | None = None,
) -> dict[str, Any]:
    graphs = {name: spec.to_dict() | {"sha256": graph_digest(folder, spec)} for name, spec in specs.items()}
    defaults = sampling or SamplingConfig()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "precision": precision,
        "opset": opset,
        "config": config.to_dict(),
        "graphs": graphs,
        "sources": sources,
        "tools": tools,
        "sampling": {"cfg": defaults.cfg, "top_k": defaults.top_k, "top_p": defaults.top_p},
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def read_manifest(root: Path) -> dict[str, Any]:
    """The validated contents of ``root/manifest.json``, its own digest checked; file hashes not yet."""
    path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise ArtifactError(
            f"{root}: is a file, not an artefact folder; pass the folder that `star-deploy export` made"
        )
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artefact directory; create it with `star-deploy export --out {root}`")
    data = read_record(
        path, FORMAT, FORMAT_VERSION, "manifest", f"{root} is not a complete export: run `star-deploy export` again"
    )
    validate(data, path)
    if body_digest(data) != data[SELF_DIGEST]:
        raise ArtifactError(f"{path}: changed since export (its sha256 does not match); export again")
    return data


def file_problems(root: Path, files: dict[str, str]) -> Iterator[str]:
    """One message per file the export wrote that is missing or differs from what it wrote."""
    for rel, expected in files.items():
        path = root / rel
        if not path.is_file():
            yield f"{path}: missing; the artefact folder is incomplete, export again"
            continue
        try:
            found = sha256_file(path)
        except OSError as exc:
            yield f"{path}: cannot be read ({exc.strerror or exc}); fix its permissions"
            continue
        if found != expected:
            yield f"{path}: changed or corrupted since export (sha256 mismatch); export again"


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Refuse a folder where a file the export wrote is missing or differs from what it wrote."""
    problem = next(file_problems(root, files), None)
    if problem is not None:
        raise ArtifactError(problem)


def check_graph_entry(entry: dict[str, Any], spec: GraphSpec, path: Path) -> None:
    """Refuse a graph entry whose file, inputs or outputs differ from what this version exports."""
    for kind, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        if entry[kind] != [t.to_dict() for t in tensors]:
            raise ArtifactError(
                f"{path}: graph {spec.name} does not have the {kind} this version expects; export again"
            )
    if entry["file"] != spec.file:
        raise ArtifactError(f"{path}: graph {spec.name} is not stored as {spec.file}; export again")


def load_manifest(root: Path) -> Manifest:
    """Read and validate ``root/manifest.json``, verify every file it lists and each graph's inputs and outputs."""
    path = root / MANIFEST
    data = read_manifest(root)
    config = parse_config(data["config"], path)
    precision = data["precision"]
    specs = {name: spec for name, spec in graph_specs(config, precision).items() if name in data["graphs"]}
    for name, spec in specs.items():
        entry = data["graphs"][name]
        check_graph_entry(entry, spec, path)
        listed = [f for f in (spec.file, f"{spec.file}.data") if f in data["files"]]
        if spec.file not in data["files"] or combine([data["files"][f] for f in listed]) != entry["sha256"]:
            raise ArtifactError(f"{path}: graph {name} does not match its file table; export again")
    verify_files(root, data["files"])
    for spec in specs.values():
        check_graph_file(root / spec.file, spec)
    return Manifest(
        root=root,
        config=config,
        precision=precision,
        graphs=specs,
        graph_hashes={k: v["sha256"] for k, v in data["graphs"].items()},
        sources=data["sources"],
        tools=data["tools"],
        opset=data["opset"],
        sampling=parse_sampling(data.get("sampling"), path),
    )


def verify_graph_hashes(manifest: Manifest) -> None:
    """Refuse graph files whose contents differ from what the export wrote."""
    for name, expected in manifest.graph_hashes.items():
        if graph_digest(manifest.root, manifest.graphs[name]) != expected:
            raise ArtifactError(
                f"{manifest.path(name)}: changed or corrupted since export (sha256 mismatch); export again"
            )
