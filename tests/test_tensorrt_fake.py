"""The TensorRT layer on CPU, against the fake TensorRT of tests/fake_tensorrt (its rules cite TensorRT's docs).

build-engine -> check --backend tensorrt -> run --backend tensorrt on the golden model, then one test per
defect the layer must not have, then the fake's own rules (each able to fail).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from conftest import GOLDEN
from typer.testing import CliRunner

from star_deploy.artifacts.manifest import load_manifest
from star_deploy.cli import app
from star_deploy.core.graphs import OPTIONAL_GRAPHS
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.engines.memory import device_memory, size
from star_deploy.engines.sidecar import load_sidecar, plan_path, prompts_for, sidecar_path
from star_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError, StarDeployError
from star_deploy.files.images import read_png
from star_deploy.runtime.pipeline import ScaleLoop

GOLDEN_ARGS = ["--seed", "1", "--cfg", "4", "--top-k", "50", "--top-p", "0.8", "--sampler", "official"]
A100, H100 = "NVIDIA_A100-SXM4-80GB", "NVIDIA_H100_80GB_HBM3"


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def engines(fake_trt, artifacts_fp32, tmp_path_factory) -> Path:
    """The golden model's fp32 export with engines from a plain `build-engine DIR` (batch size 1)."""
    folder = tmp_path_factory.mktemp("fake_trt") / "tiny_fp32"
    shutil.copytree(artifacts_fp32, folder)
    result = invoke("build-engine", folder)
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def folder(engines, tmp_path) -> Path:
    """A copy of ``engines`` a test may rebuild."""
    shutil.copytree(engines, tmp_path / "tiny_fp32")
    return tmp_path / "tiny_fp32"


def plan_header(fake_trt, root: Path, graph: str) -> dict:
    return fake_trt.read_plan(plan_path(root, graph).read_bytes())[0]


def golden_pipeline(root: Path, device: str = "cuda") -> ScaleLoop:
    from star_deploy.backends.trt_backend import TrtBackend

    manifest = load_manifest(root)
    return ScaleLoop(TrtBackend(manifest, device), PromptTokenizer(manifest.tokenizer_dir))


def test_build_check_run_reproduce_the_golden_image(fake_trt, engines, golden, tmp_path):
    """The documented sequence on a batch-1 build: check picks its prompt count from the sidecars."""
    assert load_sidecar(sidecar_path(engines, "transformer_step")).batch_sizes == [1]
    report = tmp_path / "report.json"
    checked = invoke(*checked_args(engines, report))
    assert checked.exit_code == 0, checked.output
    assert json.loads(report.read_text())["sampled_token_match"] == 1.0
    out = tmp_path / "car.png"
    ran = invoke("run", "a red car.", "-o", out, *GOLDEN_ARGS, "--backend", "tensorrt", "--artifacts", engines)
    assert ran.exit_code == 0, ran.output
    pixels, _ = read_png(out)
    expected = golden["p0_s1/image"][0].transpose(1, 2, 0) * 255
    assert np.abs(pixels.astype(np.float64) - expected).max() <= 1.0
    assert fake_trt.ERRORS == []


def checked_args(root: Path, report: Path) -> list:
    return ["check", root, "--backend", "tensorrt", "--reference-device", "cpu", "--runs", "0", "--json", report]


@pytest.mark.parametrize("index", [0, 1])
def test_tensorrt_backend_samples_the_golden_tokens(fake_trt, engines, golden, golden_cases, golden_sampling, index):
    case = golden_cases[index]
    gen = golden_pipeline(engines).generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
    assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])


# 1. CUDA major of the TensorRT wheels vs torch's


def test_extras_pin_tensorrt_per_cuda_major():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert "tensorrt-cu12>=10.1,<11" in extras["tensorrt-cu12"]
    assert any(r.startswith("tensorrt-cu13>=") for r in extras["tensorrt-cu13"])
    assert not any(r.startswith("tensorrt>") or r == "tensorrt" for deps in extras.values() for r in deps)


def test_tensorrt_for_another_cuda_major_is_refused_at_import(fake_trt, engines):
    from host_cuda import HostRuntime

    from star_deploy.engines.gpu import use_runtime
    from star_deploy.engines.trt_api import import_tensorrt, tensorrt_cuda_major, wheel_cuda_major

    assert tensorrt_cuda_major() == 12  # from tests/fake_tensorrt/tensorrt_cu12_bindings-*.dist-info
    assert wheel_cuda_major(["tensorrt_cu13_bindings"]) == 13 and wheel_cuda_major(["tensorrt"]) is None
    with use_runtime(HostRuntime(cuda_major=13)):
        with pytest.raises(BackendUnavailableError, match=r"built for CUDA 12 but torch for CUDA 13.*tensorrt-cu13"):
            import_tensorrt()
        result = invoke("build-engine", engines, "--overwrite")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "pip install 'star-deploy[tensorrt-cu13]'" in result.output


# 2. check / parity against a batch-1 build, on cuda by default


def test_validation_prompts_follow_the_built_batch_sizes(engines):
    graphs = list(load_manifest(engines).graphs)
    assert prompts_for(engines, graphs, None, ["a", "b", "c"]) == ["a"]
    with pytest.raises(ConfigError, match=r"2 --prompt value\(s\), but the engines .* batch size\(s\) \[1\]"):
        prompts_for(engines, graphs, ["a", "b"], ["a"])


def test_parity_defaults_to_cuda_and_the_built_batch_size(fake_trt, engines, tmp_path):
    report = tmp_path / "parity.json"
    args = ["parity", "--artifacts", engines, "--backend", "tensorrt", "--weights", GOLDEN, "--resolution", "256"]
    result = invoke(*args, "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["backend"] == "tensorrt" and not data["failures"]


# 3. timing caches of another GPU; 5. the chosen GPU, at build and in worker threads


def test_timing_cache_of_another_gpu_is_replaced_with_a_warning(fake_trt, folder, caplog):
    a100_cache = folder / "engines" / f"timing-{A100}-trt{fake_trt.__version__}.cache"
    assert a100_cache.is_file()
    rebuilt = invoke("build-engine", folder, "--graph", "vq_decoder", "--overwrite", "--device", "cuda:1")
    assert rebuilt.exit_code == 0, rebuilt.output
    h100_cache = folder / "engines" / f"timing-{H100}-trt{fake_trt.__version__}.cache"
    assert json.loads(h100_cache.read_text())["device"][0] == H100.replace("_", " ")
    assert json.loads(a100_cache.read_text())["device"][0] == "NVIDIA A100-SXM4-80GB"
    args = ["build-engine", folder, "--graph", "vq_decoder", "--overwrite", "--device", "cuda:1"]
    moved = invoke(*args, "--timing-cache", a100_cache)
    assert moved.exit_code == 0, moved.output
    assert "timing cache made on another GPU" in caplog.text
    assert json.loads(a100_cache.read_text())["device"][0] == H100.replace("_", " ")


def test_build_and_run_on_the_chosen_gpu_from_a_worker_thread(fake_trt, folder, golden, golden_sampling):
    result = invoke("build-engine", folder, "--overwrite", "--device", "cuda:1")
    assert result.exit_code == 0, result.output
    for graph in set(load_manifest(folder).graphs) - set(OPTIONAL_GRAPHS):  # no --fast 2: no pruned step
        assert plan_header(fake_trt, folder, graph)["device"] == 1
        assert load_sidecar(sidecar_path(folder, graph)).runtime.gpu_name == "NVIDIA H100 80GB HBM3"
    pipeline = golden_pipeline(folder, "cuda:1")
    results = []
    worker = threading.Thread(target=lambda: results.append(pipeline.generate(["a red car."], golden_sampling, [1])))
    worker.start()
    worker.join()
    assert results and np.array_equal(results[0].tokens, golden["p0_s1/tokens"])


# 4. TF32


def test_tf32_is_off_unless_asked_for_and_recorded(fake_trt, engines, folder):
    assert not plan_header(fake_trt, engines, "transformer_step")["tf32"]
    assert load_sidecar(sidecar_path(engines, "transformer_step")).builder["tf32"] is False
    result = invoke("build-engine", folder, "--graph", "transformer_step", "--overwrite", "--tf32")
    assert result.exit_code == 0, result.output
    assert plan_header(fake_trt, folder, "transformer_step")["tf32"]
    assert load_sidecar(sidecar_path(folder, "transformer_step")).builder["tf32"] is True


# 6. empty tensors at scale 0; 7. contexts and memory


def test_empty_cache_prefix_is_bound_to_its_own_aligned_scratch(fake_trt, engines):
    backend = golden_pipeline(engines).backend
    hidden = torch.zeros(2, 77, backend.config.text.width)
    pooled = torch.zeros(2, backend.config.text.width)
    x = backend.begin(hidden, np.ones((2, 77), dtype=np.int64), pooled)
    backend.step(0, x)
    step = backend.engines["transformer_step"]
    past = {n: t.data_ptr() for n, t in step.scratch.items()}
    assert set(past) == {f"past_{kv}.{i}" for kv in ("key", "value") for i in range(backend.config.transformer.depth)}
    cache = {t.data_ptr() for t in backend.cache.keys + backend.cache.values}
    assert len(set(past.values())) == len(past) and not cache & set(past.values())
    assert all(p % 256 == 0 for p in past.values())


def test_one_context_per_profile_sharing_one_buffer_and_no_profile_switch(fake_trt, engines, golden_sampling):
    before = (fake_trt.STATS.profile_switches, fake_trt.STATS.context_memory)
    pipeline = golden_pipeline(engines)
    pipeline.generate(["a red car."], golden_sampling, seeds=[3])
    pipeline.generate(["a cute dog"], golden_sampling, seeds=[4])
    assert (fake_trt.STATS.profile_switches, fake_trt.STATS.context_memory) == before
    backend = pipeline.backend
    shared = backend.context_memory
    largest = max(e.memory_bytes() for e in backend.engines.values())
    assert shared.numel() == largest
    for engine in backend.engines.values():
        assert len(engine.contexts) == len(engine.profiles)
        assert [c.profile for c in engine.contexts] == [p.index for p in engine.profiles]
        assert all(c.memory == (shared.data_ptr(), shared.numel()) for c in engine.contexts)


# 8. return values


def test_refused_profile_is_reported_with_its_shapes(fake_trt, engines, tmp_path):
    from star_deploy.engines.builder import BuildOptions, builder_config, parse_network
    from star_deploy.engines.profiles import Profile

    network = parse_network(load_manifest(engines).path("vq_decoder"), "strong")
    shape = tuple(load_sidecar(sidecar_path(engines, "vq_decoder")).profiles[0].shapes["f_hat"])
    good, bad = Profile(0, 1, None, {"f_hat": shape}), Profile(1, 2, None, {"f_hat": (2, -1, *shape[2:])})
    message = r"refused the optimization profiles \(profile 1: f_hat \[2, -1, .*Shape provided for min is inconsistent"
    with pytest.raises(StarDeployError, match=message):
        builder_config(fake_trt, network, [good, bad], BuildOptions(), (b"", tmp_path / "timing.cache"))


def test_refused_profile_selection_is_reported(fake_trt, engines):
    """set_optimization_profile_async raises RuntimeError on failure (pyCore.cpp): here, a stream of another GPU."""
    from star_deploy.engines.gpu import cuda

    decoder = golden_pipeline(engines).backend.engines["vq_decoder"]
    decoder.stream = cuda().stream(torch.device("cuda", 1))
    with pytest.raises(StarDeployError, match=r"vq_decoder: TensorRT refused optimization profile 0 \(Error in set"):
        decoder.attach(cuda().empty((decoder.memory_bytes(),), torch.uint8, torch.device("cpu")))


def test_unreadable_plan_is_refused_after_its_sidecar_passes(fake_trt, folder):
    plan_path(folder, "vq_decoder").write_bytes(b"not a plan")
    with pytest.raises(StarDeployError, match=r"vq_decoder.plan: TensorRT could not deserialize it; rebuild"):
        golden_pipeline(folder)


def test_corrupt_timing_cache_is_replaced_with_a_warning(fake_trt, folder, caplog):
    cache = folder / "engines" / f"timing-{A100}-trt{fake_trt.__version__}.cache"
    cache.write_bytes(b"\x00garbage")
    result = invoke("build-engine", folder, "--graph", "vq_decoder", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "a fresh one replaces it" in caplog.text
    assert json.loads(cache.read_text())["device"][0] == "NVIDIA A100-SXM4-80GB"


def test_unparsable_graph_names_the_file_and_the_parser_errors(fake_trt, tmp_path):
    from star_deploy.engines.builder import parse_network

    with pytest.raises(StarDeployError, match=r"pow.onnx: TensorRT could not parse it \(.*kPOW must have inputs of"):
        with older_tensorrt(fake_trt, "10.8.0.43"):
            parse_network(integer_pow_graph(tmp_path / "pow.onnx"), "strong")
    assert parse_network(tmp_path / "pow.onnx", "strong")[1].num_inputs == 1  # 10.12 and later build kPOW on INT64


def test_torch_cache_is_released_before_each_graph_is_built(fake_trt, folder):
    before = fake_trt.STATS.cache_releases
    result = invoke("build-engine", folder, "--overwrite")
    assert result.exit_code == 0, result.output
    assert fake_trt.STATS.cache_releases - before == len(set(load_manifest(folder).graphs) - set(OPTIONAL_GRAPHS))


def test_check_reports_device_memory_for_every_batch_size(engines):
    manifest = load_manifest(engines)
    memory = {m.batch: m for m in device_memory(manifest, [1, 4])}
    assert memory[4].buffers.kv_cache == 4 * memory[1].buffers.kv_cache
    assert memory[4].attention_scores == 4 * memory[1].attention_scores > 0
    asked = invoke("check", engines, "-b", "1", "-b", "4")
    assert asked.exit_code == 0, asked.output
    assert [line for line in asked.output.splitlines() if line.startswith("device memory")] == [
        memory[1].line(),
        memory[4].line(),
    ]
    built = invoke("check", engines)  # the engines are built for batch size 1
    assert [line for line in built.output.splitlines() if line.startswith("device memory")] == [memory[1].line()]


def test_build_that_cannot_fit_the_gpu_is_refused_with_the_numbers(fake_trt, folder, monkeypatch):
    memory = {m.batch: m for m in device_memory(load_manifest(folder), [1, 2])}
    assert memory[1].unfused < memory[2].required  # batch 1 fits even unfused, batch 2 does not
    monkeypatch.setattr(fake_trt._cuda, "MEMORY", [memory[1].unfused] * 2)
    before = plan_path(folder, "vq_decoder").read_bytes()
    result = invoke("build-engine", folder, "-b", "1", "-b", "2", "--overwrite")
    assert result.exit_code != 0
    assert f"--batch-size 2: the engines need {size(memory[2].required)} of device memory" in result.output
    assert f"more than the {size(memory[1].unfused)} of NVIDIA A100-SXM4-80GB" in result.output
    assert "(1 fit)" in result.output
    assert plan_path(folder, "vq_decoder").read_bytes() == before
    assert invoke("build-engine", folder, "--graph", "vq_decoder", "--overwrite").exit_code == 0


def test_build_that_fits_only_with_fused_attention_warns(fake_trt, folder, monkeypatch, caplog):
    memory = device_memory(load_manifest(folder), [1])[0]
    monkeypatch.setattr(fake_trt._cuda, "MEMORY", [memory.required + memory.attention_scores // 2] * 2)
    result = invoke("build-engine", folder, "--graph", "vq_decoder", "--overwrite")
    assert result.exit_code == 0, result.output
    assert f"batch 1: {size(memory.unfused)} of device memory if TensorRT does not fuse" in caplog.text


def test_scale_update_builds_on_tensorrt_before_10_12(fake_trt, folder):
    """No INT64 Pow in the exported scale update (TensorRT 10.1 to 10.11 refuse kPOW on integers)."""
    with older_tensorrt(fake_trt, "10.8.0.43"):
        result = invoke("build-engine", folder, "--graph", "scale_update", "--overwrite")
    assert result.exit_code == 0, result.output
    assert load_sidecar(sidecar_path(folder, "scale_update")).runtime.tensorrt_version == "10.8.0.43"


@contextmanager
def older_tensorrt(fake_trt, version: str):
    previous = fake_trt.__version__
    fake_trt.__version__ = version
    try:
        yield
    finally:
        fake_trt.__version__ = previous


def integer_pow_graph(path: Path) -> Path:
    """n (INT64, [1]) -> n ** 2: what an export of ``side * side`` as a power of a shape value looks like."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Pow", ["n", "two"], ["square"], name="node_pow")],
        "pow",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("square", TensorProto.INT64, [1])],
        [helper.make_tensor("two", TensorProto.INT64, [], [2])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_refused_address_and_shape_name_the_tensor(fake_trt, engines):
    backend = golden_pipeline(engines).backend
    decoder = backend.engines["vq_decoder"]
    profile = decoder.profile(1)
    f_hat = backend.new_f_hat(1)
    image = backend._outputs("vq_decoder", {"batch": 1})["image"]
    raw = backend.gpu.empty((image.numel() * 4 + 256,), torch.uint8, backend.device)
    shifted = raw[64 : 64 + image.numel() * 4].view(torch.float32).view(image.shape)
    with pytest.raises(StarDeployError, match=r"refused the address 0x[0-9a-f]+ of image .*256-byte aligned"):
        decoder.run(profile, {"f_hat": f_hat}, {"image": shifted})
    with pytest.raises(StarDeployError, match=r"refused input f_hat of shape \(2, "):
        decoder.run(profile, {"f_hat": backend.new_f_hat(2)}, {"image": image})


# the fake's rules: each one refuses


@pytest.fixture
def decoder_context(fake_trt, engines):
    """A fresh USER_MANAGED context of the decoder engine, with its inputs' shape set and addresses bound."""
    from host_cuda import HostRuntime

    gpu = HostRuntime()
    runtime = fake_trt.Runtime(fake_trt.Logger())
    engine = runtime.deserialize_cuda_engine(plan_path(engines, "vq_decoder").read_bytes())
    ctx = engine.create_execution_context(fake_trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    dev = torch.device("cuda", 0)
    memory = gpu.empty((engine.get_device_memory_size_for_profile_v2(0),), torch.uint8, dev)
    f_hat = gpu.empty(
        tuple(plan_header(fake_trt, engines, "vq_decoder")["profiles"][0]["f_hat"][0]), torch.float32, dev
    )
    ctx.set_device_memory(memory.data_ptr(), memory.numel())
    assert ctx.set_input_shape("f_hat", tuple(f_hat.shape))
    image = gpu.empty(tuple(ctx.get_tensor_shape("image")), torch.float32, dev)
    assert ctx.set_tensor_address("f_hat", f_hat.data_ptr()) and ctx.set_tensor_address("image", image.data_ptr())
    fake_trt.ERRORS.clear()
    return ctx, gpu.stream(dev).handle, (memory, f_hat, image)


def test_fake_runs_a_context_that_keeps_every_rule(fake_trt, decoder_context):
    ctx, stream, _ = decoder_context
    assert ctx.execute_async_v3(stream) and fake_trt.ERRORS == []


@pytest.mark.parametrize(
    ("breach", "message"),
    [
        (lambda ctx, s, b: ctx.set_tensor_address("image", b[2].data_ptr() + 64), "not 256-byte aligned"),
        (lambda ctx, s, b: ctx.set_input_shape("f_hat", (2, *b[1].shape[1:])), "outside profile 0"),
        (lambda ctx, s, b: ctx.set_input_shape("image", tuple(b[2].shape)), "image is not an input tensor"),
        (lambda ctx, s, b: ctx.set_input_shape("f_hat", tuple(b[1].shape)[1:]), "does not agree with the network"),
        (lambda ctx, s, b: ctx.set_device_memory(b[0].data_ptr() + 64, 256), "not non-null and 256-byte aligned"),
        (lambda ctx, s, b: ctx.set_tensor_address("logits", b[2].data_ptr()), "not an input or output tensor"),
        (lambda ctx, s, b: ctx.set_device_memory(b[0].data_ptr(), 256) or ctx.execute_async_v3(s), "needs"),
        (lambda ctx, s, b: ctx.set_tensor_address("image", 0) and ctx.execute_async_v3(s), "image has no address"),
        (lambda ctx, s, b: ctx.execute_async_v3(s + 0x10), "is not a stream of device 0"),
        (lambda ctx, s, b: ctx.set_tensor_address("image", b[1].data_ptr()) and ctx.execute_async_v3(s), "image holds"),
    ],
)
def test_fake_refuses_each_documented_misuse(fake_trt, decoder_context, breach, message):
    ctx, stream, buffers = decoder_context
    assert not breach(ctx, stream, buffers)
    assert message in " ".join(fake_trt.ERRORS)


def test_fake_refuses_plans_of_another_tensorrt_or_gpu(fake_trt, engines):
    plan = plan_path(engines, "vq_decoder").read_bytes()
    runtime = fake_trt.Runtime(fake_trt.Logger())
    assert runtime.deserialize_cuda_engine(plan) is not None
    with older_tensorrt(fake_trt, "10.8.0.43"):
        assert runtime.deserialize_cuda_engine(plan) is None
    assert "built by TensorRT" in fake_trt.ERRORS[-1]
    with fake_trt._cuda.device_context(1):  # built on the A100 (8.0), deserialized on the H100 (9.0)
        assert runtime.deserialize_cuda_engine(plan) is None
    assert "the plan is for compute capability 8.0, device 1 is not" in fake_trt.ERRORS[-1]


def test_fake_timing_cache_rules(fake_trt):
    config = fake_trt.Builder(fake_trt.Logger()).create_builder_config()
    assert config.create_timing_cache(b"\x00garbage") is None
    assert "not a serialized timing cache" in fake_trt.ERRORS[-1]
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_timing_cache(None, False)
    assert config.set_timing_cache(config.create_timing_cache(b""), False)


def test_fake_raises_on_a_profile_out_of_range(fake_trt, decoder_context):
    ctx, stream, _ = decoder_context
    with pytest.raises(RuntimeError, match="Error in set optimization profile async"):
        ctx.set_optimization_profile_async(5, stream)
    assert "profile 5 is out of range" in fake_trt.ERRORS[-1]


def test_fake_refuses_execution_on_another_current_device(fake_trt, decoder_context):
    ctx, stream, _ = decoder_context
    with fake_trt._cuda.device_context(1):
        assert not ctx.execute_async_v3(stream)
    assert "the current device is 1, the engine is on device 0" in fake_trt.ERRORS[-1]


def test_fake_refuses_empty_tensors_sharing_an_address(fake_trt, engines):
    backend = golden_pipeline(engines).backend
    step = backend.engines["transformer_step"]
    ctx = step.contexts[0]
    width = backend.config.text.width
    backend.begin(torch.zeros(2, 77, width), np.ones((2, 77), dtype=np.int64), torch.zeros(2, width))
    backend.step(0, backend.gpu.empty((2, 1, backend.config.transformer.width), torch.float32, backend.device))
    ctx.set_tensor_address("past_key.0", backend.cache.keys[0].data_ptr())  # what new_key.0 is bound to
    fake_trt.ERRORS.clear()
    assert not ctx.execute_async_v3(step.stream.handle)
    assert "the empty tensor past_key.0 has the address of new_key.0" in fake_trt.ERRORS[-1]


def test_fake_switching_profiles_drops_shapes_and_counts(fake_trt, engines):
    backend = golden_pipeline(engines).backend
    ctx, handle = backend.engines["transformer_step"].contexts[1], backend.stream.handle
    switches = fake_trt.STATS.profile_switches
    width = backend.config.text.width
    backend.begin(torch.zeros(2, 77, width), np.ones((2, 77), dtype=np.int64), torch.zeros(2, width))
    for k in range(2):
        backend.step(k, backend.gpu.empty((2, (1, 4)[k], backend.config.transformer.width), torch.float32, "cpu"))
    assert ctx.set_optimization_profile_async(0, handle) and not ctx.execute_async_v3(handle)
    assert "is not set for profile 0" in fake_trt.ERRORS[-1]
    assert fake_trt.STATS.profile_switches == switches + 1


def test_fake_builder_rules(fake_trt):
    config = fake_trt.Builder(fake_trt.Logger()).create_builder_config()
    assert config.get_flag(fake_trt.BuilderFlag.TF32)  # "Enabled by default"
    stale = config.create_timing_cache(json.dumps({"device": ["NVIDIA H100 80GB HBM3", "9.0"], "entries": []}).encode())
    assert not config.set_timing_cache(stale, False) and config.get_timing_cache() is None
    assert config.set_timing_cache(stale, True)
    profile = fake_trt.Builder(fake_trt.Logger()).create_optimization_profile()
    for which, shapes in {
        "opt": ((1, 4), (1, 2), (1, 4)),
        "min": ((-1, 4),) * 3,
        "max": ((1, 2), (1, 4), (1, 3)),
    }.items():
        with pytest.raises(RuntimeError, match=f"Shape provided for {which} is inconsistent with other shapes"):
            profile.set_shape("x", *shapes)
    assert not profile and config.add_optimization_profile(profile) == -1
    profile.set_shape("past", (0, 2, 4), (0, 2, 4), (0, 2, 4))  # a zero-length dimension is allowed
    assert config.add_optimization_profile(profile) == 0


def test_fast_one_runs_on_engines_with_conditional_rows(fake_trt, engines, folder, torch_pipeline):
    """Guidance stopped after scale 7: tokens before it are exact's, and all of them torch's (portable sampler).

    On the golden model guidance changes few tokens: this prompt and seed change 11 after the cut."""
    from star_deploy.core.config import SamplingConfig
    from star_deploy.core.fast import FastMode

    sampling, prompts, seeds, cut = SamplingConfig(cfg=4.0, top_k=64, top_p=0.9), ["a cute dog"], [4], 7
    fast1, fast2 = FastMode(1, cfg_until=cut), FastMode(2, cfg_until=cut, keep=(0.5,))
    with pytest.raises(StarDeployError, match="no profiles for the conditional rows.*--conditional-rows"):
        golden_pipeline(engines).generate(prompts, sampling, seeds=seeds, fast=fast1)
    result = invoke("build-engine", folder, "--graph", "transformer_step", "--conditional-rows", "--overwrite")
    assert result.exit_code == 0, result.output
    profiles = load_sidecar(sidecar_path(folder, "transformer_step")).profiles
    assert [p.rows for p in profiles] == [None] * 10 + [1] * 10
    pipeline = golden_pipeline(folder)
    exact = pipeline.generate(prompts, sampling, seeds=seeds)
    fast = pipeline.generate(prompts, sampling, seeds=seeds, fast=fast1)
    before = pipeline.config.scale_offsets()[cut]
    np.testing.assert_array_equal(fast.tokens[:, :before], exact.tokens[:, :before])
    assert not np.array_equal(fast.tokens[:, before:], exact.tokens[:, before:])
    np.testing.assert_array_equal(
        fast.tokens, torch_pipeline.generate(prompts, sampling, seeds=seeds, fast=fast1).tokens
    )
    np.testing.assert_array_equal(pipeline.generate(prompts, sampling, seeds=seeds).tokens, exact.tokens)
    with pytest.raises(ConfigError, match="--fast 2 runs the transformer_step_pruned engine, which .* has not built"):
        pipeline.generate(prompts, sampling, seeds=seeds, fast=fast2)


def test_fast_two_runs_the_pruned_step_engine_with_the_tokens_of_onnxruntime(
    fake_trt, engines, folder, torch_pipeline, tmp_path
):
    """Guidance stopped after scale 7 and half the last scale's tokens kept: the pruned step's engine (scales 8
    and 9, the conditional row alone) samples the tokens ONNX Runtime samples on the same graphs, and torch's."""
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.core.config import SamplingConfig
    from star_deploy.core.fast import FastMode

    sampling, prompts, seeds = SamplingConfig(cfg=4.0, top_k=64, top_p=0.9), ["a cute dog"], [4]
    fast2 = FastMode(2, cfg_until=7, keep=(0.5,))
    knobs = ["--cfg-until", "7", "--keep", "0.5"]
    fake_trt.ERRORS.clear()  # earlier tests break rules on purpose
    refused = invoke(
        "run", "a cute dog", "-o", tmp_path / "dog.png", "--backend", "tensorrt", "--artifacts", folder, *knobs
    )
    assert refused.exit_code == 2 and "has not built; build it with `star-deploy build-engine" in refused.output
    assert not (tmp_path / "dog.png").exists()
    graphs = ["--graph", "transformer_step", "--graph", "transformer_step_pruned"]
    result = invoke("build-engine", folder, *graphs, "--fast", "2", *knobs, "--overwrite")
    assert result.exit_code == 0, result.output
    sidecar = load_sidecar(sidecar_path(folder, "transformer_step_pruned"))
    assert [(p.scale, p.kept, p.rows) for p in sidecar.profiles] == [(8, 169, 1), (9, 128, 1)]
    assert sidecar.profiles[1].shapes["past_key.0"] == (sum(s * s for s in range(1, 7)) + 64 + 100 + 169, 1, 2, 64)
    assert sidecar.builder["fast"] == {"level": 2, "cfg_until": 7, "keep": [0.5], "decoder": None}
    assert [p.rows for p in load_sidecar(sidecar_path(folder, "transformer_step")).profiles] == [None] * 10 + [1] * 10
    manifest = load_manifest(folder)
    onnxruntime = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    expected = onnxruntime.generate(prompts, sampling, seeds=seeds, fast=fast2).tokens
    pipeline = golden_pipeline(folder)
    tokens = pipeline.generate(prompts, sampling, seeds=seeds, fast=fast2).tokens
    np.testing.assert_array_equal(tokens, expected)
    np.testing.assert_array_equal(tokens, torch_pipeline.generate(prompts, sampling, seeds=seeds, fast=fast2).tokens)
    fast1 = pipeline.generate(prompts, sampling, seeds=seeds, fast=FastMode(1, cfg_until=7)).tokens
    before = pipeline.config.scale_offsets()[9]
    np.testing.assert_array_equal(tokens[:, :before], fast1[:, :before])  # scale 8 keeps every token
    assert not np.array_equal(tokens[:, before:], fast1[:, before:])
    with pytest.raises(ArtifactError, match="no profile for scale 9 keeping 64 tokens of 1 rows at batch size 1"):
        pipeline.generate(prompts, sampling, seeds=seeds, fast=FastMode(2, cfg_until=7, keep=(0.25,)))
    report = tmp_path / "report.json"
    checked = invoke(*checked_args(folder, report))  # per-graph parity covers the pruned step it was built for
    assert checked.exit_code == 0, checked.output
    assert "transformer_step_pruned" in checked.output.split("per-graph parity")[1]
    assert json.loads(report.read_text())["parity"]["transformer_step_pruned"]["max_abs"] < 1e-4
    assert fake_trt.ERRORS == []


def decoder_network(fake_trt, engines, flags: int):
    builder = fake_trt.Builder(fake_trt.Logger())
    network = builder.create_network(flags)
    assert fake_trt.OnnxParser(network, fake_trt.Logger()).parse_from_file(
        str(load_manifest(engines).path("vq_decoder"))
    )
    return builder, network


STRONG = 1 << 1  # 1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@pytest.mark.parametrize("flag", ["FP16", "INT8", "BF16", "FP8"])
def test_fake_refuses_precision_flags_on_a_strongly_typed_network(fake_trt, engines, flag):
    builder, network = decoder_network(fake_trt, engines, STRONG)
    shape = tuple(load_sidecar(sidecar_path(engines, "vq_decoder")).profiles[0].shapes["f_hat"])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("f_hat", shape, shape, shape)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None  # TF32 (on by default) is allowed
    config.set_flag(getattr(fake_trt.BuilderFlag, flag))
    assert builder.build_serialized_network(network, config) is None
    assert f"builder flag(s) {flag} are not allowed on a strongly typed network" in fake_trt.ERRORS[-1]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({}, "the network has dynamic inputs and no optimization profile"),
        ({"image": None}, "profile 0 sets image, which is not a network input"),
        ({"f_hat": "rank"}, "does not agree with the network dims"),
    ],
)
def test_fake_refuses_profiles_that_do_not_fit_the_network(fake_trt, engines, shapes, message):
    builder, network = decoder_network(fake_trt, engines, STRONG)
    shape = tuple(load_sidecar(sidecar_path(engines, "vq_decoder")).profiles[0].shapes["f_hat"])
    config = builder.create_builder_config()
    if shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape("f_hat", shape, shape, shape)
        for name, value in shapes.items():
            bad = shape[1:] if value == "rank" else shape
            profile.set_shape(name, bad, bad, bad)
        config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is None
    assert message in fake_trt.ERRORS[-1]


# 10. the fp16 export, strongly typed, and the two-machine parity workflow


TEXT = {"capture_output": True, "text": True, "timeout": 120}


@pytest.fixture(scope="module")
def fp16_engines(fake_trt, artifacts_fp16, tmp_path_factory) -> Path:
    """The golden model's fp16 export with strongly typed engines (the build the design asks for)."""
    folder = tmp_path_factory.mktemp("fake_trt16") / "tiny_fp16"
    shutil.copytree(artifacts_fp16, folder)
    fake_trt.ERRORS.clear()  # the build and the first test's runs log no error
    result = invoke("build-engine", folder, "--typing", "strong")
    assert result.exit_code == 0, result.output
    return folder


def test_fp16_strongly_typed_engines_give_the_tokens_of_onnxruntime(
    fake_trt, fp16_engines, golden_cases, golden_sampling
):
    from star_deploy.backends.ort_backend import OrtBackend

    header = plan_header(fake_trt, fp16_engines, "transformer_step")
    assert header["strongly_typed"] and not header["fp16"]
    manifest = load_manifest(fp16_engines)
    onnxruntime = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    for case in golden_cases[:2]:
        expected = onnxruntime.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]]).tokens
        tokens = golden_pipeline(fp16_engines).generate([case["prompt"]], golden_sampling, seeds=[case["seed"]]).tokens
        assert np.array_equal(tokens, expected)
    assert fake_trt.ERRORS == []


def test_recorded_graph_io_is_polygraphy_data_and_the_engines_match_it(fake_trt, fp16_engines, tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    ref = tmp_path / "ref.json"
    saved = invoke("parity", "--artifacts", fp16_engines, "--save-outputs", ref, "--prompt", "a red car")
    assert saved.exit_code == 0, saved.output
    [(runner, steps)] = RunResults.load(str(tmp_path / "ref.transformer_step.json")).items()
    assert runner == "onnxruntime" and len(steps) == load_manifest(fp16_engines).config.num_scales
    feeds = load_json(str(tmp_path / "ref.inputs.transformer_step.json"))
    assert feeds[0]["x"].dtype == np.float16 and steps[0]["logits"].shape[-1] == 256  # the fp16 graphs' own types
    assert feeds[0]["past_key.0"].shape[0] == 0 and feeds[1]["past_key.0"].shape[0] == 1
    polygraphy = str(Path(sys.executable).parent / "polygraphy")
    shown = subprocess.run([polygraphy, "inspect", "data", str(ref.with_name("ref.vq_decoder.json"))], **TEXT)
    assert shown.returncode == 0 and "onnxruntime" in shown.stdout and "image" in shown.stdout, shown.stderr
    again = invoke("parity", "--artifacts", fp16_engines, "--save-outputs", ref, "--prompt", "a red car")
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output
    compared = invoke("parity", "--artifacts", fp16_engines, "--backend", "tensorrt", "--load-outputs", ref)
    assert compared.exit_code == 0, compared.output
    assert "PASS: " in compared.output and "(fp16)" in compared.output


def test_engines_of_a_changed_weight_fail_naming_graph_scale_and_output(fake_trt, fp16_engines, tmp_path):
    import onnx
    from onnx import numpy_helper

    from star_deploy.artifacts.manifest import MANIFEST, dumps, graph_digest, sealed

    ref = tmp_path / "ref.json"
    assert invoke("parity", "--artifacts", fp16_engines, "--save-outputs", ref).exit_code == 0
    folder = tmp_path / "changed"
    shutil.copytree(fp16_engines, folder, ignore=shutil.ignore_patterns("engines"))
    path = folder / "transformer_step.onnx"
    model = onnx.load(path)
    vocab = load_manifest(fp16_engines).config.transformer.vocab_size
    head = next(w for w in model.graph.initializer if list(w.dims)[1:] == [vocab])  # the logits projection
    changed = numpy_helper.to_array(head).copy()
    changed[0, 0] += 1
    head.CopyFrom(numpy_helper.from_array(changed, head.name))
    onnx.save(model, path)
    data = json.loads((folder / MANIFEST).read_text())
    manifest = load_manifest(fp16_engines)
    data["graphs"]["transformer_step"]["sha256"] = graph_digest(folder, manifest.graphs["transformer_step"])
    (folder / MANIFEST).write_text(dumps(sealed(data, folder)))
    rebuilt = invoke("build-engine", folder)
    assert rebuilt.exit_code == 0, rebuilt.output
    compared = invoke("parity", "--artifacts", folder, "--backend", "tensorrt", "--load-outputs", ref)
    assert compared.exit_code == 1, compared.output
    assert "FAIL: transformer_step at scale 0: output logits differs by up to" in compared.output
