"""Command-line conventions and ONNX Runtime session handling: streams, flags, version, the optimized-graph cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import typer
from typer.testing import CliRunner

from star_deploy import __version__
from star_deploy.artifacts.manifest import load_manifest
from star_deploy.backends.ort_backend import OrtBackend
from star_deploy.backends.ort_cache import CACHE_DIR, cache_folder
from star_deploy.cli import app, hoist_verbosity
from star_deploy.core.config import SamplingConfig
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.runtime.pipeline import ScaleLoop

ROOT = Path(__file__).resolve().parents[1]


def module_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "star_deploy", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"star-deploy {__version__}"


def test_verbosity_flags_move_before_the_command():
    assert hoist_verbosity(["run", "a", "-q", "-o", "x.png"]) == ["-q", "run", "a", "-o", "x.png"]
    assert hoist_verbosity(["run", "--", "-q"]) == ["run", "--", "-q"]


def test_python_m_runs_the_cli_with_results_on_stdout_and_logs_on_stderr(tmp_path):
    """`python -m star_deploy run ... -v`: stdout holds the PNG's path alone; timings and logs go to stderr."""
    result = module_cli("run", "a red circle on a blue background", "-o", "c.png", "-v", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "c.png\n"
    assert "timings" in result.stderr and (tmp_path / "c.png").is_file()


def test_quiet_after_the_command_hides_the_timings(tmp_path):
    result = module_cli("run", "a red circle on a blue background", "-o", "c.png", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "c.png\n" and "timings" not in result.stderr


def test_onnxruntime_caches_optimized_graphs_and_drops_damaged_ones(artifacts_fp32, tmp_path):
    import shutil

    folder = tmp_path / "art"
    shutil.copytree(artifacts_fp32, folder, ignore=shutil.ignore_patterns(CACHE_DIR))
    sampling = SamplingConfig(cfg=4.0, top_k=50, top_p=0.8)

    def generate() -> np.ndarray:
        manifest = load_manifest(folder)
        return (
            ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
            .generate(["a red car."], sampling, [1])
            .tokens
        )

    first = generate()
    cached = sorted((folder / CACHE_DIR).glob("*.onnx"))
    assert len(cached) == 5 and all(p.name.startswith(p.name.split(".")[0] + ".cpu.ort") for p in cached)
    step = next(p for p in cached if p.name.startswith("transformer_step."))
    step.write_bytes(step.read_bytes()[:100])
    assert np.array_equal(generate(), first)
    again = sorted((folder / CACHE_DIR).glob("*.onnx"))
    assert len(again) == 5 and step.stat().st_size > 100, "the damaged file was not replaced by a whole one"
    assert np.array_equal(generate(), first)


def test_shipped_and_unwritable_graphs_are_cached_in_the_user_cache(artifacts_fp32, tmp_path, monkeypatch):
    import shutil

    from star_deploy.demo import DEMO_GRAPHS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "star-deploy" / CACHE_DIR
    assert cache_folder(DEMO_GRAPHS) == user, "the demo inside the package must not get a cache folder there"
    folder = tmp_path / "art"
    shutil.copytree(artifacts_fp32, folder, ignore=shutil.ignore_patterns(CACHE_DIR))
    assert cache_folder(folder) == folder / CACHE_DIR
    blocked = tmp_path / "blocked"  # its cache folder cannot be made (a file holds the name), as when read-only
    shutil.copytree(artifacts_fp32, blocked, ignore=shutil.ignore_patterns(CACHE_DIR))
    (blocked / CACHE_DIR).write_text("")
    assert cache_folder(blocked) == user
    OrtBackend(load_manifest(blocked))
    assert len(list(user.glob("*.onnx"))) == 5


def test_unknown_provider_is_refused_clearly(artifacts_fp32, tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(
        app, ["run", "a", "--artifacts", str(artifacts_fp32), "--provider", "openvino", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "has no OpenVINOExecutionProvider" in result.output and not out.exists()


def test_artifact_folder_as_dir_or_as_the_artifacts_option(artifacts_fp32, tmp_path):
    """check, quantize and build-engine take DIR like before, or --artifacts like run, parity and bench."""
    runner = CliRunner()
    positional = runner.invoke(app, ["check", str(artifacts_fp32)])
    option = runner.invoke(app, ["check", "--artifacts", str(artifacts_fp32)])
    assert positional.exit_code == 0 and option.exit_code == 0 and positional.stdout == option.stdout
    both = runner.invoke(app, ["check", str(artifacts_fp32), "--artifacts", str(tmp_path)])
    assert both.exit_code == 2 and "two artefact folders given" in both.stderr
    for command in (["quantize", "--out", str(tmp_path / "q")], ["build-engine"]):
        none = runner.invoke(app, command)
        assert none.exit_code == 2 and "no artefact folder given" in none.stderr, none.output
    assert list(tmp_path.iterdir()) == []


def test_a_cache_made_on_another_kind_of_cpu_is_not_used(artifacts_fp32, tmp_path, monkeypatch):
    """Optimized graphs can hold kernels chosen for the CPU (NCHWc blocks by vector width): the key has its ISA."""
    import shutil

    from star_deploy.backends import ort_cache

    folder = tmp_path / "art"
    shutil.copytree(artifacts_fp32, folder, ignore=shutil.ignore_patterns(CACHE_DIR))
    OrtBackend(load_manifest(folder))
    here = sorted((folder / CACHE_DIR).glob("*.onnx"))
    monkeypatch.setattr(ort_cache, "cpu_flags", lambda: ["a-cpu-flag-no-cpu-has"])
    OrtBackend(load_manifest(folder))
    both = sorted((folder / CACHE_DIR).glob("*.onnx"))
    assert len(here) == 5 and len(both) == 10, "the other CPU's backend reused this CPU's optimized graphs"


BOX = "│╭╰"
NAME_INDENT = 8
"""Option, argument and command names start this close to a box's left edge; a help's second row far further."""


def help_lines(command: list[str]) -> list[str]:
    """``--help`` of ``command`` rendered 1000 columns wide: no paragraph or option help is long enough to wrap."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
    assert result.exit_code == 0, result.output
    return [line.rstrip() for line in result.stdout.splitlines()]


def test_help_has_no_hard_line_breaks_inside_a_paragraph():
    """Every paragraph of every command's help is one line at a width nothing wraps at: the terminal wraps it."""
    commands = [[]] + [[name] for name in typer.main.get_command(app).commands]
    assert len(commands) >= 12
    for command in commands:
        lines = help_lines(command)
        prose = [line for line in lines if not line.lstrip().startswith(tuple(BOX))]
        for above, below in zip(prose, prose[1:]):
            assert not (above.strip() and below.strip()), f"{command}: a paragraph breaks after {above.strip()!r}"
        rows = [line.split("│")[1] for line in lines if line.startswith("│")]
        assert rows, command
        for row in rows:  # a row whose name column is blank continues the help of the row above
            assert len(row) - len(row.lstrip()) <= NAME_INDENT, f"{command}: a help runs onto a second row: {row!r}"
