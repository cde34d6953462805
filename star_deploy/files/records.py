"""JSON records that star-deploy writes next to its outputs (manifests, engine sidecars)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArtifactError


def read_record(path: Path, fmt: str, version: int, what: str, fix: str) -> dict[str, Any]:
    """The record at ``path``, parsed and checked to be ``fmt`` at ``version``; ``fix`` ends every error."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {fix}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); {fix}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be read ({exc.strerror or exc}); fix its permissions") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ArtifactError(f"{path}: not a star-deploy {what}; {fix}")
    found = data.get("format_version")
    if isinstance(found, int) and not isinstance(found, bool) and found > version:
        raise ArtifactError(
            f"{path}: {what} version {found} is newer than this star-deploy reads ({version}); upgrade star-deploy"
        )
    if found != version:
        raise ArtifactError(f"{path}: {what} version {found} is older than this star-deploy reads ({version}); {fix}")
    return data
