"""`star-deploy inspect` on checkpoints, a release folder and an exported artefact folder."""

from __future__ import annotations

import json
import os

import pytest
from conftest import GOLDEN
from typer.testing import CliRunner

from star_deploy.cli import app

runner = CliRunner()


def inspect_json(path) -> dict:
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_golden_star_checkpoint():
    info = inspect_json(GOLDEN / "star.pth")
    assert info["kind"] == "STAR transformer"
    cfg = info["config"]
    assert (cfg["depth"], cfg["width"], cfg["heads"], cfg["vocab_size"], cfg["cvae"], cfg["num_scales"]) == (
        2,
        128,
        2,
        256,
        8,
        10,
    )
    assert info["tensors"] == 47 and info["dtypes"] == "float32"
    table = runner.invoke(app, ["inspect", str(GOLDEN / "star.pth")])
    assert table.exit_code == 0 and "STAR transformer" in table.stdout and "config.depth" in table.stdout


def test_golden_vae_and_release_folder():
    vae = inspect_json(GOLDEN / "vae.pth")
    assert vae["kind"] == "VQVAE" and vae["config"]["ch"] == 32 and vae["config"]["cvae"] == 8
    release = inspect_json(GOLDEN)
    assert release["kind"] == "STAR release"
    assert release["text_encoder"]["width"] == 64 and release["star"]["config"]["depth"] == 2


def test_exported_artifacts(artifacts_fp32):
    info = inspect_json(artifacts_fp32)
    assert info["kind"] == "artefact directory" and info["precision"] == "fp32"
    assert info["schedule"] == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    assert set(info["graphs"]) == {
        "text_encoder",
        "text_context",
        "transformer_step",
        "transformer_step_pruned",
        "scale_update",
        "vq_decoder",
    }
    step = info["graphs"]["transformer_step"]
    assert step["bytes"] > 0 and any(i.startswith("past_key.0 ") for i in step["inputs"])
    assert info["sources"]["star"]["name"] == "star.pth" and len(info["sources"]["star"]["sha256"]) == 64
    graph = inspect_json(artifacts_fp32 / "vq_decoder.onnx")
    assert graph["kind"] == "ONNX graph" and graph["opset"] == 18


def test_damaged_artifacts_show_what_the_manifest_says_and_every_problem(artifacts_fp32, tmp_path):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(artifacts_fp32, folder)
    (folder / "vq_decoder.onnx").unlink()
    step = folder / "transformer_step.onnx"
    step.write_bytes(step.read_bytes()[:1000])
    result = runner.invoke(app, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"].startswith("artefact directory (damaged") and info["precision"] == "fp32"
    assert info["graphs"]["vq_decoder"]["bytes"] == "missing" and info["graphs"]["transformer_step"]["bytes"] == 1000
    problems = "\n".join(info["problems"])
    assert "vq_decoder.onnx: missing" in problems and "transformer_step.onnx: changed or corrupted" in problems
    assert "warning:" in result.stderr and "vq_decoder.onnx: missing" in result.stderr
    (folder / "manifest.json").write_text("{")
    broken = runner.invoke(app, ["inspect", str(folder)])
    assert broken.exit_code == 2 and "manifest" in broken.stderr


def test_unknown_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    unknown = runner.invoke(app, ["inspect", str(tmp_path / "notes.txt")])
    assert unknown.exit_code == 2 and "unknown kind of file" in unknown.stderr
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr
    (tmp_path / "engine.plan").write_bytes(b"\x00" * 16)
    plan = inspect_json(tmp_path / "engine.plan")
    assert plan["kind"] == "TensorRT engine" and plan["sidecar"].startswith("missing")


def test_safetensors_header_gives_what_the_loaded_checkpoint_gives(tmp_path):
    """inspect reads a .safetensors header only (no torch): the same config and counts as the loaded .pth."""
    from star_deploy.commands.convert import convert_file

    for name in ("star", "vae"):
        convert_file(GOLDEN / f"{name}.pth", tmp_path / f"{name}.safetensors")
        pth, header = inspect_json(GOLDEN / f"{name}.pth"), inspect_json(tmp_path / f"{name}.safetensors")
        for key in ("kind", "config", "tensors", "parameters", "dtypes"):
            assert header[key] == pth[key], key


def bad_header(header: bytes, size: int | None = None) -> bytes:
    """A safetensors file of ``header`` whose length field says ``size`` (default: the header's length)."""
    return (len(header) if size is None else size).to_bytes(8, "little") + header


# (id, file name, contents, message fragment); files inspect must refuse in one line, exit 2
BAD_FILES = [
    ("safetensors-empty", "a.safetensors", b"", "not a readable safetensors file (no header)"),
    ("safetensors-huge-header", "a.safetensors", bad_header(b"{}", 1 << 40), "(no header)"),
    ("safetensors-not-json", "a.safetensors", bad_header(b"{nope"), "its header is not JSON"),
    ("safetensors-list", "a.safetensors", bad_header(b"[]"), "not a JSON object"),
    ("safetensors-no-shape", "a.safetensors", bad_header(b'{"x": {"a": 1}}'), "tensor 'x' has no dtype and shape"),
    ("onnx-garbage", "a.onnx", b"\xff" * 40, "a.onnx: not a readable ONNX graph"),
    ("onnx-empty", "a.onnx", b"", "a.onnx: not a readable ONNX graph"),
    ("onnx-text", "a.onnx", b"hello world\n", "a.onnx: not a readable ONNX graph"),
    ("onnx-fifo", "a.onnx", None, "a.onnx: cannot be read as an ONNX graph"),
    ("safetensors-fifo", "a.safetensors", None, "a.safetensors: not a regular file (a pipe or device?)"),
    ("pth-fifo", "a.pth", None, "a.pth: not a regular file (a pipe or device?)"),
]


@pytest.mark.parametrize(("name", "data", "fragment"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_unreadable_files_are_refused_in_one_line(name, data, fragment, tmp_path):
    path = tmp_path / name
    if data is None:
        os.mkfifo(path)  # opened without blocking, refused as not a regular file
    else:
        path.write_bytes(data)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and result.stderr.count("\n") == 1, result.stderr
