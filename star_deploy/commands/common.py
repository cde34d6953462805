"""Options and helpers shared by the commands: weight selection, logging, error reporting."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..core.extras import missing_extra
from ..errors import ConfigError, StarDeployError
from ..files.signals import Interrupted, signals_as_interrupts

if TYPE_CHECKING:
    from rich.progress import Progress


log = logging.getLogger("star_deploy")

WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Folder of the STAR release (CLIP/, vae*.pth, star*.pth). Default: the built-in demo STAR (128 px, "
        "trained on coloured shapes: 'a red circle on a blue background').",
    ),
]
ClipOpt = Annotated[
    Path | None, typer.Option("--clip", help="The release's CLIP folder (tokenizer/ and text_encoder/).")
]
VaeOpt = Annotated[Path | None, typer.Option("--vae", help="VQVAE checkpoint, e.g. vae_ch160v4096z32.pth.")]
StarOpt = Annotated[Path | None, typer.Option("--star", help="STAR checkpoint, e.g. star_rope_d30_512*.pth.")]
ResolutionOpt = Annotated[
    int | None,
    typer.Option(
        "--resolution", help="Output size the checkpoint was trained for: 256, 512 or 1024 (128 for the demo)."
    ),
]
ArtifactsAlias = Annotated[
    Path | None,
    typer.Option("--artifacts", help="The artefact folder, as run, parity and bench take it (instead of DIR)."),
]


def artifacts_folder(positional: Path | None, option: Path | None, required: bool = True) -> Path | None:
    """The artefact folder given as DIR or as --artifacts (one of the two)."""
    if positional is not None and option is not None and positional != option:
        raise ConfigError(f"two artefact folders given: DIR {positional} and --artifacts {option}; give one")
    folder = positional if positional is not None else option
    if folder is None and required:
        raise ConfigError("no artefact folder given: pass DIR (or --artifacts DIR), a folder from `star-deploy export`")
    return folder


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
SamplerOpt = Annotated[
    str,
    typer.Option(
        help="portable: a seed gives the same tokens on every backend and device; official: the official code's "
        "torch.Generator draws (CPU: the official images)."
    ),
]
FastOpt = Annotated[
    int,
    typer.Option(
        "--fast",
        help="Fast mode: 0 exact (default); 1 guidance stops after the model's preset scale; 2 also prunes tokens at "
        "the last scales. Images of levels 1 and 2 are approximations, recorded as such.",
    ),
]
CfgUntilOpt = Annotated[
    int | None,
    typer.Option("--cfg-until", help="Fast modes: guidance on the first K scales only (implies --fast 1)."),
]
KeepOpt = Annotated[
    str | None,
    typer.Option(
        "--keep", help="Fast modes: share of tokens run at each of the last scales, e.g. 0.5,0.25 (implies --fast 2)."
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def help_text(doc: str | None) -> str | None:
    """A docstring as --help text: each paragraph on one line for the terminal to wrap (``\\b`` paragraphs kept)."""
    if doc is None:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def reports_errors(func: F) -> F:
    """Errors as one line (StarDeployError, missing extra: exit 2; Ctrl-C, SIGTERM: 130, 143; else exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals_as_interrupts():
                return func(*args, **kwargs)
        except StarDeployError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            name = f" ({exc.args[0]})" if isinstance(exc, Interrupted) else ""
            typer.secho(f"interrupted; no partial output was left behind{name}", err=True)
            raise typer.Exit(exc.exit_code if isinstance(exc, Interrupted) else 130) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            log.debug("unexpected error", exc_info=True)
            extra = missing_extra(exc, f"star-deploy {func.__name__.replace('_', '-')}")
            if extra is not None:
                typer.secho(f"error: {extra}", err=True, fg=typer.colors.RED)
                raise typer.Exit(2) from None
            typer.secho(
                f"error: unexpected {type(exc).__name__}: {str(exc)[:200]}; rerun with -v for details and report it",
                err=True,
                fg=typer.colors.RED,
            )
            raise typer.Exit(1) from None

    wrapper.__doc__ = help_text(func.__doc__)
    return wrapper  # type: ignore[return-value]


def check_threads(threads: int) -> None:
    """Refuse a thread count below 0 or above this machine's CPU count."""
    cpus = os.cpu_count() or 1
    if not 0 <= threads <= cpus:
        raise ConfigError(f"--threads {threads}: choose 0 (one per physical core) to {cpus} (the CPU count)")


def progress_bar() -> AbstractContextManager[Progress]:
    """A transient bar on stderr, shown only on a terminal (logs and pipes get none)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    return Progress(*columns, transient=True, console=console, disable=not console.is_terminal)
