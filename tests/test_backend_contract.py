"""Every registered backend keeps one contract: a single test class, parametrized by the registry.

The cases come from ``star_deploy.backends.registry.BACKENDS``: a backend that runs weights runs the
golden model (its CUDA variants where a GPU is visible), one that runs artefacts runs the golden
export in each precision it takes (one with built engines: fp32 engines, built on the CPU through the
fake TensorRT of ``tests/fake_tensorrt`` when TensorRT is not installed). A backend joins by its
registry entry. Float32 on the CPU must give the official golden tokens; the other precisions must
stay within their ``THRESHOLDS`` against the float32 reference. Every backend is made by its
registry factory, the way ``plan_load`` makes it.
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import toy_backend
from conftest import fake_tensorrt_installed
from PIL import Image
from typer.testing import CliRunner

from star_deploy.api import StarPipeline
from star_deploy.artifacts.manifest import load_manifest
from star_deploy.backends.registry import BACKENDS, BackendSpec, bench_variants
from star_deploy.cli import app
from star_deploy.core.config import SamplingConfig
from star_deploy.core.fast import FastMode
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.errors import ConfigError
from star_deploy.evaluation.parity import THRESHOLDS, failures, teacher_forced
from star_deploy.runtime.loading import Loaded
from star_deploy.runtime.pipeline import ScaleLoop
from star_deploy.runtime.plan import LoadOptions, chosen_device, plan_load, refuse_other_backends_options
from star_deploy.serve.options import ServeOptions

HAS_CUDA = torch.cuda.is_available()
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")
"""The exports a backend that runs artefacts (without built engines) is tested on."""
PROMPTS = ["a red car.", "a cute dog sitting on the grass"]
FAST_RUNGS = {"fast1": FastMode(1, cfg_until=7), "fast2": FastMode(2, cfg_until=7, keep=(0.5,))}
"""Rungs on the golden model (no preset): guidance on 7 of 10 scales; rung 2 also halves the 16x16 scale."""
FAST_BUILD = ["--fast", "2", "--cfg-until", "7", "--keep", "0.5"]
"""What engines are built for, so they run both rungs (rung 2's pruned step has profiles for these knobs only)."""


@dataclass(frozen=True)
class Case:
    """One backend with some load options, on weights or on an export of one precision."""

    backend: str
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False

    @property
    def spec(self) -> BackendSpec:
        return BACKENDS[self.backend]

    @property
    def exact(self) -> bool:
        """Float32 on the CPU: the official code's tokens, draw for draw."""
        return self.precision == "fp32" and not self.gpu

    @property
    def id(self) -> str:
        return "-".join([self.backend, self.precision, *sorted(self.options)])


def contract_cases() -> list[Case]:
    """A case per registered backend and what it runs; the CUDA-only variants of a backend where they apply."""
    cases = []
    for spec in BACKENDS.values():
        if not spec.needs_artifacts:
            cases.append(Case(spec.name))
            gpu_variants = [v for v in spec.bench if v.needs_cuda and not v.options.get("compile")]
            cases += [Case(spec.name, options=dict(v.options), gpu=True) for v in gpu_variants]
        else:
            cases += [Case(spec.name, p) for p in (("fp32",) if spec.engines else GRAPH_PRECISIONS)]
    return cases


CASES = contract_cases()


@pytest.fixture(scope="module")
def engines_runtime():
    """TensorRT for the backends that run engines: the installed one, else the fake (CPU)."""
    if importlib.util.find_spec("tensorrt") is not None:
        yield None
        return
    with fake_tensorrt_installed() as module:
        yield module


@pytest.fixture(scope="module")
def engine_folder(request, artifacts_fp32, tmp_path_factory):
    """The golden fp32 export with engines built for batch sizes 1 and 2 (made on first use)."""
    request.getfixturevalue("engines_runtime")
    folder = tmp_path_factory.mktemp("contract") / "engines"
    shutil.copytree(artifacts_fp32, folder)
    result = CliRunner().invoke(app, ["build-engine", str(folder), "-b", "1", "-b", "2", *FAST_BUILD])
    assert result.exit_code == 0, result.output
    return folder


def source_of(case: Case, request) -> Any:
    """What the case's backend runs: the golden model, or the export of the case's precision."""
    if not case.spec.needs_artifacts:
        return request.getfixturevalue("tiny_model")
    if case.spec.engines:
        return load_manifest(request.getfixturevalue("engine_folder"))
    return load_manifest(request.getfixturevalue(f"artifacts_{case.precision}"))


@dataclass
class Built:
    """A case's backend made by its registry factory, in a scale loop."""

    case: Case
    loop: ScaleLoop
    source: Any
    device: str
    options: LoadOptions

    def fresh_backend(self) -> Any:
        return self.case.spec.create(self.source, self.device, self.options)


@pytest.fixture(scope="class", params=CASES, ids=[c.id for c in CASES])
def built(request) -> Built:
    case: Case = request.param
    if case.gpu and not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    options = LoadOptions(device="cuda" if case.gpu else None, **case.options)
    device = chosen_device(case.spec, options)
    source = source_of(case, request)
    case.spec.check(device, options)
    backend = case.spec.create(source, device, options)
    tokenizer_dir = source.tokenizer_dir
    return Built(case, ScaleLoop(backend, PromptTokenizer(tokenizer_dir)), source, device, options)


class TestBackendContract:
    """What every backend guarantees, whatever runs the graphs."""

    def test_golden_tokens_or_the_precision_thresholds(self, built, golden, golden_cases, golden_sampling, request):
        if built.case.exact:
            for case in golden_cases:
                gen = built.loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]], timing=False)
                assert np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"]), case["key"]
            return
        reference = request.getfixturevalue("torch_pipeline")
        result = teacher_forced(reference, built.loop, PROMPTS, SamplingConfig(), [0, 1])
        assert failures(result, THRESHOLDS[built.case.precision]) == [], result.summary()

    @pytest.mark.parametrize("rung", list(FAST_RUNGS))
    def test_every_fast_rung_gives_the_reference_tokens(self, built, rung, request):
        """Float32 on the CPU: a rung samples the torch reference's tokens for the same seeds (portable sampler)."""
        if not built.case.exact:
            pytest.skip("a rung's tokens are compared in float32 on the CPU")
        mode, sampling, seeds = FAST_RUNGS[rung], SamplingConfig(cfg=4.0, top_k=64, top_p=0.9), [4, 5]
        reference = request.getfixturevalue("torch_pipeline")
        expected = reference.generate(PROMPTS, sampling, seeds=seeds, fast=mode, timing=False).tokens
        tokens = built.loop.generate(PROMPTS, sampling, seeds=seeds, fast=mode, timing=False).tokens
        np.testing.assert_array_equal(tokens, expected)

    def test_a_batch_gives_each_prompt_its_own_tokens(self, built):
        sampling = SamplingConfig(seed=3)
        batched = built.loop.generate(PROMPTS, sampling, seeds=[3, 4], timing=False)
        for i, prompt in enumerate(PROMPTS):
            alone = built.loop.generate([prompt], sampling, seeds=[3 + i], timing=False)
            assert np.array_equal(batched.tokens[i], alone.tokens[0]), prompt
            assert np.abs(batched.images[i] - alone.images[0]).max() <= 1e-4, prompt

    def test_a_preview_after_every_scale(self, built):
        previews = []
        gen = built.loop.generate(PROMPTS[:1], SamplingConfig(), seeds=[0], timing=False, on_scale=previews.append)
        config = built.loop.config
        assert [e.scale for e in previews] == list(range(config.num_scales))
        for event in previews:
            image = event.preview()
            assert image.shape == gen.images.shape and 0.0 <= image.min() and image.max() <= 1.0
        assert np.abs(previews[-1].preview() - gen.images).max() <= 1e-4

    def test_a_callback_stops_the_loop(self, built):
        gen = built.loop.generate(
            PROMPTS, SamplingConfig(), seeds=[0, 1], timing=False, on_scale=lambda event: event.scale < 1
        )
        patch_nums = built.loop.config.patch_nums
        assert gen.tokens.shape == (2, patch_nums[0] ** 2 + patch_nums[1] ** 2)
        assert gen.images.shape[0] == 2 and np.isfinite(gen.images).all()

    def test_bad_options_are_refused_before_loading(self, built):
        spec = built.case.spec
        with pytest.raises(ConfigError, match="unknown device 'tpu'"):
            spec.check("tpu", built.options)
        others = [(o.name, name) for o in BACKENDS.values() if o is not spec for name in o.options]
        owner, name = others[0]
        with pytest.raises(ConfigError, match=f"{name} applies to backend='{owner}', not to backend='{spec.name}'"):
            refuse_other_backends_options(spec, LoadOptions(**{name: FOREIGN_VALUES[name]}))
        with pytest.raises(ConfigError, match="unknown backend"):
            plan_load(LoadOptions(backend=spec.name + "-nope"))

    def test_threads_share_one_pipeline(self, built):
        """Calls from several threads run one at a time, each giving the images it would give alone."""
        pipe = StarPipeline(Loaded(built.loop, built.case.backend, built.case.precision, SamplingConfig()))
        pipe.set_progress_bar_config(disable=True)
        alone = {p: pipe(p, seed=5, output_type="np").tokens for p in PROMPTS}
        results: dict[str, np.ndarray] = {}
        threads = [threading.Thread(target=lambda p=p: results.update({p: pipe(p, seed=5).tokens})) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(np.array_equal(results[p], alone[p]) for p in PROMPTS)

    def test_a_dropped_backend_is_freed(self, built):
        """Nothing keeps a backend alive once its owner lets go (bench and serve rely on it to free memory)."""
        backend = built.fresh_backend()
        ScaleLoop(backend, built.loop.tokenizer).generate(PROMPTS[:1], SamplingConfig(), seeds=[0], timing=False)
        ref = weakref.ref(backend)
        del backend
        gc.collect()
        assert ref() is None


FOREIGN_VALUES = {
    "dtype": "float16",
    "cuda_graphs": True,
    "compile": True,
    "compile_cache": "compiled",
    "decoder_dtype": "bfloat16",
    "provider": "cpu",
    "provider_options": {},
    "session_options": None,
}
"""A value that sets each backend-specific option (``session_options`` cannot be set without onnxruntime's type)."""


def test_every_registered_backend_has_a_case():
    assert {c.backend for c in CASES} == set(BACKENDS)
    assert any(c.exact for c in CASES) and any(not c.exact for c in CASES)


def test_a_new_backend_is_one_module_and_one_registry_entry(
    monkeypatch, artifacts_fp32, golden, golden_cases, golden_sampling, tmp_path
):
    """tests/toy_backend.py and its ``BackendSpec``, and nothing else: every entry point takes the new backend."""
    monkeypatch.setitem(BACKENDS, "toy", toy_backend.SPEC)
    assert "toy" in {c.backend for c in contract_cases()} and "toy" in bench_variants()

    plan = plan_load(LoadOptions(backend="toy", artifacts=artifacts_fp32))
    assert (plan.backend, plan.device, plan.precision) == ("toy", "cpu", "fp32")
    with pytest.raises(ConfigError, match="the toy backend runs on the CPU only"):
        plan_load(LoadOptions(backend="toy", device="cuda", artifacts=artifacts_fp32))
    with pytest.raises(ConfigError, match="provider applies to backend='onnxruntime', not to backend='toy'"):
        plan_load(LoadOptions(backend="toy", provider="cpu", artifacts=artifacts_fp32))
    assert ServeOptions(backend="toy", artifacts=str(artifacts_fp32)).load.backend == "toy"

    pipe = StarPipeline.from_pretrained(artifacts_fp32, backend="toy")
    case = golden_cases[0]
    gen = pipe.loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]], timing=False)
    assert pipe.backend_name == "toy" and np.array_equal(gen.tokens, golden[f"{case['key']}/tokens"])

    png = tmp_path / "toy.png"
    args = ["run", "a red car.", "--backend", "toy", "--artifacts", str(artifacts_fp32), "-o", str(png)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(png).text["backend"] == "toy"
