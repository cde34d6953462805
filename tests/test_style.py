"""The source tree passes the linter configured in pyproject.toml (ruff: lines <= 120, sorted imports, bugbear)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ["star_deploy", "tests", "benchmarks", "tools"]


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(check):
    """ruff is a test dependency: without it this fails instead of passing unchecked."""
    assert importlib.util.find_spec("ruff"), "ruff is not installed: pip install -e '.[test]'"
    done = subprocess.run([sys.executable, "-m", "ruff", *check, *TREES], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
