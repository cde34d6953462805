"""Speed and quality of each fast-mode rung against exact generation, measured in one run.

For the demo model: held-out accuracy of the demo evaluator (colour, shape and background
right) over the 35 held-out combinations x 4 seeds (140 images), and wall time, per rung. For random-weight
preset models: tokens equal up to the first changed scale, image PSNR and SSIM against exact,
wall time and process CPU time (medians of --repeat), their ratio to exact and to the official-style
baseline (``torch-eager``, exact), the theoretical step-FLOP saving, and (ONNX Runtime) every rung
again with the int8 decoder (``star-deploy quantize --decoder``). The baseline, every rung and every
decoder of a model take turns generation by generation, so a shared machine's changing load falls on
all of them alike. Prints a table and writes JSON.

With --decoder-bf16: the torch backend's VQ decoder in bfloat16 (``--decoder-dtype bfloat16``) against
float32 on the same tokens, alternating per prompt: PSNR and SSIM of each image, decode time ratio.

Usage: python benchmarks/fast_modes.py [--models demo,256-d16,512-d30:torch] [--backend onnxruntime|torch]
       [--device cpu|cuda] [--repeat 3] [--once 512-d30] [--artifacts 256-d16=DIR --artifacts 256-d16:int8=DIR]
       [--json benchmarks/results/fast_modes.json]
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from star_deploy.bench.flops import planned_step_flops  # noqa: E402
from star_deploy.core.config import SamplingConfig, preset  # noqa: E402
from star_deploy.core.fast import EXACT, FastMode, resolve_fast, scale_plans  # noqa: E402
from star_deploy.core.tokenizer import PromptTokenizer  # noqa: E402
from star_deploy.runtime.pipeline import Generation, ScaleLoop  # noqa: E402

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


def torch_loop(model, device: str = "cpu") -> ScaleLoop:
    """``model`` on the torch backend: fp32 on CPU, fp16 with CUDA graphs on a GPU."""
    import torch

    from star_deploy.backends.torch_backend import TorchBackend

    cuda = device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    return ScaleLoop(TorchBackend(model, device, dtype, cuda_graphs=cuda), PromptTokenizer(model.tokenizer_dir))


def export_random(name: str, scratch: Path) -> Path:
    """A random-weight model of preset ``name`` exported in fp32 into ``scratch``."""
    from star_deploy.export.artifacts import export_artifacts
    from star_deploy.release.random_weights import random_model

    return export_artifacts(random_model(preset(name)), scratch / name, "fp32")


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


@dataclass
class Variant:
    """One timed configuration: a loop (a backend, a decoder) and the rung it generates with."""

    label: str
    loop: ScaleLoop
    mode: FastMode
    decoder: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    last: Generation | None = None


def time_round_robin(variants: list[Variant], repeat: int, warmup: int) -> None:
    """``warmup`` untimed then ``repeat`` timed generations of every variant, taking turns.

    Taking turns spreads a shared machine's changing load over every variant alike; each
    generation records its wall time and its process CPU time (every thread of the process).
    """
    for turn in range(warmup + repeat):
        for v in variants:
            wall, cpu = time.perf_counter(), time.process_time()
            v.last = v.loop.generate([PROMPT], SAMPLING, seeds=[0], fast=v.mode)
            if turn >= warmup:
                v.walls.append(time.perf_counter() - wall)
                v.cpus.append(time.process_time() - cpu)


def official_loop(name: str, device: str, model=None) -> ScaleLoop:
    """The official-style baseline (``torch-eager``: the official sampler's execution style), exact."""
    from star_deploy.backends.eager_backend import EagerBackend
    from star_deploy.release.random_weights import random_model

    model = model or random_model(preset(name))
    return ScaleLoop(EagerBackend(model, device), PromptTokenizer(model.tokenizer_dir))


def decoder_variants(name: str, backend: str, scratch: Path, device: str, folders: dict[str, Path], int8: bool) -> dict:
    """The loops to time per decoder, fp32 first: ``{"fp32": loop, "int8": loop, ...}``.

    ``folders`` maps ``name`` and ``name + ":int8"`` to existing exports (ONNX Runtime writes its
    optimized-graph cache into them: give copies of shared folders); without them the model is exported
    into ``scratch`` and its decoder quantized there. The torch backend has the fp32 decoder only.
    Another decoder (e.g. bf16) is one more entry of the returned loops.
    """
    model = None
    if backend == "torch":
        from star_deploy.release.random_weights import random_model

        model = random_model(preset(name))
        loops = {"fp32": torch_loop(model, device)}
    else:
        fp32 = folders.get(name) or export_random(name, scratch)
        loops = {"fp32": graphs_loop(fp32)}
        if int8:
            folder = folders.get(f"{name}:int8") or quantized_decoder(fp32, scratch / f"{name}-dec8")
            loops["int8"] = graphs_loop(folder)
    shared = model if device == "cpu" else None  # both keep it in float32 on the CPU; on a GPU each casts it
    return {"loops": loops, "official": official_loop(name, device, shared)}


def quantized_decoder(fp32: Path, out: Path) -> Path:
    """A copy of the export ``fp32`` whose decoder runs in int8 (``star-deploy quantize --decoder``)."""
    from star_deploy.evaluation.calibration import calibration_latents
    from star_deploy.export.decoder_quant import quantize_decoder

    return quantize_decoder(fp32, out, calibration_latents(fp32))


def random_rows(name: str, backend: str, args: argparse.Namespace, scratch: Path, folders: dict) -> list[dict]:
    """Every rung x decoder of a random-weight model and the official-style baseline, timed in turns."""
    built = decoder_variants(name, backend, scratch, args.device, folders, not args.no_decoder_int8)
    config = built["official"].config
    variants = [Variant("official-style (torch-eager), exact", built["official"], EXACT, "fp32")]
    for decoder, loop in built["loops"].items():
        suffix = "" if decoder == "fp32" else f", {decoder} decoder"
        variants += [Variant(mode.label() + suffix, loop, mode, decoder) for mode in rungs(config)]
    once = name in args.once.split(",")
    time_round_robin(variants, 1 if once else args.repeat, 0 if once else 1)
    official, exact = variants[0], variants[1]
    rows = []
    for v in variants:
        gen = v.last
        rows.append(
            {
                "model": f"{name} random",
                "backend": "torch-eager" if v is official else backend,
                "rung": v.mode.record(),
                "label": v.label,
                "decoder": v.decoder,
                "timed_runs": len(v.walls),
                "seconds": statistics.median(v.walls),
                "cpu_seconds": statistics.median(v.cpus),
                "walls": v.walls,
                "decode_seconds": gen.times.decode,
                "step_seconds": gen.times.steps,
                "first_changed_scale": first_changed_scale(config, gen.tokens, exact.last.tokens),
                "psnr_db": psnr(gen.images, exact.last.images),
                "ssim": ssim(gen.images, exact.last.images),
                "step_flop_saving": step_saving(config, v.mode),
                "official_seconds": statistics.median(official.walls),
                "speedup": statistics.median(exact.walls) / statistics.median(v.walls),
                "vs_official": statistics.median(official.walls) / statistics.median(v.walls),
                "vs_official_cpu": statistics.median(official.cpus) / statistics.median(v.cpus),
            }
        )
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
    head = f"{'model':16} {'rung':50} {'seconds':>8} {'CPU s':>7} {'speedup':>8} {'vs official':>11}"
    print(f"{head} {'FLOP saved':>10} {'quality':>36}")
    for r in rows:
        if "accuracy" in r:
            quality = f"held-out acc {100 * r['accuracy']:.1f} %"
        else:
            changed = r["first_changed_scale"]
            scale = changed if changed is not None else "-"
            quality = f"PSNR {r['psnr_db']:.1f} dB, SSIM {r['ssim']:.3f}, scale {scale}"
        official = f"{r['vs_official']:.2f}x" if "vs_official" in r else "-"
        cpu = f"{r['cpu_seconds']:7.2f}" if "cpu_seconds" in r else f"{'-':>7}"
        saved = f"{100 * r['step_flop_saving']:.0f} %"
        line = f"{r['model']:16} {r['label']:50} {r['seconds']:8.2f} {cpu} {r['speedup']:7.2f}x {official:>11}"
        print(f"{line} {saved:>10} {quality:>36}")


def parse_folders(pairs: list[str]) -> dict[str, Path]:
    """``["256-d16=DIR", "256-d16:int8=DIR"]`` -> {name: folder}; one clear line for anything else."""
    folders = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not Path(folder, "manifest.json").is_file():
            raise SystemExit(f"--artifacts {pair!r}: give MODEL=FOLDER or MODEL:int8=FOLDER, an export folder")
        folders[name] = Path(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,256-d16", help="a model:torch entry runs on the torch backend")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch"])
    parser.add_argument("--device", default="cpu", help="torch backend: cpu, or cuda (fp16 with CUDA graphs)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--once", default="", help="models timed with one run and no warm-up (the largest)")
    parser.add_argument("--artifacts", action="append", default=[], help="MODEL=FOLDER or MODEL:int8=FOLDER")
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
        write_report(args.json, "torch", rows, [os.getloadavg()])
        return
    folders = parse_folders(args.artifacts)
    rows, load = [], [os.getloadavg()]
    with tempfile.TemporaryDirectory() as scratch:
        for entry in args.models.split(","):
            name, _, backend = entry.partition(":")
            if name == "demo":
                rows += demo_rows(backend or args.backend, args.demo_seeds)
            else:
                rows += random_rows(name, backend or args.backend, args, Path(scratch), folders)
            load.append(os.getloadavg())
            write_report(args.json, args.backend, rows, load)  # a later model that fails keeps these rows
    print_table(rows)


def write_report(path: Path, backend: str, rows: list[dict], load: list) -> None:
    """The JSON report, replaced whole (a run stopped while writing leaves the previous one)."""
    report = {"backend": backend, "load_average": load, "cpus": os.cpu_count(), "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)


if __name__ == "__main__":
    main()
