"""Helpers of the batch tests: prompt files, the images a plan expects, folder comparison, a local Ray cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "white", "black", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
REPO = Path(__file__).resolve().parent.parent


def forty_image_lines() -> list[dict]:
    """38 demo prompts, two of them with n=2 (40 images), with every optional field used somewhere."""
    lines = []
    for i in range(38):
        line: dict = {"prompt": f"a {COLOURS[i % 8]} {SHAPES[i % 3]} on a {COLOURS[(i + 3) % 8]} background"}
        if i % 5 == 0:
            line["seed"] = 1000 + i
        if i % 7 == 0:
            line["cfg"] = 2.5
        if i % 11 == 0:
            line |= {"top_k": 50, "top_p": 0.9}
        if i in (3, 20):
            line["n"] = 2
        if i % 9 == 0:
            line["id"] = f"item-{i}"
        lines.append(line)
    return lines


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def expected_images(lines: list[dict], seed: int = 0) -> list[dict]:
    """Each image the lines ask for, in order: its item id, prompt, seed and sampler settings."""
    images = []
    for position, line in enumerate(lines):
        for j in range(line.get("n", 1)):
            ordinal = len(images)
            images.append(
                {
                    "id": str(line.get("id", position)),
                    "image": j,
                    "prompt": line["prompt"],
                    "seed": line["seed"] + j if "seed" in line else seed + ordinal,
                    "settings": (line.get("cfg"), line.get("top_k"), line.get("top_p")),
                }
            )
    return images


def chunks_of(images: list[dict], size: int) -> list[list[dict]]:
    """Consecutive runs of at most ``size`` images with the same settings: what the job generates together."""
    chunks: list[list[dict]] = []
    for image in images:
        if chunks and len(chunks[-1]) < size and chunks[-1][0]["settings"] == image["settings"]:
            chunks[-1].append(image)
        else:
            chunks.append([image])
    return chunks


def read_index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` by relative path (what two runs of the same job must agree on)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def batch_process(args: list[str], env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "star_deploy.cli", "batch", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_lines(out: Path, count: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    """Wait until the index holds at least ``count`` lines; their number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"batch ended before the test acted: {proc.communicate()[1][-800:]}")
        index = out / "index.jsonl"
        lines = len(index.read_text().splitlines()) if index.is_file() else 0
        if lines >= count:
            return lines
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("batch did not write images in time")


def pixels_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def listening_addresses(pids: list[int]) -> set[str]:
    """The local addresses on which the processes ``pids`` accept TCP connections (read from /proc; IPv4 as such)."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(f) for f in (Path("/proc") / str(pid) / "fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                address = ipaddress.ip_address(words)
                found.add(str(getattr(address, "ipv4_mapped", None) or address))
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids of processes whose command line or environment contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes() or text.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_one_worker(raylets: list[int], name: str) -> int:
    """SIGKILL one process started by one of ``raylets`` whose title starts with ``ray::{name}``; its pid."""
    for raylet in raylets:
        for pid in children(raylet):
            if command_line(pid).startswith(f"ray::{name}"):
                os.kill(pid, signal.SIGKILL)
                return pid
    raise AssertionError(f"no ray::{name} process under the raylets {raylets}")


@contextmanager
def two_node_cluster() -> Iterator[tuple[object, str]]:
    """A Ray cluster of two nodes with one CPU each, listening on 127.0.0.1 only, in its own temp folder; stopped after.

    Ray takes 127.0.0.1 as a node's address (and binds its servers there, not on every interface) only where it
    does not expect other machines (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; else a driver's 127.0.0.1 becomes the
    machine's outward address). Yields the cluster and its temp folder; afterwards every process it started is
    gone (else the test fails).
    """
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="sdb", dir="/tmp")
    env = {"RAY_TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args=node | {"include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster, temp
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        deadline = time.monotonic() + 30
        while processes_mentioning(temp) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = processes_mentioning(temp)
        assert not left, f"Ray processes left running: {[command_line(p)[:80] for p in left]}"
        shutil.rmtree(temp, ignore_errors=True)
