"""The built-in demo STAR draws what it is told, on colour/shape/background combinations it never saw.

Backends are a parameter: a new runtime joins by adding its name to ``BACKENDS`` and a case
to ``make_backend``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from star_deploy.artifacts.manifest import load_manifest
from star_deploy.backends.ort_backend import OrtBackend
from star_deploy.backends.torch_backend import TorchBackend
from star_deploy.cli import app
from star_deploy.core.config import SCHEDULES, SamplingConfig
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.demo import DEMO_GRAPHS, DEMO_RESOLUTION, DEMO_WEIGHTS
from star_deploy.export.artifacts import export_artifacts
from star_deploy.export.quantize import quantize_artifacts
from star_deploy.release.finder import resolve_release
from star_deploy.release.weights import (
    StarTorchModel,
    load_release,
    read_state_file,
    star_state_dict,
    vae_state_dict,
)
from star_deploy.runtime.pipeline import ScaleLoop
from tools.demo_training.data import ALL_COMBOS, HELD_OUT, TRAIN_COMBOS, make_scenes, render_batch
from tools.demo_training.evaluate import read_image
from tools.demo_training.train import held_out_prompts, load_vae, main
from tools.demo_training.vq import quant_tables, quantize

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh tests)")
BACKENDS = [
    "torch",
    "onnxruntime-fp32",
    "onnxruntime-fp16",
    "onnxruntime-int8",
    pytest.param("torch-cuda-fp16", marks=NEEDS_CUDA),
    pytest.param("torch-cuda-graphs-fp16", marks=NEEDS_CUDA),
]
SEEDS_PER_COMBO = 2
MIN_COLOUR_RATE = 0.9
MIN_SHAPE_RATE = 0.75
SAMPLING = SamplingConfig()
"""The official sampler defaults, which `star-deploy run` uses too."""


def load_demo() -> StarTorchModel:
    return load_release(resolve_release(weights=DEMO_WEIGHTS), DEMO_RESOLUTION)


@pytest.fixture(scope="module")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's shipped fp32 export (the same as a fresh one: `star-deploy check` below exports
    and checks one), the demo exported in fp16, and the fp32 graphs quantized to int8."""
    root = tmp_path_factory.mktemp("demo")
    return {
        "fp32": DEMO_GRAPHS,
        "fp16": export_artifacts(load_demo(), root / "fp16", "fp16"),
        "int8": quantize_artifacts(DEMO_GRAPHS, root / "int8"),
    }


def make_pipeline(name: str, artifacts: dict[str, Path]) -> ScaleLoop:
    """A pipeline of the named backend over the demo model."""
    if name.startswith("torch"):
        model = load_demo()
        device, dtype = ("cuda", torch.float16) if "cuda" in name else ("cpu", torch.float32)
        backend = TorchBackend(model, device, dtype, cuda_graphs="graphs" in name)
        return ScaleLoop(backend, PromptTokenizer(model.tokenizer_dir))
    manifest = load_manifest(artifacts[name.removeprefix("onnxruntime-")])
    return ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))


@pytest.fixture(scope="module", params=BACKENDS)
def pipeline(request: pytest.FixtureRequest) -> ScaleLoop:
    artifacts = request.getfixturevalue("demo_artifacts") if not request.param.startswith("torch") else {}
    return make_pipeline(request.param, artifacts)


@pytest.fixture(scope="module")
def held_out_readings(pipeline: ScaleLoop) -> list[tuple[tuple[bool, bool], str]]:
    """(colours right, shape right) and the prompt, for every held-out combination and seed."""
    cases = held_out_prompts(SEEDS_PER_COMBO)
    gen = pipeline.generate([p for p, _, _ in cases], SAMPLING, seeds=[s for _, _, s in cases])
    return [(read_image(img).matches(combo), prompt) for img, (prompt, combo, _) in zip(gen.images, cases)]


def test_held_out_split_is_fixed_and_disjoint() -> None:
    assert abs(len(HELD_OUT) / len(ALL_COMBOS) - 0.2) < 0.02
    assert not set(HELD_OUT) & set(TRAIN_COMBOS)
    assert set(HELD_OUT) | set(TRAIN_COMBOS) == set(ALL_COMBOS)
    scenes = make_scenes(500, seed=0)
    assert not {(s.colour, s.shape, s.background) for s in scenes} & set(HELD_OUT)


def test_demo_release_layout_and_size() -> None:
    paths = resolve_release(weights=DEMO_WEIGHTS)
    assert (paths.tokenizer / "vocab.json").is_file()
    assert (paths.text_encoder / "model.safetensors").is_file()
    assert (paths.star.name, paths.vae.name) == ("star.safetensors", "vae.safetensors")
    star = star_state_dict(read_state_file(paths.star), paths.star)
    vae = vae_state_dict(read_state_file(paths.vae), paths.vae)
    assert {t.dtype for t in (*star.values(), *vae.values())} == {torch.float16}
    total = sum(f.stat().st_size for f in DEMO_WEIGHTS.rglob("*") if f.is_file())
    assert total < 20 * 2**20


def test_held_out_colours(held_out_readings: list) -> None:
    rate = np.mean([ok[0] for ok, _ in held_out_readings])
    wrong = [p for ok, p in held_out_readings if not ok[0]]
    assert rate >= MIN_COLOUR_RATE, f"colours right in {rate:.0%}; wrong: {wrong[:8]}"


def test_held_out_shapes(held_out_readings: list) -> None:
    rate = np.mean([ok[1] for ok, _ in held_out_readings])
    wrong = [p for ok, p in held_out_readings if not ok[1]]
    assert rate >= MIN_SHAPE_RATE, f"shapes right in {rate:.0%}; wrong: {wrong[:8]}"


def test_generation_is_deterministic(pipeline: ScaleLoop) -> None:
    prompts = ["a red circle on a blue background", "a small yellow triangle in the top left on black"]
    first = pipeline.generate(prompts, SAMPLING, seeds=[3, 4])
    second = pipeline.generate(prompts[::-1], SAMPLING, seeds=[4, 3])
    assert np.array_equal(first.tokens, second.tokens[::-1])
    assert np.allclose(first.images, second.images[::-1], atol=1e-5)


def test_training_quantizer_matches_inference_update() -> None:
    """Tokens from the training quantizer, replayed through the scale loop, decode to the same image."""
    pipeline = make_pipeline("torch", {})
    vae = load_vae(resolve_release(weights=DEMO_WEIGHTS).vae)
    images = torch.from_numpy(render_batch(make_scenes(2, seed=1, combos=HELD_OUT)))
    with torch.no_grad():
        q = quantize(vae, vae.features(images), quant_tables(SCHEDULES[DEMO_RESOLUTION]))
        expected = vae.decode(q.f_hat)
    tokens = torch.cat(q.tokens, dim=1)
    gen = pipeline.generate(["", ""], SAMPLING, seeds=[0, 1], teacher_tokens=tokens.numpy())
    assert np.allclose(gen.images, expected.numpy(), atol=1e-4)


def test_training_script_smoke(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    """Both stages run, their losses are finite, the record is saved, and the release written is the quick spec's."""
    record = main(["--out", str(out), "--quick", "--threads", str(torch.get_num_threads())])
    losses = [v for stage in ("vae", "star") for v in record["final_losses"][stage].values()]
    assert losses and all(np.isfinite(v) and v >= 0 for v in losses), record["final_losses"]
    assert record["final_losses"]["star"]["ce"] > 0
    assert json.loads((out / "training.json").read_text()) == record
    model = load_release(resolve_release(weights=out), DEMO_RESOLUTION)
    spec = record["spec"]
    transformer = model.config.transformer
    assert (transformer.depth, transformer.width, transformer.heads) == (spec["depth"], spec["width"], spec["heads"])
    pipe = ScaleLoop(TorchBackend(model), PromptTokenizer(model.tokenizer_dir))
    gen = pipe.generate(["a red circle on a blue background"], SAMPLING, seeds=[0])
    assert gen.images.shape == (1, 3, DEMO_RESOLUTION, DEMO_RESOLUTION)
    assert np.isfinite(gen.images).all()


def test_check_without_arguments_checks_the_demo_graphs() -> None:
    """`star-deploy check` with no folder exports the demo (fp32 and fp16) and checks every graph."""
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert "built-in demo model, fp32:" in result.output and "built-in demo model, fp16:" in result.output
    assert result.output.count(" ok\n") == 12  # six graphs (the pruned step included) in each precision
