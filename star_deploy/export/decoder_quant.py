"""Int8 VQ decoder for CPUs: static QDQ quantization of its convolutions, calibrated on generated latents.

On a CPU the decoder is the cost no fast-mode rung touches. ``quantize_decoder`` rewrites the
``vq_decoder`` graph of an fp32 artefact directory with ONNX Runtime's ``quantize_static``:
every Conv gets QuantizeLinear/DequantizeLinear pairs (activations uint8 per tensor, weights
int8 per output channel, MinMax ranges from calibration latents), which ONNX Runtime fuses into
integer convolutions run on the CPU's dot-product instructions (VNNI/AMX where present; on a CPU
without VNNI, detected at run time, the weights use 7 bits so the products cannot saturate). The
graph's inputs and outputs stay float32; every other graph is copied unchanged, so the result
runs every rung as its source does. The manifest's ``quantization`` records what was done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..core.cpu_isa import cpu_flags, int8_isa
from ..errors import BackendUnavailableError
from .dynamic_quant import has_vnni
from .quantize import rewrite_artifacts

DECODER = "vq_decoder"


class LatentReader:
    """ONNX Runtime's calibration reader protocol over a list of ``f_hat`` arrays."""

    def __init__(self, latents: Sequence[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(latents)

    def get_next(self) -> dict[str, np.ndarray] | None:
        latent = next(self._items, None)
        return None if latent is None else {"f_hat": latent}


def quantize_decoder_graph(src: Path, dst: Path, latents: Sequence[np.ndarray], reduce_range: bool) -> None:
    """Write ``src``'s decoder with int8 QDQ convolutions, ranges calibrated on ``latents``, to ``dst``.

    ``reduce_range``: 7-bit weights, for CPUs without VNNI, whose uint8 x int8 products can saturate.
    """
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        raise BackendUnavailableError("int8 decoder needs onnxruntime's quantization tools: pip install onnx") from None

    class Reader(LatentReader, CalibrationDataReader):
        pass

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantize_static(
        src,
        dst,
        Reader(latents),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )


def quantize_decoder(src: Path, out: Path, latents: Sequence[np.ndarray], overwrite: bool = False) -> Path:
    """Copy the fp32 artefact directory ``src`` into ``out`` with an int8 QDQ decoder calibrated on ``latents``
    (see ``evaluation/calibration.py``)."""
    flags = cpu_flags()
    reduce_range = not has_vnni(flags)
    info = {
        "method": "onnxruntime quantize_static, QDQ, Conv only, MinMax calibration",
        "activations": "uint8 per tensor",
        "weights": "int8 per output channel",
        "calibration_images": len(latents),
        "reduce_range": reduce_range,
        "quantized_on": int8_isa(flags),
        "graphs": [DECODER],
        "source_precision": "fp32",
    }
    rewrites = {DECODER: partial(quantize_decoder_graph, latents=latents, reduce_range=reduce_range)}
    return rewrite_artifacts(src, out, "fp32", rewrites, info, overwrite)
