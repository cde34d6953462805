"""An export killed mid-write leaves nothing that looks complete; a rerun starts clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import GOLDEN

from star_deploy.files.atomic import atomic_dir, atomic_file, remove_stale_partials
from star_deploy.files.signals import Interrupted, signals_as_interrupts

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 240


def start_export(out: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "star_deploy.cli",
        "-q",
        "export",
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "--out",
        str(out),
    ]
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


def start_cli(*args: str) -> subprocess.Popen:
    """``star-deploy ARGS`` in a child process at INFO level, stdout and stderr merged (they log the model load)."""
    cmd = [sys.executable, "-m", "star_deploy.cli", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class OutputWatch:
    """Reads a child's output on a thread; ``wait_for`` blocks until a fragment has appeared."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self.seen = proc, [], threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self.seen.set()

    def wait_for(self, fragment: str, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(fragment in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"{fragment!r} never appeared: {''.join(self.lines)[-800:]}")
            time.sleep(0.01)

    def finish(self, timeout: float = 120) -> str:
        self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return "".join(self.lines)


RUN_GOLDEN = ["run", "--weights", str(GOLDEN), "--resolution", "256"]


def test_sigterm_during_export_leaves_nothing(tmp_path):
    out = tmp_path / "X"
    proc = start_export(out)
    wait_for_first_graph(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-800:]
    assert "interrupted; no partial output was left behind (SIGTERM)" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == [], "a terminated export left files behind"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_while_pngs_are_saved_removes_this_runs_pngs_and_folder(sig, code, tmp_path):
    out = tmp_path / "imgs"
    prompts = [f"prompt {i}" for i in range(12)]
    proc = start_cli(*RUN_GOLDEN, *prompts, "--batch-size", "12", "-o", str(out))
    watch = OutputWatch(proc)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (out.is_dir() and any(e.name.endswith(".png") and not e.name.startswith(".") for e in os.scandir(out))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never started writing: {watch.finish()[-800:]}")
        time.sleep(0.001)
    proc.send_signal(sig)
    stderr = watch.finish()
    assert proc.returncode == code, stderr[-800:]
    assert "interrupted; no partial output was left behind" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == [], f"left behind: {list(tmp_path.rglob('*'))}"


def test_interrupt_before_the_first_png_creates_no_folder(tmp_path):
    out = tmp_path / "imgs"
    proc = start_cli(*RUN_GOLDEN, "a", "b", "-o", str(out))
    watch = OutputWatch(proc)
    watch.wait_for("loading")
    proc.send_signal(signal.SIGINT)
    stderr = watch.finish()
    assert proc.returncode == 130, stderr[-800:]
    assert list(tmp_path.iterdir()) == []


def test_an_output_written_meanwhile_is_never_replaced(tmp_path):
    """Two runs on one -o: the one that publishes second fails instead of silently replacing the first."""
    out = tmp_path / "same.png"
    proc = start_cli(*RUN_GOLDEN, "a red car.", "-o", str(out))
    watch = OutputWatch(proc)
    watch.wait_for("loading")
    out.write_bytes(b"the other run's image")
    stderr = watch.finish()
    assert proc.returncode == 2, stderr[-800:]
    assert f"{out}: already exists (written meanwhile by another process?); pass --overwrite" in stderr
    assert out.read_bytes() == b"the other run's image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.png"]


def test_output_folder_removed_mid_run_is_named(tmp_path):
    folder = tmp_path / "outdir"
    folder.mkdir()
    proc = start_cli(*RUN_GOLDEN, "a red car.", "-o", str(folder / "x.png"))
    watch = OutputWatch(proc)
    watch.wait_for("loading")
    folder.rmdir()
    stderr = watch.finish()
    assert proc.returncode == 2, stderr[-800:]
    assert f"{folder}: the output folder was removed while x.png was written" in stderr and "unexpected" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_files_are_removed_like_folders(tmp_path):
    from star_deploy.files.atomic import atomic_file

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = [
        tmp_path / f".x.png.partial-{pid}",
        tmp_path / f"..x.png.partial-{pid}.partial-{pid}",
        tmp_path / f".x.png.partial-{pid}.old",
    ]
    for path in stale:
        path.write_bytes(b"half a png")
    live = tmp_path / f".x.png.partial-{os.getppid()}"
    live.write_bytes(b"another process is writing")
    with atomic_file(tmp_path / "x.png") as tmp:
        tmp.write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "x.png"])


def test_publish_never_replaces_without_overwrite(tmp_path):
    from star_deploy.errors import OutputError
    from star_deploy.files.atomic import atomic_dir, atomic_file

    target = tmp_path / "x.png"
    with pytest.raises(OutputError, match="already exists"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs"
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_bytes(b"mine")
    assert target.read_bytes() == b"mine"
    folder = tmp_path / "art"
    with pytest.raises(OutputError, match="already exists"):
        with atomic_dir(folder) as tmp:
            (tmp / "a").write_text("mine")
            folder.mkdir()
    assert list(folder.iterdir()) == []
    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "a").write_text("mine")
    assert [p.name for p in folder.iterdir()] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "x.png"]


@pytest.mark.parametrize("output", ["folder", "file"])
def test_a_signal_whose_exception_was_swallowed_still_stops_the_output(output, tmp_path):
    target = tmp_path / "out"
    write = atomic_dir if output == "folder" else atomic_file
    with pytest.raises(Interrupted) as caught, signals_as_interrupts():
        with write(target) as tmp:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except BaseException:  # noqa: BLE001 - a library that catches everything, as some do
                pass
            if output == "folder":
                (tmp / "manifest.json").write_text("{}")
            else:
                tmp.write_text("x")
    assert caught.value.exit_code == 143
    assert list(tmp_path.iterdir()) == [], "an interrupted command published its output"


FINALISER_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from star_deploy.files.atomic import atomic_dir
from star_deploy.files.signals import Interrupted, signals_as_interrupts

class SignalsWhileFinalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here, inside __del__: an unraisable exception

try:
    with signals_as_interrupts(), atomic_dir(Path(sys.argv[1]) / "out") as tmp:
        SignalsWhileFinalised()
        (tmp / "manifest.json").write_text("{}")
except Interrupted as exc:
    print("interrupted", exc.exit_code)
"""


def test_a_signal_raised_inside_a_finaliser_stops_the_output_quietly(tmp_path):
    """As in a weakref callback during a torch export: the exception is lost in ``__del__``; the output must
    still not be published, and Python must not print the lost exception as a traceback."""
    result = subprocess.run(
        [sys.executable, "-c", FINALISER_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "interrupted 143", result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [], "an interrupted command published its output"
