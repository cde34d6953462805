"""Memory estimates against what real calls use, and the refusal of a call that cannot fit before it allocates."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from star_deploy import StarPipeline
from star_deploy.errors import MemoryBudgetError

MEASURE = """
import json, sys
from star_deploy import StarPipeline
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
pipe = StarPipeline.from_pretrained(None)
pipe.set_progress_bar_config(disable=True)
pipe("warm-up")
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current resident set
n = int(sys.argv[1])
pipe("a red circle on a blue background", num_images_per_prompt=n)
print(json.dumps({"peak": status("VmHWM:") - before, "estimate": pipe.loop.budget.need(n, n).total}))
"""


def measured(batch: int) -> dict[str, int]:
    """The peak resident memory a call of ``batch`` images adds to a loaded demo pipeline, and its estimate."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(batch)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("batch", [16, 32, 64])
def test_call_estimate_is_above_the_measured_peak_and_within_a_quarter_of_it(batch):
    m = measured(batch)
    assert m["peak"] <= m["estimate"] <= 1.25 * m["peak"], m


@pytest.fixture(scope="module")
def demo() -> StarPipeline:
    pipe = StarPipeline.from_pretrained(None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "call",
    [
        {"prompt": "a red circle", "num_images_per_prompt": 1024},
        {"prompt": ["a red circle"] * 512, "num_images_per_prompt": 2, "batch_size": 1024},
        {"prompt": ["a"] * 1024, "batch_size": 512},
    ],
)
def test_a_call_that_cannot_fit_is_refused_before_it_allocates(demo, call, monkeypatch):
    from star_deploy.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 8 * memory.GIB)
    start = time.perf_counter()
    refusal = r"1024 image\(s\) at 128 px in batches of .* needs about .* only 8.0 GiB is free on cpu; ask for fewer"
    with pytest.raises(MemoryBudgetError, match=refusal):
        demo(**call)
    assert time.perf_counter() - start < 1.0  # nothing was generated


def test_many_images_in_small_batches_are_checked_for_the_images_kept(demo, monkeypatch):
    from star_deploy.runtime import memory

    need = demo.loop.budget.need(8, 4096)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": need.total - 1)
    with pytest.raises(MemoryBudgetError, match=r"4096 image\(s\) .* in batches of 8 .* images "):
        demo(["a"] * 4096, batch_size=8)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": need.total + 1)
    assert demo.loop.budget.check(8, 4096) is None


def test_run_refuses_prompts_that_cannot_fit_before_writing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from star_deploy.cli import app
    from star_deploy.runtime import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": memory.GIB)
    out = tmp_path / "images"
    result = CliRunner().invoke(app, ["run", *["a red circle"] * 64, "--batch-size", "64", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "at 128 px needs about" in result.output and "only 1.0 GiB is free on cpu" in result.output
    assert "--batch-size" in result.output and not out.exists()
