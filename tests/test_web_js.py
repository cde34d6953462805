"""The browser's JavaScript sampler and tokenizer, run through node, against sampling.py and `tokenizers`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from star_deploy.core.config import MAX_CFG, SamplingConfig
from star_deploy.core.sampling import PortableSampler
from star_deploy.core.tokenizer import load_tokenizer
from star_deploy.demo import DEMO_GRAPHS
from star_deploy.errors import ConfigError

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


def python_message(**fields) -> str:
    """SamplingConfig's message for ``fields`` (the messages the browser's checks repeat)."""
    with pytest.raises(ConfigError) as caught:
        SamplingConfig(**fields)
    return str(caught.value)


def test_js_generate_checks_its_options_as_python_does():
    one_object = "generate() takes one object of options {prompt, seed, cfg, top_k, top_p, onScale}, got"
    defaults = {"cfg": 4.0, "top_k": 600, "top_p": 0.8, "max_cfg": MAX_CFG}
    cases = {
        "{prompt: 5}": "prompt must be a string, got number 5",
        "{prompt: null}": "prompt must be a string, got null",
        "{prompt: ['a']}": 'prompt must be a string, got array ["a"]',
        "{seed: 3}": "prompt must be a string, got undefined",
        "{prompt: 'a', seed: 1.5}": "seed must be an integer, got number 1.5",
        "{prompt: 'a', seed: NaN}": "seed must be an integer, got number NaN",
        "{prompt: 'a', seed: null}": "seed must be an integer, got null",
        "{prompt: 'a', seed: '7'}": 'seed must be an integer, got string "7"',
        "{prompt: 'a', seed: true}": "seed must be an integer, got boolean true",
        "{prompt: 'a', seed: 2 ** 60}": "seed must be an integer, got number 1152921504606847000 (beyond a "
        "Number's exact integers: pass a BigInt)",
        "{prompt: 'a', seed: -1}": python_message(seed=-1),
        "{prompt: 'a', seed: 2n ** 63n}": python_message(seed=2**63),
        "{prompt: 'a', cfg: 1000.5}": python_message(cfg=1000.5),
        "{prompt: 'a', cfg: Infinity}": "cfg must be a finite number in [0, 1000], got Infinity",
        "{prompt: 'a', cfg: '4'}": 'cfg must be a real number, got string "4"',
        "{prompt: 'a', top_k: 2.5}": "top_k must be an integer, got number 2.5",
        "{prompt: 'a', top_k: -1}": python_message(top_k=-1),
        "{prompt: 'a', top_p: 1.5}": python_message(top_p=1.5),
        "{prompt: 'a', top_p: NaN}": "top-p must be in (0, 1], got NaN",
        "{prompt: 'a', onScale: 3}": "onScale must be a function or undefined, got number 3",
        "{prompt: 'a', steps: 3}": "generate() got an unexpected option steps; it takes prompt, seed, cfg, top_k, "
        "top_p, onScale",
        "undefined": f"{one_object} undefined",
        "'a cat'": f'{one_object} string "a cat"',
    }
    accepted = {
        "{prompt: ''}": {"prompt": "", "seed": "0", "cfg": 4.0, "top_k": 256, "top_p": 0.8},
        "{prompt: 'a', seed: 2n ** 63n - 1n, cfg: 1000, top_k: 5}": {"seed": str(2**63 - 1), "cfg": 1000, "top_k": 5},
        "{prompt: 'a', seed: 9, cfg: null, top_k: null, top_p: null}": {"seed": "9", "cfg": 4.0, "top_k": 256},
        "{prompt: 'a', seed: 0, cfg: 0, top_k: 0, top_p: 1, onScale: () => true}": {
            "cfg": 0,
            "top_k": 0,
            "onScale": True,
        },
    }
    got = run_node("request.mjs", {"cases": list(cases) + list(accepted), "defaults": defaults, "vocab": 256})
    for (expression, message), result in zip(cases.items(), got):
        assert result == {"error": f"SiteError: {message}"}, expression
    for (expression, expected), result in zip(accepted.items(), got[len(cases) :]):
        assert "request" in result, (expression, result)
        assert expected.items() <= result["request"].items(), (expression, result)
    python = python_message(seed=-1)
    assert python == "seed must be in [0, 2**63), got -1", "Python's message changed: the browser's repeats it"
