"""The scale loop's traffic with the device: what it copies to the host and when it waits (CPU, golden model)."""

from __future__ import annotations

import numpy as np

from star_deploy.backends.base import NoClock


class Counting:
    """Wraps a backend and counts host copies and waits."""

    def __init__(self, backend) -> None:
        self.inner = backend
        self.copies = 0
        self.waits = 0
        self.decodes = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to_numpy(self, array):
        self.copies += 1
        return self.inner.to_numpy(array)

    def decode(self, f_hat):
        self.decodes += 1
        return self.inner.decode(f_hat)

    def preview(self, f_hat):
        self.decodes += 1
        return self.inner.preview(f_hat)

    def synchronize(self) -> None:
        self.waits += 1
        self.inner.synchronize()

    def clock(self):
        from star_deploy.backends.base import HostClock

        return HostClock(self.synchronize)


def test_untimed_loop_neither_waits_nor_copies_until_the_end(torch_pipeline, golden_cases, golden_sampling):
    from star_deploy.runtime.pipeline import ScaleLoop

    case = golden_cases[0]
    counting = Counting(torch_pipeline.backend)
    loop = ScaleLoop(counting, torch_pipeline.tokenizer)
    seen = []
    untimed = loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]], timing=False, on_scale=seen.append)
    scales = torch_pipeline.config.num_scales
    assert counting.waits == 0
    assert counting.copies == 1 + 2 * scales  # the image, then tokens and draws of every scale, once at the end
    assert untimed.times.total == 0.0 and len(seen) == scales
    assert seen[3].tokens.shape == (1, 4, 4) and seen[3].tokens.dtype == np.int64  # read on demand
    timed = loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]])
    assert np.array_equal(timed.tokens, untimed.tokens) and np.array_equal(timed.images, untimed.images)
    assert len(timed.times.steps) == scales and timed.times.total > 0
    assert counting.waits == 4 * scales + 4  # the host clock marks; a GPU's event clock waits only to read them


def test_a_last_preview_is_the_image_and_is_decoded_once(torch_pipeline, golden_cases, golden_sampling):
    from star_deploy.runtime.pipeline import ScaleLoop

    case = golden_cases[0]
    counting = Counting(torch_pipeline.backend)
    loop = ScaleLoop(counting, torch_pipeline.tokenizer)
    plain = loop.generate([case["prompt"]], golden_sampling, seeds=[case["seed"]], timing=False)
    assert counting.decodes == 1
    previews = []
    streamed = loop.generate(
        [case["prompt"]],
        golden_sampling,
        seeds=[case["seed"]],
        timing=False,
        on_scale=lambda e: previews.append(e.preview()),
    )
    scales = torch_pipeline.config.num_scales
    assert counting.decodes == 1 + scales, "the final f_hat was decoded again after its preview"
    assert np.array_equal(streamed.images, plain.images) and streamed.images is previews[-1]


def test_no_clock_marks_nothing():
    clock = NoClock()
    assert clock.seconds(clock.mark(), clock.mark()) == 0.0
