"""TensorRT engines: profiles, buffer plans, sidecars, bindings (CPU), and the engines themselves (GPU + TensorRT)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from star_deploy.backends.kv_cache import KVCache
from star_deploy.cli import app
from star_deploy.core.config import PRESETS, SamplingConfig, preset
from star_deploy.core.fast import resolve_fast, scale_plans
from star_deploy.core.graphs import Role, graph_specs
from star_deploy.engines.buffers import (
    binding_plan,
    bound_tensor,
    buffer_plan,
    check_engine_names,
    kv_cache_bytes,
)
from star_deploy.engines.builder import BuildOptions, engine_sidecar
from star_deploy.engines.memory import attention_scores_bytes
from star_deploy.engines.profiles import (
    Profile,
    dynamic_inputs,
    profile_table,
    select_profile,
    select_pruned_profile,
)
from star_deploy.engines.sidecar import EngineSidecar, RuntimeInfo, check_sidecar, load_sidecar, write_sidecar
from star_deploy.errors import ArtifactError, ConfigError
from star_deploy.evaluation.parity import GRAPHS, THRESHOLDS, psnr, validate

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
KV_1024_D30_B1_FP16 = 4_355_020_800
"""30 layers x (K, V) x 9451 tokens x 2 CFG rows x 30 heads x 64 x 2 bytes = 4.06 GiB."""
TEXT_1024_D30_B1_FP16 = 77 * 4 + 30 * 2 * (30 * 77 * 64) * 2
"""cross_bias (1, 1, 1, 77) fp32 + 30 layers x (K, V) x (1 prompt, 30 heads, 77 tokens, 64) fp16."""
STEP_IO_1024_D30_B1_FP16 = 2 * 4096 * 1920 * 2 + 2 * 4096 * 32 * 4 + 2 * 4096 * 4096 * 4
"""The last scale's step: x (2, 4096, 1920) fp16, rope_cos and rope_sin (4096, 32) fp32, logits (2, 4096, 4096) fp32."""


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("batch", [1, 3])
def test_step_profiles_have_exact_shapes_of_each_scale(name, batch):
    config = preset(name)
    t = config.transformer
    spec = graph_specs(config, "fp16")["transformer_step"]
    profiles = profile_table(config, spec, [batch])
    assert [p.scale for p in profiles] == list(range(config.num_scales))
    assert [p.index for p in profiles] == list(range(config.num_scales))
    past = 0
    for p, side in zip(profiles, config.patch_nums):
        assert p.shapes["x"] == (2 * batch, side * side, t.width)
        assert p.shapes["rope_cos"] == (side * side, t.head_dim // 2)
        assert p.shapes["cross_key.0"] == (batch, t.heads, 77, t.head_dim)
        assert p.shapes[f"past_value.{t.depth - 1}"] == (past, 2 * batch, t.heads, t.head_dim)
        assert set(p.shapes) == set(spec.input_names)
        past += side * side
    assert past == config.total_tokens


def test_profiles_for_several_batch_sizes_and_their_selection():
    config = preset("1024-d30")
    specs = graph_specs(config, "fp16")
    step = profile_table(config, specs["transformer_step"], [2, 1, 2])
    assert len(step) == 2 * 14 and [p.batch for p in step[:14]] == [1] * 14
    chosen = select_profile(step, specs["transformer_step"], 2, 13)
    assert chosen.index == 27 and chosen.shapes["x"] == (4, 64 * 64, 1920)
    assert chosen.shapes["past_key.0"] == (9451 - 4096, 4, 30, 64)
    update = profile_table(config, specs["scale_update"], [1])
    assert update[-1].shapes["downsample"] == (1, 64) and update[0].shapes["tokens"] == (1, 1, 1)
    assert update[5].shapes["upsample"] == (64, 7) and update[5].shapes["downsample"] == (9, 64)
    decoder = profile_table(config, specs["vq_decoder"], [1, 4])
    assert [(p.index, p.batch, p.scale) for p in decoder] == [(0, 1, None), (1, 4, None)]
    assert decoder[1].shapes == {"f_hat": (4, 32, 64, 64)}
    with pytest.raises(
        ArtifactError, match=r"built for \[1, 4\]\); rebuild with `star-deploy build-engine DIR --batch-size 2`"
    ):
        select_profile(decoder, specs["vq_decoder"], 2)
    with pytest.raises(ConfigError, match="--batch-size"):
        profile_table(config, specs["vq_decoder"], [0])


def test_only_inputs_with_symbolic_dimensions_are_profiled():
    specs = graph_specs(preset("tiny"), "fp32")
    assert dynamic_inputs(specs["scale_update"]) == ["tokens", "f_hat", "upsample", "downsample"]
    per_scale = {"transformer_step", "scale_update", "transformer_step_pruned"}
    assert {name for name, spec in specs.items() if spec.per_scale} == per_scale


def test_conditional_row_profiles_follow_the_exact_ones_for_the_step_only():
    config = preset("tiny")
    specs = graph_specs(config, "fp32")
    step = profile_table(config, specs["transformer_step"], [1, 2], conditional_rows=True)
    n = config.num_scales
    assert [p.index for p in step] == list(range(4 * n))
    assert [p.rows for p in step] == [None] * 2 * n + [1] * n + [2] * n
    assert step[2 * n + n + 3].shapes["x"][0] == 2 and step[n + 3].shapes["x"][0] == 4
    assert select_profile(step, specs["transformer_step"], 2, 3, rows=2) is step[3 * n + 3]
    update = profile_table(config, specs["scale_update"], [1], conditional_rows=True)
    assert len(update) == n and all(p.rows is None for p in update)


def test_pruned_step_profiles_are_the_scales_its_fast_mode_prunes():
    """1024-d30's rung 2 (guidance on 11 scales; 48x48 and 64x64 keep 0.5 and 0.25): scales 11-13, B rows each,
    the cache holding what every earlier scale ran."""
    config = preset("1024-d30")
    specs = graph_specs(config, "fp16")
    spec, fast = specs["transformer_step_pruned"], resolve_fast(config, 2)
    assert profile_table(config, spec, [1]) == []
    profiles = profile_table(config, spec, [1, 2], fast=fast)
    assert [(p.index, p.batch, p.scale, p.kept, p.rows) for p in profiles] == [
        (0, 1, 11, 1296, 1),
        (1, 1, 12, 1152, 1),
        (2, 1, 13, 1024, 1),
        (3, 2, 11, 1296, 2),
        (4, 2, 12, 1152, 2),
        (5, 2, 13, 1024, 2),
    ]
    last = profiles[5].shapes
    assert last["x"] == (2, 64, 64, 1920) and last["kept_index"] == (2, 1024) and last["restore"] == (64, 48)
    assert last["prior_residual"] == (2, 48, 48, 1920) and last["rope_cos"] == (64 * 64, 32)
    assert last["past_key.0"] == (9451 - 64 * 64 - 48 * 48 + 1152, 2, 30, 64)
    plans = scale_plans(config, fast)
    assert select_pruned_profile(profiles, spec, config, 2, 12, plans) is profiles[4]
    other = scale_plans(config, resolve_fast(config, 2, keep=(0.5, 0.5)))
    with pytest.raises(ArtifactError, match="no profile for scale 13 keeping 2048 tokens of 2 rows at batch size 2"):
        select_pruned_profile(profiles, spec, config, 2, 13, other)
    assert Profile.from_dict(profiles[5].to_dict()) == profiles[5]
    assert Profile.from_dict({"index": 0, "batch": 1, "scale": 0, "shapes": {}}).kept is None  # an older sidecar


def test_kv_cache_size_of_1024_d30_at_batch_1_fp16():
    assert kv_cache_bytes(preset("1024-d30"), 1, "fp16") == KV_1024_D30_B1_FP16
    plan = buffer_plan(preset("1024-d30"), graph_specs(preset("1024-d30"), "fp16"), 1, "fp16")
    assert plan.kv_cache == KV_1024_D30_B1_FP16
    assert plan.text_context == TEXT_1024_D30_B1_FP16 == 17_741_108
    # the last scale's step I/O is the largest set of transient buffers (its logits alone are 128 MiB)
    assert plan.transient_peak == STEP_IO_1024_D30_B1_FP16 == 166_723_584
    assert plan.total == 4_539_485_492


def test_fp32_attention_scores_of_1024_d30_last_scale():
    """(2B, 30 heads, 64 x 64 queries, 9451 keys) float32: 8.65 GiB at batch 1, four times that at batch 4."""
    assert attention_scores_bytes(preset("1024-d30"), 1) == 2 * 30 * 4096 * 9451 * 4 == 9_290_711_040
    assert attention_scores_bytes(preset("1024-d30"), 4) == 4 * 9_290_711_040


def test_kv_cache_plan_matches_the_allocated_cache():
    config = preset("tiny")
    cache = KVCache(config, 4, torch.float16, torch.device("cpu"))
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert allocated == kv_cache_bytes(config, 2, "fp16")


def test_binding_plan_maps_every_manifest_name_once():
    config = preset("tiny")
    specs = graph_specs(config, "fp16")
    for spec in specs.values():
        plan = binding_plan(spec)
        assert [b.name for b in plan] == spec.input_names + spec.output_names
    step = {b.name: b for b in binding_plan(specs["transformer_step"])}
    assert step["past_key.1"].role is Role.CACHE_PREFIX and step["past_key.1"].layer == 1
    assert step["new_value.0"].role is Role.CACHE_SLOT and step["new_value.0"].is_value
    assert step["cross_bias"].role is Role.TEXT_CONTEXT and step["x"].role is Role.CALLER
    assert step["logits"].role is Role.OUTPUT
    context = {b.name: b.role for b in binding_plan(specs["text_context"])}
    assert context["start_tokens"] is Role.OUTPUT and context["cross_key.0"] is Role.TEXT_CONTEXT


def test_roles_pair_what_one_graph_writes_with_what_the_next_reads():
    """The step reads exactly the text context that text_context writes; every cache layer has a prefix and a slot."""
    config = preset("tiny")
    specs = graph_specs(config, "fp16")
    written = specs["text_context"].with_role(Role.TEXT_CONTEXT)
    read = specs["transformer_step"].with_role(Role.TEXT_CONTEXT)
    assert [(t.name, t.shape, t.dtype) for t in written] == [(t.name, t.shape, t.dtype) for t in read]
    steps = ("transformer_step", "transformer_step_pruned")
    for role in (Role.CACHE_PREFIX, Role.CACHE_SLOT):
        for step in steps:
            cache = specs[step].with_role(role)
            depth = config.transformer.depth
            assert sorted((t.is_value, t.layer) for t in cache) == [(v, i) for v in (False, True) for i in range(depth)]
    roles = {t.role for spec in specs.values() for t in spec.inputs + spec.outputs if spec.name not in steps}
    assert roles == {Role.CALLER, Role.OUTPUT, Role.TEXT_CONTEXT}


def test_cache_bindings_are_in_place_views_of_one_buffer():
    """The slot a step writes is the next contiguous block; after the step it is part of the prefix."""
    config = preset("tiny")
    step = {b.name: b for b in binding_plan(graph_specs(config, "fp32")["transformer_step"])}
    cache = KVCache(config, 2, torch.float32, torch.device("cpu"))
    row_bytes = 2 * config.transformer.heads * config.transformer.head_dim * 4
    for k, side in enumerate(config.patch_nums):
        tokens = side * side
        slot = bound_tensor(step["new_value.1"], cache, {}, tokens)
        assert slot.is_contiguous() and slot.shape == (tokens, 2, config.transformer.heads, 64)
        assert slot.data_ptr() == cache.values[1].data_ptr() + cache.length * row_bytes
        slot.fill_(float(k))
        cache.length += tokens
        prefix = bound_tensor(step["past_value.1"], cache, {}, tokens)
        assert prefix.is_contiguous() and prefix.data_ptr() == cache.values[1].data_ptr()
        assert torch.all(prefix[-tokens:] == k)
    text = {"cross_bias": torch.zeros(1)}
    assert bound_tensor(step["cross_bias"], cache, text, 1) is text["cross_bias"]
    with pytest.raises(ValueError):
        bound_tensor(step["x"], cache, text, 1)


def test_engine_io_names_are_checked_against_the_manifest():
    spec = graph_specs(preset("tiny"), "fp16")["vq_decoder"]
    check_engine_names(spec, ["f_hat"], ["image"])
    with pytest.raises(ArtifactError, match=r"missing \['image'\], unexpected \['output_0'\]\); rebuild"):
        check_engine_names(spec, ["f_hat"], ["output_0"])


BUILT = RuntimeInfo("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")


def sidecar_for(config) -> EngineSidecar:
    spec = graph_specs(config, "fp16")["transformer_step"]
    return EngineSidecar(
        "transformer_step",
        "fp16",
        "strong",
        "ab" * 32,
        BUILT,
        [1],
        profile_table(config, spec, [1]),
        {"optimization_level": 3},
    )


def test_sidecar_round_trip(tmp_path):
    sidecar = sidecar_for(preset("tiny"))
    path = tmp_path / "engines" / "transformer_step.json"
    path.parent.mkdir()
    write_sidecar(path, sidecar)
    loaded = load_sidecar(path)
    assert loaded == sidecar
    data = json.loads(path.read_text())
    assert data["gpu_name"] == BUILT.gpu_name and data["compute_capability"] == "9.0"
    assert data["profiles"][3]["shapes"]["x"] == [2, 16, 128]
    check_sidecar(loaded, BUILT, "ab" * 32, path.with_suffix(".plan"))


@pytest.mark.parametrize(
    ("running", "onnx_hash", "message"),
    [
        (
            RuntimeInfo("10.8.0.43", BUILT.gpu_name, "9.0"),
            "ab" * 32,
            "built for TensorRT version 10.13.0.35, running 10.8.0.43",
        ),
        (
            RuntimeInfo(BUILT.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0"),
            "ab" * 32,
            "built for GPU compute capability 9.0, running 8.0",
        ),
        (
            RuntimeInfo(BUILT.tensorrt_version, "NVIDIA H100 PCIe", "9.0"),
            "ab" * 32,
            "built for GPU NVIDIA H100 80GB HBM3, running NVIDIA H100 PCIe",
        ),
        (BUILT, "cd" * 32, "built from a different transformer_step.onnx"),
    ],
)
def test_sidecar_mismatch_is_refused_with_the_rebuild_command(tmp_path, running, onnx_hash, message):
    plan = tmp_path / "out" / "engines" / "transformer_step.plan"
    with pytest.raises(ArtifactError) as err:
        check_sidecar(sidecar_for(preset("tiny")), running, onnx_hash, plan)
    assert message in str(err.value)
    assert f"rebuild with `star-deploy build-engine {tmp_path / 'out'} --overwrite`" in str(err.value)


def test_sidecar_of_a_graph_with_external_data_matches_its_manifest(artifacts_external, tmp_path):
    """The builder records the same digest (.onnx + .onnx.data) that the runtime compares with the manifest."""
    from star_deploy.artifacts.manifest import load_manifest, sha256_file
    from star_deploy.engines.sidecar import plan_path, sidecar_path

    manifest = load_manifest(artifacts_external)
    for graph, spec in manifest.graphs.items():
        assert (artifacts_external / f"{spec.file}.data").is_file()
        sidecar = engine_sidecar(manifest, graph, BuildOptions((1,)), BUILT, profile_table(manifest.config, spec, [1]))
        assert sidecar.onnx_sha256 == manifest.graph_hashes[graph] != sha256_file(manifest.path(graph))
        path = sidecar_path(tmp_path, graph)
        path.parent.mkdir(exist_ok=True)
        write_sidecar(path, sidecar)
        check_sidecar(load_sidecar(path), BUILT, manifest.graph_hashes[graph], plan_path(tmp_path, graph))


def test_check_reports_the_built_batch_sizes_of_a_build_without_the_pruned_step(artifacts_fp32, tmp_path):
    """A build without --fast 2 has no pruned-step sidecar: `check` still reads the batch sizes the engines have."""
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.core.graphs import GRAPH_NAMES
    from star_deploy.engines.memory import reported_batch_sizes
    from star_deploy.engines.sidecar import sidecar_path

    manifest = load_manifest(artifacts_fp32)
    assert "transformer_step_pruned" in manifest.graphs and reported_batch_sizes(manifest, None) == [1]
    folder = tmp_path / "built"
    (folder / "engines").mkdir(parents=True)
    shutil.copy(artifacts_fp32 / "manifest.json", folder)
    for graph in GRAPH_NAMES:
        profiles = profile_table(manifest.config, manifest.graphs[graph], [1, 2])
        write_sidecar(
            sidecar_path(folder, graph), engine_sidecar(manifest, graph, BuildOptions((1, 2)), BUILT, profiles)
        )
    manifest = dataclasses.replace(manifest, root=folder)
    assert reported_batch_sizes(manifest, None) == [1, 2]
    assert reported_batch_sizes(manifest, [4]) == [4]


def test_missing_or_foreign_sidecar_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="missing; build the engines with `star-deploy build-engine DIR`"):
        load_sidecar(tmp_path / "x.json")
    (tmp_path / "x.json").write_text('{"format": "something-else"}')
    with pytest.raises(ArtifactError, match="not a star-deploy engine sidecar"):
        load_sidecar(tmp_path / "x.json")


def test_build_options_are_validated():
    BuildOptions((1, 2)).validate("10.13.0")
    BuildOptions(typing="fp16-flag").validate("10.3.0")
    with pytest.raises(ConfigError, match="TensorRT 11 removed the FP16 builder flag"):
        BuildOptions(typing="fp16-flag").validate("11.0.0")
    with pytest.raises(ConfigError, match="--opt-level"):
        BuildOptions(optimization_level=6).validate("10.13.0")


def test_psnr():
    a = np.zeros((1, 3, 4, 4))
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0)


def test_validation_metrics_on_two_cpu_backends(torch_pipeline, ort_pipeline):
    """The GPU validation's comparisons, run on torch vs ONNX Runtime (fp32): near-exact agreement."""
    fast = resolve_fast(torch_pipeline.config, 2, cfg_until=7, keep=(0.5,))
    report = validate(torch_pipeline, ort_pipeline, ["A cute dog"], SamplingConfig(seed=3), runs=0, fast=fast)
    fp32 = THRESHOLDS["fp32"]
    assert set(report.parity) == {*GRAPHS, "transformer_step_pruned"}
    assert report.parity["transformer_step_pruned"].count == 4  # logits and residual of scales 8 and 9
    assert all(p.count > 0 and p.max_abs <= 1e-4 for p in report.parity.values()), report.parity
    assert len(report.token_agreement) == torch_pipeline.config.num_scales
    assert report.mean_token_agreement >= fp32.teacher_forced_token_agreement
    assert min(report.teacher_psnr, report.sampled_psnr) > fp32.teacher_forced_psnr_db
    assert report.sampled_token_match == 1.0


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
@pytest.mark.parametrize(
    "args", [["build-engine"], ["run", "a cat", "--backend", "tensorrt", "--out", "x.png", "--artifacts"]]
)
def test_cli_without_tensorrt_says_what_to_install(artifacts_fp32, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*args, str(artifacts_fp32)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error: TensorRT is not installed: pip install 'star-deploy[tensorrt-cu12]' (CUDA 12 torch) or "
        "'star-deploy[tensorrt-cu13]' (CUDA 13 torch) on a machine with an NVIDIA GPU"
    ]
    assert not (artifacts_fp32 / "engines").exists()


def tensorrt_ready() -> tuple[bool, str]:
    if not HAS_TENSORRT:
        return False, "TensorRT is not installed (pip install 'star-deploy[tensorrt-cu12]' or '[tensorrt-cu13]')"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch"
    return True, ""


TRT_OK, TRT_REASON = tensorrt_ready()


@pytest.fixture(scope="module")
def tiny_engines(artifacts_fp16, tmp_path_factory):
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.engines.builder import build_engines

    folder = tmp_path_factory.mktemp("trt") / "tiny_fp16"
    shutil.copytree(artifacts_fp16, folder)
    manifest = load_manifest(folder)
    build_engines(manifest, BuildOptions(batch_sizes=(1,), optimization_level=1))
    return folder


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_engines_are_written_with_sidecars(tiny_engines):
    for graph in ("text_encoder", "text_context", "transformer_step", "scale_update", "vq_decoder"):
        sidecar = load_sidecar(tiny_engines / "engines" / f"{graph}.json")
        assert (tiny_engines / "engines" / f"{graph}.plan").stat().st_size > 0
        assert sidecar.batch_sizes == [1] and sidecar.typing == "strong" and sidecar.builder["tf32"] is False
    assert [p.stat().st_size > 0 for p in (tiny_engines / "engines").glob("timing-*-trt*.cache")] == [True]


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_tensorrt_matches_onnxruntime_fp32(tiny_engines, artifacts_fp32):
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.backends.trt_backend import TrtBackend
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.runtime.pipeline import ScaleLoop

    manifest = load_manifest(tiny_engines)
    tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    test = ScaleLoop(TrtBackend(manifest, "cuda"), tokenizer)
    ref = ScaleLoop(OrtBackend(load_manifest(artifacts_fp32)), tokenizer)
    report = validate(ref, test, ["a red car."], SamplingConfig(seed=0), runs=1)
    assert report.parity["transformer_step"].max_rel < 5e-2
    assert report.mean_token_agreement > 0.9
    assert report.teacher_psnr > 30


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_tensorrt_refuses_a_plan_for_another_gpu(tiny_engines):
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.trt_backend import TrtBackend

    path = tiny_engines / "engines" / "vq_decoder.json"
    original = path.read_text()
    data = json.loads(original)
    data["compute_capability"] = "1.0"
    path.write_text(json.dumps(data))
    try:
        with pytest.raises(ArtifactError, match="built for GPU compute capability 1.0"):
            TrtBackend(load_manifest(tiny_engines), "cuda")
    finally:
        path.write_text(original)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_fake_tensorrt_is_installed_only_inside_its_fixture():
    from conftest import fake_tensorrt_installed

    from star_deploy.engines.gpu import CudaRuntime, cuda

    with fake_tensorrt_installed() as module:
        assert importlib.util.find_spec("tensorrt") is not None and module.__version__.startswith("10.")
        assert type(cuda()).__name__ == "HostRuntime"
    assert importlib.util.find_spec("tensorrt") is None
    assert isinstance(cuda(), CudaRuntime)


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_documented_validation_passes_on_a_batch_1_build(tiny_engines, artifacts_fp32, tmp_path):
    """`check --backend tensorrt` on the default build: fused attention with an fp32 softmax, the zero-length
    past at scale 0, and the timings are only measured here, on a real GPU."""
    report = tmp_path / "report.json"
    args = ["check", str(tiny_engines), "--backend", "tensorrt", "--reference", str(artifacts_fp32)]
    result = CliRunner().invoke(app, [*args, "--reference-device", "cpu", "--runs", "2", "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["token_agreement"][0] == 1.0  # scale 0: the empty KV-cache prefix
    assert data["timings_s"]["tested"]["total"] > 0


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_fp32_engines_meet_the_fp32_thresholds_with_tf32_off(artifacts_fp32, tmp_path):
    """TF32 is cleared by default: an fp32 folder's engines pass `parity` at the fp32 thresholds, on cuda by default."""
    from conftest import GOLDEN

    folder = tmp_path / "tiny_fp32"
    shutil.copytree(artifacts_fp32, folder)
    assert CliRunner().invoke(app, ["build-engine", str(folder), "--opt-level", "1"]).exit_code == 0
    args = ["parity", "--artifacts", str(folder), "--backend", "tensorrt", "--weights", str(GOLDEN)]
    result = CliRunner().invoke(app, [*args, "--resolution", "256"])
    assert result.exit_code == 0, result.output


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_fast_two_engines_sample_the_tokens_of_onnxruntime(artifacts_fp32, tmp_path):
    """fp32 engines built for rung 2 (guidance on 7 scales, half the 16x16 scale kept) run it with the pruned step's
    engine; with TF32 off their tokens are ONNX Runtime's on the CPU (a token on a rounding edge may flip)."""
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.ort_backend import OrtBackend
    from star_deploy.backends.trt_backend import TrtBackend
    from star_deploy.core.fast import FastMode
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.runtime.pipeline import ScaleLoop

    folder = tmp_path / "tiny_fp32"
    shutil.copytree(artifacts_fp32, folder)
    knobs = ["--fast", "2", "--cfg-until", "7", "--keep", "0.5", "--opt-level", "1"]
    result = CliRunner().invoke(app, ["build-engine", str(folder), *knobs])
    assert result.exit_code == 0, result.output
    assert [p.scale for p in load_sidecar(folder / "engines" / "transformer_step_pruned.json").profiles] == [8, 9]
    manifest = load_manifest(folder)
    tokenizer = PromptTokenizer(manifest.tokenizer_dir)
    mode, sampling = FastMode(2, cfg_until=7, keep=(0.5,)), SamplingConfig(cfg=4.0, top_k=64, top_p=0.9)
    prompts, seeds = ["a cute dog"], [4]
    expected = ScaleLoop(OrtBackend(manifest), tokenizer).generate(prompts, sampling, seeds=seeds, fast=mode)
    tested = ScaleLoop(TrtBackend(manifest, "cuda"), tokenizer).generate(prompts, sampling, seeds=seeds, fast=mode)
    assert np.mean(tested.tokens == expected.tokens) >= 0.95
    assert psnr(expected.images, tested.images) > 20


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_engines_run_from_a_worker_thread_on_the_last_gpu(artifacts_fp16, tmp_path):
    """Built and run on cuda:N (the last GPU; cuda:0 on a one-GPU machine), the generation in another thread."""
    import threading

    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.trt_backend import TrtBackend
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.engines.builder import build_engines
    from star_deploy.runtime.pipeline import ScaleLoop

    device = f"cuda:{torch.cuda.device_count() - 1}"
    folder = tmp_path / "tiny_fp16"
    shutil.copytree(artifacts_fp16, folder)
    build_engines(load_manifest(folder), BuildOptions(optimization_level=1), device=device)
    manifest = load_manifest(folder)
    pipeline = ScaleLoop(TrtBackend(manifest, device), PromptTokenizer(manifest.tokenizer_dir))
    results = []
    worker = threading.Thread(target=lambda: results.append(pipeline.generate(["a red car."], SamplingConfig())))
    worker.start()
    worker.join()
    assert results and np.isfinite(results[0].images).all()
    assert load_sidecar(folder / "engines" / "vq_decoder.json").runtime.gpu_name == torch.cuda.get_device_name(device)


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_first_scale_runs_with_a_zero_length_cache(tiny_engines):
    """Profile 0 of the step has min = opt = max = 0 past tokens (allowed by setDimensions: 0 <= min)."""
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.trt_backend import TrtBackend
    from star_deploy.evaluation.graph_records import engine_replay, record_generation

    [first] = [p for p in load_sidecar(tiny_engines / "engines" / "transformer_step.json").profiles if p.index == 0]
    assert first.shapes["past_key.0"][0] == 0

    manifest = load_manifest(tiny_engines)
    [call] = [c for c in record_generation(manifest, ["a red car."]).calls if c.graph == "transformer_step"][:1]
    outputs = engine_replay(TrtBackend(manifest, "cuda"))(call)
    assert np.abs(outputs["logits"].astype(np.float32) - call.outputs["logits"].astype(np.float32)).max() < 0.25


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON or "ok")
def test_recorded_onnxruntime_outputs_match_the_engines(tiny_engines, tmp_path):
    from typer.testing import CliRunner

    from star_deploy.cli import app

    ref = str(tmp_path / "ref.json")
    saved = CliRunner().invoke(app, ["parity", "--artifacts", str(tiny_engines), "--save-outputs", ref])
    assert saved.exit_code == 0, saved.output
    args = ["parity", "--artifacts", str(tiny_engines), "--backend", "tensorrt", "--load-outputs", ref]
    compared = CliRunner().invoke(app, args)
    assert compared.exit_code == 0 and "PASS: " in compared.output, compared.output


def test_device_memory_counts_the_pruned_step_only_where_its_engine_is_built(tmp_path):
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.core.graphs import PRUNED_STEP
    from star_deploy.demo import DEMO_GRAPHS
    from star_deploy.engines.memory import device_memory, engine_graphs
    from star_deploy.engines.sidecar import sidecar_path

    folder = tmp_path / "graphs"
    shutil.copytree(DEMO_GRAPHS, folder)
    manifest = load_manifest(folder)
    assert PRUNED_STEP in manifest.graphs
    pruned = manifest.path(PRUNED_STEP).stat().st_size
    plain = device_memory(manifest, [1])[0].weights
    assert engine_graphs(manifest) == [g for g in manifest.graphs if g != PRUNED_STEP]
    assert device_memory(manifest, [1], manifest.graphs)[0].weights == plain + pruned
    sidecar_path(folder, PRUNED_STEP).parent.mkdir()
    sidecar_path(folder, PRUNED_STEP).write_text("{}")
    assert engine_graphs(manifest) == list(manifest.graphs)
    assert device_memory(manifest, [1])[0].weights == plain + pruned
