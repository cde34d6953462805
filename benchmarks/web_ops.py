"""One op at a time, in headless Chromium (onnxruntime-web, WebAssembly) and in native ONNX Runtime, one run.

Each case is a one-node graph with the 256-d16 transformer's MLP shapes (K x N = 1024 x 4096 and
4096 x 1024) at the row counts of its first, middle and last scale (2, 72 and 512 rows: 2 CFG rows
times 1, 36 and 256 tokens): float32 MatMul (what an fp16-stored site runs once ONNX Runtime has
folded its casts), MatMulNBits at 4 and 8 bits with float32 (accuracy_level 1) and int8
(accuracy_level 4) arithmetic, and an int8 per-axis DequantizeLinear feeding a MatMul (how the
int8-stored tables and kernels run). Both sides use the same thread count, a warm-up and the
median of ``--repeat`` runs. Prints a table and writes JSON.

Usage: python benchmarks/web_ops.py --ort-web .ort-web/node_modules/onnxruntime-web/dist
       [--threads 2] [--repeat 7] [--json benchmarks/results/web_ops_256-d16.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from star_deploy.web.artifacts import unpack  # noqa: E402
from star_deploy.web.browser import SiteBrowser  # noqa: E402

BLOCK = 32
SHAPES = ((1024, 4096), (4096, 1024))
SITE_GRAPHS = {"text_encoder": {"rows": 2}, "vq_decoder": {"batch": 1}}
"""The graphs of ``--site`` timed whole, with the sizes of one generation."""
ROWS = (2, 72, 512)
PAGE = "<!doctype html><title>ops</title><body data-state='ready'><p id='message'></p></body>"
TIME_SCRIPT = """
const [cases, threads, repeat, proxy] = arguments;
window.opsResult = null;
(async () => {
  const ort = await import(new URL("ort/ort.wasm.min.mjs", location.href).href);
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = proxy;
  const out = {isolated: crossOriginIsolated, threads: ort.env.wasm.numThreads, simd: WebAssembly.validate(
    new Uint8Array([0,97,115,109,1,0,0,0,1,5,1,96,0,1,123,3,2,1,0,10,10,1,8,0,65,0,253,15,253,98,11])), times: {}};
  for (const c of cases) {
    const options = {executionProviders: ["wasm"], graphOptimizationLevel: "all"};
    if (c.fold) options.extra = {session: {disable_quant_qdq: "1"}};
    const session = await ort.InferenceSession.create(new URL(c.file, location.href).href, options);
    const feeds = {};
    for (const f of c.feeds) {
      const n = f.shape.reduce((a, b) => a * b, 1);
      const id = (_, i) => BigInt(i % f.shape.at(-1) < 8 ? 1 + (i % 7) : 0);
      feeds[f.name] = f.dtype === "int64"
        ? new ort.Tensor("int64", BigInt64Array.from({length: n}, id), f.shape)
        : new ort.Tensor("float32", new Float32Array(n).map((_, i) => Math.sin(i)), f.shape);
    }
    // The worker takes over (detaches) the buffers it is given: each run gets copies.
    const copy = ([k, t]) => [k, new ort.Tensor(t.type, t.data.slice(), t.dims)];
    const fresh = () => Object.fromEntries(Object.entries(feeds).map(copy));
    await session.run(fresh());
    const seconds = [];
    for (let i = 0; i < repeat; i++) {
      const copies = fresh();
      const start = performance.now();
      await session.run(copies);
      seconds.push((performance.now() - start) / 1000);
    }
    out.times[c.name] = seconds;
    await session.release();
  }
  return out;
})().then((r) => { window.opsResult = r; }, (e) => { window.opsResult = {error: String(e && e.message || e)}; });
"""


def matmul(k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return graph([node], [w], k, n)


def nbits(k: int, n: int, bits: int, level: int, rng: np.random.Generator) -> onnx.ModelProto:
    blocks = k // BLOCK
    packed = rng.integers(0, 256, (n, blocks, BLOCK * bits // 8), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) + 0.5) / 64
    node = helper.make_node(
        "MatMulNBits",
        ["x", "b", "scales"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=BLOCK,
        accuracy_level=level,
    )
    inits = [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales, "scales")]
    return graph([node], inits, k, n)


def dequantized(k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    q = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "q")
    s = numpy_helper.from_array((rng.random(n, dtype=np.float32) + 0.5) / 64, "s")
    z = numpy_helper.from_array(np.zeros(n, np.int8), "z")
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    return graph(nodes, [q, s, z], k, n)


def dequantized_int4(k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    packed = rng.integers(-8, 8, (k, n), dtype=np.int8)
    q = helper.make_tensor("q", TensorProto.INT4, (k, n), packed.flatten().tolist())
    s = numpy_helper.from_array((rng.random((k // BLOCK, n), dtype=np.float32) + 0.5) / 64, "s")
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=BLOCK),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    return graph(nodes, [q, s], k, n, opset=21)


def graph(nodes: list, inits: list, k: int, n: int, opset: int = 18) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(helper.make_graph(nodes, "op", [x], [y], inits), opset_imports=opsets, ir_version=9)


def variants(k: int, n: int, rng: np.random.Generator) -> dict[str, onnx.ModelProto]:
    return {
        "MatMul fp32": matmul(k, n, rng),
        "MatMulNBits 4-bit acc1": nbits(k, n, 4, 1, rng),
        "MatMulNBits 4-bit acc4": nbits(k, n, 4, 4, rng),
        "MatMulNBits 8-bit acc1": nbits(k, n, 8, 1, rng),
        "MatMulNBits 8-bit acc4": nbits(k, n, 8, 4, rng),
        "DequantizeLinear int8 + MatMul": dequantized(k, n, rng),
        "DequantizeLinear int4 block 32 + MatMul": dequantized_int4(k, n, rng),
    }


FOLDED = {"DequantizeLinear int8 + MatMul", "DequantizeLinear int4 block 32 + MatMul"}
"""Cases run a second time with session.disable_quant_qdq=1, which lets constant folding dequantize at load."""


def write_cases(folder: Path, ort_web: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    (folder / "ort").mkdir(parents=True)
    for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        shutil.copy2(ort_web / name, folder / "ort" / name)
    (folder / "index.html").write_text(PAGE)
    cases = []
    for k, n in SHAPES:
        for i, (name, model) in enumerate(variants(k, n, rng).items()):
            file = f"op_{k}x{n}_{i}.onnx"
            onnx.save(model, folder / file)
            for fold in (False, True) if name in FOLDED else (False,):
                label = f"{name}{' folded' if fold else ''} {k}x{n}"
                feeds = [[{"name": "x", "dtype": "float32", "shape": [m, k]}] for m in ROWS]
                cases.extend(
                    {"name": f"{label} m={m}", "file": file, "feeds": f, "fold": fold} for m, f in zip(ROWS, feeds)
                )
    return cases


def feed(spec: dict) -> np.ndarray:
    """The input the page builds for ``spec``: sin(i) floats, or token ids 1..7 in the first 8 places of each row."""
    n = int(np.prod(spec["shape"]))
    i = np.arange(n)
    if spec["dtype"] == "int64":
        return np.where(i % spec["shape"][-1] < 8, 1 + i % 7, 0).astype(np.int64).reshape(spec["shape"])
    return np.sin(i.astype(np.float32)).reshape(spec["shape"])


def site_cases(site: Path, folder: Path) -> list[dict]:
    """The text encoder and the decoder of ``site`` (decompressed), each with and without dequantizing at load."""
    manifest = json.loads((site / "site.json").read_text())
    cases = []
    for name, dims in SITE_GRAPHS.items():
        entry = manifest["graphs"][name]
        file = f"{name}.onnx"
        unpack(site / entry["file"], folder / file)
        feeds = [
            {"name": t["name"], "dtype": t["dtype"], "shape": [dims.get(d, d) for d in t["shape"]]}
            for t in entry["inputs"]
        ]
        cases.extend(
            {"name": f"{name}{' folded' if fold else ''}", "file": file, "feeds": feeds, "fold": fold}
            for fold in (False, True)
        )
    return cases


def native_times(folder: Path, cases: list[dict], threads: int, repeat: int) -> dict[str, list[float]]:
    import onnxruntime as ort

    times = {}
    for c in cases:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        if c["fold"]:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        session = ort.InferenceSession(str(folder / c["file"]), options, providers=["CPUExecutionProvider"])
        x = {f["name"]: feed(f) for f in c["feeds"]}
        session.run(None, x)
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            session.run(None, x)
            seconds.append(time.perf_counter() - start)
        times[c["name"]] = seconds
    return times


def browser_times(folder: Path, cases: list[dict], threads: int, repeat: int, proxy: bool) -> dict:
    """Median-ready times per case in the page; ``proxy`` runs onnxruntime-web in its worker, as the site does (whole
    graphs: the page stays responsive to the driver), else on the page's thread (single ops: no messaging cost)."""
    with SiteBrowser(folder) as browser:
        browser.open()
        browser.driver.execute_script(TIME_SCRIPT, cases, threads, repeat, proxy)
        result = None
        while result is None:
            time.sleep(1)
            result = browser.driver.execute_script("return window.opsResult")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-web", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--site", type=Path, default=None, help="also time this site's text encoder and decoder")
    parser.add_argument("--only-site", action="store_true", help="time only the site's graphs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="web-ops-") as tmp:
        folder = Path(tmp)
        cases = write_cases(folder, args.ort_web)
        if args.only_site:
            cases = []
        if args.site:
            cases += site_cases(args.site, folder)
        browser = browser_times(folder, cases, args.threads, args.repeat, proxy=args.only_site)
        if "error" in browser:
            raise SystemExit(f"the page failed: {browser['error']}")
        native = native_times(folder, cases, args.threads, args.repeat)
    rows = []
    print(f"{'case':<52} {'browser ms':>11} {'native ms':>10} {'ratio':>6}")
    for c in cases:
        b, n = statistics.median(browser["times"][c["name"]]), statistics.median(native[c["name"]])
        rows.append({"case": c["name"], "browser_ms": round(b * 1e3, 3), "native_ms": round(n * 1e3, 3)})
        rows[-1]["ratio"] = round(b / n, 2)
        print(f"{c['name']:<52} {b * 1e3:>11.2f} {n * 1e3:>10.2f} {b / n:>6.2f}")
    report = {
        "threads": args.threads,
        "repeat": args.repeat,
        "browser": {
            "crossOriginIsolated": browser["isolated"],
            "numThreads": browser["threads"],
            "simd": browser["simd"],
        },
        "onnxruntime": __import__("onnxruntime").__version__,
        "load_average_end": list(os.getloadavg()),
        "cases": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
