"""The model a batch job runs: how every process loads it (``StarPipeline.from_pretrained``) and what names it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.devices import check_device_name
from ..backends.ort_sessions import check_provider
from ..backends.registry import backend_spec
from ..demo import DEMO_GRAPHS
from ..errors import ConfigError
from ..release.hub import option_folder
from ..runtime.plan import DEFAULT_DTYPE, LoadOptions, refuse_other_backends_options

if TYPE_CHECKING:
    from ..api import StarPipeline

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ModelSpec:
    """``from_pretrained``'s arguments as plain values (they travel to Ray workers); paths as every node sees them."""

    path: str | None
    backend: str
    device: str
    dtype: str | None = None
    resolution: int | None = None
    threads: int = 0
    provider: str | None = None
    clip: str | None = None
    vae: str | None = None
    star: str | None = None

    def load(self, max_batch_size: int) -> StarPipeline:
        """The pipeline, quiet (no progress bar over scales)."""
        from ..api import StarPipeline

        options = {k: v for k, v in asdict(self).items() if k != "path" and v is not None}
        pipe = StarPipeline.from_pretrained(self.path, max_batch_size=max_batch_size, **options)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def artifacts(self) -> Path | None:
        return Path(self.path) if backend_spec(self.backend).needs_artifacts and self.path is not None else None

    def precision(self) -> str:
        """fp32, fp16, ... of an artefact folder (its manifest), else the torch compute dtype."""
        if self.artifacts is None:
            return self.dtype or DEFAULT_DTYPE
        from ..artifacts.manifest import read_manifest

        return str(read_manifest(self.artifacts)["precision"])

    def identity(self) -> dict[str, Any]:
        """What names the model in the job record: the folder and, for exports, the manifest's sha256."""
        found: dict[str, Any] = {"path": self.path, "clip": self.clip, "vae": self.vae, "star": self.star}
        if self.artifacts is not None:
            found["manifest_sha256"] = hashlib.sha256((self.artifacts / MANIFEST).read_bytes()).hexdigest()
        return found

    def check(self) -> None:
        """What can be checked without loading: backend, device name, provider, an export's manifest and size."""
        check_device_name(self.device)
        check_provider(self.provider, self.backend)
        given = LoadOptions(backend=self.backend, dtype=self.dtype, provider=self.provider)
        refuse_other_backends_options(backend_spec(self.backend), given)
        if self.artifacts is None:
            return
        from ..artifacts.manifest import read_manifest

        config = read_manifest(self.artifacts)["config"]
        if self.resolution is not None and self.resolution != config.get("resolution"):
            raise ConfigError(
                f"--resolution {self.resolution}: the artefacts in {self.artifacts} are for {config.get('resolution')} "
                "px; drop --resolution or export again"
            )


def model_spec(
    backend: str | None,
    artifacts: Path | None,
    weights: Path | None,
    parts: dict[str, Path | None],
    device: str | None,
    **options: Any,
) -> ModelSpec:
    """The model as ``run`` chooses it: torch with weight options, else ONNX Runtime on --artifacts or the demo."""
    given = weights is not None or any(p is not None for p in parts.values())
    backend = backend if backend is not None else ("torch" if given else "onnxruntime")
    if backend_spec(backend).needs_artifacts:
        folder = option_folder(artifacts) or (DEMO_GRAPHS if not given else None)
        if folder is None:
            raise ConfigError(f"--backend {backend} runs exported graphs: pass --artifacts DIR (`star-deploy export`)")
        path = folder.resolve()
    else:
        if artifacts is not None:
            raise ConfigError("--artifacts runs on onnxruntime or tensorrt; drop --backend torch or --artifacts")
        path = None if weights is None else option_folder(weights).resolve()
    named = {k: None if v is None else str(Path(v).resolve()) for k, v in parts.items()}
    device = device or backend_spec(backend).default_device
    return ModelSpec(None if path is None else str(path), backend, device, **named, **options)
