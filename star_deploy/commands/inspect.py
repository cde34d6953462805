"""``star-deploy inspect``: what a checkpoint, release folder, artefact folder or engine is."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..artifacts.manifest import MANIFEST, file_problems, load_manifest, read_manifest
from ..artifacts.onnx_io import read_header
from ..core.extras import require_torch
from ..errors import ArtifactError, StarDeployError, WeightsError
from ..release.finder import RELEASE_LAYOUT, check_readable, resolution_from_name, resolve_release
from ..release.weight_shapes import infer_transformer_config, infer_vae_config, safetensors_shapes, text_config_fields
from .common import reports_errors

Info = dict[str, Any]


def _tensor_summary(sd: dict) -> Info:
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in sd.values()})
    return {"tensors": len(sd), "parameters": sum(t.numel() for t in sd.values()), "dtypes": ", ".join(dtypes)}


def read_tensors(path: Path) -> dict:
    """A checkpoint's flat state dict: shapes from a safetensors header (no torch), or a .pth loaded safely."""
    check_readable(path)
    if path.suffix.lower() == ".safetensors":
        return safetensors_shapes(path)[0]
    require_torch(f"inspecting {path.name}")
    from ..release.weights import read_state_file, star_state_dict

    raw = read_state_file(path)
    if isinstance(raw, dict) and "trainer" in raw:
        return star_state_dict(raw, path)
    return {k: v for k, v in raw.items() if hasattr(v, "numel")} if isinstance(raw, dict) else {}


def inspect_checkpoint(path: Path) -> Info:
    """Kind and inferred config of a .pth / .safetensors file."""
    sd = read_tensors(path)
    info: Info = {"kind": "unknown", "path": str(path), "bytes": path.stat().st_size, "format": path.suffix.lstrip(".")}
    if "encoder_proj.weight" in sd:
        info |= {"kind": "STAR transformer", "config": asdict(infer_transformer_config(sd, path))}
        if (named := resolution_from_name(path)) is not None:
            info["resolution (from name)"] = named
    elif "quantize.embedding.weight" in sd:
        info |= {"kind": "VQVAE", "config": asdict(infer_vae_config(sd, path))}
    elif "class_emb.weight" in sd:
        info["kind"] = "class-conditional VAR transformer (not usable by STAR)"
    return info | _tensor_summary(sd)


def inspect_release(folder: Path) -> Info:
    paths = resolve_release(folder, advice=f"{RELEASE_LAYOUT}; or inspect one file: star-deploy inspect FILE")
    return {
        "kind": "STAR release",
        "path": str(folder),
        "text_encoder": text_config_fields(paths.text_encoder),
        "vae": inspect_checkpoint(paths.vae),
        "star": inspect_checkpoint(paths.star),
    }


def inspect_artifacts(folder: Path) -> Info:
    try:
        manifest = load_manifest(folder)
    except ArtifactError as exc:
        return inspect_damaged_artifacts(folder, str(exc))
    graphs = {}
    for name, spec in manifest.graphs.items():
        graphs[name] = {
            "file": spec.file,
            "bytes": manifest.path(name).stat().st_size,
            "inputs": [f"{t.name} {t.dtype} {list(t.shape)}" for t in spec.inputs],
            "outputs": [f"{t.name} {t.dtype} {list(t.shape)}" for t in spec.outputs],
        }
    return {
        "kind": "artefact directory",
        "path": str(folder),
        "precision": manifest.precision,
        "opset": manifest.opset,
        "resolution": manifest.config.resolution,
        "schedule": list(manifest.config.patch_nums),
        "config": manifest.config.to_dict(),
        "graphs": graphs,
        "sources": manifest.sources,
        "tools": manifest.tools,
    }


def inspect_damaged_artifacts(folder: Path, error: str) -> Info:
    """What a readable manifest says of a folder whose files fail verification, and every problem found."""
    data = read_manifest(folder)
    problems = list(file_problems(folder, data["files"])) or [error]
    graphs = {}
    for name, entry in data["graphs"].items():
        path = folder / entry["file"]
        graphs[name] = {"file": entry["file"], "bytes": path.stat().st_size if path.is_file() else "missing"}
    return {
        "kind": "artefact directory (damaged: do not use; export again)",
        "path": str(folder),
        "problems": problems,
        "precision": data["precision"],
        "opset": data["opset"],
        "config": data["config"],
        "graphs": graphs,
        "sources": data["sources"],
        "tools": data["tools"],
    }


def inspect_engine(path: Path) -> Info:
    sidecar = path.with_suffix(".json")
    info: Info = {"kind": "TensorRT engine", "path": str(path), "bytes": path.stat().st_size}
    if sidecar.is_file():
        try:
            info["sidecar"] = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StarDeployError(f"{sidecar}: not valid JSON ({exc}); rebuild the engine") from None
    else:
        info["sidecar"] = "missing: the engine cannot be checked against this TensorRT and GPU"
    return info


def inspect_onnx(path: Path) -> Info:
    header = read_header(path)
    return {
        "kind": "ONNX graph",
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": max((v for d, v in header.opsets.items() if d in ("", "ai.onnx")), default=0),
        "inputs": [i.name for i in header.inputs],
        "outputs": [o.name for o in header.outputs],
    }


def describe(path: Path) -> Info:
    """Dispatch on what ``path`` is."""
    if not path.exists():
        raise StarDeployError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return inspect_artifacts(path)
        return inspect_release(path)
    if path.name == MANIFEST:
        return inspect_artifacts(path.parent)
    if path.suffix.lower() in (".pth", ".pt", ".safetensors", ".bin"):
        return inspect_checkpoint(path)
    if path.suffix in (".plan", ".engine"):
        return inspect_engine(path)
    if path.suffix == ".onnx":
        return inspect_onnx(path)
    raise WeightsError(f"{path}: unknown kind of file; inspect takes .pth, .safetensors, .onnx, .plan or a folder")


def _flatten(data: Info, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.")
        elif isinstance(value, list) and value and isinstance(value[0], str) and len(value) > 3:
            rows += [(name if i == 0 else "", item) for i, item in enumerate(value)]
        else:
            rows.append((name, str(value)))
    return rows


def render(info: Info) -> None:
    table = Table(title=f"{info['kind']}: {info['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in _flatten({k: v for k, v in info.items() if k not in ("kind", "path")}):
        table.add_row(key, value)
    Console(width=160).print(table)


def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            help="A .pth/.safetensors checkpoint, a release folder, an artefact folder, an .onnx or a .plan."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")] = False,
) -> None:
    """Show what PATH is: the model config inferred from its tensors, or its manifest."""
    info = describe(path)
    for problem in info.get("problems", []):
        typer.secho(f"warning: {problem}", err=True, fg=typer.colors.YELLOW)
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        render(info)


command = reports_errors(inspect)
