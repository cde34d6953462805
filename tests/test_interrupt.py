"""An export killed mid-write leaves nothing that looks complete; a rerun starts clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GOLDEN
from star_deploy.atomic import remove_stale_partials

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 240


def start_export(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "star_deploy.cli", "-q", "export", "--weights", str(GOLDEN), "--resolution", "256", "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_graph(proc: subprocess.Popen, out: Path) -> Path:
    """The temporary folder, once the export has written at least one graph into it."""
    partial = out.with_name(f".{out.name}.partial-{proc.pid}")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"export ended before it could be interrupted: {proc.communicate()[1][-500:]}")
        if partial.is_dir() and any(partial.glob("*.onnx")):
            return partial
        time.sleep(0.05)
    proc.kill()
    pytest.fail("export did not start writing graphs in time")


def test_sigkill_then_sigint_leave_no_complete_looking_output(tmp_path):
    out = tmp_path / "X"
    killed = start_export(out)
    stale = wait_for_first_graph(killed, out)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not out.exists(), "a killed export left a complete-looking folder"
    assert not list(tmp_path.rglob("manifest.json"))

    interrupted = start_export(out)
    wait_for_first_graph(interrupted, out)
    assert not stale.exists(), "the rerun did not clean the killed export's temporary folder"
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, stderr[-800:]
    assert "interrupted; no partial output was left behind" in stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == [], "an interrupted export left files behind"


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale_dir = tmp_path / f".X.partial-{dead_pid}"
    stale_dir.mkdir()
    (stale_dir / "manifest.json").write_text("{}")
    live = tmp_path / f".X.partial-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f".Y.partial-{dead_pid}"
    other.write_text("")
    assert remove_stale_partials(tmp_path / "X") == [stale_dir]
    assert not stale_dir.exists() and live.exists() and other.exists()
