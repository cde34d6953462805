"""Speed and quality of each fast-mode rung against exact generation, measured in one run.

For the demo model: held-out accuracy of the demo evaluator (colour, shape and background
right) over the 35 held-out combinations x 4 seeds (140 images), and wall time, per rung. For random-weight
preset models: tokens equal up to the first changed scale, image PSNR and SSIM against exact,
wall time (median of --repeat), its ratio to exact and to the official-style baseline
(``torch-eager``, exact), the theoretical step-FLOP saving, and (ONNX Runtime) every rung
again with the int8 decoder (``star-deploy quantize --decoder``).
Prints a table and writes JSON.

With --decoder-bf16: the torch backend's VQ decoder in bfloat16 (``--decoder-dtype bfloat16``) against
float32 on the same tokens, alternating per prompt: PSNR and SSIM of each image, decode time ratio.

Usage: python benchmarks/fast_modes.py [--models demo,256-d16] [--backend onnxruntime|torch]
       [--device cpu|cuda] [--repeat 3] [--json benchmarks/results/fast_modes.json]
       python benchmarks/fast_modes.py --decoder-bf16 [--models demo,256-d16]
       [--json benchmarks/results/decoder_bf16.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from star_deploy.bench.flops import planned_step_flops  # noqa: E402
from star_deploy.core.config import SamplingConfig, preset  # noqa: E402
from star_deploy.core.fast import EXACT, FastMode, resolve_fast, scale_plans  # noqa: E402
from star_deploy.core.tokenizer import PromptTokenizer  # noqa: E402
from star_deploy.runtime.pipeline import ScaleLoop  # noqa: E402

PROMPT = "a photo of a red fox in the snow"


def demo_loop(backend: str) -> ScaleLoop:
    """The demo model on ``backend`` (ONNX Runtime: its shipped graphs)."""
    from star_deploy.demo import DEMO_GRAPHS, DEMO_RESOLUTION, DEMO_WEIGHTS

    if backend == "torch":
        from star_deploy.backends.torch_backend import TorchBackend
        from star_deploy.release.finder import resolve_release
        from star_deploy.release.weights import load_release

        model = load_release(resolve_release(weights=DEMO_WEIGHTS), DEMO_RESOLUTION)
        return ScaleLoop(TorchBackend(model), PromptTokenizer(model.tokenizer_dir))
    return graphs_loop(DEMO_GRAPHS)


def graphs_loop(folder: Path) -> ScaleLoop:
    from star_deploy.artifacts.manifest import load_manifest
    from star_deploy.backends.ort_backend import OrtBackend

    manifest = load_manifest(folder)
    return ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))


def random_loop(name: str, backend: str, scratch: Path, device: str = "cpu") -> ScaleLoop:
    """A random-weight model of preset ``name``: torch directly (CUDA: fp16 with CUDA graphs), or exported for ORT."""
    from star_deploy.release.random_weights import random_model

    model = random_model(preset(name))
    if backend == "torch":
        import torch

        from star_deploy.backends.torch_backend import TorchBackend

        cuda = device.startswith("cuda")
        dtype = torch.float16 if cuda else torch.float32
        return ScaleLoop(TorchBackend(model, device, dtype, cuda_graphs=cuda), PromptTokenizer(model.tokenizer_dir))
    from star_deploy.export.artifacts import export_artifacts

    return graphs_loop(export_artifacts(model, scratch / name, "fp32"))


def rungs(config) -> list[FastMode]:
    return [EXACT, resolve_fast(config, 1), resolve_fast(config, 2)]


def step_saving(config, mode: FastMode) -> float:
    """Theoretical share of transformer-step FLOPs the rung saves."""
    exact = sum(planned_step_flops(config, 1, scale_plans(config)))
    return 1.0 - sum(planned_step_flops(config, 1, scale_plans(config, mode))) / exact


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM of two (B, 3, H, W) images in [0, 1] over ``window`` x ``window`` box windows, channels averaged."""
    from numpy.lib.stride_tricks import sliding_window_view

    def local_mean(x: np.ndarray) -> np.ndarray:
        return sliding_window_view(x, (window, window), axis=(-2, -1)).mean(axis=(-2, -1))

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a, var_b = local_mean(a * a) - mu_a**2, local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    score = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(score.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def first_changed_scale(config, a: np.ndarray, b: np.ndarray) -> int | None:
    offsets = [*config.scale_offsets(), config.total_tokens]
    for k in range(config.num_scales):
        if not np.array_equal(a[:, offsets[k] : offsets[k + 1]], b[:, offsets[k] : offsets[k + 1]]):
            return k
    return None


def demo_rows(backend: str, seeds: int) -> list[dict]:
    """Every held-out combination x ``seeds`` per rung; a rung planned like the one before reuses its images."""
    from tools.demo_training.evaluate import read_image
    from tools.demo_training.train import held_out_prompts

    loop = demo_loop(backend)
    cases = held_out_prompts(seeds)
    rows, measured = [], {}
    for mode in rungs(loop.config):
        plans = scale_plans(loop.config, mode)
        if plans not in measured:
            start = time.perf_counter()
            gen = loop.generate([p for p, _, _ in cases], SamplingConfig(), seeds=[s for _, _, s in cases], fast=mode)
            seconds = time.perf_counter() - start
            right = [read_image(img).matches(combo) for img, (_, combo, _) in zip(gen.images, cases)]
            measured[plans] = (float(np.mean([c and s for c, s in right])), seconds)
        accuracy, seconds = measured[plans]
        rows.append(
            {
                "model": "demo",
                "rung": mode.record(),
                "label": mode.label(),
                "images": len(cases),
                "accuracy": accuracy,
                "seconds": seconds,
                "step_flop_saving": step_saving(loop.config, mode),
            }
        )
    exact = rows[0]["seconds"]
    for row in rows:
        row["speedup"] = exact / row["seconds"]
    return rows


SAMPLING = SamplingConfig(cfg=4.0, top_k=600, top_p=0.8)


def timed(loop: ScaleLoop, mode: FastMode, repeat: int):
    """The median wall time of ``repeat`` generations after one warm-up, and the last generation."""
    times, gen = [], None
    for _ in range(repeat + 1):
        start = time.perf_counter()
        gen = loop.generate([PROMPT], SAMPLING, seeds=[0], fast=mode)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), gen


def baseline_seconds(name: str, repeat: int, device: str) -> float:
    """The official-style baseline (``torch-eager``: the official sampler's execution style), exact."""
    from star_deploy.backends.eager_backend import EagerBackend
    from star_deploy.release.random_weights import random_model

    model = random_model(preset(name))
    loop = ScaleLoop(EagerBackend(model, device), PromptTokenizer(model.tokenizer_dir))
    return timed(loop, EXACT, repeat)[0]


def random_rows(name: str, backend: str, repeat: int, scratch: Path, device: str, decoder_int8: bool) -> list[dict]:
    loop = random_loop(name, backend, scratch, device)
    loops = {"fp32 decoder": loop}
    if decoder_int8 and backend == "onnxruntime":
        from star_deploy.evaluation.calibration import calibration_latents
        from star_deploy.export.decoder_quant import quantize_decoder

        dec8 = quantize_decoder(scratch / name, scratch / f"{name}-dec8", calibration_latents(scratch / name))
        loops["int8 decoder"] = graphs_loop(dec8)
    official = baseline_seconds(name, repeat, device)
    rows, exact = [], None
    for decoder, current in loops.items():
        for mode in rungs(current.config):
            seconds, gen = timed(current, mode, repeat)
            exact = exact or gen
            rows.append(
                {
                    "model": f"{name} random",
                    "rung": mode.record(),
                    "label": mode.label() + ("" if decoder == "fp32 decoder" else ", int8 decoder"),
                    "decoder": decoder,
                    "seconds": seconds,
                    "decode_seconds": gen.times.decode,
                    "first_changed_scale": first_changed_scale(current.config, gen.tokens, exact.tokens),
                    "psnr_db": psnr(gen.images, exact.images),
                    "ssim": ssim(gen.images, exact.images),
                    "step_flop_saving": step_saving(current.config, mode),
                    "official_seconds": official,
                }
            )
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        row["vs_official"] = official / row["seconds"]
    return rows


DECODER_PROMPTS = (
    "a red circle on a blue background",
    "a photo of a red fox in the snow",
    "a small green square on a white background",
    "a yellow triangle on a black background",
)
"""Prompts of the bf16-decoder rows, one seed each (seeds 0-3)."""


def torch_model(name: str):
    """The torch model ``name`` runs: the demo's trained weights, or a random-weight preset."""
    if name == "demo":
        from star_deploy.demo import DEMO_RESOLUTION, DEMO_WEIGHTS
        from star_deploy.release.finder import resolve_release
        from star_deploy.release.weights import load_release

        return load_release(resolve_release(weights=DEMO_WEIGHTS), DEMO_RESOLUTION)
    from star_deploy.release.random_weights import random_model

    return random_model(preset(name))


def decoder_bf16_rows(name: str) -> list[dict]:
    """The torch backend with its decoder in float32 and in bfloat16, alternating per prompt in one run: tokens
    equal, PSNR and SSIM of each image, decode and generation wall times."""
    import copy

    import torch

    from star_deploy.backends.torch_backend import TorchBackend
    from star_deploy.core.cpu_isa import bf16_isa, cpu_flags

    model = torch_model(name)
    tokenizer = PromptTokenizer(model.tokenizer_dir)
    loops = {
        dtype: ScaleLoop(TorchBackend(copy.deepcopy(model), decoder_dtype=getattr(torch, dtype)), tokenizer)
        for dtype in ("float32", "bfloat16")
    }
    sampling = SamplingConfig() if name == "demo" else SAMPLING
    times: dict[str, list] = {dtype: [] for dtype in loops}
    quality = []
    for seed, prompt in enumerate(DECODER_PROMPTS):
        gens = {}
        for dtype, loop in loops.items():
            start = time.perf_counter()
            gens[dtype] = loop.generate([prompt], sampling, seeds=[seed])
            times[dtype].append((time.perf_counter() - start, gens[dtype].times.decode))
        exact, lowered = gens["float32"], gens["bfloat16"]
        quality.append(
            (
                bool(np.array_equal(exact.tokens, lowered.tokens)),
                psnr(lowered.images, exact.images),
                ssim(lowered.images, exact.images),
            )
        )
    rows = []
    for dtype in loops:
        seconds = statistics.median(t for t, _ in times[dtype][1:])
        decode = statistics.median(d for _, d in times[dtype][1:])
        row = {
            "model": name if name == "demo" else f"{name} random",
            "rung": EXACT.record() | {"decoder": None if dtype == "float32" else dtype},
            "label": f"torch, {dtype} decoder",
            "decoder": dtype,
            "backend": "torch",
            "bf16_isa": bf16_isa(cpu_flags()),
            "images": len(DECODER_PROMPTS),
            "timed": len(DECODER_PROMPTS) - 1,
            "seconds": seconds,
            "decode_seconds": decode,
            "step_flop_saving": 0.0,
        }
        if dtype != "float32":
            row |= {
                "tokens_equal": all(q[0] for q in quality),
                "psnr_db": min(q[1] for q in quality),
                "psnr_db_each": [q[1] for q in quality],
                "ssim": min(q[2] for q in quality),
            }
        rows.append(row)
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
        row["decode_speedup"] = rows[0]["decode_seconds"] / row["decode_seconds"]
    return rows


def print_decoder_table(rows: list[dict]) -> None:
    print(
        f"{'model':16} {'decoder':10} {'seconds':>8} {'decode s':>9} {'decode x':>9} {'quality (min over images)':>40}"
    )
    for r in rows:
        quality = "reference"
        if "psnr_db" in r:
            tokens = "tokens equal" if r["tokens_equal"] else "TOKENS DIFFER"
            quality = f"PSNR {r['psnr_db']:.1f} dB, SSIM {r['ssim']:.4f}, {tokens}"
        line = f"{r['model']:16} {r['decoder']:10} {r['seconds']:8.2f} {r['decode_seconds']:9.3f}"
        print(f"{line} {r['decode_speedup']:8.2f}x {quality:>40}")


def print_table(rows: list[dict]) -> None:
    head = f"{'model':16} {'rung':50} {'seconds':>8} {'speedup':>8} {'vs official':>11} {'FLOP saved':>10}"
    print(f"{head} {'quality':>36}")
    for r in rows:
        if "accuracy" in r:
            quality = f"held-out acc {100 * r['accuracy']:.1f} %"
        else:
            changed = r["first_changed_scale"]
            scale = changed if changed is not None else "-"
            quality = f"PSNR {r['psnr_db']:.1f} dB, SSIM {r['ssim']:.3f}, scale {scale}"
        official = f"{r['vs_official']:.2f}x" if "vs_official" in r else "-"
        saved = f"{100 * r['step_flop_saving']:.0f} %"
        line = f"{r['model']:16} {r['label']:50} {r['seconds']:8.2f} {r['speedup']:7.2f}x {official:>11} {saved:>10}"
        print(f"{line} {quality:>36}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,256-d16")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    parser.add_argument("--device", default="cpu", help="torch backend: cpu, or cuda (fp16 with CUDA graphs)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-decoder-int8", action="store_true", help="skip the int8-decoder rows (ONNX Runtime)")
    parser.add_argument("--demo-seeds", type=int, default=4, help="seeds per held-out combination (35 of them)")
    parser.add_argument(
        "--decoder-bf16",
        action="store_true",
        help="only the torch decoder in bfloat16 against float32 on --models (no rungs)",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/fast_modes.json"))
    args = parser.parse_args()
    if args.decoder_bf16:
        rows = [row for name in args.models.split(",") for row in decoder_bf16_rows(name)]
        print_decoder_table(rows)
        write_report(args.json, "torch", rows)
        return
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            if name == "demo":
                rows += demo_rows(args.backend, args.demo_seeds)
            else:
                rows += random_rows(
                    name, args.backend, args.repeat, Path(scratch), args.device, not args.no_decoder_int8
                )
    print_table(rows)
    write_report(args.json, args.backend, rows)


def write_report(path: Path, backend: str, rows: list[dict]) -> None:
    report = {"backend": backend, "load_average": os.getloadavg(), "cpus": os.cpu_count(), "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
