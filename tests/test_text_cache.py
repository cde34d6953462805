"""The "" row of classifier-free guidance is encoded once and reused, giving the rows a whole batch gives."""

from __future__ import annotations

import numpy as np
import pytest

from star_deploy.backends.text_cache import UnconditionalTextCache

PROMPTS = ["a red car.", "A cute dog sitting on the grass, high quality", "two"]


@pytest.mark.parametrize("pipeline", ["torch_pipeline", "ort_pipeline"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cached_unconditional_row_equals_the_batched_encoding(pipeline, batch, request):
    loop = request.getfixturevalue(pipeline)
    backend = loop.backend
    toks = loop.tokenizer(PROMPTS[:batch])
    calls = []

    def encode(ids, mask):
        calls.append(ids.shape[0])
        return backend._encode_rows(ids, mask)

    cache = UnconditionalTextCache(encode, backend.text_cache.concat)
    whole = [backend.to_numpy(a) for a in backend._encode_rows(toks.input_ids, toks.attention_mask)]
    for _ in range(2):
        got = [backend.to_numpy(a) for a in cache(toks.input_ids, toks.attention_mask)]
        assert all(np.array_equal(g, w) for g, w in zip(got, whole, strict=True))
    assert calls == [1, batch, batch], "the unconditional row was not encoded once and reused"


def test_rows_that_are_not_one_repeated_unconditional_row_are_encoded_whole(ort_pipeline):
    backend = ort_pipeline.backend
    toks = ort_pipeline.tokenizer(PROMPTS[:2])
    ids, mask = toks.input_ids.copy(), toks.attention_mask.copy()
    ids[3] = ids[0]
    mask[3] = mask[0]
    calls = []
    cache = UnconditionalTextCache(lambda i, m: calls.append(i.shape[0]) or backend._encode_rows(i, m), np.concatenate)
    cache(ids, mask)
    assert calls == [4]
