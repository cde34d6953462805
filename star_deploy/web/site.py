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

from ..artifacts.loadable import read_onnx
from ..artifacts.manifest import Manifest, graph_files, load_manifest, sha256_file
from ..core.config import MAX_CFG
from ..core.graphs import OPTIONAL_GRAPHS, GraphSpec, TensorSpec
from ..core.tables import build_scale_tables
from ..core.tokenizer import load_tokenizer
from ..errors import OutputError
from ..files.atomic import atomic_dir, check_separate
from .attention_chunks import chunk_attention, chunk_count
from .parts import GZ, PART_BYTES, compress, write_graph
from .runtime import BUILDS, ORT_WEB_VERSION, ort_web_version
from .weights import Quantization, check_weights, import_onnx, quantization_of, site_precision, stored

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SITE_MANIFEST = "site.json"
SITE_FORMAT = "star-deploy-web"
SITE_FORMAT_VERSION = 2
"""2: graphs may have their weights in parts (``data``), files are gzip-compressed only where it pays."""
TABLE_ALIGN = 8
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
ATTENTION_CHUNK = 256
"""Queries per piece of the step's self-attention (attention_chunks.py): at 1024-d30 a piece's float32 scores are
(2, 30, 256, 9451), 0.58 GB, under the 1 GiB that the smallest WebGPU adapters (SwiftShader) put in one buffer.
Schedules up to 256 px (at most 256 queries a scale) keep the exported attention."""
CHUNKED_GRAPHS = ("transformer_step",)


@dataclass(frozen=True)
class SiteReport:
    """What was written: the folder, its files and their total size."""

    out: Path
    files: int
    bytes: int
    weights: str


def tensor_entry(t: TensorSpec) -> dict:
    return t.to_dict() | {"role": t.role.value, "layer": t.layer, "is_value": t.is_value}


def graph_entry(spec: GraphSpec, folder: Path, file: Path, parts: list[tuple[str, Path]]) -> dict:
    """site.json's entry of a graph: its file, its weight parts (the name the graph gives each, and the file), I/O."""
    return {
        "file": file.relative_to(folder).as_posix(),
        "data": [{"path": name, "file": path.relative_to(folder).as_posix()} for name, path in parts],
        "inputs": [tensor_entry(t) for t in spec.inputs],
        "outputs": [tensor_entry(t) for t in spec.outputs],
        "per_scale": spec.per_scale,
    }


def attention_entry(manifest: Manifest, chunk: int) -> dict | None:
    """site.json's record of the step's chunked self-attention, or None where one piece covers every scale."""
    queries = manifest.config.final_side**2
    chunks = chunk_count(queries, chunk)
    return {"query_chunk": chunk, "chunks": chunks, "graphs": list(CHUNKED_GRAPHS)} if chunks > 1 else None


def write_graphs(
    manifest: Manifest,
    folder: Path,
    weights: str,
    quantization: Quantization | None,
    part_bytes: int,
    attention: dict | None = None,
) -> dict[str, dict]:
    """Each graph into ``folder/graphs`` with its weights stored as ``weights`` and its self-attention in
    ``attention``'s query chunks, compressed; their entries."""
    graphs = folder / "graphs"
    graphs.mkdir()
    entries = {}
    for name, spec in manifest.graphs.items():
        if name in OPTIONAL_GRAPHS:
            continue  # the page generates exactly: fast modes' graphs stay out of the site
        source, target = manifest.path(name), graphs / spec.file
        chunked = attention is not None and name in attention["graphs"]
        if (
            weights == "fp32"
            and not chunked
            and graph_files(manifest.root, spec) == [source]
            and source.stat().st_size <= part_bytes
        ):
            shutil.copy2(source, target)
            parts = []
        else:
            import_onnx()  # a clear error naming the extra where onnx is missing
            log.info("writing %s with %s weights", spec.file, weights)
            model = stored(read_onnx(source), name, weights, quantization)
            if chunked:
                chunk_attention(model, attention["query_chunk"], manifest.config.final_side**2)
            parts = write_graph(model, graphs, spec.file, part_bytes)
        data = [(part, compress(graphs / part)) for part in parts]
        entries[name] = graph_entry(spec, folder, compress(target), data)
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
        builds[build.name] = {
            "module": f"ort/{build.module}",
            "glue": f"ort/{build.glue}",
            "binary": compress(folder / "ort" / build.binary).relative_to(folder).as_posix(),
            "providers": list(build.providers),
        }
    return builds


def model_entry(manifest: Manifest, weights: str) -> dict:
    """The schedule the page runs, and (for ONNX Runtime in Python: artifacts.py) the config and precision."""
    config = manifest.config
    return {
        "patch_nums": list(config.patch_nums),
        "image_size": config.image_size,
        "vocab_size": config.transformer.vocab_size,
        "total_tokens": config.total_tokens,
        "precision": site_precision(manifest.precision, weights),
        "config": config.to_dict(),
        "opset": manifest.opset,
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


def site_manifest(manifest: Manifest, weights: str, quantization: Quantization | None, sections: dict) -> dict:
    """site.json: everything but the files' table, which ``build_site`` adds last."""
    sampling = manifest.sampling
    return {
        "format": SITE_FORMAT,
        "format_version": SITE_FORMAT_VERSION,
        "model": model_entry(manifest, weights),
        "weights": weights,
        "quantization": quantization.to_dict() if quantization else None,
        "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p, "max_cfg": MAX_CFG},
        "loop": LOOP,
        "tokenizer": "tokenizer.json",
    } | sections


def check_site_folder(out: Path, inputs: list[Path]) -> None:
    """Refuse to write the site over the current folder, one of its parents, the home folder, or over, inside or
    around an input (the artefact folder, onnxruntime-web's): ``--overwrite`` would replace their contents."""
    target = out.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents or target == Path.home().resolve():
        raise OutputError(
            f"--out {out}: is the current folder, one of its parents or the home folder, whose contents a site would "
            f"replace; write the site into a folder of its own, e.g. --out {out / 'site'}"
        )
    check_separate([out], inputs)


def build_site(
    artifacts: Path,
    out: Path,
    ort_web: Path,
    weights: str = "fp16",
    overwrite: bool = False,
    part_bytes: int = PART_BYTES,
    attention_chunk: int = ATTENTION_CHUNK,
) -> SiteReport:
    """Write the site for the artefact folder ``artifacts`` into ``out`` (atomically)."""
    check_weights(weights)
    check_site_folder(out, [artifacts, ort_web])
    manifest = load_manifest(artifacts)
    quantization = quantization_of(weights, manifest.precision)
    attention = attention_entry(manifest, attention_chunk)
    with atomic_dir(out, overwrite) as tmp:
        sections = {
            "graphs": write_graphs(manifest, tmp, weights, quantization, part_bytes, attention),
            "attention": attention,
            "tables": {"file": "tables.bin", "scales": write_tables(manifest, tmp / "tables.bin")},
        }
        (tmp / "tokenizer.json").write_text(load_tokenizer(manifest.tokenizer_dir).to_str(), encoding="utf-8")
        version = ort_web_version(ort_web) or ORT_WEB_VERSION
        sections["runtime"] = {"version": version, "builds": write_runtime(ort_web, tmp)}
        for source in sorted(STATIC.iterdir()):
            if source.is_file():
                shutil.copy2(source, tmp / source.name)
        data = site_manifest(manifest, weights, quantization, sections) | {"files": file_entries(tmp)}
        (tmp / SITE_MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    files = [p for p in out.rglob("*") if p.is_file()]
    return SiteReport(out, len(files), sum(p.stat().st_size for p in files), weights)
