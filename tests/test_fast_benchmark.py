"""benchmarks/fast_modes.py's timing and quality columns, on the golden tiny model (the timings are not checked)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from star_deploy.core.fast import EXACT, FastMode

ROOT = Path(__file__).resolve().parent.parent
CUT = 7


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fast_modes():
    return load_benchmark("fast_modes")


def test_variants_take_turns_and_record_wall_and_cpu_time(fast_modes, torch_pipeline):
    modes = [EXACT, FastMode(2, cfg_until=CUT, keep=(0.5, 0.25))]
    variants = [fast_modes.Variant(m.label(), torch_pipeline, m, "fp32") for m in modes]
    fast_modes.time_round_robin(variants, repeat=1, warmup=1)
    assert [len(v.walls) for v in variants] == [1, 1]  # the warm-up is not timed
    assert all(t > 0 for v in variants for t in v.walls + v.cpus)
    config, exact, fast = torch_pipeline.config, variants[0].last, variants[1].last
    assert fast_modes.first_changed_scale(config, exact.tokens, exact.tokens) is None
    assert fast_modes.first_changed_scale(config, fast.tokens, exact.tokens) in (None, *range(CUT, 10))
    assert fast_modes.psnr(exact.images, exact.images) == float("inf")
    assert fast_modes.ssim(exact.images, exact.images) == pytest.approx(1.0)
    assert 0 < fast_modes.ssim(fast.images, exact.images) <= 1.0


def test_export_folders_are_named_per_model_or_refused(fast_modes, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    folders = fast_modes.parse_folders([f"256-d16={tmp_path}", f"256-d16:int8={tmp_path}"])
    assert folders == {"256-d16": tmp_path, "256-d16:int8": tmp_path}
    for bad in (str(tmp_path), f"256-d16={tmp_path / 'missing'}"):
        with pytest.raises(SystemExit, match="give MODEL=FOLDER"):
            fast_modes.parse_folders([bad])
