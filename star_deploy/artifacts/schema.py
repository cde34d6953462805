"""The shape of manifest.json: every key, its type, nothing more and nothing less."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from ..core.config import SCHEDULES, SamplingConfig, StarConfig
from ..core.graphs import GRAPH_NAMES, OPTIONAL_GRAPHS, PRECISIONS
from ..errors import ArtifactError, ConfigError

REQUIRED = {
    "format",
    "format_version",
    "precision",
    "opset",
    "config",
    "graphs",
    "sources",
    "tools",
    "files",
    "manifest_sha256",
}
OPTIONAL = {"quantization", "sampling"}
SAMPLING_KEYS = {"cfg", "top_k", "top_p"}
GRAPH_KEYS = {"file", "inputs", "outputs", "sha256"}
SHA256 = re.compile(r"[0-9a-f]{64}")


def _fail(path: Any, problem: str) -> ArtifactError:
    return ArtifactError(f"{path}: {problem}; the manifest is damaged or hand-edited, export again")


def _is_sha(value: Any) -> bool:
    return isinstance(value, str) and SHA256.fullmatch(value) is not None


def check_keys(data: dict[str, Any], path: Any) -> None:
    """Exactly the known top-level keys."""
    missing, extra = sorted(REQUIRED - set(data)), sorted(set(data) - REQUIRED - OPTIONAL)
    if missing:
        raise _fail(path, f"missing key(s) {', '.join(missing)}")
    if extra:
        raise _fail(path, f"unknown key(s) {', '.join(extra)}")


def check_graphs(graphs: Any, path: Any) -> None:
    """One entry per graph (the optional ones where exported), each with its file, I/O and sha256."""
    if not isinstance(graphs, dict):
        raise _fail(path, f"'graphs' must be an object keyed by graph name, not a {type(graphs).__name__}")
    if not set(GRAPH_NAMES) <= set(graphs) <= set(GRAPH_NAMES + OPTIONAL_GRAPHS):
        raise _fail(path, f"'graphs' must name {', '.join(GRAPH_NAMES)}, and may name {', '.join(OPTIONAL_GRAPHS)}")
    for name, entry in graphs.items():
        if not isinstance(entry, dict) or set(entry) != GRAPH_KEYS:
            raise _fail(path, f"graph {name} must have exactly the keys {', '.join(sorted(GRAPH_KEYS))}")
        if not _is_sha(entry["sha256"]):
            raise _fail(path, f"graph {name} has no valid sha256")


def check_files(files: Any, path: Any) -> None:
    """Relative paths inside the folder, each with a sha256."""
    if not isinstance(files, dict) or not files:
        raise _fail(path, "'files' must be a non-empty object of relative path -> sha256")
    for name, digest in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or name in ("", "."):
            raise _fail(path, f"'files' lists {name!r}, which is not a path inside the folder")
        if not _is_sha(digest):
            raise _fail(path, f"'files' has no valid sha256 for {name}")


def check_scalars(data: dict[str, Any], path: Any) -> None:
    """precision, opset, sources, tools and the self digest."""
    if data["precision"] not in PRECISIONS:
        raise _fail(path, f"unknown precision {data['precision']!r} (known: {', '.join(PRECISIONS)})")
    if not isinstance(data["opset"], int) or isinstance(data["opset"], bool):
        raise _fail(path, "'opset' must be an integer")
    if not isinstance(data["sources"], dict) or not all(
        isinstance(r, dict) and _is_sha(r.get("sha256")) for r in data["sources"].values()
    ):
        raise _fail(path, "'sources' must map each checkpoint to a record with its sha256")
    if not isinstance(data["tools"], dict):
        raise _fail(path, "'tools' must be an object")
    if not _is_sha(data["manifest_sha256"]):
        raise _fail(path, "'manifest_sha256' is not a sha256")


def parse_config(config: Any, path: Any) -> StarConfig:
    """The model config, or a message that says the manifest (not the user) is at fault."""
    try:
        parsed = StarConfig.from_dict(config)
        if parsed.patch_nums != SCHEDULES.get(parsed.resolution):
            raise ConfigError(
                f"resolution {parsed.resolution} does not use the scale schedule {list(parsed.patch_nums)}"
            )
        return parsed
    except ConfigError as exc:
        raise _fail(path, f"inconsistent model config ({str(exc).split(';')[0]})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _fail(path, f"invalid model config ({type(exc).__name__}: {exc})") from None


def _is_number(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def parse_sampling(sampling: Any, path: Any) -> SamplingConfig:
    """The sampling defaults recorded at export (the built-in ones for a manifest without them)."""
    if sampling is None:
        return SamplingConfig()
    if not isinstance(sampling, dict) or set(sampling) != SAMPLING_KEYS:
        raise _fail(path, f"'sampling' must have exactly the keys {', '.join(sorted(SAMPLING_KEYS))}")
    cfg, top_k, top_p = sampling["cfg"], sampling["top_k"], sampling["top_p"]
    if not (_is_number(cfg, (int, float)) and _is_number(top_k, int) and _is_number(top_p, (int, float))):
        raise _fail(path, "'sampling' needs a number cfg, an integer top_k and a number top_p")
    try:
        return SamplingConfig(cfg=float(cfg), top_k=top_k, top_p=float(top_p))
    except ConfigError as exc:
        raise _fail(path, f"invalid sampling defaults ({exc})") from None


def validate(data: dict[str, Any], path: Any) -> None:
    """Refuse a manifest whose structure is not exactly what `export` writes."""
    check_keys(data, path)
    check_scalars(data, path)
    check_graphs(data["graphs"], path)
    check_files(data["files"], path)
    parse_sampling(data.get("sampling"), path)
