"""Render a benchmark report (runner.build_report's dict) as a table and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..files.atomic import write_text


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fidelity_text(f: dict) -> str:
    if not f:
        return "reference"
    psnr = f["image_psnr_db"]
    psnr_text = "inf" if psnr is None or math.isinf(psnr) else f"{psnr:.1f}"
    equal = "tokens equal" if f.get("tokens_equal_fp32") else "tokens differ"
    return f"{100 * f['teacher_forced_token_agreement']:.2f}% TF, {psnr_text} dB, {equal}"


def summary_table(report: dict) -> Table:
    """One row per backend: median, p90, images/s, vs baseline, vs floor, memory, fidelity."""
    machine = report["machine"]
    on_cpu = report["settings"]["device"] == "cpu"
    isa = f"; CPU flags: {' '.join(machine.get('cpu_flags') or ['none'])}" if on_cpu else ""
    table = Table(title=f"star-deploy bench (floor {report['floor_s']:.2f} s fp32{isa})")
    for col in (
        "backend",
        "dtype",
        "isa",
        "median s",
        "p90 s",
        "img/s",
        "vs baseline",
        "vs floor",
        "peak GiB",
        "fidelity vs fp32",
    ):
        table.add_column(col, justify="left" if col in ("backend", "dtype", "isa", "fidelity vs fp32") else "right")
    for name, e in report["backends"].items():
        if "skipped" in e:
            table.add_row(name, "", "", "", "", "", "", "", "", f"skipped: {e['skipped']}")
            continue
        table.add_row(
            name,
            e["compute_dtype"],
            e.get("isa", ""),
            f"{e['median_s']:.2f}",
            f"{e['p90_s']:.2f}",
            f"{e['images_per_s']:.3f}",
            ratio(e["vs_baseline"]),
            ratio(e["vs_floor"]),
            gib(e["peak_mem_bytes"]),
            fidelity_text(e["fidelity"]),
        )
    return table


def stages_table(report: dict) -> Table:
    """Median seconds per stage and per scale step."""
    table = Table(title="stage breakdown (median s)")
    for col in ("backend", "text", "steps (per scale)", "steps", "sampling", "update", "decode"):
        table.add_column(col, justify="left" if col in ("backend", "steps (per scale)") else "right")
    for name, e in report["backends"].items():
        if "stages" not in e:
            continue
        s = e["stages"]
        per_scale = " ".join(f"{t:.2f}" for t in s["steps"])
        table.add_row(
            name,
            f"{s['text']:.2f}",
            per_scale,
            f"{sum(s['steps']):.2f}",
            f"{s['sampling']:.2f}",
            f"{s['update']:.2f}",
            f"{s['decode']:.2f}",
        )
    return table


LOG_WIDTH = 160
"""Columns when the output is not a terminal (a log file), so names and figures stay whole."""


def print_report(report: dict, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=LOG_WIDTH)
    console.print(summary_table(report))
    console.print(stages_table(report))


def write_json(report: dict, path: Path) -> None:
    """Write the report atomically; infinities (identical images) become null."""
    write_text(path, json.dumps(finite(report), indent=2, default=str, allow_nan=False) + "\n", overwrite=True)


def finite(o):
    """``o`` with non-finite floats replaced by None (JSON has no infinity)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o
