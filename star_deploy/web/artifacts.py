"""A site's graphs as an artefact folder, so that ONNX Runtime in Python runs exactly what the page runs.

``star-deploy web --bench`` and the tests compare the browser with native ONNX Runtime on these:
the graphs are the site's files, decompressed, with their weight parts beside them.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from ..artifacts.manifest import MANIFEST, TOKENIZER_DIR, dumps, manifest_dict, sealed
from ..core.config import SamplingConfig, StarConfig
from ..core.graphs import OPTIONAL_GRAPHS, graph_specs
from ..core.tokenizer import TOKENIZER_JSON
from ..errors import ArtifactError
from ..files.atomic import atomic_dir, write_text
from ..version import __version__
from .parts import GZ
from .site import SITE_MANIFEST


def read_site(site: Path) -> dict:
    """site.json of the site folder ``site``."""
    path = site / SITE_MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a site's manifest ({exc}); write the site with `star-deploy web`") from None


def unpack(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, decompressing a .gz file."""
    if source.suffix != GZ:
        shutil.copy2(source, target)
        return
    with gzip.open(source, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def artifacts_from_site(site: Path, out: Path, overwrite: bool = False) -> Path:
    """Write the graphs and tokenizer of ``site`` as an artefact folder ``out``."""
    data = read_site(site)
    model = data["model"]
    config = StarConfig.from_dict(model["config"])
    every = graph_specs(config, model["precision"])
    specs = {name: spec for name, spec in every.items() if name in data["graphs"] or name not in OPTIONAL_GRAPHS}
    with atomic_dir(out, overwrite) as tmp:
        for name, spec in specs.items():
            entry = data["graphs"][name]
            unpack(site / entry["file"], tmp / spec.file)
            for part in entry["data"]:
                unpack(site / part["file"], tmp / part["path"])
        (tmp / TOKENIZER_DIR).mkdir()
        shutil.copy2(site / data["tokenizer"], tmp / TOKENIZER_DIR / TOKENIZER_JSON)
        s = data["sampling"]
        sampling = SamplingConfig(cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"])
        tools = {"star-deploy": __version__, "site": str(site)}
        manifest = manifest_dict(config, model["precision"], specs, tmp, {}, tools, model["opset"], sampling)
        write_text(tmp / MANIFEST, dumps(sealed(manifest, tmp)))
    return out
