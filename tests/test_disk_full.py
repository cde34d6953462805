"""A full disk (ENOSPC) while writing ends in exit 2, one line, and nothing left on the disk.

The disk is a real, small tmpfs; mounting one needs root, so these tests skip elsewhere.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import GOLDEN
from typer.testing import CliRunner

from star_deploy.cli import app

runner = CliRunner()


@pytest.fixture
def small_disk(tmp_path):
    """A mounted tmpfs of 96 KiB: too small for any output of the golden model."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def release_copy(root: Path) -> Path:
    folder = root / "rel"
    folder.mkdir()
    for name in ("CLIP", "star.pth", "vae.pth"):
        (folder / name).symlink_to(GOLDEN / name)
    return folder


CASES = {
    "run": lambda disk, art, rel: [
        "run",
        "a red car.",
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "-o",
        f"{disk}/x.png",
    ],
    "run-several": lambda disk, art, rel: [
        "run",
        "a",
        "b",
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "-o",
        f"{disk}/imgs",
    ],
    "export": lambda disk, art, rel: [
        "export",
        "--weights",
        str(GOLDEN),
        "--resolution",
        "256",
        "--out",
        f"{disk}/art",
    ],
    "quantize": lambda disk, art, rel: ["quantize", str(art), "--out", f"{disk}/q"],
    "convert-file": lambda disk, art, rel: ["convert", str(GOLDEN / "star.pth"), "--out", f"{disk}/star.safetensors"],
    "convert-release": lambda disk, art, rel: ["convert", str(rel), "--out", f"{disk}/safe"],
}


@pytest.mark.parametrize("command", list(CASES))
def test_disk_full_fails_cleanly(command, small_disk, artifacts_fp32, tmp_path):
    args = CASES[command](small_disk, artifacts_fp32, release_copy(tmp_path))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "no space left on device while writing; nothing was kept" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert list(small_disk.iterdir()) == [], "a partial output was left on the full disk"
