"""Where a site's generation time goes: per graph in headless Chromium (WebAssembly), per graph and op type natively.

The browser side times every ``session.run`` of the page's generator (``window.star``) during one
generation; what is left of the generation's time is the page's own work (sampling, copies into
onnxruntime-web's worker). The native side runs the site's own graphs with ONNX Runtime's profiler
and sums its node events per graph and op type. Both sides run a warm-up generation first, on the
same prompt and seed. ``--page DIR`` (repeatable) runs the browser side once per page folder: the
site's files hard-linked into a temporary folder with the page's modules taken from DIR (and
site.json updated to match), so that two versions of the page are compared on the same graphs in
one run. Prints tables and writes JSON.

Usage: python benchmarks/web_profile.py SITE [--page /path/to/old/static --page star_deploy/web/static]
       [--json benchmarks/results/web_profile_256-d16_int4.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from star_deploy.bench.web import PROMPT, SEED  # noqa: E402
from star_deploy.web.artifacts import artifacts_from_site  # noqa: E402
from star_deploy.web.browser import SiteBrowser  # noqa: E402
from star_deploy.web.site import SITE_MANIFEST, STATIC, file_entry  # noqa: E402

TIMER_SCRIPT = """
window.graphTimes = [];
for (const [graph, session] of Object.entries(window.star.sessions)) {
  const run = session.run.bind(session);
  session.run = async (...args) => {
    const start = performance.now();
    const result = await run(...args);
    window.graphTimes.push([graph, performance.now() - start]);
    return result;
  };
}
return {isolated: crossOriginIsolated, threads: window.star.threads, proxy: window.star.proxy,
        providers: window.star.providers, cores: navigator.hardwareConcurrency};
"""


def paged_site(site: Path, page: Path, out: Path) -> Path:
    """``site`` hard-linked into ``out`` with the page files of ``page`` copied over and site.json updated."""
    manifest = json.loads((site / SITE_MANIFEST).read_text())
    for source in site.rglob("*"):
        target = out / source.relative_to(site)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.name != SITE_MANIFEST:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    for source in page.iterdir():
        target = out / source.name
        if source.is_file() and source.name in manifest["files"]:
            target.unlink()
            shutil.copyfile(source, target)
            manifest["files"][source.name] = file_entry(target)
    (out / SITE_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def per_graph(times: list) -> dict:
    sums, counts = collections.defaultdict(float), collections.Counter()
    for graph, ms in times:
        sums[graph] += ms / 1000
        counts[graph] += 1
    return {g: {"seconds": round(sums[g], 3), "runs": counts[g]} for g in sums}


def browser_profile(site: Path, warmup: int) -> dict:
    with SiteBrowser(site) as browser:
        page = browser.open(timeout_s=600)
        if page.state != "ready":
            raise SystemExit(f"{site}: the page did not load: {page.message}")
        for _ in range(warmup):
            browser.generate(PROMPT, SEED, timeout_s=1200)
        basics = browser.driver.execute_script(TIMER_SCRIPT)
        result = browser.generate(PROMPT, SEED, timeout_s=1200)
        graphs = per_graph(browser.driver.execute_script("return window.graphTimes"))
    inside = sum(g["seconds"] for g in graphs.values())
    return basics | {
        "load_seconds": round(page.seconds, 3),
        "generate_seconds": round(result.seconds, 3),
        "graphs": graphs,
        "outside_graphs_seconds": round(result.seconds - inside, 3),
        "tokens": result.tokens.tolist(),
    }


def native_profile(artifacts: Path, warmup: int) -> dict:
    """One generation after ``warmup`` with ONNX Runtime's profiler on: seconds per graph and per op type."""
    import time

    import onnxruntime as ort

    from star_deploy.api import StarPipeline

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(artifacts / "profile")
    pipe = StarPipeline.from_pretrained(str(artifacts), session_options=options)
    for _ in range(warmup):
        pipe(PROMPT, seed=SEED, output_type="np")
    start = time.perf_counter()
    out = pipe(PROMPT, seed=SEED, output_type="np")
    seconds = time.perf_counter() - start
    sessions = pipe.loop.backend.sessions
    graphs, ops = {}, {}
    for name, session in sessions.items():
        events = json.loads(Path(session.end_profiling()).read_text())
        runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
        last = runs[len(runs) // (warmup + 1) * warmup :]
        begin = last[0]["ts"] if last else 0
        graphs[name] = {"seconds": round(sum(e["dur"] for e in last) / 1e6, 3), "runs": len(last)}
        by_op = collections.defaultdict(float)
        for e in events:
            if e.get("cat") == "Node" and e["ts"] >= begin and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]] += e["dur"] / 1e6
        ops[name] = {op: round(s, 3) for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])}
    return {
        "generate_seconds": round(seconds, 3),
        "threads": ort.SessionOptions().intra_op_num_threads,
        "graphs": graphs,
        "op_types": ops,
        "tokens": out.tokens[0].tolist(),
    }


def table(report: dict) -> None:
    names = list(report["native"]["graphs"])
    columns = [*report["browser"], "native"]
    print(f"{'graph':<18}" + "".join(f"{c[-28:]:>30}" for c in columns))
    for name in names:
        cells = [report["browser"][c]["graphs"].get(name, {}).get("seconds", 0) for c in report["browser"]]
        cells.append(report["native"]["graphs"][name]["seconds"])
        print(f"{name:<18}" + "".join(f"{x:>30.2f}" for x in cells))
    totals = [report["browser"][c]["generate_seconds"] for c in report["browser"]]
    print(f"{'generation':<18}" + "".join(f"{x:>30.2f}" for x in [*totals, report["native"]["generate_seconds"]]))
    for name, ops in report["native"]["op_types"].items():
        top = ", ".join(f"{op} {s:.2f}" for op, s in list(ops.items())[:6])
        print(f"native {name}: {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("--page", type=Path, action="append", default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pages = args.page or [STATIC]
    report = {"site": str(args.site), "prompt": PROMPT, "seed": SEED, "browser": {}}
    with tempfile.TemporaryDirectory(prefix="web-profile-") as tmp:
        for i, page in enumerate(pages):
            site = paged_site(args.site, page, Path(tmp) / f"site{i}")
            report["browser"][str(page)] = browser_profile(site, args.warmup)
            shutil.rmtree(site)
        report["native"] = native_profile(artifacts_from_site(args.site, Path(tmp) / "graphs"), args.warmup)
    native_tokens = report["native"].pop("tokens")
    for side in report["browser"].values():
        side["tokens_equal_native"] = side.pop("tokens") == native_tokens
    report["load_average_end"] = list(os.getloadavg())
    table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
