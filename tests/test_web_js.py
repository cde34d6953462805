"""The browser's JavaScript sampler and tokenizer, run through node, against sampling.py and `tokenizers`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from star_deploy.core.config import SamplingConfig
from star_deploy.core.sampling import PortableSampler
from star_deploy.core.tokenizer import load_tokenizer
from star_deploy.demo import DEMO_GRAPHS

NODE = shutil.which("node")
SCRIPTS = Path(__file__).parent / "web_js"
GOLDEN = Path(__file__).parent / "fixtures" / "tiny256" / "golden.json"
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node (apt-get install nodejs) to run the site's JavaScript")

TRICKY_PROMPTS = [
    "a red circle on a blue background",
    "Crème brûlée on a café table, naïve façade",
    "ΣΊΣΥΦΟΣ and İstanbul, ß, ﬁne",
    "a cat 🐱 with 👩‍👩‍👧 and 🇫🇷 flags!!!",
    "don't stop, it's 3.14159 o'clock; we're fine & you'll see",
    "  tabs\tand\nnew   lines  ",
    "hello<|endoftext|>world <|startoftext|> again",
    "日本語のテキストと中文 mixed with हिन्दी",
    "under_score snake_case CamelCase ALLCAPS x2 4k 1024px",
    "a very long prompt " * 30,
    "word " * 80 + "🎉",
    "",
]


def run_node(script: str, payload: object) -> object:
    done = subprocess.run(
        [NODE, str(SCRIPTS / script)], input=json.dumps(payload), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def logits_case(rng: np.random.Generator, rows: int, tokens: int, vocab: int, ties: bool) -> np.ndarray:
    """Random float32 logits; with ``ties`` rounded to a coarse grid so many values (and k-th values) tie."""
    logits = rng.normal(0, 3, size=(rows, tokens, vocab)).astype(np.float32)
    if ties:
        logits = (np.round(logits * 2) / 2).astype(np.float32)
    return logits


def test_js_sampler_draws_the_tokens_of_sampling_py():
    rng = np.random.default_rng(0)
    settings = [
        (4.0, 600, 0.8),
        (4.0, 10, 0.8),
        (2.5, 0, 0.9),
        (0.0, 5, 1.0),
        (7.0, 40, 0.3),
        (1.0, 255, 0.95),
    ]
    cases, expected = [], []
    for n, (cfg, top_k, top_p) in enumerate(settings):
        for ties in (False, True):
            seeds = [n, 2**63 - 1 - n] if ties else [12345 + n, 7]
            vocab, tokens, scale = 256, 9, n % 6
            logits = logits_case(rng, 2 * len(seeds), tokens, vocab, ties)
            sampling = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p).clamped(vocab)
            expected.append(PortableSampler(sampling, seeds, 6)(logits, scale).tolist())
            cases.append(
                {
                    "logits": base64.b64encode(logits.tobytes()).decode(),
                    "dims": {"tokens": tokens, "vocab": vocab},
                    "settings": {"cfg": cfg, "top_k": sampling.top_k, "top_p": top_p},
                    "seeds": [str(s) for s in seeds],
                    "scale": scale,
                    "num_scales": 6,
                }
            )
    got = run_node("sample.mjs", cases)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"case {i} ({settings[i // 2]}, ties={bool(i % 2)}): JS drew other tokens"


def test_js_tokenizer_matches_tokenizers_on_golden_and_tricky_prompts():
    path = DEMO_GRAPHS / "tokenizer" / "tokenizer.json"
    golden = [c["prompt"] for c in json.loads(GOLDEN.read_text())["cases"]]
    prompts = golden + TRICKY_PROMPTS
    reference = load_tokenizer(path.parent)
    got = run_node("tokenize.mjs", {"path": str(path), "prompts": prompts})
    truncated = 0
    for prompt, result in zip(prompts, got):
        want = reference.encode(prompt)
        assert result["ids"] == want.ids, f"ids differ for {prompt!r}"
        assert result["mask"] == want.attention_mask, f"mask differs for {prompt!r}"
        truncated += bool(want.overflowing)
    assert truncated >= 2, "the long prompts should be truncated at 77 tokens"
