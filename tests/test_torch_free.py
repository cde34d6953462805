"""The base install: ONNX Runtime, numpy, tokenizers and Pillow run an export, and the demo, without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN

from star_deploy.core.config import SamplingConfig
from star_deploy.demo import DEMO_GRAPHS, DEMO_WEIGHTS
from star_deploy.files.images import read_png
from tools.demo_training.evaluate import Reading, read_image

BLOCK_TORCH = (
    "import sys; sys.modules.update(torch=None, transformers=None, onnx=None, onnxscript=None, safetensors=None)"
)
"""Run first in the subprocess: any import of these raises ImportError, as on an install without them."""

ROOT = Path(__file__).resolve().parents[1]


def run_without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = BLOCK_TORCH + "\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_readme_command_runs_the_demo_without_torch(tmp_path):
    """`star-deploy run PROMPT -o circle.png` on the base install: ONNX Runtime on the shipped demo graphs."""
    result = run_without_torch(
        """
        sys.argv = ["star-deploy", "run", "a red circle on a blue background", "-o", "circle.png"]
        from star_deploy.cli import entry
        entry()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "circle.png", "only results go to stdout"
    pixels, text = read_png(tmp_path / "circle.png")
    assert text["backend"] == "onnxruntime" and text["sampler"] == "portable"
    assert read_image(pixels.astype(np.float32) / 255) == Reading("red", "circle", "blue")


def test_torch_tensors_are_refused_before_generating_without_torch(tmp_path):
    result = run_without_torch(
        """
        from star_deploy import StarPipeline
        from star_deploy.errors import BackendUnavailableError
        pipe = StarPipeline.from_pretrained()
        scales = []
        try:
            pipe("a red circle", output_type="pt", callback_on_scale_end=scales.append)
        except BackendUnavailableError as exc:
            print(exc, len(scales))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected = (
        "output_type='pt' needs PyTorch: pip install 'star-deploy[torch]' (the base install runs exported graphs "
        "with --backend onnxruntime) 0"
    )
    assert result.stdout.strip() == expected


def test_python_api_without_torch(tmp_path):
    result = run_without_torch(
        """
        from star_deploy import StarPipeline
        pipe = StarPipeline.from_pretrained()
        out = pipe(["a green square on a white background", "a blue triangle"], seed=3)
        out.images[0].save("square.png")
        print(pipe.backend_name, len(out.images), out.images[0].size)
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnxruntime", "2", "(128,", "128)"]


def test_help_and_version_without_torch(tmp_path):
    result = run_without_torch(
        """
        sys.argv = ["star-deploy", "--help"]
        from star_deploy.cli import entry
        try:
            entry()
        except SystemExit as exc:
            assert exc.code == 0
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "export" in result.stdout and "run" in result.stdout


def test_torch_only_work_says_how_to_get_torch(tmp_path):
    result = run_without_torch(
        """
        sys.argv = ["star-deploy", "run", "a dog", "--backend", "torch", "-o", "dog.png"]
        from star_deploy.cli import entry
        entry()
        """,
        tmp_path,
    )
    assert result.returncode == 2
    assert "pip install 'star-deploy[torch]'" in result.stderr
    assert not (tmp_path / "dog.png").exists()


def test_shipped_demo_graphs_are_the_demo_weights():
    """The ONNX demo (base install) and the PyTorch demo draw the same tokens for a seed."""
    from star_deploy import StarPipeline

    prompts = ["a red circle on a blue background", "a small green triangle in the top left on a white background"]
    onnx = StarPipeline.from_pretrained(DEMO_GRAPHS)
    ref = StarPipeline.from_pretrained(DEMO_WEIGHTS, backend="torch")
    a, b = onnx(prompts, seed=7, output_type="np"), ref(prompts, seed=7, output_type="np")
    assert np.array_equal(a.tokens, b.tokens)
    assert np.abs(a.images - b.images).max() <= 1e-4
    manifest = json.loads((DEMO_GRAPHS / "manifest.json").read_text())
    assert manifest["precision"] == "fp32"


def test_default_sampler_is_portable():
    assert SamplingConfig().sampler == "portable"


def test_serve_replica_without_torch(tmp_path):
    """The serve extra on the base install: the application imports, and a replica's model serves the demo."""
    pytest.importorskip("ray.serve", reason="needs the serve extra: pip install 'star-deploy[serve]'")
    result = run_without_torch(
        """
        import star_deploy.serve.app
        from star_deploy.serve.model import ImageModel, Job
        from star_deploy.serve.options import ServeOptions
        model = ImageModel(ServeOptions().model_spec())
        image = model.generate([Job("a red circle on a blue background", seed=1)])[0]
        print(model.info()["backend"], *image.shape)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnxruntime", "128", "128", "3"]


# (id, arguments, exit code, what stdout (exit 0) or stderr (exit 2) holds); {out} = a fresh output folder
COMMANDS = [
    ("inspect-demo-weights", ["inspect", str(DEMO_WEIGHTS), "--json"], 0, '"kind": "STAR release"'),
    ("inspect-safetensors", ["inspect", str(DEMO_WEIGHTS / "star.safetensors"), "--json"], 0, '"depth": 4'),
    ("inspect-onnx", ["inspect", str(DEMO_GRAPHS / "vq_decoder.onnx"), "--json"], 0, '"outputs": [\n    "image"'),
    ("inspect-artifacts", ["inspect", str(DEMO_GRAPHS), "--json"], 0, '"kind": "artefact directory"'),
    ("inspect-pth", ["inspect", str(GOLDEN / "star.pth")], 2, "inspecting star.pth needs PyTorch"),
    ("quantize", ["quantize", str(DEMO_GRAPHS), "--out", "{out}/q"], 2, "star-deploy quantize needs the onnx package"),
    ("convert", ["convert", str(GOLDEN / "star.pth"), "--out", "{out}/s.safetensors"], 2, "convert needs PyTorch"),
    ("convert-release", ["convert", str(GOLDEN), "--out", "{out}/r"], 2, "star-deploy convert needs PyTorch"),
    ("check", ["check", str(DEMO_GRAPHS)], 2, "star-deploy check needs the onnx package"),
    ("export", ["export", "--out", "{out}/e"], 2, "star-deploy export needs PyTorch"),
    ("build-engine", ["build-engine", str(DEMO_GRAPHS)], 2, "star-deploy build-engine needs"),
]


@pytest.fixture(scope="module")
def commands_without_torch(tmp_path_factory) -> tuple[dict, Path]:
    """Every row of COMMANDS run once, in one subprocess without torch: {id: [exit code, stdout, stderr]}."""
    out = tmp_path_factory.mktemp("torch_free_out")
    cases = {c[0]: [a.format(out=out) for a in c[1]] for c in COMMANDS}
    result = run_without_torch(
        f"""
        import json
        from typer.testing import CliRunner
        from star_deploy.cli import app
        results = {{}}
        for name, args in {cases!r}.items():
            r = CliRunner().invoke(app, args)
            results[name] = [r.exit_code, r.stdout, r.stderr]
        print(json.dumps(results))
        """,
        out,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out


@pytest.mark.parametrize(("code", "fragment"), [c[2:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_commands_without_torch_work_or_name_the_extra(code, fragment, commands_without_torch, request):
    results, out = commands_without_torch
    exit_code, stdout, stderr = results[request.node.callspec.id]
    assert exit_code == code, stderr
    if code == 0:
        assert fragment in stdout and "warning" not in stderr, stderr
    else:
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert fragment in stderr and "pip install 'star-deploy[" in stderr and "unexpected" not in stderr
    assert list(out.iterdir()) == [], "an output was left behind"
