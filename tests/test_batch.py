"""`star-deploy batch`: a prompt file to PNGs and an index, equal to the pipeline's images, resumable, on Ray too.

Cost on the shared 2-core machine: all 18 tests about 1 min 45 s wall at load average 8 (the Ray cluster test
54 s of it, the SIGTERM test 22 s, the 40-image reference run 16 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import (
    REPO,
    batch_process,
    chunks_of,
    expected_images,
    folder_bytes,
    forty_image_lines,
    kill_one_worker,
    listening_addresses,
    processes_mentioning,
    read_index,
    two_node_cluster,
    wait_for_lines,
    write_jsonl,
)
from typer.testing import CliRunner

from star_deploy.batch import BatchOptions, run_batch
from star_deploy.batch.model import worker_options, worker_plan
from star_deploy.batch.plan import ImageTask, ItemSampling, plan_chunks
from star_deploy.cli import app
from star_deploy.core.call_options import CallOptions
from star_deploy.demo import DEMO_GRAPHS
from star_deploy.errors import ConfigError
from star_deploy.files.images import read_png
from star_deploy.runtime.plan import LoadOptions, plan_load

BATCH = ["--batch-size", "4"]
HAS_RAY_DATA = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None


def invoke(*args: str):
    return CliRunner().invoke(app, ["batch", *args])


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "forty.jsonl", forty_image_lines())


@pytest.fixture(scope="module")
def local_run(forty, tmp_path_factory) -> Path:
    """The 40 images generated in-process, uninterrupted: the reference of the other runs."""
    out = tmp_path_factory.mktemp("local") / "out"
    result = invoke(str(forty), "--out", str(out), *BATCH, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"], summary["total"]) == (40, 0, 0, 40)
    return out


def test_images_equal_the_pipeline_and_the_index_is_complete(local_run):
    from star_deploy import StarPipeline

    pipe = StarPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    rows = read_index(local_run)
    expected = expected_images(forty_image_lines())
    assert [(r["id"], r["image"], r["prompt"], r["seed"]) for r in rows] == [
        (e["id"], e["image"], e["prompt"], e["seed"]) for e in expected
    ]
    assert len({r["file"] for r in rows}) == 40 and all(r["backend"] == "onnxruntime" for r in rows)
    assert sorted(str(p.relative_to(local_run)) for p in local_run.rglob("*.png")) == sorted(r["file"] for r in rows)
    for row in rows:
        assert row["sha256"] == hashlib.sha256((local_run / row["file"]).read_bytes()).hexdigest()
    files = iter(rows)
    for chunk in chunks_of(expected, 4):
        cfg, top_k, top_p = chunk[0]["settings"]
        images = pipe([e["prompt"] for e in chunk], seed=[e["seed"] for e in chunk], guidance_scale=cfg,
                      top_k=top_k, top_p=top_p, batch_size=len(chunk)).images  # fmt: skip
        for image in images:
            row = next(files)
            pixels, text = read_png(local_run / row["file"])
            assert np.array_equal(pixels, np.asarray(image)), row["file"]
            assert text["seed"] == str(row["seed"]) and text["prompt"] == row["prompt"] and text["id"] == row["id"]
            assert float(text["cfg"]) == row["cfg"] == (cfg if cfg is not None else pipe.defaults.cfg)


def test_sigterm_stops_after_the_images_in_flight_and_a_rerun_finishes(forty, local_run, tmp_path):
    out = tmp_path / "out"
    args = [str(forty), "--out", str(out), *BATCH]
    proc = batch_process(args)
    wait_for_lines(out, 8, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-800:]
    done = len(read_index(out))
    assert f"interrupted by SIGTERM, {done} done" in stdout and "Traceback" not in stderr
    assert 8 <= done < 40, "the job ended before the signal"
    assert len(list(out.rglob("*.png"))) == done, "an image without its index line, or the reverse"
    assert not [p for p in out.rglob(".*") if ".partial-" in p.name], "a temporary file was left behind"

    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (40 - done, done, 0)
    assert folder_bytes(out) == folder_bytes(local_run), "the resumed folder differs from an uninterrupted run's"


def test_geneval_layout_is_what_its_evaluation_reads(tmp_path):
    lines = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a photo of a red cup"},
        {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
         "prompt": "a photo of two dogs"},
    ]  # fmt: skip
    prompts = write_jsonl(tmp_path / "evaluation_metadata.jsonl", lines)
    out = tmp_path / "geneval"
    result = invoke(str(prompts), "--out", str(out), "--layout", "geneval", "--images-per-prompt", "2", *BATCH)
    assert result.exit_code == 0, result.output
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit()):  # as evaluate_images.py walks
        with open(folder / "metadata.jsonl") as f:
            metadata = json.load(f)
        samples = sorted(p.name for p in (folder / "samples").iterdir() if p.is_file())
        found[folder.name] = (metadata, samples)
    assert found == {f"{i:05d}": (line, ["0000.png", "0001.png"]) for i, line in enumerate(lines)}
    pixels, text = read_png(out / "00002" / "samples" / "0001.png")
    assert pixels.shape == (128, 128, 3) and text["prompt"] == "a photo of two dogs" and text["seed"] == "5"


def test_rerun_with_other_settings_or_prompts_is_refused_unless_overwrite(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n\na green triangle\n")
    out = tmp_path / "out"
    assert invoke(str(prompts), "-o", str(out)).exit_code == 0
    assert sorted(r["prompt"] for r in read_index(out)) == ["a blue square", "a green triangle", "a red circle"]
    before = folder_bytes(out)

    result = invoke(str(prompts), "-o", str(out), "--seed", "7")
    assert result.exit_code == 2 and "--seed: was 0, now 7" in result.output
    prompts.write_text("a red circle\na blue square\n\na white triangle\n")
    result = invoke(str(prompts), "-o", str(out))
    assert result.exit_code == 2 and "line 4 was 'a green triangle', now 'a white triangle'" in result.output
    assert folder_bytes(out) == before, "a refused rerun changed the folder"

    (out / "images" / "0000" / "000001_0000.png").write_bytes(b"not an image")
    prompts.write_text("a red circle\na blue square\n\na green triangle\n")
    result = invoke(str(prompts), "-o", str(out))
    assert result.exit_code == 2 and "000001_0000.png: changed since the job wrote it" in result.output

    result = invoke(str(prompts), "-o", str(out), "--seed", "7", "--overwrite")
    assert result.exit_code == 0, result.output
    assert [r["seed"] for r in read_index(out)] == [7, 8, 9]


def test_a_deleted_image_is_generated_again(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    assert invoke(str(prompts), "-o", str(out)).exit_code == 0
    before = folder_bytes(out)
    (out / "images" / "0000" / "000000_0000.png").unlink()
    result = invoke(str(prompts), "-o", str(out), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["done"] == 1
    assert folder_bytes(out) == before


def test_fast_images_equal_the_pipeline_and_a_changed_fast_is_refused(tmp_path):
    """--fast travels with each chunk: the images are StarPipeline(fast=...)'s, recorded in the PNG and the index."""
    from star_deploy import StarPipeline

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle on a blue background\na small yellow triangle on black\n")
    out = tmp_path / "out"
    result = invoke(str(prompts), "-o", str(out), "--fast", "1", "--cfg-until", "2", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    pipe = StarPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    lines = prompts.read_text().split("\n")[:2]
    fast = pipe(lines, seed=[0, 1], fast=1, cfg_until=2, batch_size=2)
    exact = pipe(lines, seed=[0, 1], batch_size=2)
    assert fast.fast.label() == "fast 1, cfg-until 2"
    rows = read_index(out)
    assert [r["fast"] for r in rows] == ["fast 1, cfg-until 2"] * 2
    for row, image in zip(rows, fast.images):
        pixels, text = read_png(out / row["file"])
        assert np.array_equal(pixels, np.asarray(image)) and text["fast"] == "fast 1, cfg-until 2"
    assert not np.array_equal(fast.tokens, exact.tokens)
    before = folder_bytes(out)
    result = invoke(str(prompts), "-o", str(out), "--batch-size", "2")
    assert result.exit_code == 2 and "--fast: was 1, now 0" in result.output
    assert folder_bytes(out) == before


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("empty.txt", "\n\n", [], "empty.txt: holds no prompt"),
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', [], "bad.jsonl line 2: not JSON"),
        ("neg.jsonl", '{"prompt": "a", "seed": -1}\n', [], "neg.jsonl line 1: seed must be in [0, 2**63)"),
        ("zero.jsonl", '{"prompt": "a", "n": 0}\n', [], "zero.jsonl line 1: n must be >= 1, got 0"),
        ("ok.txt", "a red circle\n", ["--seed", "-3"], "--seed: seed must be in [0, 2**63)"),
        ("ok.txt", "a red circle\n", ["--workers", "2"], "apply to --ray"),
        ("ok.txt", "a red circle\n", ["--dtype", "float16"], "dtype applies to backend='torch', not to backend='onnx"),
        ("ok.txt", "a red circle\n", ["--ray", "DEAD"], "nothing answers there"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, name, content, extra, message):
    (tmp_path / name).write_text(content)
    out = tmp_path / "out"
    extra = [dead_address() if e == "DEAD" else e for e in extra]
    start = time.monotonic()
    result = invoke(str(tmp_path / name), "-o", str(out), *extra)
    assert time.monotonic() - start < 30
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cfg-until", "9"], "--cfg-until 9: guidance runs on the first K scales; choose K from 1 to 6"),
        (["--keep", "0.5,0.5,0.5,0.5,0.5,0.5"], "--keep has 6 ratios; give at most 5"),
    ],
)
def test_a_ray_job_checks_the_fast_knobs_on_the_head_before_ray_starts(tmp_path, flags, message):
    import ray

    (tmp_path / "p.txt").write_text("a red circle\n")
    out = tmp_path / "out"
    result = invoke(str(tmp_path / "p.txt"), "-o", str(out), "--ray", "auto", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and not ray.is_initialized()


def test_the_decoder_dtype_is_a_job_setting_only_where_given(tmp_path):
    """A job run with --decoder-dtype is another job; jobs recorded without the option keep their settings."""
    from star_deploy.batch.record import setting_difference

    base = BatchOptions(tmp_path / "p.txt", tmp_path / "out", load=LoadOptions(backend="torch"))
    lowered = replace(base, load=replace(base.load, decoder_dtype="bfloat16"))
    plan = plan_load(base.load)
    assert "decoder_dtype" not in base.settings(plan)
    assert (
        setting_difference(base.settings(plan), lowered.settings(plan)) == '--decoder-dtype: was null, now "bfloat16"'
    )


def test_an_unwritable_out_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n")
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "out", tmp_path / "file"):
        result = invoke(str(tmp_path / "p.txt"), "-o", str(out))
        assert result.exit_code == 2 and "file" in result.output and len(result.output.strip().splitlines()) == 1


def test_plan_chunks_follow_the_batch_size_and_the_settings():
    sampling = [ItemSampling(), ItemSampling(), ItemSampling(cfg=1.0), ItemSampling(), ItemSampling(), ItemSampling()]
    tasks = [ImageTask(i, str(i), 0, "p", i, s, f"{i}.png", "k") for i, s in enumerate(sampling)]
    assert [[t.ordinal for t in c] for c in plan_chunks(tasks, 2)] == [[0, 1], [2], [3, 4], [5]]


def test_worker_load_options_travel_pickled_and_plan_alike_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(DEMO_GRAPHS.parent)
    plan = plan_load(LoadOptions(artifacts=Path(DEMO_GRAPHS.name)))
    sent = pickle.loads(pickle.dumps(worker_options(plan)))
    monkeypatch.chdir(tmp_path)
    again = worker_plan(sent, 1)
    assert (again.backend, again.device, again.artifacts) == (plan.backend, plan.device, DEMO_GRAPHS.resolve())
    assert again.options.threads == 1, "ONNX Runtime threads do not default to the worker's CPUs"
    assert worker_plan(replace(sent, threads=1), 0).options.threads == 1, "--threads given was not kept"


def test_a_list_of_seeds_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n")
    options = BatchOptions(tmp_path / "p.txt", tmp_path / "out", call=CallOptions(seed=[1, 2]))
    with pytest.raises(ConfigError, match="seed: give one integer"):
        run_batch(options)
    assert not (tmp_path / "out").exists()


def test_batch_runs_without_torch_and_without_ray(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle on a blue background\n")
    code = textwrap.dedent(
        """
        import sys
        sys.modules.update(torch=None, transformers=None, onnx=None, safetensors=None, ray=None)
        sys.argv = ["star-deploy", "batch", "p.txt", "--out", "out"]
        from star_deploy.cli import entry
        entry()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-800:]
    assert "1 done, 0 skipped, 0 failed of 1 images" in result.stdout
    assert (tmp_path / "out" / "images" / "0000" / "000000_0000.png").is_file()


@pytest.mark.ray
@pytest.mark.skipif(not HAS_RAY_DATA, reason="needs star-deploy[batch] (Ray Data)")
def test_two_node_ray_cluster_with_a_worker_killed_gives_the_local_images(forty, local_run, tmp_path):
    out = tmp_path / "out"
    with two_node_cluster() as (cluster, temp):
        nodes = [cluster.head_node, *cluster.worker_nodes]
        raylets = [n.all_processes["raylet"][0].process.pid for n in nodes]
        proc = batch_process([str(forty), "--out", str(out), *BATCH, "--ray", cluster.address, "--workers", "2"])
        done_at_kill = wait_for_lines(out, 4, proc)
        kill_one_worker(raylets, "MapWorker")
        listening = listening_addresses(processes_mentioning(temp))
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-1500:]
    assert done_at_kill < 40, "the job ended before a worker was killed"
    assert listening and listening <= {"127.0.0.1"}, f"the cluster listens on {listening}"
    assert "40 done, 0 skipped, 0 failed of 40 images" in stdout
    rows = read_index(out)
    assert len(rows) == 40 and len({r["file"] for r in rows}) == 40, "an image missing or indexed twice"
    assert {r["node"] for r in rows} == {n.node_id for n in nodes}, "the work was not spread over both nodes"
    local = folder_bytes(local_run)
    ray = folder_bytes(out)
    assert ray.keys() == local.keys()
    assert all(ray[k] == local[k] for k in ray if k != "index.jsonl"), "Ray's images differ from the local run's"
    strip = [{k: v for k, v in r.items() if k != "node"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "node"} for r in read_index(local_run)]
