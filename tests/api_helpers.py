"""Folders the API and CLI tests load: a Hugging Face cache holding the golden release, resealed demo artefacts."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import GOLDEN

from star_deploy.artifacts.manifest import MANIFEST, dumps, sealed
from star_deploy.demo import DEMO_GRAPHS


def hub_cache(root: Path, repo: str = "taocrayon/STAR", revision: str = "0123abc") -> Path:
    """A Hugging Face cache holding the golden release as ``repo`` (models--org--name/snapshots/REV, refs/main)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    for name in ("CLIP", "star.pth", "vae.pth"):
        (snap / name).symlink_to(GOLDEN / name)
    return folder


def demo_with_defaults(root: Path, sampling: dict | None) -> Path:
    """The demo's graphs under ``root`` (linked), the manifest resealed with ``sampling`` as its defaults."""
    folder = root / "demo_defaults"
    folder.mkdir()
    for item in DEMO_GRAPHS.iterdir():
        if item.name != MANIFEST:
            (folder / item.name).symlink_to(item, target_is_directory=item.is_dir())
    data = json.loads((DEMO_GRAPHS / MANIFEST).read_text())
    if sampling is not None:
        data["sampling"] = sampling
    (folder / MANIFEST).write_text(dumps(sealed(data, folder)))
    return folder
