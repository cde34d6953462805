"""Where a pruned scale's time goes: the plain step against the pruned step, scale by scale, in one process.

On an ONNX Runtime export (fp32), after the guidance cut of the model's level-2 preset, for every scale
from the one before the first pruned scale on: the plain step over every token, the pruned-step graph
keeping every token (its gathers, scatter and restore over the plain step's work), the pruned step
keeping the preset's tokens, and the host-side choice of the kept tokens (``core/pruning.py``). The
cases take turns, so a shared machine's changing load falls on all of them alike; each reports the
minimum and median wall time and process CPU time (every thread) of ``--repeat`` calls. Inputs are
random: the time of a step does not depend on its values.

Then the approximation itself, teacher-forced on one level-1 generation (guidance cut as the preset, no
pruning): at each pruned scale, the pruned step against the same step keeping every token, for several
choices of the kept tokens (the pivotal ones, the least deviating, a random set) and of what the
others are restored from (the previous scale's residual, nothing): the relative error of the restored
tokens' residual and the share of tokens whose most likely token (argmax of the logits) is unchanged.
Prints both tables and writes JSON.

Usage: python benchmarks/pruned_step.py EXPORT_DIR [--repeat 8] [--json benchmarks/results/pruned_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from star_deploy.artifacts.manifest import load_manifest  # noqa: E402
from star_deploy.backends import ort_backend  # noqa: E402
from star_deploy.backends.ort_backend import OrtBackend  # noqa: E402
from star_deploy.core.config import SamplingConfig  # noqa: E402
from star_deploy.core.fast import past_lengths, resolve_fast, scale_plans  # noqa: E402
from star_deploy.core.pruning import kept_index, ranked_scores  # noqa: E402
from star_deploy.core.sampling import PortableSampler  # noqa: E402
from star_deploy.core.tokenizer import PromptTokenizer  # noqa: E402

PROMPT = "a photo of a red fox in the snow"


def begun(backend: OrtBackend) -> np.ndarray:
    """Start a level-2 generation of ``PROMPT`` on ``backend``; the first scale's input."""
    tokens = PromptTokenizer(backend.manifest.tokenizer_dir)([PROMPT])
    hidden, pooled = backend.encode_text(tokens.input_ids, tokens.attention_mask)
    plans = scale_plans(backend.config, resolve_fast(backend.config, 2))
    return backend.begin(hidden, tokens.attention_mask, pooled, plans=plans)


def cases(backend: OrtBackend) -> dict[str, Callable[[], None]]:
    """The timed calls by name: per scale, plain step, pruned step keeping all, keeping the preset's, the choice."""
    config, rng = backend.config, np.random.default_rng(0)
    plans = scale_plans(config, resolve_fast(config, 2))
    exact_past, pruned_past = past_lengths(config, scale_plans(config)), past_lengths(config, plans)
    width = config.transformer.width

    def inputs(side: int) -> np.ndarray:
        return rng.standard_normal((1, side * side, width), dtype=np.float32)

    def plain(k: int) -> None:
        backend.cache.length = exact_past[k]
        backend.step(k, inputs(config.patch_nums[k]))

    def pruned(k: int, kept: int) -> None:
        before = config.patch_nums[k - 1]
        prior = inputs(before).reshape(1, before, before, width)
        backend.cache.length = pruned_past[k]
        backend.pruned_step(k, inputs(config.patch_nums[k]), kept, prior)

    def choice(k: int, kept: int) -> None:
        kept_index(inputs(config.patch_nums[k]), kept, 1)

    out = {}
    for k in (k for k, plan in enumerate(plans) if plan.residual):
        tokens = config.patch_nums[k] ** 2
        out[f"scale {k}: plain step, {tokens} tokens"] = lambda k=k: plain(k)
        out[f"scale {k}: pruned step, all {tokens} kept"] = lambda k=k, n=tokens: pruned(k, n)
        if plans[k].kept < tokens:
            out[f"scale {k}: pruned step, {plans[k].kept} kept"] = lambda k=k, n=plans[k].kept: pruned(k, n)
            out[f"scale {k}: choice of {plans[k].kept} tokens (host)"] = lambda k=k, n=plans[k].kept: choice(k, n)
    return out


def measure(calls: dict[str, Callable[[], None]], repeat: int) -> dict[str, dict]:
    """One untimed call of each, then ``repeat`` turns of all; min and median wall and CPU seconds."""
    for call in calls.values():
        call()
    walls, cpus = {n: [] for n in calls}, {n: [] for n in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {
        n: {
            "wall_min_s": min(walls[n]),
            "wall_median_s": statistics.median(walls[n]),
            "cpu_min_s": min(cpus[n]),
            "cpu_median_s": statistics.median(cpus[n]),
        }
        for n in calls
    }


def least_deviating(x: np.ndarray, kept: int, batch: int) -> np.ndarray:
    """The opposite choice to the pivotal tokens: those closest to the scale's mean input."""
    order = np.argsort(ranked_scores(x[:batch]), axis=1, kind="stable")[:, :kept]
    return np.tile(np.sort(order, axis=1), (x.shape[0] // batch, 1))


def random_choice(x: np.ndarray, kept: int, batch: int) -> np.ndarray:
    order = np.random.default_rng(1).permutation(x.shape[1])[:kept]
    return np.tile(np.sort(order)[None], (x.shape[0], 1))


CHOICES = {"pivotal": kept_index, "least deviating": least_deviating, "random": random_choice}


def fidelity(backend: OrtBackend) -> list[dict]:
    """Teacher-forced quality of each pruned scale's approximation against the full step (see the module)."""
    config = backend.config
    plans = scale_plans(config, resolve_fast(config, 2))
    sampler = PortableSampler(SamplingConfig(cfg=4.0, top_k=600, top_p=0.8), [0], config.num_scales)
    x, f_hat, residual, rows = begun(backend), backend.new_f_hat(1), None, []
    for k, side in enumerate(config.patch_nums):
        if not plans[k].guided:
            if plans[k - 1].guided:
                backend.keep_conditional_rows()
            x = x[:1]
        if not plans[k].residual:
            logits = backend.step(k, x)
        else:
            start = backend.cache.length
            if plans[k].kept < side * side:
                rows += pruned_errors(backend, k, x, plans[k].kept, residual)
                backend.cache.length = start
            logits, residual = backend.pruned_step(k, x, side * side, residual)
        f_hat, x = backend.update(k, sampler(logits, k).reshape(1, side, side), f_hat)
    return rows


def pruned_errors(backend: OrtBackend, k: int, x: np.ndarray, kept: int, prior: np.ndarray) -> list[dict]:
    """Scale ``k`` pruned to ``kept`` tokens against the same step keeping every token, per choice and restore."""
    start, tokens, width = backend.cache.length, x.shape[1], x.shape[2]
    full_logits, full = backend.pruned_step(k, x, tokens, prior)
    rows = []
    for choice, rule in CHOICES.items():
        for source, restore in (("previous residual", prior), ("nothing", np.zeros_like(prior))):
            backend.cache.length = start
            ort_backend.kept_index = rule
            try:
                logits, residual = backend.pruned_step(k, x, kept, restore)
            finally:
                ort_backend.kept_index = kept_index
            restored = np.ones(tokens, dtype=bool)
            restored[rule(x, kept, 1)[0]] = False
            error = (residual - full).reshape(tokens, width)
            reference = full.reshape(tokens, width)
            same = logits[0].argmax(-1) == full_logits[0].argmax(-1)
            rows.append(
                {
                    "scale": k,
                    "kept": kept,
                    "tokens": tokens,
                    "choice": choice,
                    "restored_from": source,
                    "restored_rel_error": float(np.linalg.norm(error[restored]) / np.linalg.norm(reference[restored])),
                    "kept_rel_error": float(np.linalg.norm(error[~restored]) / np.linalg.norm(reference[~restored])),
                    "argmax_same_restored": float(same[restored].mean()),
                    "argmax_same_kept": float(same[~restored].mean()),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an fp32 export with the pruned step (written into: its ort_cache)")
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pruned_step.json"))
    args = parser.parse_args()
    load = [os.getloadavg()]
    backend = OrtBackend(load_manifest(args.folder))
    quality = fidelity(backend)
    begun(backend)
    backend.keep_conditional_rows()
    results = measure(cases(backend), args.repeat)
    load.append(os.getloadavg())
    print(f"{'case':44} {'wall min':>9} {'wall med':>9} {'CPU min':>9} {'CPU med':>9}  (ms)")
    for name, r in results.items():
        times = [r[k] * 1000 for k in ("wall_min_s", "wall_median_s", "cpu_min_s", "cpu_median_s")]
        print(f"{name:44} " + " ".join(f"{t:9.1f}" for t in times))
    print(f"load average {load[0][0]:.1f} before, {load[1][0]:.1f} after")
    head = f"{'scale':>5} {'kept':>9} {'choice':16} {'restored from':18} {'rel. error restored':>19} {'kept':>6}"
    print(f"\n{head}  argmax same")
    for r in quality:
        print(
            f"{r['scale']:>5} {r['kept']:>4}/{r['tokens']:<4} {r['choice']:16} {r['restored_from']:18} "
            f"{r['restored_rel_error']:19.3f} {r['kept_rel_error']:6.3f}  "
            f"{r['argmax_same_restored']:.3f} restored, {r['argmax_same_kept']:.3f} kept"
        )
    report = {
        "folder": str(args.folder),
        "repeat": args.repeat,
        "load_average": load,
        "cases": results,
        "fidelity": quality,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
