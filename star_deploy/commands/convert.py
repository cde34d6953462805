"""``star-deploy convert``: official .pth checkpoints -> safetensors, so nothing loads pickles again."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..artifacts.manifest import sha256_file
from ..core.extras import require
from ..errors import OutputError, WeightsError
from ..files.atomic import atomic_dir, atomic_file, check_separate, check_writable
from ..release.finder import RELEASE_LAYOUT, resolve_release
from .common import OverwriteOpt, reports_errors

if TYPE_CHECKING:
    from ..release.weights import StateDict

log = logging.getLogger("star_deploy")

ONE_AT_A_TIME = f"{RELEASE_LAYOUT}; or convert one file: star-deploy convert FILE --out NAME.safetensors"


def checkpoint_tensors(path: Path) -> tuple[str, StateDict]:
    """(kind, flat state dict) of a STAR or VQVAE checkpoint, validated like `run` validates it."""
    from ..release.weights import check_tensor_values, read_state_file, star_state_dict, vae_state_dict

    raw = read_state_file(path)
    if isinstance(raw, dict) and ("trainer" in raw or "encoder_proj.weight" in raw):
        kind, sd = "star", star_state_dict(raw, path)
    else:
        kind, sd = "vae", vae_state_dict(raw, path)
    check_tensor_values(sd, None, path)
    return kind, sd


def _unshared(sd: StateDict) -> StateDict:
    """Contiguous tensors; a tensor whose storage another already uses is cloned (safetensors forbids sharing)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in sd.items():
        tensor = tensor.contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen and tensor.numel() else tensor
        seen.add(ptr)
    return out


def convert_file(src: Path, dst: Path, overwrite: bool = False) -> Path:
    """Write ``src``'s tensors to ``dst`` (.safetensors) atomically, with the source hash as metadata."""
    from safetensors.torch import save_file

    kind, sd = checkpoint_tensors(src)
    meta = {"format": "pt", "kind": kind, "source": src.name, "source_sha256": sha256_file(src)}
    with atomic_file(dst, overwrite) as tmp:
        save_file(_unshared(sd), str(tmp), metadata=meta)
        tmp.chmod(0o644)
    log.info("%s -> %s (%d tensors)", src.name, dst.name, len(sd))
    return dst


def convert_release(src: Path, dst: Path, overwrite: bool) -> Path:
    """A release folder whose checkpoints are safetensors; CLIP/ is copied. Appears only when complete."""
    paths = resolve_release(src, advice=ONE_AT_A_TIME)
    with atomic_dir(dst, overwrite) as tmp:
        shutil.copytree(paths.clip, tmp / "CLIP")
        for ckpt in (paths.vae, paths.star):
            target = tmp / f"{ckpt.stem}.safetensors"
            if ckpt.suffix.lower() == ".safetensors":
                shutil.copy2(ckpt, target)
            else:
                convert_file(ckpt, target)
    return dst


def convert(
    src: Annotated[
        Path, typer.Argument(help="A star*/vae* .pth checkpoint, or a release folder (CLIP/, vae*.pth, star*.pth).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The .safetensors file, or the folder to create for a release.")
    ],
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert official .pth checkpoints to safetensors (same tensors, no pickle); `--weights` accepts the result."""
    if not src.exists():
        raise WeightsError(f"{src}: no such file or folder; check the path")
    check_separate([out], [src])
    for module in ("torch", "safetensors"):
        require(module, "star-deploy convert")
    if src.is_dir():
        convert_release(src, out, overwrite)
    else:
        if out.suffix.lower() != ".safetensors":
            raise OutputError(f"--out {out}: give a .safetensors file name for a single checkpoint")
        check_writable(out, overwrite)
        convert_file(src, out, overwrite)
    typer.echo(str(out))


command = reports_errors(convert)
