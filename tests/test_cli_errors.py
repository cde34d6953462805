"""Bad input never gives a traceback or a stray file: exit code, one clear line, nothing written."""

from __future__ import annotations

import io
import logging
import math
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN
from typer.testing import CliRunner
from unprivileged import run_cli, shared_folder

from star_deploy.cli import app
from star_deploy.demo import DEMO_GRAPHS, DEMO_WEIGHTS
from star_deploy.files.images import read_png

runner = CliRunner()
EVIL_MARKER = "executed.txt"


class Custom:
    """A class the safe loader must refuse to instantiate."""


class Evil:
    """Pickles to a call that would create a file if it were ever executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def release(
    root: Path,
    name: str,
    star: bytes | Path | None = GOLDEN / "star.pth",
    star_name: str = "star.pth",
    vae: bytes | Path | None = GOLDEN / "vae.pth",
    clip: bool = True,
) -> Path:
    """A release folder: CLIP and unchanged files are links to the golden ones, others written."""
    folder = root / name
    folder.mkdir()
    if clip:
        (folder / "CLIP").symlink_to(GOLDEN / "CLIP")
    for file_name, content in ((star_name, star), ("vae.pth", vae)):
        if isinstance(content, Path):
            (folder / file_name).symlink_to(content)
        elif content is not None:
            (folder / file_name).write_bytes(content)
    return folder


def saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def golden_star() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN / "star.pth", weights_only=True)["trainer"]["var_wo_ddp"]


def star_variant(drop: tuple[str, ...] = (), replace: dict[str, torch.Tensor] | None = None) -> bytes:
    sd = {k: v for k, v in golden_star().items() if k not in drop} | (replace or {})
    return saved({"trainer": {"var_wo_ddp": sd}})


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """Every broken input of the matrix, built once."""
    root = tmp_path_factory.mktemp("bad")
    star = (GOLDEN / "star.pth").read_bytes()
    flipped = bytearray(star)
    flipped[len(star) // 2 : len(star) // 2 + 64] = bytes(
        b ^ 0xFF for b in flipped[len(star) // 2 : len(star) // 2 + 64]
    )
    release(root, "no_star", star=None)
    release(root, "no_vae", vae=None)
    release(root, "no_clip", clip=False)
    two = release(root, "two_star")
    (two / "star_b.pth").symlink_to(GOLDEN / "star.pth")
    release(root, "trunc_half", star=star[: len(star) // 2])
    release(root, "trunc_100", star=star[:100])
    release(root, "empty", star=b"")
    release(root, "text", star=b"not a checkpoint\n")
    release(root, "flipped", star=bytes(flipped))
    release(root, "pickle_obj", star=saved({"weights": Custom()}))
    release(root, "pickle_evil", star=saved({"x": Evil(root / EVIL_MARKER)}))
    release(root, "raw_pickle", star=pickle.dumps({"x": Evil(root / EVIL_MARKER)}))
    var_sd = {k: v for k, v in golden_star().items() if not k.startswith("encoder_proj")}
    release(root, "var", star=saved(var_sd))
    release(root, "no_trainer_sd", star=saved({"trainer": {"optimizer": torch.zeros(1)}}))
    release(root, "cvae", star=star_variant(replace={"word_embed.weight": torch.zeros(128, 16)}))
    release(root, "missing_block", star=star_variant(drop=("blocks.1.ffn.fc1.weight",)))
    release(root, "other_star", star=star_variant(replace={"pos_start": torch.ones(1, 1, 128)}))
    release(root, "trunc_vae", vae=(GOLDEN / "vae.pth").read_bytes()[:5000])
    release(root, "vae_as_star", star=GOLDEN / "vae.pth")
    release(root, "star_as_vae", vae=GOLDEN / "star.pth")
    release(root, "bad_safetensors", star=b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", star_name="star.safetensors")
    release(root, "named_512", star=GOLDEN / "star.pth", star_name="star_rope_d2_512-ar-ckpt.pth")
    broken_clip = release(root, "broken_clip", clip=False)
    shutil.copytree(GOLDEN / "CLIP", broken_clip / "CLIP")
    (broken_clip / "CLIP" / "text_encoder" / "config.json").write_text("{ not json")
    release(root, "int8_tensor", star=star_variant(replace={"pos_start": torch.ones(1, 1, 128, dtype=torch.int8)}))
    release(root, "bool_tensor", star=star_variant(replace={"pos_start": torch.ones(1, 1, 128, dtype=torch.bool)}))
    nan_head = golden_star()["head_logits.weight"].clone()
    nan_head[3, 5] = math.nan
    release(root, "nan_tensor", star=star_variant(replace={"head_logits.weight": nan_head}))
    release(root, "inf_tensor", star=star_variant(replace={"pos_start": torch.full((1, 1, 128), math.inf)}))
    (root / "upper").mkdir()
    (root / "upper" / "star.SAFETENSORS").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    release(root, "rel")
    no_vocab = release(root, "no_vocab", clip=False)
    (no_vocab / "CLIP" / "tokenizer").mkdir(parents=True)
    (no_vocab / "CLIP" / "text_encoder").symlink_to(GOLDEN / "CLIP" / "text_encoder")
    (root / "existing.png").write_bytes(b"keep me")
    (root / "a_file").write_text("x")
    (root / "dir.png").mkdir()
    return root


G = str(GOLDEN)
RUN = ["run", "a red square", "--resolution", "256"]


def w(name: str) -> list[str]:
    return ["--weights", "{bad}/" + name]


# (id, args, exit code, message fragment); {bad} = the bad-input folder, {out} = a fresh output path.
CASES = [
    ("weights-missing", RUN + ["--weights", "{bad}/nope", "-o", "{out}"], 2, "not a directory"),
    (
        "cuda-graphs-on-cpu",
        RUN + ["--weights", G, "--cuda-graphs", "-o", "{out}"],
        2,
        "--cuda-graphs applies to --backend torch with --device cuda",
    ),
    ("weights-is-file", RUN + w("a_file") + ["-o", "{out}"], 2, "not a directory"),
    ("release-no-star", RUN + w("no_star") + ["-o", "{out}"], 2, "no file matching star*.pth"),
    ("release-no-vae", RUN + w("no_vae") + ["-o", "{out}"], 2, "no file matching vae*.pth"),
    ("release-no-clip", RUN + w("no_clip") + ["-o", "{out}"], 2, "--clip takes the release's CLIP folder"),
    ("release-two-stars", RUN + w("two_star") + ["-o", "{out}"], 2, "several candidates"),
    ("star-missing", RUN + ["--weights", G, "--star", "{bad}/nope.pth", "-o", "{out}"], 2, "no such file"),
    ("star-is-folder", RUN + ["--weights", G, "--star", "{bad}", "-o", "{out}"], 2, "is a folder"),
    ("star-truncated-half", RUN + w("trunc_half") + ["-o", "{out}"], 2, "truncated"),
    ("star-truncated-100", RUN + w("trunc_100") + ["-o", "{out}"], 2, "truncated"),
    ("star-empty", RUN + w("empty") + ["-o", "{out}"], 2, "truncated or not a PyTorch checkpoint"),
    ("star-text", RUN + w("text") + ["-o", "{out}"], 2, "not a PyTorch checkpoint"),
    ("star-bitflip", RUN + w("flipped") + ["-o", "{out}"], 2, "checksum mismatch"),
    ("star-pickled-object", RUN + w("pickle_obj") + ["-o", "{out}"], 2, "(unsupported global test_cli_errors.Custom)"),
    (
        "star-pickled-call",
        RUN + w("pickle_evil") + ["-o", "{out}"],
        2,
        "refused, it holds objects other than tensors (unsupported global getattr)",
    ),
    ("star-raw-pickle", RUN + w("raw_pickle") + ["-o", "{out}"], 2, "not a PyTorch checkpoint (unknown format)"),
    ("star-var-class-cond", RUN + w("var") + ["-o", "{out}"], 2, "class-conditional VAR"),
    ("star-trainer-without-model", RUN + w("no_trainer_sd") + ["-o", "{out}"], 2, "no 'var_wo_ddp'"),
    ("star-cvae-mismatch", RUN + w("cvae") + ["-o", "{out}"], 2, "use the VAE released with this STAR checkpoint"),
    ("star-missing-tensor", RUN + w("missing_block") + ["-o", "{out}"], 2, "missing: blocks.1.ffn.fc1.weight"),
    ("star-safetensors-garbage", RUN + w("bad_safetensors") + ["-o", "{out}"], 2, "not a readable safetensors"),
    ("vae-truncated", RUN + w("trunc_vae") + ["-o", "{out}"], 2, "vae.pth: truncated"),
    ("vae-given-as-star", RUN + w("vae_as_star") + ["-o", "{out}"], 2, "is a VQVAE checkpoint"),
    ("star-given-as-vae", RUN + w("star_as_vae") + ["-o", "{out}"], 2, "pass it with --star"),
    ("clip-config-broken", RUN + w("broken_clip") + ["-o", "{out}"], 2, "no readable CLIPTextModel config.json"),
    ("resolution-vs-name", RUN + w("named_512") + ["-o", "{out}"], 2, "trained for 512 px but --resolution is 256"),
    ("resolution-scales", ["run", "x", "--weights", G, "--resolution", "1024", "-o", "{out}"], 2, "has 14 scales"),
    ("resolution-unknown", ["run", "x", "--weights", G, "--resolution", "300", "-o", "{out}"], 2, "no scale schedule"),
    ("resolution-missing", ["run", "x", "--weights", G, "-o", "{out}"], 2, "pass --resolution"),
    ("top-k-negative", RUN + ["--weights", G, "--top-k", "-1", "-o", "{out}"], 2, "top-k must be >= 0"),
    ("top-p-zero", RUN + ["--weights", G, "--top-p", "0", "-o", "{out}"], 2, "top-p must be in (0, 1]"),
    ("top-p-above-one", RUN + ["--weights", G, "--top-p", "1.5", "-o", "{out}"], 2, "top-p must be in (0, 1]"),
    ("top-p-nan", RUN + ["--weights", G, "--top-p", "nan", "-o", "{out}"], 2, "top-p must be in (0, 1]"),
    ("cfg-nan", RUN + ["--weights", G, "--cfg", "nan", "-o", "{out}"], 2, "cfg must be a finite number"),
    ("cfg-negative", RUN + ["--weights", G, "--cfg", "-1", "-o", "{out}"], 2, "cfg must be a finite number"),
    ("cfg-inf", RUN + ["--weights", G, "--cfg", "inf", "-o", "{out}"], 2, "cfg must be a finite number"),
    ("batch-zero", RUN + ["--weights", G, "--batch-size", "0", "-o", "{out}"], 2, "--batch-size must be >= 1"),
    ("seed-negative", RUN + ["--weights", G, "--seed", "-1", "-o", "{out}"], 2, "seed must be in [0, 2**63)"),
    ("seed-too-large", RUN + ["--weights", G, "--seed", str(2**63), "-o", "{out}"], 2, "seed must be in [0, 2**63)"),
    ("seed-overflows", ["run", "a", "b", "--weights", G, "--seed", str(2**63 - 1), "-o", "{out}"], 2, "would use seed"),
    ("out-exists", RUN + ["--weights", G, "-o", "{bad}/existing.png"], 2, "already exists; pass --overwrite"),
    ("out-folder-missing", RUN + ["--weights", G, "-o", "{out}/nope/x.png"], 2, "folder does not exist"),
    ("out-parent-is-file", RUN + ["--weights", G, "-o", "{bad}/a_file/x.png"], 2, "is not a folder"),
    ("out-is-folder", RUN + ["--weights", G, "-o", "{bad}/dir.png", "--overwrite"], 2, "is a folder"),
    ("out-not-png", RUN + ["--weights", G, "-o", "{out}.jpg"], 2, "give a .png file name"),
    ("out-png-for-many", ["run", "a", "b", "--weights", G, "-o", "{out}"], 2, "several prompts need a folder"),
    ("backend-unknown", RUN + ["--weights", G, "--backend", "foo", "-o", "{out}"], 2, "unknown backend"),
    (
        "ort-without-artifacts",
        RUN + ["--weights", G, "--backend", "onnxruntime", "-o", "{out}"],
        2,
        "pass --artifacts DIR",
    ),
    (
        "ort-demo-other-resolution",
        RUN + ["--backend", "onnxruntime", "-o", "{out}"],
        2,
        "--resolution 256: the artefacts in",
    ),
    (
        "artifacts-missing",
        RUN + ["--backend", "onnxruntime", "--artifacts", "{bad}/nope", "-o", "{out}"],
        2,
        "no such artefact directory",
    ),
    (
        "artifacts-no-manifest",
        RUN + ["--backend", "onnxruntime", "--artifacts", "{bad}/no_star", "-o", "{out}"],
        2,
        "manifest.json: missing",
    ),
    ("dtype-unknown", RUN + ["--weights", G, "--dtype", "float8", "-o", "{out}"], 2, "unknown dtype"),
    (
        "dtype-with-onnxruntime",
        ["run", "a", "--dtype", "float16", "-o", "{out}"],
        2,
        "dtype applies to backend='torch', not to backend='onnxruntime'; use it with --backend torch",
    ),
    ("device-unknown", RUN + ["--weights", G, "--device", "tpu", "-o", "{out}"], 2, "unknown device"),
    (
        "export-precision",
        ["export", "--weights", G, "--resolution", "256", "--precision", "fp8", "--out", "{out}"],
        2,
        "--precision must be one of",
    ),
    (
        "export-out-exists",
        ["export", "--weights", G, "--resolution", "256", "--out", "{bad}/no_star"],
        2,
        "already exists; pass --overwrite",
    ),
    (
        "export-out-parent-missing",
        ["export", "--weights", G, "--resolution", "256", "--out", "{out}/a/b"],
        2,
        "folder does not exist",
    ),
    (
        "export-bad-star",
        ["export", "--weights", "{bad}/pickle_obj", "--resolution", "256", "--out", "{out}"],
        2,
        "refused",
    ),
    # outputs that are, contain or are inside an input (data loss: `export --out rel --overwrite` deleted rel)
    (
        "export-out-is-input",
        ["export", "--weights", "{bad}/rel", "--resolution", "256", "--out", "{bad}/rel", "--overwrite"],
        2,
        "overlaps the input",
    ),
    (
        "export-out-inside-input",
        ["export", "--weights", "{bad}/rel", "--resolution", "256", "--out", "{bad}/rel/art"],
        2,
        "overlaps the input",
    ),
    (
        "export-out-contains-input",
        ["export", "--weights", "{bad}/rel", "--resolution", "256", "--out", "{bad}", "--overwrite"],
        2,
        "overlaps the input",
    ),
    (
        "export-out-is-linked-input",
        ["export", "--weights", G, "--resolution", "256", "--out", "{bad}/rel/CLIP", "--overwrite"],
        2,
        "overlaps the input",
    ),
    (
        "run-out-inside-input",
        ["run", "a", "--weights", "{bad}/rel", "--resolution", "256", "-o", "{bad}/rel/x.png"],
        2,
        "overlaps the input",
    ),
    (
        "run-out-folder-is-input",
        ["run", "a", "b", "--weights", "{bad}/rel", "--resolution", "256", "-o", "{bad}/rel"],
        2,
        "overlaps the input",
    ),
    # the demo release (no weight option) is an input too: nothing is written inside the installed package
    ("export-demo-out-inside-demo", ["export", "--out", str(DEMO_WEIGHTS / "art")], 2, "overlaps the input"),
    (
        "run-demo-out-inside-demo",
        ["run", "a", "--backend", "torch", "-o", str(DEMO_WEIGHTS / "x.png")],
        2,
        "overlaps the input",
    ),
    ("convert-out-is-input", ["convert", "{bad}/rel", "--out", "{bad}/rel", "--overwrite"], 2, "overlaps the input"),
    ("convert-out-inside-input", ["convert", "{bad}/rel", "--out", "{bad}/rel/safe"], 2, "overlaps the input"),
    (
        "release-tokenizer-empty",
        RUN + w("no_vocab") + ["-o", "{out}"],
        2,
        "no vocab.json or merges.txt; download the release's CLIP/ folder again",
    ),
    # checkpoint values: non-float dtypes and non-finite values are refused at load, naming the key
    (
        "star-int8-tensor",
        RUN + w("int8_tensor") + ["-o", "{out}"],
        2,
        "tensor pos_start has dtype int8, expected floating point",
    ),
    (
        "star-bool-tensor",
        RUN + w("bool_tensor") + ["-o", "{out}"],
        2,
        "tensor pos_start has dtype bool, expected floating point",
    ),
    (
        "star-nan-tensor",
        RUN + w("nan_tensor") + ["-o", "{out}"],
        2,
        "tensor head_logits.weight holds NaN or infinite values",
    ),
    ("star-inf-tensor", RUN + w("inf_tensor") + ["-o", "{out}"], 2, "tensor pos_start holds NaN or infinite values"),
    (
        "convert-nan-tensor",
        ["convert", "{bad}/nan_tensor/star.pth", "--out", "{out}.safetensors"],
        2,
        "tensor head_logits.weight holds NaN",
    ),
    (
        "star-upper-case-safetensors",
        RUN + ["--weights", G, "--star", "{bad}/upper/star.SAFETENSORS", "-o", "{out}"],
        2,
        "not a readable safetensors",
    ),
    # options: bounded, checked before the model loads and before any output exists
    (
        "threads-too-many",
        RUN + ["--weights", G, "--threads", "10000", "-o", "{out}"],
        2,
        "--threads 10000: choose 0 (one per physical core) to",
    ),
    ("threads-negative", RUN + ["--weights", G, "--threads", "-1", "-o", "{out}"], 2, "--threads -1: choose 0"),
    ("bench-threads-negative", ["bench", "--threads", "-1"], 2, "--threads -1: choose 0"),
    ("device-cuda-index", RUN + w("trunc_half") + ["--device", "cuda:99", "-o", "{out}"], 2, "--device cuda:99: "),
    ("device-cuda-garbage", RUN + ["--weights", G, "--device", "cuda:x", "-o", "{out}"], 2, "unknown device 'cuda:x'"),
    (
        "cfg-overflows-float32",
        RUN + ["--weights", G, "--cfg", "1e39", "-o", "{out}"],
        2,
        "cfg must be a finite number in [0, 1000]",
    ),
    (
        "prompt-not-utf8",
        ["run", "a \udcff", "--weights", G, "--resolution", "256", "-o", "{out}"],
        2,
        "prompt 0 is not valid UTF-8",
    ),
    (
        "many-prompts-bad-weights",
        ["run", "a", "b", "--weights", "{bad}/trunc_half", "--resolution", "256", "-o", "{out}.d"],
        2,
        "truncated",
    ),
    (
        "many-prompts-bad-device",
        ["run", "a", "b", "--weights", G, "--resolution", "256", "--device", "cuda:99", "-o", "{out}.d"],
        2,
        "--device cuda:99: ",
    ),
    (
        "many-prompts-no-artifacts",
        ["run", "a", "b", "--weights", G, "--backend", "onnxruntime", "-o", "{out}.d"],
        2,
        "pass --artifacts DIR",
    ),
    (
        "artifacts-is-file",
        RUN + ["--backend", "onnxruntime", "--artifacts", "{bad}/a_file", "-o", "{out}"],
        2,
        "is a file, not an artefact folder",
    ),
    (
        "parity-json-folder-missing",
        [
            "parity",
            "--artifacts",
            "{bad}/nope",
            "--weights",
            G,
            "--resolution",
            "256",
            "--json",
            "{out}/missing/r.json",
        ],
        2,
        "folder does not exist",
    ),
    # advice names only options the command has; --provider only where it applies
    (
        "convert-release-two-stars",
        ["convert", "{bad}/two_star", "--out", "{out}.d"],
        2,
        "several candidates (star.pth, star_b.pth); a release folder holds CLIP/, one vae* and one star* checkpoint; "
        "or convert one file: star-deploy convert FILE --out NAME.safetensors",
    ),
    ("convert-release-no-star", ["convert", "{bad}/no_star", "--out", "{out}.d"], 2, "or convert one file: star-dep"),
    ("convert-release-no-clip", ["convert", "{bad}/no_clip", "--out", "{out}.d"], 2, "not found; a release folder"),
    ("convert-missing", ["convert", "{bad}/nope.pth", "--out", "{out}.safetensors"], 2, "nope.pth: no such file"),
    ("inspect-release-two-stars", ["inspect", "{bad}/two_star"], 2, "or inspect one file: star-deploy inspect FILE"),
    ("inspect-release-no-vae", ["inspect", "{bad}/no_vae"], 2, "or inspect one file: star-deploy inspect FILE"),
    ("provider-empty", ["run", "a", "--provider", "", "-o", "{out}"], 2, "error: --provider: empty; give a value"),
    ("backend-empty", ["run", "a", "--backend", "", "-o", "{out}"], 2, "error: --backend: empty; give a value"),
    ("out-empty", ["run", "a", "-o", ""], 2, "error: --out: empty; give a value"),
    ("export-out-empty", ["export", "--out", "", "--overwrite"], 2, "error: --out: empty; give a value"),
    ("inspect-path-empty", ["inspect", ""], 2, "error: PATH: empty; give a value"),
    ("check-json-empty", ["check", "--json", ""], 2, "error: --json: empty; give a value"),
    ("star-path-empty", RUN + ["--weights", G, "--star=", "-o", "{out}"], 2, "error: --star: empty; give a value"),
    ("quantize-empty", ["quantize", "", "--out", ""], 2, "error: --out, ARTIFACTS: empty; give a value"),
    ("device-empty", ["run", "a", "--device", "", "-o", "{out}"], 2, "error: --device: empty; give a value"),
    ("provider-unknown", ["run", "a", "--provider", "gpu", "-o", "{out}"], 2, "--provider 'gpu': unknown provider"),
    (
        "provider-with-torch",
        RUN + ["--weights", G, "--provider", "cuda", "-o", "{out}"],
        2,
        "provider applies to backend='onnxruntime', not to backend='torch'; use it with --backend onnxruntime",
    ),
    (
        "check-json-folder-missing",
        ["check", "{bad}/nope", "--json", "{out}/missing/r.json"],
        2,
        "folder does not exist",
    ),
    (
        "parity-records-save-and-load",
        ["parity", "--save-outputs", "{out}/ref.json", "--load-outputs", "{out}/ref.json"],
        2,
        "--save-outputs and --load-outputs: record on one machine, compare on another; give one",
    ),
    ("parity-save-inputs-alone", ["parity", "--save-inputs", "{out}/in.json"], 2, "--save-inputs goes with"),
    (
        "parity-load-outputs-without-engines",
        ["parity", "--load-outputs", "{out}/ref.json"],
        2,
        "--load-outputs compares built engines: pass --backend tensorrt",
    ),
]


def invoke(args: list[str], bad: Path, out: Path):
    return runner.invoke(app, [a.format(bad=bad, out=out) for a in args])


def files_below(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize(("args", "code", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(args, code, fragment, bad, tmp_path):
    before = files_below(bad)
    result = invoke(args, bad, tmp_path / "out.png")
    assert result.exit_code == code, result.output
    assert fragment in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert files_below(tmp_path) == set(), "an output was left behind"
    assert files_below(bad) == before, "the input folder changed"
    assert not (bad / EVIL_MARKER).exists(), "a pickled call was executed"


def test_matrix_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(bad, tmp_path):
    result = invoke(RUN + ["--weights", G, "--device", "cuda", "-o", "{out}"], bad, tmp_path / "out.png")
    assert result.exit_code == 2 and "no CUDA GPU is visible" in result.stderr
    assert files_below(tmp_path) == set()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder the CLI, run without root's file access, can enter."""
    folder = shared_folder()
    yield folder
    shutil.rmtree(folder)


def test_unreadable_and_unwritable_paths(shared):
    locked = shared / "locked"
    shutil.copytree(GOLDEN, locked, ignore=shutil.ignore_patterns("golden.*"))
    (locked / "star.pth").chmod(0)
    result = run_cli(*RUN, "--weights", str(locked), "-o", str(shared / "o.png"), cwd=shared)
    assert result.returncode == 2 and "cannot be read" in result.stderr, result.stderr
    readonly = shared / "readonly"
    readonly.mkdir(mode=0o500)
    result = run_cli(*RUN, "--weights", G, "-o", str(readonly / "x.png"), cwd=shared)
    assert result.returncode == 2 and "not writable" in result.stderr, result.stderr
    assert not (shared / "o.png").exists() and not any(readonly.iterdir())


@pytest.fixture(scope="module")
def broken_artifacts(artifacts_fp32, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("art") / "corrupt"
    shutil.copytree(artifacts_fp32, copy)
    graph = copy / "scale_update.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    return copy


def test_corrupted_graph_is_refused(broken_artifacts, bad, tmp_path):
    args = RUN + ["--backend", "onnxruntime", "--artifacts", str(broken_artifacts), "-o", "{out}"]
    result = invoke(args, bad, tmp_path / "out.png")
    assert result.exit_code == 2 and "changed or corrupted since export" in result.stderr
    assert files_below(tmp_path) == set()


def test_artifacts_from_another_checkpoint_are_refused(artifacts_fp32, bad, tmp_path):
    args = RUN + ["--backend", "onnxruntime", "--artifacts", str(artifacts_fp32), "-o", "{out}"]
    result = invoke(args + w("other_star"), bad, tmp_path / "out.png")
    assert result.exit_code == 2 and "was exported from star.pth, not from" in result.stderr
    assert files_below(tmp_path) == set()


def test_warnings_top_k_clamped_empty_and_long_prompts(tmp_path, caplog):
    long_prompt = " ".join(["red"] * 100)
    out = tmp_path / "imgs"
    result = runner.invoke(
        app, ["run", "", long_prompt, "--weights", G, "--resolution", "256", "--top-k", "100000", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    messages = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "exceeds the codebook size; using 256" in messages
    assert "prompt 0 is empty" in messages
    assert "CLIP reads the first 77" in messages
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["000_empty.png", "001_" + "red_" * 9 + "red.png"]
    assert read_png(pngs[0])[1]["top_k"] == "256"
    assert not list(out.glob(".*")), "a temporary file was left behind"


def test_existing_output_is_replaced_with_overwrite(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="star_deploy")
    out = tmp_path / "x.png"
    out.write_bytes(b"old")
    args = ["run", "a", "--weights", G, "--resolution", "256", "--cfg", "1.5", "-o", str(out), "--overwrite"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    pixels, meta = read_png(out)
    assert pixels.shape == (256, 256, 3) and math.isclose(float(meta["cfg"]), 1.5)
    assert "timings" in result.stderr and "transformer steps" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_memory_estimate_counts_real_parameters_and_refuses_what_cannot_fit(tiny_model):
    from star_deploy.core.config import PRESETS
    from star_deploy.errors import MemoryBudgetError
    from star_deploy.runtime.memory import GIB, check_fits, estimate, parameter_counts

    counts = parameter_counts(tiny_model.config)
    assert counts["transformer"] == sum(t.numel() for t in tiny_model.transformer.state_dict().values())
    assert counts["vqvae"] == sum(t.numel() for t in tiny_model.vqvae.state_dict().values())
    need = estimate(PRESETS["1024-d30"], batch=8, dtype="float16", device="cuda")
    assert 3 * GIB < need.weights < 5 * GIB
    assert need.kv_cache == 30 * 2 * (2 * 8) * 9451 * 1920 * 2  # layers, K+V, CFG rows, tokens, width, fp16
    with pytest.raises(
        MemoryBudgetError, match=r"needs about .* GiB .* only 8.0 GiB is free on cuda; use a smaller --batch-size"
    ):
        check_fits(need, 8 * GIB, "cuda", "batch 8 at 1024 px")
    check_fits(estimate(tiny_model.config, batch=1), 8 * GIB, "cpu", "tiny")


def edit_manifest(folder: Path, change, reseal: bool) -> None:
    """Apply ``change`` to manifest.json; ``reseal`` recomputes its own digest (a hand-made or buggy manifest)."""
    import json

    from star_deploy.artifacts.manifest import SELF_DIGEST, body_digest, dumps

    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    if reseal:
        data[SELF_DIGEST] = body_digest(data)
    path.write_text(dumps(data))


def replace_graphs(folder: Path, moves: dict[str, str | bytes]) -> None:
    """Replace graph files (``moves``: target <- another graph's file, or bytes) and reseal the manifest to match."""
    import json

    from star_deploy.artifacts.manifest import dumps, sealed, sha256_file

    contents = {t: s if isinstance(s, bytes) else (folder / s).read_bytes() for t, s in moves.items()}
    for target, data in contents.items():
        (folder / target).write_bytes(data)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["graphs"].values():
        entry["sha256"] = sha256_file(folder / entry["file"])
    path.write_text(dumps(sealed(data, folder)))


def damage_body(path: Path, op: bytes) -> None:
    """Overwrite 16 bytes of the graph's body, across the first ``op`` node's encoding, and reseal the folder:
    digests pass and the file's start reads, but the protobuf no longer parses (bytes inside weights would not do:
    they stay a valid, if wrong, tensor)."""
    data = path.read_bytes()
    at = data.find(b"\x22" + bytes([len(op)]) + op) - 4
    assert at > 0, op
    replace_graphs(path.parent, {path.name: data[:at] + b"\xff" * 16 + data[at + 16 :]})


def misname_op(path: Path, op: bytes) -> None:
    """Overwrite the first node's operator type ``op`` (NodeProto field 4) with an unknown one of the same length,
    and reseal: the file parses and its header reads, but no runtime can build the graph."""
    data = path.read_bytes()
    field = b"\x22" + bytes([len(op)]) + op
    assert field in data, op
    replace_graphs(path.parent, {path.name: data.replace(field, field[:2] + b"X" * len(op), 1)})


def setter(key: str, value):
    return lambda d: d.__setitem__(key, value)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


# (id, change to a copy of the fp32 export, message fragment)
ARTIFACT_CASES = [
    (
        "vocab-edited",
        lambda f: (f / "tokenizer" / "vocab.json").write_text(
            (f / "tokenizer" / "vocab.json").read_text().replace('"red</w>"', '"blue</w>"', 1)
        ),
        "tokenizer/vocab.json: changed or corrupted since export",
    ),
    (
        "tokenizer-deleted",
        lambda f: shutil.rmtree(f / "tokenizer"),
        "tokenizer/merges.txt: missing; the artefact folder is incomplete",
    ),
    (
        "graph-truncated",
        lambda f: truncate(f / "transformer_step.onnx"),
        "transformer_step.onnx: changed or corrupted since export",
    ),
    ("graph-deleted", lambda f: (f / "vq_decoder.onnx").unlink(), "vq_decoder.onnx: missing"),
    ("manifest-not-json", lambda f: (f / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
    (
        "precision-relabelled",
        lambda f: edit_manifest(f, setter("precision", "fp16"), reseal=False),
        "manifest.json: changed since export",
    ),
    (
        "resolution-edited",
        lambda f: edit_manifest(f, lambda d: d["config"].__setitem__("resolution", 512), reseal=False),
        "manifest.json: changed since export",
    ),
    (
        "resolution-edited-resealed",
        lambda f: edit_manifest(f, lambda d: d["config"].__setitem__("resolution", 512), reseal=True),
        "inconsistent model config (resolution 512 does not use the scale schedule",
    ),
    (
        "schedule-edited-resealed",
        lambda f: edit_manifest(f, lambda d: d["config"].__setitem__("patch_nums", [1, 2, 3]), reseal=True),
        "inconsistent model config (resolution 256 has 3 scales but the transformer was trained with 10 (lvl_embed "
        "rows))",
    ),
    (
        "precision-unknown",
        lambda f: edit_manifest(f, setter("precision", "fp64"), reseal=True),
        "unknown precision 'fp64'",
    ),
    ("key-extra", lambda f: edit_manifest(f, setter("comment", "x"), reseal=True), "unknown key(s) comment"),
    ("key-missing", lambda f: edit_manifest(f, lambda d: d.pop("tools"), reseal=True), "missing key(s) tools"),
    (
        "graphs-as-list",
        lambda f: edit_manifest(f, lambda d: d.__setitem__("graphs", list(d["graphs"].values())), reseal=True),
        "'graphs' must be an object keyed by graph name, not a list",
    ),
    (
        "graph-output-renamed",
        lambda f: edit_manifest(
            f, lambda d: d["graphs"]["transformer_step"]["outputs"][0].__setitem__("name", "out"), reseal=True
        ),
        "graph transformer_step does not have the outputs this version expects",
    ),
    (
        "graphs-swapped-resealed",
        lambda f: replace_graphs(f, {"scale_update.onnx": "vq_decoder.onnx", "vq_decoder.onnx": "scale_update.onnx"}),
        "scale_update.onnx: not the scale_update graph this folder needs (its inputs lack tokens",
    ),
    (
        "graph-copied-resealed",
        lambda f: replace_graphs(f, {"text_encoder.onnx": "text_context.onnx"}),
        "text_encoder.onnx: not the text_encoder graph this folder needs (its inputs lack input_ids",
    ),
    (
        "graph-of-another-export-resealed",
        lambda f: replace_graphs(f, {"vq_decoder.onnx": (DEMO_GRAPHS / "vq_decoder.onnx").read_bytes()}),
        "vq_decoder.onnx: not the vq_decoder graph this folder needs (its input f_hat has 8 at axis 2, not 16)",
    ),
    (
        "graph-not-onnx-resealed",
        lambda f: replace_graphs(f, {"vq_decoder.onnx": b"\xff" * 64}),
        "vq_decoder.onnx: not a readable ONNX graph",
    ),
    (
        "graph-body-unparsable-resealed",
        lambda f: damage_body(f / "scale_update.onnx", b"Reshape"),
        "scale_update.onnx: cannot be loaded",
    ),
    (
        "graph-body-malformed-resealed",
        lambda f: misname_op(f / "scale_update.onnx", b"Reshape"),
        "scale_update.onnx: cannot be loaded",
    ),
    (
        "graph-sha256-missing",
        lambda f: edit_manifest(f, lambda d: d["graphs"]["text_encoder"].pop("sha256"), reseal=True),
        "graph text_encoder must have exactly the keys",
    ),
    (
        "file-table-escapes",
        lambda f: edit_manifest(f, lambda d: d["files"].__setitem__("../x", "ab" * 32), reseal=True),
        "'files' lists '../x', which is not a path inside the folder",
    ),
    (
        "format-newer",
        lambda f: edit_manifest(f, setter("format_version", 99), reseal=True),
        "manifest version 99 is newer than this star-deploy reads (2); upgrade star-deploy",
    ),
    (
        "format-older",
        lambda f: edit_manifest(f, setter("format_version", 1), reseal=True),
        "manifest version 1 is older than this star-deploy reads (2)",
    ),
]
ARTIFACT_COMMANDS = {
    "run": ["run", "a red square", "--backend", "onnxruntime", "--artifacts", "{art}", "-o", "{out}/x.png"],
    "check": ["check", "{art}"],
    "quantize": ["quantize", "{art}", "--out", "{out}/q"],
    "parity": ["parity", "--artifacts", "{art}", "--weights", G, "--resolution", "256", "--json", "{out}/r.json"],
}


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", list(ARTIFACT_COMMANDS))
@pytest.mark.parametrize(("change", "fragment"), [c[1:] for c in ARTIFACT_CASES], ids=[c[0] for c in ARTIFACT_CASES])
def test_damaged_artifacts_fail_cleanly(command, change, fragment, artifacts_fp32, tmp_path):
    art, out = tmp_path / "art", tmp_path / "out"
    shutil.copytree(artifacts_fp32, art)
    out.mkdir()
    change(art)
    before = contents(art)
    result = runner.invoke(app, [a.format(art=art, out=out) for a in ARTIFACT_COMMANDS[command]])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr, result.stderr
    assert "pass the resolution" not in result.stderr and "repo id" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert files_below(out) == set(), "an output was left behind"
    assert contents(art) == before, "the artefact folder changed"


def test_save_pretrained_refuses_a_folder_inside_the_release_it_was_loaded_from(tmp_path):
    from star_deploy import StarPipeline
    from star_deploy.errors import OutputError

    release = tmp_path / "release"
    shutil.copytree(DEMO_WEIGHTS, release)
    pipe = StarPipeline.from_pretrained(release, backend="torch", resolution=128)
    for out in (release / "art", release, tmp_path):
        with pytest.raises(OutputError, match=r"save_pretrained folder .* overlaps the input"):
            pipe.save_pretrained(out, overwrite=True)
    demo = StarPipeline.from_pretrained(None, backend="torch")
    with pytest.raises(OutputError, match=r"overlaps the input .*demo/weights"):
        demo.save_pretrained(DEMO_WEIGHTS / "art")
    assert sorted(p.name for p in release.iterdir()) == sorted(p.name for p in DEMO_WEIGHTS.iterdir())


@pytest.mark.parametrize(
    ("out", "overwrite"),
    [("{art}", True), ("{art}/q", False), ("{art}/tokenizer", True)],
    ids=["is", "inside", "inside-sub"],
)
def test_quantize_refuses_an_output_overlapping_its_input(out, overwrite, artifacts_fp32, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifacts_fp32, art)
    before = contents(art)
    args = ["quantize", str(art), "--out", out.format(art=art)] + (["--overwrite"] if overwrite else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "overlaps the input" in result.stderr, result.output
    assert contents(art) == before


def test_missing_external_data_is_refused_by_every_reader(artifacts_external, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(artifacts_external, art)
    (art / "transformer_step.onnx.data").unlink()
    for args in (
        ["check", str(art)],
        ["quantize", str(art), "--out", str(tmp_path / "q")],
        ["run", "a", "--backend", "onnxruntime", "--artifacts", str(art), "-o", str(tmp_path / "x.png")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "transformer_step.onnx.data: missing" in result.stderr and "ok" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_artifacts_of_other_weights_are_named_by_parity(artifacts_fp32, bad, tmp_path):
    """Same shape, other weights: parity names the source mismatch instead of failing the export's thresholds."""
    args = [
        "parity",
        "--artifacts",
        str(artifacts_fp32),
        "--weights",
        f"{bad}/other_star",
        "--resolution",
        "256",
        "--prompt",
        "a",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert (
        f"was exported from star.pth, not from {bad}/other_star/star.pth; pass the weights it was exported from"
        in result.stderr
    )


@pytest.mark.parametrize("name", ["manifest.json", "vq_decoder.onnx", "tokenizer/vocab.json"])
def test_unreadable_artifact_files_are_named(name, artifacts_fp32, shared):
    art = shared / "art"
    shutil.copytree(artifacts_fp32, art)
    (art / name).chmod(0)
    for args in (["check", str(art)], ["run", "a", "--artifacts", str(art), "-o", str(shared / "x.png")]):
        result = run_cli(*args, cwd=shared)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{name}: cannot be read (Permission denied); fix its permissions" in result.stderr, result.stderr
    assert sorted(p.name for p in shared.iterdir()) == ["art"]


def test_graph_contract_checks_names_dtypes_and_shapes(artifacts_fp32):
    """What the load check compares: a graph file's I/O names, element types, ranks and fixed sizes."""
    from dataclasses import replace

    from star_deploy.artifacts.graph_io import io_problem
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.artifacts.onnx_io import read_header

    manifest = load_manifest(artifacts_fp32)
    spec = manifest.graphs["scale_update"]
    header = read_header(manifest.path("scale_update"))
    assert io_problem(header, spec) is None
    tokens = header.inputs[0]
    header.inputs[0] = replace(tokens, dtype="int32")
    assert io_problem(header, spec) == "its input tokens is int32, not int64"
    header.inputs[0] = replace(tokens, shape=("batch", "side"))
    assert io_problem(header, spec) == "its input tokens has 2 dimensions, not 3"
    header.inputs[0] = tokens
    f_hat = header.inputs[1]
    assert f_hat.shape[1:] == (8, 16, 16)
    header.inputs[1] = replace(f_hat, shape=("batch", 9, None, "h"))
    assert io_problem(header, spec) == "its input f_hat has 9 at axis 1, not 8"
    header.inputs[1] = replace(f_hat, shape=("batch", 8, None, "h"))
    assert io_problem(header, spec) is None, "open and symbolic sizes are not compared"
    header.inputs[0] = replace(tokens, name="ids")
    assert io_problem(header, spec) == "its inputs lack tokens and include unexpected ids"
    other = io_problem(header, manifest.graphs["vq_decoder"])
    assert other == "its inputs include unexpected ids, upsample, downsample"


def test_every_extra_an_error_names_exists():
    import tomllib

    from star_deploy.core.extras import EXTRAS, NOTES, missing_extra

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {extra for _, extra in EXTRAS.values()} | set(NOTES) <= set(declared)
    message = str(missing_extra(ModuleNotFoundError(name="tensorrt"), "--backend tensorrt"))
    assert "star-deploy[tensorrt-cu12]" in message and "star-deploy[tensorrt-cu13]" in message


def test_parity_records_without_polygraphy_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["parity", "--artifacts", str(DEMO_GRAPHS), "--save-outputs", "ref.json"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error: star-deploy parity needs Polygraphy: pip install 'star-deploy[torch]' "
        "(the base install runs exported graphs with --backend onnxruntime)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_resolution_is_read_from_the_weights_scale_count_where_the_name_does_not_state_it(tmp_path):
    from star_deploy.errors import ConfigError
    from star_deploy.release.finder import choose_resolution, release_paths

    copy = tmp_path / "my-demo"
    shutil.copytree(DEMO_WEIGHTS, copy)
    assert choose_resolution(release_paths(copy, None, None, None), None) == 128  # 6 scales: only 128 has them
    with pytest.raises(ConfigError, match=r"pass --resolution \(128, 256, 512 or 1024\)"):
        choose_resolution(release_paths(Path(G), None, None, None), None)  # a .pth: its header is not read


def test_a_hub_id_that_cannot_be_reached_says_so_not_that_downloads_are_off(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("huggingface_hub")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "star_deploy", "run", "a", "--weights", "someorg/somemodel", "-o", "x.png"]
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "the Hub cannot be reached" in done.stderr and "HF_HUB_OFFLINE" not in done.stderr, done.stderr
