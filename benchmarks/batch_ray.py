"""`star-deploy batch` throughput on the demo: in-process, and on a two-node local Ray cluster with 1 and 2 workers.

    python benchmarks/batch_ray.py [--items 200] [--batch-size 8] [--repeats 3] [--pair] [--json FILE]

Every variant generates the same items (demo prompts, one image each) into a fresh folder through
``star_deploy.batch.run_batch``; the Ray variants join a cluster of two nodes with one CPU each,
started here listening on 127.0.0.1 only and stopped at the end. ``total`` is the job's wall time
(the local loop's model load; Ray's connection, actor start-up and model loads); ``steady`` is
images/s from the first finished chunk to the last (read from the index as it grows; Ray hands
results over in bursts, so it flatters Ray); ``CPU s/image`` counts this process and, on Ray, every
process of the cluster (raylets and GCS included), polled every 0.5 s from /proc. The overhead of
Ray Data is the 1-worker Ray job against the in-process loop with as many threads (1): the median
over repeats of their ratio, the variants run in alternation, so each ratio compares runs under the
same load. CPU time is the steadier measure on a shared machine. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "white", "black", "purple", "orange")
SHAPES = ("circle", "square", "triangle")


def prompts_file(folder: Path, items: int) -> Path:
    path = folder / "prompts.txt"
    lines = [f"a {COLOURS[i % 8]} {SHAPES[i % 3]} on a {COLOURS[(i + 5) % 8]} background" for i in range(items)]
    path.write_text("\n".join(lines) + "\n")
    return path


def watch_index(index: Path, stop: threading.Event) -> tuple[list[tuple[float, int]], threading.Thread]:
    """(time, lines) each time the index grows, polled every 20 ms until ``stop``; the polling thread."""
    seen: list[tuple[float, int]] = []

    def poll() -> None:
        last = 0
        while not stop.is_set():
            lines = index.read_bytes().count(b"\n") if index.is_file() else 0
            if lines > last:
                seen.append((time.perf_counter(), lines))
                last = lines
            time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    seen.append((time.perf_counter(), 0))
    return seen, thread


def cluster_cpu_seconds(temp: str) -> dict[int, float]:
    """CPU seconds (user + system) so far of every process of the cluster in ``temp`` (its environment names it)."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or temp.encode() not in (entry / "environ").read_bytes():
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


class CpuMeter:
    """CPU seconds this process and the cluster's processes spend between ``start`` and ``stop`` (polled)."""

    def __init__(self, temp: str) -> None:
        self.temp = temp
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def sample(self) -> None:
        for pid, seconds in cluster_cpu_seconds(self.temp).items():
            self.first.setdefault(pid, seconds if not self.thread.is_alive() else 0.0)
            self.last[pid] = seconds

    def poll(self) -> None:
        while not self.done.wait(0.5):
            self.sample()

    def start(self) -> None:
        self.sample()
        self.own = time.process_time()
        self.thread.start()

    def stop(self) -> tuple[float, float]:
        """(this process's, the cluster's) CPU seconds since ``start``."""
        own = time.process_time() - self.own
        self.done.set()
        self.thread.join()
        self.sample()
        return own, sum(self.last[pid] - self.first[pid] for pid in self.last)


def run_variant(prompts: Path, out: Path, batch_size: int, threads: int, ray: dict | None, temp: str) -> dict:
    """One job; its total seconds, steady images/s and CPU seconds (this process, plus the cluster's on Ray)."""
    from star_deploy.batch import BatchOptions, RayOptions, run_batch
    from star_deploy.core.call_options import CallOptions
    from star_deploy.runtime.plan import LoadOptions

    call = CallOptions(batch_size=batch_size)
    options = BatchOptions(prompts, out, LoadOptions(threads=threads), call, ray=RayOptions(**ray) if ray else None)
    stop = threading.Event()
    meter = CpuMeter(temp)
    meter.start()
    seen, watcher = watch_index(out / "index.jsonl", stop)
    start = seen[0][0]
    summary = run_batch(options)
    end = time.perf_counter()
    own_cpu, cluster_cpu = meter.stop()
    stop.set()
    watcher.join()
    if seen[-1][1] < summary.total:
        seen.append((end, summary.total))
    first_t, first_n = seen[1]
    last_t = next(t for t, n in seen[1:] if n >= summary.total)
    steady = (summary.total - first_n) / (last_t - first_t) if last_t > first_t else 0.0
    assert summary.done == summary.total and summary.failed == 0, summary.line()
    cpu = own_cpu + (cluster_cpu if ray else 0.0)
    return {
        "total_s": end - start,
        "images_per_s": summary.total / (end - start),
        "steady_images_per_s": steady,
        "cpu_s": cpu,
        "cpu_s_per_image": cpu / summary.total,
        "cluster_cpu_s": cluster_cpu,
    }


def start_cluster(temp: str):
    """Two nodes of one CPU each on 127.0.0.1 only (as tests/batch_helpers.py starts them), in ``temp``."""
    os.environ.update(RAY_TMPDIR=temp, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args=node | {"include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


VARIANTS = {
    "local, 1 thread": (1, None),
    "ray, 1 worker x 1 CPU": (0, {"workers": 1}),
    "local, 2 threads": (0, None),
    "ray, 2 workers x 1 CPU (2 nodes)": (0, {"workers": 2}),
}
"""Name -> (ONNX Runtime threads, Ray settings); a Ray worker's threads default to its CPUs."""


def measure(items: int, batch_size: int, repeats: int, names: list[str]) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="sdbench"))
    prompts = prompts_file(folder, items)
    temp = tempfile.mkdtemp(prefix="sdb", dir="/tmp")
    cluster = start_cluster(temp)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for r in range(repeats):
            for name in names:
                threads, ray = VARIANTS[name]
                ray = None if ray is None else ray | {"address": cluster.address}
                out = folder / f"{len(runs[name])}-{r}-{abs(hash(name))}"
                runs[name].append(run_variant(prompts, out, batch_size, threads, ray, temp))
    finally:
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
    return summarize(runs, items, batch_size, repeats)


LOCAL, RAY1, RAY2 = "local, 1 thread", "ray, 1 worker x 1 CPU", "ray, 2 workers x 1 CPU (2 nodes)"


def paired(runs: dict[str, list[dict]], key: str, a: str, b: str) -> list[float]:
    """``b``'s ``key`` over ``a``'s in each repeat (runs next to each other, under the same load)."""
    return [y[key] / x[key] for x, y in zip(runs[a], runs[b])]


def summarize(runs: dict[str, list[dict]], items: int, batch_size: int, repeats: int) -> dict:
    """Medians per variant; Ray Data's overhead and the 2-worker scaling as medians of per-repeat ratios."""
    rows = {
        name: {key: statistics.median(run[key] for run in found) for key in found[0]} for name, found in runs.items()
    }
    return {
        "machine": {"cpus": os.cpu_count(), "load_average_before_after": None},
        "items": items,
        "batch_size": batch_size,
        "repeats": repeats,
        "variants": rows,
        "runs": runs,
        "ray_overhead_wall": statistics.median(paired(runs, "total_s", LOCAL, RAY1)) - 1,
        "ray_overhead_cpu": statistics.median(paired(runs, "cpu_s", LOCAL, RAY1)) - 1,
        "scaling_2_workers_vs_1": statistics.median(paired(runs, "images_per_s", RAY1, RAY2)) if RAY2 in runs else None,
    }


def print_table(report: dict) -> None:
    print(f"{report['items']} demo items, --batch-size {report['batch_size']}, median of {report['repeats']}")
    print(f"{'variant':36} {'total s':>8} {'images/s':>9} {'steady images/s':>16} {'CPU s/image':>12}")
    for name, row in report["variants"].items():
        print(
            f"{name:36} {row['total_s']:8.2f} {row['images_per_s']:9.2f} {row['steady_images_per_s']:16.2f} "
            f"{row['cpu_s_per_image']:12.3f}"
        )
    print(
        f"Ray Data overhead (1 worker vs in-process, 1 thread; median of per-repeat ratios): wall "
        f"{100 * report['ray_overhead_wall']:+.1f} %, CPU {100 * report['ray_overhead_cpu']:+.1f} %"
    )
    if report["scaling_2_workers_vs_1"] is not None:
        print(f"2 workers / 1 worker: {report['scaling_2_workers_vs_1']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pair", action="store_true", help="Only the in-process loop and the 1-worker Ray job.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    before = os.getloadavg()
    report = measure(args.items, args.batch_size, args.repeats, [LOCAL, RAY1] if args.pair else list(VARIANTS))
    report["machine"]["load_average_before_after"] = [before, os.getloadavg()]
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
