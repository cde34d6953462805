"""The decoder layout chosen by measurement at the first decode: made, recorded, and golden either way."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import load_golden_model, max_err

from star_deploy.backends.decoder_layout import LAYOUTS
from star_deploy.backends.torch_backend import TorchBackend
from star_deploy.bench.runner import backend_details
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.runtime.pipeline import ScaleLoop

IMAGE_TOL = 1e-4


def test_measured_layout_is_chosen_recorded_and_golden(golden, golden_sampling, caplog):
    model = load_golden_model()
    backend = TorchBackend(model, channels_last="measure")
    assert backend.decoder_layout is None and backend.memory_format == torch.contiguous_format
    loop = ScaleLoop(backend, PromptTokenizer(model.tokenizer_dir))
    with caplog.at_level(logging.INFO, logger="star_deploy"):
        for _ in range(2):  # the second decode keeps the choice of the first
            gen = loop.generate(["a red car."], golden_sampling, seeds=[1], teacher_tokens=golden["p0_s1/tokens"])
            assert max_err(gen.images, golden["p0_s1/image_from_tokens"]) <= IMAGE_TOL
    choice = backend.decoder_layout
    assert choice.measured and set(choice.seconds) == set(LAYOUTS) and all(s > 0 for s in choice.seconds.values())
    assert choice.layout == min(choice.seconds, key=choice.seconds.get)
    assert model.vqvae.decoder.conv_in.weight.is_contiguous(memory_format=choice.memory_format)
    assert len([r for r in caplog.records if "decoder layout" in r.getMessage()]) == 1
    assert backend_details(backend, [1.0])["decoder_layout"] == {
        "layout": choice.layout,
        "measured": True,
        "seconds": choice.seconds,
    }


def test_fixed_layouts_are_recorded_unmeasured():
    backend = TorchBackend(load_golden_model(), channels_last=True)
    assert backend.decoder_layout.record() == {"layout": "channels-last", "measured": False, "seconds": {}}
    with pytest.raises(ValueError, match="channels_last"):
        TorchBackend(load_golden_model(), channels_last="nhwc")


def test_a_bf16_decoder_defaults_to_channels_last_on_cpu_and_is_recorded():
    """The decoder's own dtype picks the CPU layout; the transformer keeps float32, bench details name the dtype."""
    backend = TorchBackend(load_golden_model(), decoder_dtype=torch.bfloat16)
    assert backend.decoder_layout.layout == "channels-last" and backend.dtype == torch.float32
    assert backend_details(backend, [1.0])["decoder_dtype"] == "bfloat16"
    exact = TorchBackend(load_golden_model())
    assert exact.decoder_layout.layout == "nchw" and backend_details(exact, [1.0])["decoder_dtype"] == "float32"
