"""`star-deploy serve` from a fresh virtual environment with the base install and the serve extra only (no torch).

The environment lives in the user's cache (``$XDG_CACHE_HOME/star-deploy-tests``), keyed by the project's
dependencies and by this checkout's path (two checkouts never share one), so later runs reuse it; pip's own
cache serves the wheels.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from star_deploy.serve.client import request

pytestmark = [pytest.mark.serve, pytest.mark.venv]

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("torch", "transformers", "onnx", "safetensors")
"""Modules of the torch extra that must not be importable in the environment."""


def cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "star-deploy-tests"


def requirements_key() -> str:
    """A digest of the base and serve dependencies, this Python and this checkout: a new one of any is a new venv."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the whole file counts
        return hashlib.sha256(f"{text}\n{sys.version}\n{ROOT}".encode()).hexdigest()[:16]
    project = tomllib.loads(text)["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["serve"], sys.version, str(ROOT)]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this interpreter's paths (so nothing leaks in from the test's site-packages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    return {**env, **extra}


def pip(python: Path, *args: str, timeout_s: float) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def venv() -> Path:
    """A venv (no system site packages) with ``pip install -e ROOT[serve]``; returns its bin folder."""
    folder = cache_root() / f"serve-{requirements_key()}"
    python = folder / "bin" / "python"
    marker = folder / "installed-from"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True, timeout=300)
    if not marker.is_file() or marker.read_text() != str(ROOT):
        pip(python, "-e", f"{ROOT}[serve]", timeout_s=1200)
        marker.write_text(str(ROOT))
    return folder / "bin"


def importable(python: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([str(python), "-c", code], env=clean_env(), timeout=60).returncode == 0


def wait_for(check, timeout_s: float, what: str, process: subprocess.Popen) -> None:
    """Poll ``check`` every 0.5 s until it is true; fail after ``timeout_s`` or if the server exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"star-deploy serve exited ({process.returncode}) while waiting for {what}"
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout_s} s")


def disconnect_early(port: int) -> None:
    """Clients that leave a stream at once, after its first bytes or after a few previews, and a plain request."""
    body = json.dumps({"prompt": "a green square", "seed": 1})
    for path, read in (
        ("/v1/images:stream", 0),
        ("/v1/images:stream", 64),
        ("/v1/images:stream", 8192),
        ("/v1/images", 0),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        if read:
            connection.getresponse().read(read)
        connection.close()
    time.sleep(2)


def health(url: str) -> int:
    try:
        return request(f"{url}/healthz", timeout_s=5).status
    except OSError:
        return 0


def test_serve_without_torch_in_a_fresh_venv(venv, tmp_path):
    python = venv / "python"
    for module in ABSENT:
        assert not importable(python, module), f"{module} is importable in the base + serve environment"
    assert importable(python, "ray") and importable(python, "onnxruntime")
    from serve_helpers import free_port, png_pixels, replica_pids

    from star_deploy.demo import DEMO_WEIGHTS

    port = free_port()
    torch_only = [str(venv / "star-deploy"), "serve", "--port", str(port), "--weights", str(DEMO_WEIGHTS)]
    refused = subprocess.run(torch_only, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "pip install 'star-deploy[torch]'" in refused.stderr, refused.stderr[-2000:]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    cmd = [str(venv / "star-deploy"), "serve", "--port", str(port), "--num-cpus", "1", "--drain-timeout", "5"]
    process = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: health(url) == 200, 240, "healthy server", process)
        reply = request(f"{url}/v1/images", {"prompt": "a red circle on a blue background", "seed": 3})
        assert reply.status == 200, reply.body[:500]
        assert png_pixels(reply.body).shape == (128, 128, 3)
        assert request(f"{url}/v1/model").json()["backend"] == "onnxruntime"
        disconnect_early(port)
        log.seek(0)
        quiet = log.read()
        assert not any(word in quiet for word in ("ERROR", "Traceback", "never retrieved")), quiet[-3000:]
        assert "INFO" not in quiet.replace("INFO     serving STAR", ""), "Ray's INFO lines show without -v"
        for pid in replica_pids(process.pid):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: health(url) == 503, 30, "503 from /healthz with the replica dead", process)
        process.send_signal(signal.SIGHUP)
        assert process.wait(timeout=5 + 30) == 128 + signal.SIGHUP
    finally:
        if process.poll() is None:
            process.kill()
    log.seek(0)
    output = log.read()
    assert "SIGHUP received: draining" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
