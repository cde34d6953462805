"""Shared fixtures: the golden data, the golden tiny model, and its exported artefacts."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from star_deploy.core.config import SamplingConfig
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.release.finder import resolve_release
from star_deploy.release.weights import StarTorchModel, load_release
from star_deploy.runtime.pipeline import ScaleLoop

GOLDEN = Path(__file__).parent / "fixtures" / "tiny256"
logging.getLogger("torch.onnx").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / "golden.npz"))


@pytest.fixture(scope="session")
def golden_meta() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="session")
def golden_cases(golden_meta) -> list[dict]:
    return golden_meta["cases"]


@pytest.fixture(scope="session")
def golden_sampling(golden_meta) -> SamplingConfig:
    s = golden_meta["sampling"]
    return SamplingConfig(cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"], sampler="official")


def load_golden_model() -> StarTorchModel:
    return load_release(resolve_release(weights=GOLDEN), resolution=256)


@pytest.fixture(scope="session")
def tiny_model() -> StarTorchModel:
    return load_golden_model()


@pytest.fixture(scope="session")
def torch_pipeline() -> ScaleLoop:
    from star_deploy.backends.torch_backend import TorchBackend

    model = load_golden_model()
    return ScaleLoop(TorchBackend(model), PromptTokenizer(model.tokenizer_dir))


@pytest.fixture(scope="session")
def artifacts_fp32(tmp_path_factory) -> Path:
    from star_deploy.export.artifacts import export_artifacts

    out = tmp_path_factory.mktemp("export") / "tiny_fp32"
    return export_artifacts(load_golden_model(), out, "fp32")


@pytest.fixture(scope="session")
def artifacts_fp16(tmp_path_factory) -> Path:
    from star_deploy.export.artifacts import export_artifacts

    out = tmp_path_factory.mktemp("export") / "tiny_fp16"
    return export_artifacts(load_golden_model(), out, "fp16")


@pytest.fixture(scope="session")
def artifacts_int8(artifacts_fp32, tmp_path_factory) -> Path:
    """The fp32 export quantized to static int8 (read only: tests copy it before changing it)."""
    from star_deploy.export.quantize import quantize_artifacts

    return quantize_artifacts(artifacts_fp32, tmp_path_factory.mktemp("quant") / "int8")


@pytest.fixture(scope="session")
def ort_pipeline(artifacts_fp32) -> ScaleLoop:
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.ort_backend import OrtBackend

    manifest = load_manifest(artifacts_fp32)
    return ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))


def max_err(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def golden_errors(pipeline: ScaleLoop, golden: dict, case: dict, sampling: SamplingConfig) -> tuple[float, float]:
    """Max errors of the teacher-forced logits (every scale, both CFG rows) and image against a golden case."""
    k = case["key"]
    gen = pipeline.generate(
        [case["prompt"]],
        sampling,
        seeds=[case["seed"]],
        teacher_tokens=golden[f"{k}/tokens"],
        keep_logits=True,
    )
    return max_err(np.concatenate(gen.logits, axis=1), golden[f"{k}/logits"]), max_err(gen.images, golden[f"{k}/image"])


@pytest.fixture(scope="session")
def artifacts_external(tmp_path_factory) -> Path:
    """The golden model exported with every graph's weights in external ``.onnx.data`` files."""
    from star_deploy.export.artifacts import export_artifacts

    out = tmp_path_factory.mktemp("export") / "tiny_external"
    return export_artifacts(load_golden_model(), out, "fp32", external_bytes=0)


FAKE_TENSORRT = Path(__file__).parent / "fake_tensorrt"


@contextmanager
def fake_tensorrt_installed(cuda_major: int = 12) -> Iterator:
    """``tests/fake_tensorrt`` as the ``tensorrt`` module and its host GPUs as the CUDA runtime, inside the block.

    Nothing leaks: the path, the imported modules (Polygraphy's included) and the runtime are all removed afterwards.
    """
    from star_deploy.engines.gpu import use_runtime

    sys.path.insert(0, str(FAKE_TENSORRT))
    importlib.invalidate_caches()
    try:
        import host_cuda
        import tensorrt

        tensorrt._cuda.reset()
        tensorrt.ERRORS.clear()
        with use_runtime(host_cuda.HostRuntime(cuda_major)):
            yield tensorrt
    finally:
        sys.path.remove(str(FAKE_TENSORRT))
        # Polygraphy keeps the tensorrt module it first imported: it goes too, to import the next fake afresh.
        for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt", "host_cuda", "polygraphy")]:
            del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def fake_trt():
    """The fake TensorRT for every test of a module that asks for it."""
    with fake_tensorrt_installed() as module:
        yield module
