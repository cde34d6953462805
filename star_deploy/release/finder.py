"""Find the parts of a STAR weight release on disk (no torch): CLIP folder, VQVAE and STAR checkpoints.

Loading them is ``star_deploy.release.weights``; this module only names and checks paths, so the
ONNX Runtime path can match an export to its sources without PyTorch.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.config import SCHEDULES
from ..demo import DEMO_RESOLUTION, DEMO_WEIGHTS
from ..errors import ConfigError, WeightsError

log = logging.getLogger("star_deploy")

STAR_PATTERNS = ("star*.pth", "star*.safetensors")
VAE_PATTERNS = ("vae*.pth", "vae*.safetensors")
RELEASE_LAYOUT = "a release folder holds CLIP/, one vae* and one star* checkpoint"
"""The start of the advice of commands without --clip, --vae and --star (see ``resolve_release``)."""
TOKENIZER_FILES = ("vocab.json", "merges.txt")
"""What CLIPTokenizer reads; without them transformers may silently fetch another tokenizer."""


@dataclass(frozen=True)
class ReleasePaths:
    """The three parts of a STAR weight release."""

    clip: Path
    vae: Path
    star: Path
    folder: Path | None = None
    """The release folder the parts were found in (``--weights``, or the demo's)."""

    @property
    def inputs(self) -> list[Path]:
        """Every file and folder a load reads: no output may be, contain or lie inside one."""
        return [p for p in (self.folder, self.clip, self.vae, self.star) if p is not None]

    @property
    def tokenizer(self) -> Path:
        return self.clip / "tokenizer"

    @property
    def text_encoder(self) -> Path:
        return self.clip / "text_encoder"


def _single_match(folder: Path, patterns: tuple[str, ...], flag: str, advice: str | None) -> Path:
    found = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    if not found:
        raise WeightsError(
            f"{folder}: no file matching {' or '.join(patterns)}; {advice or f'pass it with {flag} FILE'}"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise WeightsError(f"{folder}: several candidates ({names}); {advice or f'choose one with {flag} FILE'}")
    return found[0]


def resolve_release(
    weights: Path | None = None,
    clip: Path | None = None,
    vae: Path | None = None,
    star: Path | None = None,
    advice: str | None = None,
) -> ReleasePaths:
    """Explicit paths win; the rest are found in ``weights`` by the release's file names.

    ``advice``: what to suggest when a part cannot be found, for commands without --clip, --vae and --star.
    """
    if weights is not None:
        if not weights.is_dir():
            why = "a file" if weights.exists() else "no such folder"
            raise WeightsError(f"{weights}: not a directory ({why}); --weights takes the folder of the STAR release")
        clip = clip or weights / "CLIP"
        vae = vae or _single_match(weights, VAE_PATTERNS, "--vae", advice)
        star = star or _single_match(weights, STAR_PATTERNS, "--star", advice)
    missing = [flag for flag, value in (("--clip", clip), ("--vae", vae), ("--star", star)) if value is None]
    if missing:
        raise WeightsError(f"missing {', '.join(missing)}: give them, or --weights DIR with the whole release")
    paths = ReleasePaths(Path(clip), Path(vae), Path(star), weights)
    for sub in (paths.tokenizer, paths.text_encoder):
        if not sub.is_dir():
            clip_advice = advice or "--clip takes the release's CLIP folder (tokenizer/ and text_encoder/)"
            raise WeightsError(f"{sub}: not found; {clip_advice}")
    missing = [name for name in TOKENIZER_FILES if not (paths.tokenizer / name).is_file()]
    if missing:
        raise WeightsError(f"{paths.tokenizer}: no {' or '.join(missing)}; download the release's CLIP/ folder again")
    for f in (paths.vae, paths.star):
        check_readable(f)
    return paths


def check_readable(path: Path) -> None:
    """Refuse a path that is a folder, missing, or unreadable."""
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, expected a checkpoint file (.pth or .safetensors)")
    if not path.is_file():
        if path.exists():
            raise WeightsError(f"{path}: not a regular file (a pipe or device?); pass the checkpoint file itself")
        raise WeightsError(f"{path}: no such file; check the path")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise WeightsError(f"{path}: cannot be read ({exc.strerror}); fix its permissions") from None


RELEASE_NAME = re.compile(r"star_rope_d(\d+)_(\d+)")


def resolution_from_name(path: Path) -> int | None:
    """The resolution an official file name states (star_rope_d30_512... -> 512), if any."""
    match = RELEASE_NAME.match(path.name)
    return int(match.group(2)) if match and int(match.group(2)) in SCHEDULES else None


def check_resolution_name(path: Path, resolution: int) -> None:
    """Refuse a resolution that contradicts the official checkpoint's file name."""
    named = resolution_from_name(path)
    if named is not None and named != resolution:
        raise ConfigError(
            f"{path.name}: this checkpoint was trained for {named} px but --resolution is {resolution}; "
            f"pass --resolution {named}"
        )


def release_paths(weights: Path | None, clip: Path | None, vae: Path | None, star: Path | None) -> ReleasePaths:
    """The user's release, or the built-in demo model when no weight option is given."""
    if weights is None and clip is None and vae is None and star is None:
        weights = DEMO_WEIGHTS
    return resolve_release(weights, clip, vae, star)


def choose_resolution(paths: ReleasePaths, resolution: int | None) -> int:
    """The user's --resolution, else the demo's, else the one an official file name states."""
    if resolution is not None:
        return resolution
    if paths.star.parent == DEMO_WEIGHTS:
        return DEMO_RESOLUTION
    named = resolution_from_name(paths.star)
    if named is None:
        fitting = resolutions_of_weights(paths.star)
        if len(fitting) == 1:
            log.info("resolution %d (the only one with the scales of %s)", fitting[0], paths.star.name)
            return fitting[0]
        choices = ", ".join(map(str, fitting[:-1])) + f" or {fitting[-1]}"
        raise ConfigError(
            f"{paths.star.name}: pass --resolution ({choices}): the file name does not state it and the "
            "weights' scale count fits each of these"
        )
    log.info("resolution %d (from the file name %s)", named, paths.star.name)
    return named


def resolutions_of_weights(star: Path) -> list[int]:
    """The resolutions whose schedule has as many scales as ``star`` has level embeddings (read from a
    safetensors header); every known one where that cannot be read without loading the file."""
    from .weight_shapes import safetensors_shapes

    known = list(SCHEDULES)
    if star.suffix.lower() != ".safetensors":
        return known
    shape = safetensors_shapes(star)[0].get("lvl_embed.weight")
    fitting = [r for r in known if shape is not None and len(SCHEDULES[r]) == shape.shape[0]]
    return fitting or known


def star_for_resolution(folder: Path, resolution: int | None) -> Path | None:
    """In a folder with several official STAR checkpoints, the one trained for ``resolution``."""
    found = sorted({p for pattern in STAR_PATTERNS for p in folder.glob(pattern)})
    if len(found) < 2 or resolution is None:
        return None
    matching = [p for p in found if resolution_from_name(p) == resolution]
    return matching[0] if len(matching) == 1 else None
