"""Write a complete artefact directory (graphs, tokenizer, manifest) atomically."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..artifacts.manifest import MANIFEST, TOKENIZER_DIR, dumps, manifest_dict, sealed, sha256_tree
from ..core.config import SamplingConfig
from ..core.tokenizer import TOKENIZER_JSON, save_tokenizer_json
from ..files.atomic import atomic_dir, write_text
from ..release.weights import StarTorchModel
from ..version import __version__
from .onnx_export import EXTERNAL_DATA_BYTES, OPSET, export_all


def tool_versions() -> dict[str, str]:
    import onnx
    import torch

    return {"star_deploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__}


def source_records(model: StarTorchModel) -> dict[str, dict]:
    """Name, size and sha256 of each checkpoint the export came from."""
    records = {}
    for key, path in sorted(model.sources.items()):
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        records[key] = {"name": path.name, "bytes": size, "sha256": sha256_tree(path)}
    return records


def export_artifacts(
    model: StarTorchModel,
    out: Path,
    precision: str = "fp32",
    overwrite: bool = False,
    on_graph: Callable[[str], None] | None = None,
    external_bytes: int = EXTERNAL_DATA_BYTES,
    sampling: SamplingConfig | None = None,
) -> Path:
    """Export every graph of ``model`` into ``out``; the manifest is written last, then swapped in.

    ``sampling`` (cfg, top_k, top_p; default: the official ones) is recorded as the runtime's defaults.
    """
    with atomic_dir(out, overwrite) as tmp:
        specs = export_all(model, precision, tmp, on_graph, external_bytes)
        shutil.copytree(model.tokenizer_dir, tmp / TOKENIZER_DIR)
        save_tokenizer_json(model.tokenizer_dir, tmp / TOKENIZER_DIR / TOKENIZER_JSON)
        sources = source_records(model)
        data = manifest_dict(model.config, precision, specs, tmp, sources, tool_versions(), OPSET, sampling)
        write_text(tmp / MANIFEST, dumps(sealed(data, tmp)))
    return out
