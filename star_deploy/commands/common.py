"""Options and helpers shared by the commands: weight selection, logging, error reporting."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..errors import StarDeployError
from ..weights import ReleasePaths, StarModel, load_release, resolve_release

log = logging.getLogger("star_deploy")
DEMO_WEIGHTS = Path(__file__).resolve().parent.parent / "demo" / "weights"
DEMO_RESOLUTION = 128

WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Folder of the STAR release (CLIP/, vae*.pth, star*.pth). Default: the built-in demo model."),
]
ClipOpt = Annotated[Path | None, typer.Option("--clip", help="The release's CLIP folder (tokenizer/ and text_encoder/).")]
VaeOpt = Annotated[Path | None, typer.Option("--vae", help="VQVAE checkpoint, e.g. vae_ch160v4096z32.pth.")]
StarOpt = Annotated[Path | None, typer.Option("--star", help="STAR checkpoint, e.g. star_rope_d30_512*.pth.")]
ResolutionOpt = Annotated[
    int | None,
    typer.Option("--resolution", help="Output size the checkpoint was trained for: 256, 512 or 1024 (128 for the demo)."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Turn StarDeployError (and Ctrl-C) into one line on stderr and exit code 2 (130)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StarDeployError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted; no partial output was left behind", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def release_paths(weights: Path | None, clip: Path | None, vae: Path | None, star: Path | None) -> ReleasePaths:
    """The user's release, or the built-in demo model when no weight option is given."""
    if weights is None and clip is None and vae is None and star is None:
        weights = DEMO_WEIGHTS
        if not weights.is_dir():
            raise StarDeployError(f"{weights}: the built-in demo weights are missing; reinstall star-deploy or pass --weights")
    return resolve_release(weights, clip, vae, star)


def load_model(
    weights: Path | None, clip: Path | None, vae: Path | None, star: Path | None, resolution: int | None
) -> StarModel:
    """Load the selected release; the resolution is required for anything but the demo."""
    paths = release_paths(weights, clip, vae, star)
    if resolution is None:
        if paths.star.parent != DEMO_WEIGHTS:
            raise StarDeployError(
                "--resolution is required with your own weights (256 and 512 checkpoints both have 10 scales)"
            )
        resolution = DEMO_RESOLUTION
    log.info("loading %s", paths.star)
    return load_release(paths, resolution)
