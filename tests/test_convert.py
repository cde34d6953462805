"""`star-deploy convert`: .pth -> safetensors with identical tensors, loadable with --weights."""

from __future__ import annotations

import torch
from conftest import GOLDEN
from typer.testing import CliRunner

from star_deploy.cli import app
from star_deploy.release.finder import resolve_release
from star_deploy.release.weights import load_release, read_state_file, star_state_dict

runner = CliRunner()


def test_release_folder_converts_to_safetensors_with_equal_tensors(tmp_path, tiny_model):
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert", str(GOLDEN), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["CLIP", "star.safetensors", "vae.safetensors"]
    assert (out / "CLIP" / "tokenizer" / "vocab.json").is_file()
    model = load_release(resolve_release(out), 256)
    for name, module in (("transformer", model.transformer), ("vqvae", model.vqvae)):
        reference = getattr(tiny_model, name).state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, reference[key]), f"{name}.{key} changed"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_single_checkpoint_and_refusals(tmp_path):
    out = tmp_path / "star.safetensors"
    assert runner.invoke(app, ["convert", str(GOLDEN / "star.pth"), "-o", str(out)]).exit_code == 0
    original = star_state_dict(read_state_file(GOLDEN / "star.pth"), GOLDEN / "star.pth")
    converted = read_state_file(out)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    again = runner.invoke(app, ["convert", str(GOLDEN / "star.pth"), "-o", str(out)])
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.stderr
    wrong = runner.invoke(app, ["convert", str(GOLDEN / "star.pth"), "-o", str(tmp_path / "x.pth")])
    assert wrong.exit_code == 2 and "give a .safetensors file name" in wrong.stderr
    missing = runner.invoke(app, ["convert", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "n.safetensors")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["star.safetensors"]
