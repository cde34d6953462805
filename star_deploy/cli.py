"""The ``star-deploy`` command line (also ``python -m star_deploy``).

Results go to stdout; logs, progress bars and timing tables go to stderr. Command modules
import their heavy dependencies (torch, onnx, TensorRT) inside the commands, so ``--help``
and the ONNX Runtime path start without them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from .commands import (
    batch,
    bench,
    bench_serve,
    build_engine,
    check,
    convert,
    export,
    inspect,
    parity,
    quantize,
    run,
    serve,
    web,
)
from .version import __version__

VERBOSITY_FLAGS = ("-v", "--verbose", "-q", "--quiet")

MAY_BE_EMPTY = {"prompts", "prompt"}
"""Parameters whose empty value means something: the empty prompt is STAR's unconditional prompt."""


def empty_values(ctx: click.Context, command: click.Command, args: list[str]) -> list[str]:
    """The options and arguments of ``command`` given as "" in ``args`` (pathlib reads "" as the current folder)."""
    sub = click.Context(command, parent=ctx, info_name=command.name, resilient_parsing=True)
    try:
        given, _, _ = command.make_parser(sub).parse_args(list(args))
    except click.ClickException:
        return []  # click reports a malformed command line itself
    flags = {p.name: (p.opts[0] if p.opts and p.opts[0].startswith("-") else p.name.upper()) for p in command.params}
    return [
        flags.get(key, key)
        for key, value in given.items()
        if key not in MAY_BE_EMPTY and "" in (value if isinstance(value, list | tuple) else [value])
    ]


class StarGroup(TyperGroup):
    """The command group; notes the empty values of the invoked command's parameters for ``main`` to refuse."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            ctx.meta["empty_values"] = empty_values(ctx, command, rest)
        return name, command, rest


app = typer.Typer(
    cls=StarGroup,
    help="Deploy the STAR text-to-image model: export to ONNX, build TensorRT engines, generate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Rich log lines on stderr; third-party chatter hidden unless verbose."""
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    logging.getLogger("star_deploy").setLevel(level)
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for name in ("torch.onnx", "onnxscript", "onnx_ir", "transformers", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"star-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show debug messages (also accepted after the command).")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show warnings and errors only (also accepted after the command).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    configure_logging(verbose, quiet)
    empty = ctx.meta.get("empty_values")
    if empty:
        typer.echo(f"error: {', '.join(empty)}: empty; give a value", err=True)
        raise typer.Exit(2)


app.command("run")(run.command)
app.command("batch")(batch.command)
app.command("export")(export.command)
app.command("build-engine")(build_engine.command)
app.command("bench")(bench.command)
app.command("parity")(parity.command)
app.command("check")(check.command)
app.command("quantize")(quantize.command)
app.command("inspect")(inspect.command)
app.command("convert")(convert.command)
app.command("serve")(serve.command)
app.command("bench-serve")(bench_serve.command)
app.command("web")(web.command)


def hoist_verbosity(argv: list[str]) -> list[str]:
    """Move -v/-q given after the command name to the front, where the app reads them ('--' ends options)."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in VERBOSITY_FLAGS]
    rest = [a for i, a in enumerate(argv) if i >= end or a not in VERBOSITY_FLAGS]
    return flags + rest


def entry() -> None:
    """Console-script entry point."""
    app(args=hoist_verbosity(sys.argv[1:]), prog_name="star-deploy")


if __name__ == "__main__":
    entry()
