"""The Python API: from_pretrained on every kind of folder, call conventions, callbacks, output types."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN
from PIL import Image

from star_deploy import StarPipeline
from star_deploy.errors import ConfigError, WeightsError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def golden_pipe() -> StarPipeline:
    return StarPipeline.from_pretrained(GOLDEN, resolution=256)


def golden_kwargs(golden_sampling) -> dict:
    s = golden_sampling
    return {"guidance_scale": s.cfg, "top_k": s.top_k, "top_p": s.top_p, "sampler": s.sampler}


def test_api_reproduces_golden_image(golden_pipe, golden, golden_cases, golden_sampling):
    case = golden_cases[0]
    out = golden_pipe(case["prompt"], seed=case["seed"], output_type="np", **golden_kwargs(golden_sampling))
    expected = golden[f"{case['key']}/image"].transpose(0, 2, 3, 1)
    assert out.images.shape == expected.shape
    assert np.abs(out.images - expected).max() <= 1e-4


def test_str_prompt_is_one_prompt_and_pil_is_default(golden_pipe):
    out = golden_pipe("a red car.", seed=3)
    assert len(out.images) == 1 and isinstance(out.images[0], Image.Image)
    assert out.images[0].size == (256, 256) and out.seeds == [3]


def test_list_seeds_and_images_per_prompt(golden_pipe):
    out = golden_pipe(["a red car.", "a dog"], seed=5, num_images_per_prompt=2, output_type="np")
    assert out.images.shape[0] == 4 and out.seeds == [5, 6, 7, 8]
    again = golden_pipe(["a dog"], seed=[7], output_type="np")
    assert np.array_equal(again.tokens[0], out.tokens[2])
    assert np.abs(again.images[0] - out.images[2]).max() <= 1e-5


def test_callback_sees_every_scale_and_can_stop(golden_pipe):
    seen = []

    def stop_after_three(progress) -> bool:
        seen.append((progress.scale, progress.tokens.shape))
        return progress.scale < 2

    out = golden_pipe("a red car.", callback_on_scale_end=stop_after_three, output_type="np")
    assert seen == [(0, (1, 1, 1)), (1, (1, 2, 2)), (2, (1, 3, 3))]
    assert out.tokens.shape == (1, 1 + 4 + 9)
    full = golden_pipe("a red car.", output_type="np")
    assert np.abs(out.images - full.images).max() > 1e-3


def test_preview_of_the_last_scale_is_the_image(golden_pipe):
    previews = []
    out = golden_pipe("a red car.", callback_on_scale_end=lambda p: previews.append(p.preview("np")), output_type="np")
    assert len(previews) == golden_pipe.config.num_scales
    assert np.abs(previews[-1] - out.images).max() <= 1e-6


def test_torch_output_type(golden_pipe):
    import torch

    out = golden_pipe("a red car.", output_type="pt")
    assert isinstance(out.images, torch.Tensor) and tuple(out.images.shape) == (1, 3, 256, 256)


def test_artifact_folder_defaults_to_onnxruntime(artifacts_fp32, golden_pipe):
    pipe = StarPipeline.from_pretrained(artifacts_fp32)
    assert pipe.backend_name == "onnxruntime" and pipe.precision == "fp32"
    got = pipe("a red car.", seed=1, output_type="np").images
    want = golden_pipe("a red car.", seed=1, output_type="np").images
    assert np.abs(got - want).max() <= 1e-4


def test_hub_cache_folder_resolves_its_snapshot(tmp_path, golden_pipe):
    repo = tmp_path / "models--taocrayon--STAR"
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc\n")
    for item in GOLDEN.iterdir():
        if item.name in ("CLIP", "star.pth", "vae.pth"):
            (snap / item.name).symlink_to(item)
    pipe = StarPipeline.from_pretrained(repo, resolution=256)
    a = pipe("a red car.", seed=2, output_type="np").images
    b = golden_pipe("a red car.", seed=2, output_type="np").images
    assert np.abs(a - b).max() <= 1e-6


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p(123), "prompt must be a str"),
        (lambda p: p([]), "prompt must be a str"),
        (lambda p: p("x", output_type="jpeg"), "output_type must be one of"),
        (lambda p: p("x", seed=[1, 2]), "2 seeds for 1 images"),
        (lambda p: p("x", top_p=0.0), "top-p must be in"),
        (lambda p: p("x", num_images_per_prompt=0), "num_images_per_prompt"),
    ],
)
def test_bad_calls_are_refused_clearly(golden_pipe, call, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        call(golden_pipe)


def test_bad_paths_are_refused_clearly(tmp_path, artifacts_fp32):
    with pytest.raises(WeightsError, match="no such file or folder"):
        StarPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(ConfigError, match="artefact folder holds ONNX graphs"):
        StarPipeline.from_pretrained(artifacts_fp32, backend="torch")
    with pytest.raises(ConfigError, match="runs exported graphs"):
        StarPipeline.from_pretrained(GOLDEN, backend="onnxruntime")


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    """The README's Python example, executed as written (in a scratch folder)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert any(tmp_path.glob("*.png"))
