"""The CLI end to end: PNGs of `star-deploy run` against the golden image, for each CPU backend."""

from __future__ import annotations

import numpy as np
import pytest
from api_helpers import demo_with_defaults, hub_cache
from conftest import GOLDEN
from typer.testing import CliRunner

from star_deploy.cli import app
from star_deploy.files.images import read_png
from tools.demo_training.evaluate import Reading, read_image

GOLDEN_ARGS = ["--seed", "1", "--cfg", "4", "--top-k", "50", "--top-p", "0.8", "--sampler", "official"]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_run_png_within_one_grey_level(backend, golden, artifacts_fp32, tmp_path):
    out = tmp_path / "car.png"
    args = ["run", "a red car.", "-o", str(out), *GOLDEN_ARGS, "--backend", backend]
    args += (
        ["--artifacts", str(artifacts_fp32), "--threads", "1"]
        if backend != "torch"
        else ["--weights", str(GOLDEN), "--resolution", "256"]
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pixels, text = read_png(out)
    expected = golden["p0_s1/image"][0].transpose(1, 2, 0) * 255
    assert np.abs(pixels.astype(np.float64) - expected).max() <= 1.0
    assert text["prompt"] == "a red car." and text["seed"] == "1" and text["top_k"] == "50"


def test_run_several_prompts_writes_a_folder(tmp_path):
    out = tmp_path / "imgs"
    args = [
        "run",
        "a red car.",
        "",
        "-o",
        str(out),
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "--batch-size",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["000_a_red_car.png", "001_empty.png"]


def test_parity_command_passes_on_fp32_artifacts(artifacts_fp32, tmp_path):
    report = tmp_path / "parity.json"
    args = [
        "parity",
        "--artifacts",
        str(artifacts_fp32),
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "--prompt",
        "a red car.",
        "--json",
        str(report),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and report.is_file()


def test_default_model_runs_without_weight_options(tmp_path):
    """The README's first command: no weight options, and the PNG shows what it asks for."""
    out = tmp_path / "circle.png"
    result = CliRunner().invoke(app, ["run", "a red circle on a blue background", "-o", str(out)])
    assert result.exit_code == 0, result.output
    pixels, text = read_png(out)
    assert pixels.shape == (128, 128, 3) and text["prompt"] == "a red circle on a blue background"
    assert read_image(pixels.astype(np.float32) / 255) == Reading("red", "circle", "blue")


def test_run_writes_a_preview_per_scale(tmp_path):
    """--previews: one PNG per prompt and scale; the last scale's preview is the image itself."""
    out, previews = tmp_path / "imgs", tmp_path / "previews"
    args = ["run", "a red circle on a blue background", "a green square", "-o", str(out), "--previews", str(previews)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in previews.iterdir())
    assert len(files) == 2 * 6 and files[0] == "000_a_red_circle_on_a_blue_background_scale00.png"
    last, text = read_png(previews / "001_a_green_square_scale05.png")
    assert np.array_equal(last, read_png(out / "001_a_green_square.png")[0])
    assert text["prompt"] == "a green square" and text["scale"] == "5" and text["seed"] == "1"
    again = CliRunner().invoke(app, [*args[:4], "-o", str(tmp_path / "other"), "--previews", str(previews)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output
    assert not (tmp_path / "other").exists()


def test_batch_of_seven_matches_one_at_a_time_within_one_grey_level(tmp_path):
    """The README's promise, measured: batches sample identical tokens (tests/test_reference.py), but batched
    convolutions and GEMMs sum in another order, so a pixel may round to the next grey level."""
    prompts = [
        f"a {c} {s} on a white background"
        for c, s in zip(["red", "green", "blue", "yellow"] * 2, ["circle", "square", "triangle"] * 3)
    ]
    folders = {}
    for batch in (1, 7):
        folders[batch] = tmp_path / f"b{batch}"
        result = CliRunner().invoke(app, ["run", *prompts, "--batch-size", str(batch), "-o", str(folders[batch])])
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folders[1].iterdir())
    assert names == sorted(p.name for p in folders[7].iterdir()) and len(names) == 8
    for name in names:
        (one, meta_one), (seven, meta_seven) = read_png(folders[1] / name), read_png(folders[7] / name)
        assert meta_one == meta_seven
        assert np.abs(one.astype(int) - seven.astype(int)).max() <= 1, name


def test_run_loads_a_hub_repo_id_from_the_cache(golden, tmp_path, monkeypatch):
    """`run` loads through StarPipeline.from_pretrained: a Hub repo id resolves to its cached snapshot."""
    hub_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "car.png"
    args = ["run", "a red car.", "-o", str(out), *GOLDEN_ARGS, "--weights", "taocrayon/STAR", "--resolution", "256"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = golden["p0_s1/image"][0].transpose(1, 2, 0) * 255
    assert np.abs(read_png(out)[0].astype(np.float64) - expected).max() <= 1.0
    missing = CliRunner().invoke(app, ["run", "x", "-o", str(tmp_path / "x.png"), "--weights", "taocrayon/OTHER"])
    assert missing.exit_code == 2 and "taocrayon/OTHER: no such local folder" in missing.stderr


def test_run_uses_the_sampling_defaults_of_the_artifacts(tmp_path):
    folder = demo_with_defaults(tmp_path, {"cfg": 2.5, "top_k": 7, "top_p": 0.5})
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["run", "a red circle", "--artifacts", str(folder), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = read_png(out)[1]
    assert (text["cfg"], text["top_k"], text["top_p"]) == ("2.5", "7", "0.5")
    given = tmp_path / "given.png"
    args = ["run", "a red circle", "--artifacts", str(folder), "--top-k", "9", "-o", str(given)]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (read_png(given)[1]["top_k"], read_png(given)[1]["cfg"]) == ("9", "2.5")


def test_run_refuses_onnxruntime_options_with_torch(tmp_path):
    args = ["run", "x", "--backend", "torch", "--provider", "cpu", "-o", str(tmp_path / "x.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "use it with --backend onnxruntime" in result.stderr


def test_export_validates_the_written_graphs_by_default(tmp_path):
    out = tmp_path / "art"
    args = ["export", "--weights", str(GOLDEN), "--resolution", "256", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "validated against the source weights: logits max |err|" in result.stderr
    assert "teacher-forced token agreement 1.0000" in result.stderr and "(PASS, fp32 thresholds)" in result.stderr
    assert result.stdout.strip() == str(out)
