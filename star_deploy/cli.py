"""The ``star-deploy`` command line."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Annotated

import typer
from rich.logging import RichHandler

from .commands import bench, build_engine, check, convert, export, inspect, parity, quantize, run
from .commands import bench_serve, serve

app = typer.Typer(
    help="Deploy the STAR text-to-image model: export to ONNX, build TensorRT engines, generate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False, show_time=False)])
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for name in ("torch.onnx", "onnxscript", "onnx_ir", "transformers", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)


app.command("run")(run.command)
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


if __name__ == "__main__":
    app()
