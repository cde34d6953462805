"""Write a static site that generates in the visitor's browser: the page, its modules, graphs, tables, runtime.

``site.json`` lists every other file with its sha256 and size; the page downloads each file,
checks it against that list and refuses to run on a mismatch. It also carries what the
JavaScript scale loop needs to follow the export rather than hard-coded names: the model's
schedule, each graph's inputs and outputs with their roles, the per-scale tables' layout in
``tables.bin`` and which tensor plays which part of the loop.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts.manifest import Manifest, load_manifest, sha256_file
from ..core.config import SamplingConfig
from ..core.graphs import OPTIONAL_GRAPHS, GraphSpec, TensorSpec
from ..core.tables import build_scale_tables
from ..core.tokenizer import load_tokenizer
from ..errors import ConfigError
from ..files.atomic import atomic_dir, check_separate
from .fp16_storage import store_fp16
from .runtime import BUILDS, ORT_WEB_VERSION, ort_web_version

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SITE_MANIFEST = "site.json"
SITE_FORMAT = "star-deploy-web"
SITE_FORMAT_VERSION = 1
STORAGES = ("fp16", "fp32")
TABLE_ALIGN = 8
GZ = ".gz"
GZIP_LEVEL = 6
"""Level 9 saves 1% more and takes several times longer."""
LOOP = {
    "text_encoder": {"ids": "input_ids", "mask": "attention_mask", "hidden": "text_hidden", "pooled": "text_pooled"},
    "text_context": {
        "hidden": "text_hidden",
        "mask": "attention_mask",
        "pooled": "text_pooled",
        "start": "start_tokens",
    },
    "transformer_step": {"x": "x", "logits": "logits"},
    "scale_update": {"tokens": "tokens", "f_hat": "f_hat", "f_hat_out": "f_hat_out", "next_x": "next_x"},
    "vq_decoder": {"f_hat": "f_hat", "image": "image"},
}
"""Which tensor of each graph plays which part of the scale loop (graphs.py's contract)."""


@dataclass(frozen=True)
class SiteReport:
    """What was written: the folder, its files and their total size."""

    out: Path
    files: int
    bytes: int
    storage: str


def tensor_entry(t: TensorSpec) -> dict:
    return t.to_dict() | {"role": t.role.value, "layer": t.layer, "is_value": t.is_value}


def graph_entry(spec: GraphSpec, data_file: str | None) -> dict:
    entry = {
        "file": f"graphs/{spec.file}{GZ}",
        "inputs": [tensor_entry(t) for t in spec.inputs],
        "outputs": [tensor_entry(t) for t in spec.outputs],
        "per_scale": spec.per_scale,
    }
    return entry | ({"data": f"graphs/{data_file}{GZ}"} if data_file else {})


def gzip_file(path: Path) -> None:
    """Replace ``path`` by ``path.gz`` (no timestamp: the same input gives the same bytes)."""
    with path.open("rb") as src, gzip.GzipFile(path.with_name(path.name + GZ), "wb", GZIP_LEVEL, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    path.unlink()


def write_graphs(manifest: Manifest, folder: Path, storage: str) -> dict[str, dict]:
    """Each graph, gzip-compressed, into ``folder/graphs``, its weights stored as ``storage``; their entries."""
    (folder / "graphs").mkdir()
    entries = {}
    for name, spec in manifest.graphs.items():
        if name in OPTIONAL_GRAPHS:
            continue  # the page generates exactly: fast modes' graphs stay out of the site
        source, target = manifest.path(name), folder / "graphs" / spec.file
        external = source.with_name(source.name + ".data")
        if storage == "fp16" and not external.exists():
            store_fp16(source, target)
        else:
            shutil.copy2(source, target)
        gzip_file(target)
        if external.exists():
            shutil.copy2(external, target.with_name(external.name))
            gzip_file(target.with_name(external.name))
        entries[name] = graph_entry(spec, external.name if external.exists() else None)
    return entries


def write_tables(manifest: Manifest, path: Path) -> list[dict]:
    """Every scale's tables the page's graphs read, in one little-endian file; per scale, offset, dtype and shape."""
    read = {t.name for name, spec in manifest.graphs.items() if name not in OPTIONAL_GRAPHS for t in spec.inputs}
    layout, offset = [], 0
    with path.open("wb") as f:
        for tables in build_scale_tables(manifest.config):
            entry = {}
            for name, array in tables.arrays().items():
                if name not in read:
                    continue
                data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
                entry[name] = {"offset": offset, "dtype": str(array.dtype), "shape": list(array.shape)}
                padding = -len(data) % TABLE_ALIGN
                f.write(data + b"\0" * padding)
                offset += len(data) + padding
            layout.append(entry)
    return layout


def write_runtime(dist: Path, folder: Path) -> dict[str, dict]:
    """The onnxruntime-web builds: modules as they are, WebAssembly binaries gzip-compressed (a quarter the size)."""
    (folder / "ort").mkdir()
    builds = {}
    for build in BUILDS:
        for name in (build.module, build.glue, build.binary):
            shutil.copy2(dist / name, folder / "ort" / name)
        gzip_file(folder / "ort" / build.binary)
        builds[build.name] = {
            "module": f"ort/{build.module}",
            "glue": f"ort/{build.glue}",
            "binary": f"ort/{build.binary}{GZ}",
            "providers": list(build.providers),
        }
    return builds


def model_entry(manifest: Manifest) -> dict:
    config = manifest.config
    return {
        "patch_nums": list(config.patch_nums),
        "image_size": config.image_size,
        "vocab_size": config.transformer.vocab_size,
        "total_tokens": config.total_tokens,
        "precision": manifest.precision,
    }


def gzip_contents(path: Path) -> dict:
    """sha256 and size of a gzip file's decompressed contents."""
    digest, size = hashlib.sha256(), 0
    with gzip.open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return {"content_sha256": digest.hexdigest(), "content_size": size}


def file_entry(path: Path) -> dict:
    """sha256 and size of a file; for a .gz file also those of its contents: the page decompresses it into
    a buffer of that size, and checks the contents where a host sends it decompressed (Content-Encoding: gzip)."""
    entry = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return entry | (gzip_contents(path) if path.suffix == GZ else {})


def file_entries(folder: Path) -> dict[str, dict]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SITE_MANIFEST)
    return {p.relative_to(folder).as_posix(): file_entry(p) for p in files}


def site_manifest(
    manifest: Manifest, folder: Path, storage: str, graphs: dict, tables: list, runtime: dict, dist: Path
) -> dict:
    sampling = SamplingConfig()
    return {
        "format": SITE_FORMAT,
        "format_version": SITE_FORMAT_VERSION,
        "model": model_entry(manifest),
        "storage": storage,
        "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p},
        "graphs": graphs,
        "loop": LOOP,
        "tables": {"file": "tables.bin", "scales": tables},
        "tokenizer": "tokenizer.json",
        "runtime": {"version": ort_web_version(dist) or ORT_WEB_VERSION, "builds": runtime},
        "files": file_entries(folder),
    }


def build_site(artifacts: Path, out: Path, ort_web: Path, storage: str = "fp16", overwrite: bool = False) -> SiteReport:
    """Write the site for the artefact folder ``artifacts`` into ``out`` (atomically)."""
    if storage not in STORAGES:
        raise ConfigError(f"--storage {storage!r}: choose one of {', '.join(STORAGES)}")
    check_separate([out], [artifacts, ort_web])
    manifest = load_manifest(artifacts)
    with atomic_dir(out, overwrite) as tmp:
        graphs = write_graphs(manifest, tmp, storage)
        tables = write_tables(manifest, tmp / "tables.bin")
        (tmp / "tokenizer.json").write_text(load_tokenizer(manifest.tokenizer_dir).to_str(), encoding="utf-8")
        runtime = write_runtime(ort_web, tmp)
        for source in sorted(STATIC.iterdir()):
            if source.is_file():
                shutil.copy2(source, tmp / source.name)
        data = site_manifest(manifest, tmp, storage, graphs, tables, runtime, ort_web)
        (tmp / SITE_MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    files = [p for p in out.rglob("*") if p.is_file()]
    return SiteReport(out, len(files), sum(p.stat().st_size for p in files), storage)
