"""Run the CLI where file permissions apply, also when the tests run as root (as CI does).

Root reads and writes past any mode bits, so a permission test run as root proves nothing. The
command is run in a fresh user namespace (``unshare --user``: still the files' owner, without
root's capabilities over them), or, where namespaces are refused, as the ``nobody`` user
(``setpriv``). Where neither can run the CLI the tests fail: they must not pass unchecked.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = (
    ["unshare", "--user", "--"],
    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"],
)
PROBE = "import os, sys, star_deploy.cli; sys.exit(os.access(sys.argv[1], os.R_OK))"


@functools.cache
def unprivileged_prefix() -> list[str]:
    """The first prefix that runs the CLI's imports and cannot read a mode-0 file; [] when not root."""
    if os.geteuid() != 0:
        return []
    with tempfile.TemporaryDirectory() as folder:
        locked = Path(folder) / "locked"
        locked.touch(mode=0)
        Path(folder).chmod(0o755)
        tried = []
        for prefix in PREFIXES:
            try:
                done = subprocess.run(
                    [*prefix, sys.executable, "-c", PROBE, str(locked)], capture_output=True, text=True, timeout=120
                )
            except FileNotFoundError as exc:
                tried.append(f"{prefix[0]}: {exc}")
                continue
            if done.returncode == 0:
                return prefix
            tried.append(f"{prefix[0]}: exit {done.returncode} {done.stderr.strip()[-300:]}")
    raise RuntimeError("cannot run the CLI without root's file access: " + "; ".join(tried))


def shared_folder() -> Path:
    """A new folder the unprivileged user can enter (pytest's own tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="star-perm-"))
    folder.chmod(0o755)
    return folder


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``star-deploy ARGS`` run without root's file access."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [*unprivileged_prefix(), sys.executable, "-m", "star_deploy", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
