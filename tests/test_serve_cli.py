"""``star-deploy serve`` as a user runs it: serves until a signal, drains the requests in flight, exits 128 + signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="needs the serve extra: pip install 'star-deploy[serve]'")

from serve_helpers import descendants, free_port, png_pixels, post_all, replica_pids  # noqa: E402

from star_deploy.demo import DEMO_WEIGHTS  # noqa: E402
from star_deploy.serve.client import request  # noqa: E402

pytestmark = pytest.mark.serve
ROOT = Path(__file__).resolve().parents[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "star-deploy serve exited before serving"
        try:
            if request(f"{url}/healthz", timeout_s=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"no healthy server at {url} after {timeout_s} s")


def serve_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def running(pids: list[int]) -> list[int]:
    """The processes of ``pids`` that still exist (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_while_the_replicas_load_stops_the_server(tmp_path, sig):
    """A signal once a replica process exists (the application still deploying): the server stops as on any
    signal (a line, exit 128 + signal) without waiting for the deployment, and no process it started is left."""
    cmd = [sys.executable, "-m", "star_deploy", "serve", "--port", str(free_port()), "--drain-timeout", "5"]
    log = (tmp_path / "serve.log").open("w+")
    process = subprocess.Popen(cmd, env=serve_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not replica_pids(process.pid) and time.monotonic() < deadline:
            assert process.poll() is None, "star-deploy serve exited before starting a replica"
            time.sleep(0.2)
        replicas = replica_pids(process.pid)
        assert replicas, "no replica process after 180 s"
        started = descendants(process.pid)
        process.send_signal(sig)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 30
    while running(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    log.seek(0)
    output = log.read()
    name = signal.Signals(sig).name
    assert code == 128 + sig, output[-3000:]
    assert running(started) == [], "a process of the server outlived it"
    assert f"{name} received: draining" in output and "Traceback" not in output, output[-3000:]
    assert output.strip().splitlines()[-1].endswith(f"({name})"), output[-3000:]


def test_serve_command_drains_on_sigterm(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env()
    log = (tmp_path / "serve.log").open("w+")
    cmd = [
        sys.executable,
        "-m",
        "star_deploy.cli",
        "serve",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--batch-wait",
        "0.2",
        "--weights",
        str(DEMO_WEIGHTS),
    ]
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_healthy(url, process)
        assert request(f"{url}/v1/model").json()["backend"] == "torch", "--weights serves on torch replicas"
        bodies = [{"prompt": "a red circle on a blue background", "seed": i} for i in range(4)]
        replies: list = []
        load = threading.Thread(target=lambda: replies.extend(post_all(f"{url}/v1/images", bodies)))
        load.start()
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        load.join(timeout=120)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    output = log.read()
    assert [r.status for r in replies] == [200] * 4, output[-3000:]
    assert all(png_pixels(r.body).shape == (128, 128, 3) for r in replies)
    assert "SIGTERM received: draining" in output
