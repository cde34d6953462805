"""CPU proxies of the GPU step costs, on the golden tiny model: kernel ops per block, and torch.compile time.

    python benchmarks/cpu_proxies.py ops [--json FILE]
    python benchmarks/cpu_proxies.py compile [--json FILE] [--variants dynamic,per-scale]

``ops`` counts the aten ops with a kernel that one block runs per step (torch profiler; one
launch each on a GPU) at three scales, in float32 and bfloat16. ``compile`` times the first
(compiling) generation of the torch backend with torch.compile in a fresh process with an
empty inductor cache ("cold"), then again in another fresh process whose inductor cache is
empty but which loads the compile cache folder the first one saved ("warm"), and an eager
generation for reference. Each prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "tiny256"
PROMPT, SEED = "a red car.", 1


def golden_model():
    from star_deploy.release.finder import resolve_release
    from star_deploy.release.weights import load_release

    return load_release(resolve_release(weights=GOLDEN), resolution=256)


def ops_rows() -> list[dict]:
    import torch

    from star_deploy.bench.ops import count_block_ops

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = golden_model()
        model.to("cpu", dtype)
        for scale in (0, 5, len(model.config.patch_nums) - 1):
            ops = count_block_ops(model, scale)
            top = ", ".join(f"{n.removeprefix('aten::')} {c}" for n, c in ops.compute.most_common())
            rows.append({"dtype": str(dtype).removeprefix("torch."), "scale": scale, "tokens": ops.tokens,
                         "kernel_ops": ops.count, "views": ops.views, "ops": top})  # fmt: skip
    return rows


def one_generation(compile_mode: str, cache: str) -> dict:
    """Run in a child process: one generation of the golden model; its seconds and dynamo's graph count."""
    from torch._dynamo.utils import counters

    from star_deploy.backends.torch_backend import TorchBackend
    from star_deploy.core.config import SamplingConfig
    from star_deploy.core.tokenizer import PromptTokenizer
    from star_deploy.runtime.pipeline import ScaleLoop

    model = golden_model()
    compile_args = {} if compile_mode == "eager" else {"compile": True, "compile_dynamic": compile_mode == "dynamic"}
    backend = TorchBackend(model, compile_cache=Path(cache) if cache else None, **compile_args)
    loop = ScaleLoop(backend, PromptTokenizer(model.tokenizer_dir))
    start = time.perf_counter()
    gen = loop.generate([PROMPT], SamplingConfig(cfg=4.0, top_k=50, top_p=0.8), seeds=[SEED])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "graphs": int(counters["stats"]["unique_graphs"]), "tokens": gen.tokens.tolist()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child(compile_mode: str, cache: str, inductor_dir: str) -> dict:
    """``one_generation`` in a fresh process; ``cpu_s``: CPU time of it and its compilers (robust to load)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor_dir, "PYTHONPATH": str(ROOT)}
    code = f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import cpu_proxies as c; "
    code += f"print('RESULT', json.dumps(c.one_generation({compile_mode!r}, {cache!r})))"
    before = cpu_seconds()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    return {**result, "cpu_s": cpu_seconds() - before}


def compile_rows(variants: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        eager = child("eager", "", f"{tmp}/eager")
        rows.append({"variant": "eager", "run": "-", "generation_s": eager["seconds"], "process_cpu_s": eager["cpu_s"],
                     "graphs": 0, "tokens_equal": True})  # fmt: skip
        for variant in variants:
            cache = f"{tmp}/{variant}-cache"
            for run in ("cold", "warm"):
                got = child(variant, cache, f"{tmp}/{variant}-{run}-inductor")
                rows.append({"variant": f"regional {variant}", "run": run, "generation_s": got["seconds"],
                             "process_cpu_s": got["cpu_s"], "graphs": got["graphs"],
                             "tokens_equal": got["tokens"] == eager["tokens"]})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ops", "compile"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--variants", default="dynamic,per-scale")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = ops_rows() if args.what == "ops" else compile_rows(args.variants.split(","))
    print(table(rows))
    if args.json:
        load = os.getloadavg()[0]
        args.json.write_text(json.dumps({"what": args.what, "cpus": os.cpu_count(), "load": load, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
