"""manifest.json: what an artefact directory holds, written at export, read by every runtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import StarConfig
from ..errors import ArtifactError
from ..records import read_record
from ..graphs import GraphSpec, graph_specs

MANIFEST = "manifest.json"
FORMAT = "star-deploy-artifacts"
FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"


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


def sha256_files(paths: list[Path]) -> str:
    """sha256 of one file, or of the concatenated digests of several."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    return hashlib.sha256("".join(sha256_file(p) for p in paths).encode()).hexdigest()


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

    def path(self, graph: str) -> Path:
        return self.root / self.graphs[graph].file

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR


def manifest_dict(
    config: StarConfig,
    precision: str,
    specs: dict[str, GraphSpec],
    folder: Path,
    sources: dict[str, dict[str, Any]],
    tools: dict[str, str],
    opset: int,
) -> dict[str, Any]:
    graphs = {}
    for name, spec in specs.items():
        graphs[name] = spec.to_dict() | {"sha256": sha256_files(graph_files(folder, spec))}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "precision": precision,
        "opset": opset,
        "config": config.to_dict(),
        "graphs": graphs,
        "sources": sources,
        "tools": tools,
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_manifest(root: Path) -> Manifest:
    """Read and validate ``root/manifest.json``; every graph file must be present."""
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artefact directory; create it with `star-deploy export --out {root}`")
    data = read_record(path, FORMAT, FORMAT_VERSION, "manifest", f"{root} is not a complete export: run `star-deploy export` again")
    config = StarConfig.from_dict(data["config"])
    precision = data["precision"]
    specs = graph_specs(config, precision)
    for name, spec in specs.items():
        if data["graphs"].get(name, {}).get("inputs") != [t.to_dict() for t in spec.inputs]:
            raise ArtifactError(f"{path}: graph {name} does not have the I/O this version expects; export again")
        if not (root / spec.file).is_file():
            raise ArtifactError(f"{root / spec.file}: missing; export again")
    return Manifest(
        root=root,
        config=config,
        precision=precision,
        graphs=specs,
        graph_hashes={k: v["sha256"] for k, v in data["graphs"].items()},
        sources=data["sources"],
        tools=data["tools"],
        opset=data["opset"],
    )


def verify_graph_hashes(manifest: Manifest) -> None:
    """Refuse graph files whose contents differ from what the export wrote."""
    for name, expected in manifest.graph_hashes.items():
        actual = sha256_files(graph_files(manifest.root, manifest.graphs[name]))
        if actual != expected:
            raise ArtifactError(f"{manifest.path(name)}: changed or corrupted since export (sha256 mismatch); export again")
