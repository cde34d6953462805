"""``batch.json``: what a job in an output folder was started with, so that a rerun continues it or is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files.records import read_record

RECORD = "batch.json"
FORMAT = "star-deploy-batch"
FORMAT_VERSION = 1
OPTION_NAMES = {"model": "the model (--weights, --artifacts, --clip, --vae, --star)", "precision": "its precision"}
"""Settings whose name is not an option's ``--name``."""


def record_dict(settings: dict[str, Any], prompts_file: str, prompts_sha256: str) -> dict[str, Any]:
    """The record of a job: its settings and the copy of its prompt file."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prompts": {"file": prompts_file, "sha256": prompts_sha256},
        "settings": settings,
    }


def settings_digest(settings: dict[str, Any]) -> str:
    """A digest of the settings that shape every image (part of each image's key)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2) + "\n"


def read_job(out: Path) -> dict[str, Any]:
    """The record of the job in ``out``."""
    fix = f"it was not made by `star-deploy batch`: choose another --out, or pass --overwrite to start over in {out}"
    return read_record(out / RECORD, FORMAT, FORMAT_VERSION, "batch job record", fix)


def setting_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that differs, as ``--name: was X, now Y``; None when all agree."""
    for key in dict.fromkeys([*old, *new]):
        if old.get(key) != new.get(key):
            name = OPTION_NAMES.get(key, f"--{key.replace('_', '-')}")
            return f"{name}: was {json.dumps(old.get(key))}, now {json.dumps(new.get(key))}"
    return None


def prompt_difference(old: list[str], new: list[str]) -> str:
    """The first line that differs between the job's copy of the prompt file and the file given now."""
    for number, (before, after) in enumerate(zip(old, new), start=1):
        if before != after:
            return f"line {number} was {before[:80]!r}, now {after[:80]!r}"
    if len(old) != len(new):
        return f"it had {len(old)} lines, now {len(new)}"
    return "its line endings or encoding changed"


def check_same_job(out: Path, record: dict[str, Any], new: dict[str, Any], prompts: Path) -> None:
    """Refuse a rerun whose settings or prompt file differ from the job's in ``out``, naming the first difference."""
    fix = "pass --overwrite to start over, or choose another --out for the new job"
    difference = setting_difference(record.get("settings", {}), new["settings"])
    if difference is not None:
        raise ConfigError(f"--out {out} holds a job with other settings ({difference}); {fix}")
    if record.get("prompts", {}).get("sha256") != new["prompts"]["sha256"]:
        copy = out / record.get("prompts", {}).get("file", "")
        old = copy.read_text(encoding="utf-8").splitlines() if copy.is_file() else []
        now = prompts.read_text(encoding="utf-8", errors="replace").splitlines()
        raise ConfigError(
            f"PROMPTS {prompts} differs from the file the job in {out} started with ({prompt_difference(old, now)}); "
            f"{fix}"
        )
