"""Which checkpoints an artefact folder was exported from, and whether the given ones are those."""

from __future__ import annotations

from ..errors import ArtifactError, WeightsError
from ..release.finder import ReleasePaths
from .manifest import Manifest, sha256_tree


def check_sources(manifest: Manifest, paths: ReleasePaths, fix: str) -> None:
    """Refuse an artefact folder exported from other checkpoints than ``paths``; ``fix`` ends the message."""
    for key, path in (("star", paths.star), ("vae", paths.vae), ("clip", paths.clip)):
        record = manifest.sources.get(key)
        if record is None:
            continue
        if not path.exists():
            raise WeightsError(f"{path}: no such file or folder; check the path")
        if sha256_tree(path) != record["sha256"]:
            raise ArtifactError(f"{manifest.root} was exported from {record['name']}, not from {path}; {fix}")
