"""benchmarks/gpu.sh, the script a lent GPU runs, and the tree trim it runs from: checked on the CPU.

``gpu.sh --dry-run device`` runs the lent GPU's call end to end at tiny sizes (about 40 s of CPU).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from star_deploy.release.random_weights import BUNDLED_TOKENIZER

ROOT = Path(__file__).resolve().parent.parent
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
DEVICE_TREE = ROOT / "benchmarks" / "device_tree.sh"


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This interpreter first on PATH (the script calls python3), results and caches under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUNS", "BACKENDS", "REPEAT", "STEP_TIMEOUT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OUT=str(tmp_path / "out"), COMPILE_CACHE=str(tmp_path / "compile"), **extra)
    return env


def run_script(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_of_the_device_call_passes_on_the_cpu(tmp_path):
    done = run_script(["--dry-run", "device"], script_env(tmp_path), timeout=900)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "== exit" not in log and "== over" not in log
    assert "tests collected" in log  # the CUDA and TensorRT tests are collected, not run
    report = json.loads((tmp_path / "out" / "bench_tiny_b1.json").read_text())
    rows = report["backends"]
    assert set(rows) == {"torch-eager", "torch"}
    assert rows["torch"]["fidelity"]["teacher_forced_token_agreement"] == 1.0
    assert (tmp_path / "out" / "cpu_proxies_ops.json").is_file()
    results = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert (tmp_path / "out" / "fast_modes_demo.json").is_file()  # every fast-mode rung, the demo in a dry run
    assert results == ["bench_tiny_b1.json", "cpu_proxies_ops.json", "fast_modes_demo.json", "log.txt"]  # no cache


def test_dry_run_of_the_fast_modes_passes_on_the_cpu(tmp_path):
    """``gpu.sh --dry-run fast``: the torch rungs, then the TensorRT rungs' steps (readiness of an export with its
    pruned step, one bench per rung on the same folder), ONNX Runtime standing in for TensorRT (about 30 s of CPU)."""
    done = run_script(["--dry-run", "fast"], script_env(tmp_path), timeout=900)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "== exit" not in log and "== over" not in log
    assert re.search(r"transformer_step_pruned +\d+ nodes, +\d+ op types  ok", log)
    for level in (0, 1, 2):
        report = json.loads((tmp_path / "out" / f"fast_onnxruntime_demo_fast{level}.json").read_text())
        assert report["settings"]["fast"]["level"] == level and list(report["backends"]) == ["onnxruntime"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "fast_modes_demo.json",
        *(f"fast_onnxruntime_demo_fast{level}.json" for level in (0, 1, 2)),
        "log.txt",
    ]


def test_every_step_is_bounded_in_time(tmp_path):
    done = run_script(["--dry-run", "bench"], script_env(tmp_path, STEP_TIMEOUT="0.05"), timeout=120)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 1
    assert log.count("== over 0.05 s (STEP_TIMEOUT), stopped") == 2  # the versions, then the one bench run


def test_an_unknown_mode_is_a_usage_error(tmp_path):
    done = run_script(["--dry-run", "everything"], script_env(tmp_path), timeout=30)
    assert done.returncode == 2
    assert "usage: benchmarks/gpu.sh [--dry-run] [tests|bench|fast|all|device]" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """A git repository with device_tree.sh and a placeholder byte for every file of the demo."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(DEVICE_TREE, repo / "benchmarks")
    demo = BUNDLED_TOKENIZER.parents[2]
    for path in demo.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            target = repo / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"x")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def test_the_trimmed_tree_keeps_the_tokenizer_of_random_weight_models(tree_copy):
    tokenizer = tree_copy / BUNDLED_TOKENIZER.relative_to(ROOT)
    weights = tokenizer.parents[1]
    before = sorted(p.relative_to(tree_copy) for p in tree_copy.rglob("*") if ".git" not in p.parts)
    subprocess.run(["bash", "benchmarks/device_tree.sh", "trim"], cwd=tree_copy, check=True, capture_output=True)
    assert sorted(p.name for p in tokenizer.iterdir()) == sorted(p.name for p in BUNDLED_TOKENIZER.iterdir())
    assert not (weights / "star.safetensors").exists() and not (weights / "CLIP" / "text_encoder").exists()
    assert not (weights.parent / "graphs").exists()
    subprocess.run(["bash", "benchmarks/device_tree.sh", "restore"], cwd=tree_copy, check=True, capture_output=True)
    after = sorted(p.relative_to(tree_copy) for p in tree_copy.rglob("*") if ".git" not in p.parts)
    assert after == before
