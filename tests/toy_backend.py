"""A toy backend, written the way a new runtime joins: this module plus one ``BackendSpec``.

It runs an export on ONNX Runtime's CPU provider with one thread, on the CPU only. The tests add
``SPEC`` to the registry and nothing else; the load plan, the API, ``run``, serve's options, ``bench``
and the contract suite then take it.
"""

from __future__ import annotations

from typing import Any

from star_deploy.artifacts.manifest import Manifest
from star_deploy.backends.ort_backend import OrtBackend
from star_deploy.backends.registry import ARTIFACTS, BackendSpec, BenchVariant
from star_deploy.errors import ConfigError


class ToyBackend(OrtBackend):
    """ONNX Runtime, CPU provider, one intra-op thread."""

    name = "toy"

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest, "cpu", threads=1, provider="cpu")


def check(device: str, options: Any) -> None:
    if device != "cpu":
        raise ConfigError(f"--device {device}: the toy backend runs on the CPU only; use --device cpu")


def create(manifest: Manifest, device: str, options: Any) -> ToyBackend:
    return ToyBackend(manifest)


SPEC = BackendSpec(
    name="toy",
    summary="ONNX Runtime on one CPU thread",
    runs=ARTIFACTS,
    default_device="cpu",
    check=check,
    options=(),
    module="onnxruntime",
    extra=None,
    create=create,
    bench=(BenchVariant("toy"),),
)
