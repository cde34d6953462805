"""The Python API: from_pretrained on every kind of folder, call conventions, callbacks, output types."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from api_helpers import demo_with_defaults, hub_cache
from conftest import GOLDEN
from PIL import Image

from star_deploy import StarPipeline
from star_deploy.artifacts.manifest import MANIFEST
from star_deploy.commands.export import check_export
from star_deploy.core.config import SamplingConfig
from star_deploy.core.fast import EXACT
from star_deploy.demo import DEMO_WEIGHTS
from star_deploy.errors import ArtifactError, ConfigError, WeightsError
from star_deploy.release.random_weights import random_model
from star_deploy.runtime.plan import LoadOptions
from star_deploy.serve.model import ImageModel, Job, to_pixels
from tools.demo_training.evaluate import Reading, read_image

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
    """Output type "pt" holds the pixels of "np" at the same seed, channels first, float32 on the CPU."""
    import torch

    out = golden_pipe("a red car.", seed=4, output_type="pt")
    assert isinstance(out.images, torch.Tensor) and tuple(out.images.shape) == (1, 3, 256, 256)
    assert out.images.dtype == torch.float32 and out.images.device.type == "cpu"
    pixels = golden_pipe("a red car.", seed=4, output_type="np").images
    assert np.array_equal(out.images.numpy().transpose(0, 2, 3, 1), pixels)


def test_artifact_folder_defaults_to_onnxruntime(artifacts_fp32, golden_pipe):
    pipe = StarPipeline.from_pretrained(artifacts_fp32)
    assert pipe.backend_name == "onnxruntime" and pipe.precision == "fp32"
    got = pipe("a red car.", seed=1, output_type="np").images
    want = golden_pipe("a red car.", seed=1, output_type="np").images
    assert np.abs(got - want).max() <= 1e-4


def test_hub_cache_folder_resolves_its_snapshot(tmp_path, golden_pipe):
    pipe = StarPipeline.from_pretrained(hub_cache(tmp_path), resolution=256)
    a = pipe("a red car.", seed=2, output_type="np").images
    b = golden_pipe("a red car.", seed=2, output_type="np").images
    assert np.abs(a - b).max() <= 1e-6


def test_hub_repo_id_loads_from_the_cache_offline(tmp_path, monkeypatch, golden_pipe):
    hub_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    pipe = StarPipeline.from_pretrained("taocrayon/STAR", resolution=256)
    a = pipe("a red car.", seed=2, output_type="np").images
    assert np.abs(a - golden_pipe("a red car.", seed=2, output_type="np").images).max() <= 1e-6
    with pytest.raises(WeightsError, match=re.escape("taocrayon/OTHER: no such local folder, and not in the Hugging")):
        StarPipeline.from_pretrained("taocrayon/OTHER")


def test_repo_id_with_local_files_only_names_the_repo(tmp_path):
    with pytest.raises(WeightsError, match=r"someone/missing: .*\(local_files_only\)"):
        StarPipeline.from_pretrained("someone/missing", cache_dir=tmp_path, local_files_only=True)


def stop_with(value):
    """A callback returning ``value`` at every scale."""
    return lambda progress: value


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p(123), "prompt must be a str"),
        (lambda p: p([]), "prompt must be a str"),
        (lambda p: p(["x", 5]), "prompt must be a str or a non-empty list of str"),
        (lambda p: p(["x", "a \udcff"]), "prompt 1 is not valid UTF-8 text"),
        (lambda p: p("x", output_type="jpeg"), "output_type must be one of pil, np, pt, got 'jpeg'"),
        (lambda p: p("x", output_type=["np"]), "output_type must be one of"),
        (lambda p: p("x", seed=[1, 2]), "2 seeds for 1 images"),
        (lambda p: p(["x", "y"], seed=[0, -5]), "seed[1] must be in [0, 2**63), got -5"),
        (lambda p: p(["x", "y"], seed=[0, 2**64 + 3]), "seed[1] must be in [0, 2**63)"),
        (lambda p: p(["x", "y"], seed=[0, "1"]), "seed[1] must be an integer, got str"),
        (lambda p: p(["x", "y"], seed=[0, 1.0]), "seed[1] must be an integer, got float"),
        (lambda p: p("x", seed=-1), "seed must be in [0, 2**63), got -1"),
        (lambda p: p(["x", "y"], seed=2**63 - 1), "image 1 would use seed 9223372036854775808"),
        (lambda p: p("x", seed="5"), "seed must be an integer or a list of integers, got str"),
        (lambda p: p("x", seed=True), "seed must be an integer or a list of integers, got bool"),
        (lambda p: p("x", seed=1.5), "seed must be an integer or a list of integers, got float"),
        (lambda p: p("x", top_k="5"), "top_k must be an integer, got str"),
        (lambda p: p("x", top_k=True), "top_k must be an integer, got bool"),
        (lambda p: p("x", top_k=5.0), "top_k must be an integer, got float"),
        (lambda p: p("x", top_k=-1), "top-k must be >= 0"),
        (lambda p: p("x", num_images_per_prompt=0), "num_images_per_prompt must be >= 1"),
        (lambda p: p("x", num_images_per_prompt=True), "num_images_per_prompt must be an integer, got bool"),
        (lambda p: p("x", num_images_per_prompt=2.0), "num_images_per_prompt must be an integer, got float"),
        (lambda p: p("x", batch_size=0), "batch_size must be >= 1, got 0"),
        (lambda p: p("x", batch_size=True), "batch_size must be an integer, got bool"),
        (lambda p: p("x", batch_size="2"), "batch_size must be an integer, got str"),
        (lambda p: p("x", guidance_scale="4"), "guidance_scale must be a real number, got str"),
        (lambda p: p("x", guidance_scale=True), "guidance_scale must be a real number, got bool"),
        (lambda p: p("x", guidance_scale=float("nan")), "cfg must be a finite number"),
        (lambda p: p("x", top_p="0.8"), "top_p must be a real number, got str"),
        (lambda p: p("x", top_p=[0.8]), "top_p must be a real number, got list"),
        (lambda p: p("x", top_p=0.0), "top-p must be in"),
        (lambda p: p("x", sampler="fast"), "sampler must be one of portable, official, got 'fast'"),
        (lambda p: p("x", callback_on_scale_end="stop"), "callback_on_scale_end must be callable"),
        (lambda p: p("x", callback_on_scale_end=stop_with("no")), "return value must be True or False, got str"),
        (lambda p: p("x", callback_on_scale_end=stop_with(0)), "return value must be True or False, got int"),
        (
            lambda p: p("x", callback_on_scale_end=lambda progress: progress.preview("jpeg")),
            "output_type must be one of pil, np, pt, got 'jpeg'",
        ),
    ],
)
def test_bad_calls_are_refused_clearly(golden_pipe, call, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        call(golden_pipe)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "foo"}, "backend: unknown backend 'foo'; choose one of torch, onnxruntime, tensorrt"),
        ({"backend": 1}, "backend must be a str or None, got int"),
        ({"threads": -1}, "threads=-1: choose 0 (one per physical core) to"),
        ({"threads": 10**6}, "threads=1000000: choose 0"),
        ({"threads": 1.5}, "threads must be an integer, got float"),
        ({"threads": True}, "threads must be an integer, got bool"),
        ({"session_options": "fast"}, "session_options must be an onnxruntime.SessionOptions or None, got str"),
        ({"provider_options": ["x"]}, "provider_options must be a dict or None, got list"),
        ({"provider": ""}, "provider must name an execution provider"),
        ({"provider": 1}, "provider must be a str or None, got int"),
        ({"device": 0}, "device must be a str or None, got int"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"dtype": 16}, "dtype must be a str or None, got int"),
        ({"dtype": "float8"}, "unknown dtype 'float8'"),
        ({"resolution": "256"}, "resolution must be an integer, got str"),
        ({"cuda_graphs": "yes"}, "cuda_graphs must be True or False, got str"),
        ({"compile": 1}, "compile must be True or False, got int"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
        ({"cache_dir": 5}, "cache_dir must be a str, a pathlib.Path or None, got int"),
        ({"local_files_only": "yes"}, "local_files_only must be True or False, got str"),
        (
            {"path": 3.5},
            "path must be a str, a pathlib.Path or None, got float",
        ),
        ({"backend": "torch", "provider": "cpu"}, "provider applies to backend='onnxruntime', not to backend='torch'"),
        ({"backend": "torch", "session_options": None, "provider_options": {}}, "provider_options applies to"),
        ({"compile": True}, "compile applies to backend='torch', not to backend='onnxruntime'"),
        ({"dtype": "float32"}, "dtype applies to backend='torch', not to backend='onnxruntime'"),
        ({"backend": "tensorrt", "dtype": "float16"}, "dtype applies to backend='torch', not to backend='tensorrt'"),
        ({"backend": "tensorrt", "session_options": None, "threads": 0, "provider": "cuda"}, "provider applies to"),
    ],
)
def test_bad_load_options_are_refused_clearly(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        StarPipeline.from_pretrained(**kwargs)


THREAD_PROMPTS = ["a red circle on a blue background", "a green square", "a blue triangle", "a yellow circle"]


@pytest.fixture(scope="module")
def demo_pipe() -> StarPipeline:
    return StarPipeline.from_pretrained()


def test_numpy_seeds_and_numpy_bool_callbacks_are_obeyed(demo_pipe):
    prompts = ["a red circle", "a blue square"]
    plain = demo_pipe(prompts, seed=[4, 9], output_type="np")
    for seed in (np.array([4, 9]), [np.int64(4), np.uint8(9)]):
        assert np.array_equal(demo_pipe(prompts, seed=seed, output_type="np").tokens, plain.tokens)
    first = demo_pipe("a red circle", seed=np.int32(4), top_k=np.int64(600), guidance_scale=np.float32(4.0))
    assert first.seeds == [4] and isinstance(first.seeds[0], int)
    assert np.array_equal(demo_pipe("a red circle", seed=4).tokens, first.tokens)
    seen = []
    stopped = demo_pipe("a red circle", callback_on_scale_end=lambda p: seen.append(p.scale) or np.bool_(p.scale < 1))
    assert seen == [0, 1] and stopped.tokens.shape == (1, 1 + 4)


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
    pictures = {p.name: np.asarray(Image.open(p), dtype=np.float32) / 255 for p in tmp_path.glob("*.png")}
    assert read_image(pictures["circle.png"]) == Reading("red", "circle", "blue")
    last = max(int(name[6:-4]) for name in pictures if name.startswith("scale_"))
    assert read_image(pictures[f"scale_{last}.png"]) == Reading("green", "square", "white")


@pytest.fixture(scope="module")
def demo_torch_pipe() -> StarPipeline:
    return StarPipeline.from_pretrained(DEMO_WEIGHTS, backend="torch")


@pytest.mark.parametrize("which", ["demo_pipe", "demo_torch_pipe"])
def test_threads_sharing_a_pipeline_get_the_images_of_sequential_calls(which, request):
    """Calls from 4 threads on one pipeline (ONNX Runtime, torch) run one at a time, each as it would alone."""
    pipe = request.getfixturevalue(which)
    calls = [(p, {"seed": 10 + i, "output_type": "np"}) for i, p in enumerate(THREAD_PROMPTS)]
    sequential = [pipe(p, **kw) for p, kw in calls]
    barrier = threading.Barrier(len(calls))

    def call(args):
        barrier.wait()
        return pipe(args[0], **args[1])

    with ThreadPoolExecutor(len(calls)) as pool:
        threaded = list(pool.map(call, calls))
    for one, many in zip(sequential, threaded):
        assert np.array_equal(one.tokens, many.tokens)
        assert np.abs(one.images - many.images).max() <= 1e-6


def test_callback_calling_the_pipeline_again_is_refused_and_the_outer_call_is_untouched(demo_pipe):
    refused = []

    def nested(progress):
        try:
            demo_pipe("a green square", seed=3)
        except ConfigError as exc:
            refused.append(str(exc))

    out = demo_pipe("a red circle on a blue background", seed=2, output_type="np", callback_on_scale_end=nested)
    alone = demo_pipe("a red circle on a blue background", seed=2, output_type="np")
    assert len(refused) == demo_pipe.config.num_scales
    assert "a callback_on_scale_end cannot call it again" in refused[0]
    assert np.array_equal(out.tokens, alone.tokens) and np.abs(out.images - alone.images).max() <= 1e-6


@pytest.mark.parametrize("how", ["thread", "executor"])
def test_callback_waiting_for_another_thread_calling_the_pipeline_is_refused_not_deadlocked(demo_pipe, how):
    """The waiting call gives up once the callback has not returned for callback_wait_s; the outer call finishes."""
    import concurrent.futures
    import threading

    refused = []

    def inner() -> None:
        try:
            demo_pipe("a green square", seed=3)
        except ConfigError as exc:
            refused.append(str(exc))

    def waits_for_another_call(progress) -> bool:
        if how == "thread":
            worker = threading.Thread(target=inner)
            worker.start()
            worker.join(timeout=30)
            assert not worker.is_alive(), "deadlocked"
        else:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(inner).result(timeout=30)
        return False

    demo_pipe.callback_wait_s = 0.5
    try:
        out = demo_pipe("a red circle", seed=2, output_type="np", callback_on_scale_end=waits_for_another_call)
    finally:
        del demo_pipe.callback_wait_s
    assert len(out.images) == 1
    assert len(refused) == 1 and "a callback must not wait for another call of the same pipeline" in refused[0]
    assert len(demo_pipe("a green square").images) == 1  # the lock was released


def test_a_call_waits_for_a_slow_callback_of_another_thread_within_callback_wait_s(demo_pipe):
    import threading
    import time

    entered, results = threading.Event(), []

    def slow(progress) -> bool:
        entered.set()
        time.sleep(0.5)
        return False

    outer = threading.Thread(target=lambda: results.append(demo_pipe("a red circle", callback_on_scale_end=slow)))
    outer.start()
    entered.wait(30)
    results.append(demo_pipe("a green square"))  # waits for the outer call, callback included
    outer.join(30)
    assert len(results) == 2


def test_an_error_inside_a_callback_releases_the_pipeline(demo_pipe):
    def fail(progress):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        demo_pipe("a green square", callback_on_scale_end=fail)
    assert len(demo_pipe("a green square").images) == 1


def test_sampling_defaults_travel_in_the_manifest(tmp_path, artifacts_fp32, demo_pipe):
    recorded = json.loads((artifacts_fp32 / MANIFEST).read_text())["sampling"]
    assert recorded == {"cfg": 4.0, "top_k": 600, "top_p": 0.8}
    assert demo_pipe.defaults == SamplingConfig()  # the shipped demo manifest predates the field
    pipe = StarPipeline.from_pretrained(demo_with_defaults(tmp_path, {"cfg": 2.5, "top_k": 7, "top_p": 0.5}))
    assert (pipe.defaults.cfg, pipe.defaults.top_k, pipe.defaults.top_p) == (2.5, 7, 0.5)
    got = pipe("a red circle on a blue background", seed=5, output_type="np")
    explicit = demo_pipe(
        "a red circle on a blue background", seed=5, guidance_scale=2.5, top_k=7, top_p=0.5, output_type="np"
    )
    default = demo_pipe("a red circle on a blue background", seed=5, output_type="np")
    assert np.array_equal(got.tokens, explicit.tokens) and not np.array_equal(got.tokens, default.tokens)


def test_a_serve_replica_samples_with_the_manifest_defaults(tmp_path, demo_pipe):
    model = ImageModel(LoadOptions(artifacts=str(demo_with_defaults(tmp_path, {"cfg": 2.5, "top_k": 7, "top_p": 0.5}))))
    assert model.settings(Job("a red circle")) == (2.5, 7, 0.5, EXACT)
    assert model.settings(Job("a red circle", cfg=3.0, top_k=0, top_p=0.9)) == (3.0, 0, 0.9, EXACT)
    served = model.generate([Job("a red circle on a blue background", seed=5)])[0]
    explicit = demo_pipe(
        "a red circle on a blue background", seed=5, guidance_scale=2.5, top_k=7, top_p=0.5, output_type="np"
    )
    assert np.abs(served.astype(int) - to_pixels(explicit.images)[0].astype(int)).max() <= 1


@pytest.mark.parametrize(
    "sampling, message",
    [
        ({"cfg": 4.0, "top_k": "600", "top_p": 0.8}, "an integer top_k"),
        ({"cfg": 4.0, "top_k": 600}, "'sampling' must have exactly the keys cfg, top_k, top_p"),
        ({"cfg": 4.0, "top_k": 600, "top_p": 2.0}, "invalid sampling defaults (top-p must be in (0, 1]"),
        ([4.0, 600, 0.8], "'sampling' must have exactly the keys"),
    ],
)
def test_bad_sampling_defaults_in_a_manifest_are_refused(tmp_path, sampling, message):
    with pytest.raises(ArtifactError, match=re.escape(message)):
        StarPipeline.from_pretrained(demo_with_defaults(tmp_path, sampling))


def test_progress_bar_over_scales_can_be_shown_and_disabled(capsys):
    pipe = StarPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=False, leave=True, desc="drawing")
    pipe(["a red circle", "a blue square"], batch_size=1)
    shown = capsys.readouterr().err
    assert "drawing" in shown and f"{2 * pipe.config.num_scales}/{2 * pipe.config.num_scales}" in shown
    pipe.set_progress_bar_config(disable=True)
    pipe("a red circle")
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="unknown option"):
        pipe.set_progress_bar_config(ncols=80)
    with pytest.raises(ConfigError, match="disable must be True or False"):
        pipe.set_progress_bar_config(disable="yes")


def test_save_pretrained_writes_an_artefact_folder_that_matches_the_source(golden_pipe, tmp_path):
    out = golden_pipe.save_pretrained(tmp_path / "fp16", precision="fp16")
    result, failed = check_export(golden_pipe.model, out)
    assert failed == [] and result.teacher_forced_token_agreement >= 0.99
    pipe = StarPipeline.from_pretrained(out)
    assert (pipe.backend_name, pipe.precision, pipe.defaults) == ("onnxruntime", "fp16", golden_pipe.defaults)
    with pytest.raises(ConfigError, match="save_pretrained exports PyTorch weights"):
        pipe.save_pretrained(tmp_path / "again")
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, got 'int8'"):
        golden_pipe.save_pretrained(tmp_path / "int8", precision="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16"]


def test_export_check_catches_graphs_of_other_weights(artifacts_fp32, tiny_model):
    """The check behind `export --validate`: passes on the golden export, fails for another model's weights."""
    result, failed = check_export(tiny_model, artifacts_fp32)
    assert failed == [] and result.logits_max_abs <= 1e-3 and result.teacher_forced_token_agreement == 1.0
    other = random_model(tiny_model.config, seed=1)
    result, failed = check_export(other, artifacts_fp32)
    assert any("logits max error" in f for f in failed) and result.teacher_forced_psnr_db < 60


def test_save_pretrained_refuses_weights_held_in_another_dtype(tmp_path):
    pipe = StarPipeline.from_pretrained(DEMO_WEIGHTS, backend="torch", dtype="bfloat16")
    with pytest.raises(ConfigError, match="save_pretrained exports from float32 weights, this pipeline holds bfloat16"):
        pipe.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
