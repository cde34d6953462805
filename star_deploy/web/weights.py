"""How a site stores its graphs' weights: as exported, as float16, or as 8- or 4-bit blocks.

``fp32``  the exported graphs, unchanged.
``fp16``  every float32 weight of at least 1024 values that fits float16 is stored as float16 with a
          ``Cast`` back (fp16_storage.py): half the download, float32 arithmetic.
``int8``  the weight MatMuls of the text encoder, the text context (cross-attention K/V projections) and
``int4``  the transformer step become ONNX Runtime's ``MatMulNBits``, symmetric, in blocks of 32 along K
          with one scale per block; the text encoder's token and position embeddings and the VQVAE
          decoder's convolution kernels are stored as int8 with one scale per row or output channel
          (int8_storage.py); the transformer's logits head, embeddings and norms and the codebook keep
          their float values (stored as in ``fp16``).

``MatMulNBits`` runs in onnxruntime-web on WebAssembly (the CPU kernels) and on WebGPU (4 and 8 bits).
Its ``accuracy_level`` is 1 (float32 arithmetic): the WebAssembly build has no blocked-quantized kernel at
any level (it dequantizes the whole weight to float32 on every call, then multiplies; level 4 measured no
faster there, docs/web.md), and on WebGPU level 4 selects a kernel that also rounds the activations to int8.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendUnavailableError, ConfigError
from .fp16_storage import store_fp16
from .int8_storage import store_int8

WEIGHTS = ("fp16", "fp32", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 32
"""Values per scale. At 4 bits it costs 0.5 bit per weight (float16-stored scales); on the golden tiny model,
teacher-forced, blocks of 32, 64 and 128 kept 91.2, 91.5 and 90.3 % of the fp32 tokens (docs/web.md): within
the noise of six cases, so the smallest block, with the tightest rounding error, at 26 MB more than 128 on d16."""
ACCURACY_LEVEL = 1
QUANTIZED_GRAPHS = ("text_encoder", "text_context", "transformer_step")
INT8_STORED_GRAPHS = ("text_encoder", "vq_decoder")
"""Where the float weights MatMulNBits leaves are large: CLIP's embeddings (51 M values on 256-d16) and the
decoder's kernels (65 M); int8 takes about 115 MB off a 256-d16 site. On the golden model (teacher-forced) the
lowest PSNR of the decoded image falls from 68.3 dB (fp16) to 45.7 dB, int4's token agreement from 91.15 to 91.08 %."""
WEB_EXTRA = "pip install 'star-deploy[web]'"


@dataclass(frozen=True)
class Quantization:
    """What ``int8``/``int4`` did, as site.json records it."""

    bits: int
    block_size: int = BLOCK_SIZE
    accuracy_level: int = ACCURACY_LEVEL
    graphs: tuple[str, ...] = QUANTIZED_GRAPHS
    int8_stored_graphs: tuple[str, ...] = INT8_STORED_GRAPHS

    def to_dict(self) -> dict:
        return {
            "method": "onnxruntime MatMulNBits, weight-only, symmetric; the logits head stays float",
            "bits": self.bits,
            "block_size": self.block_size,
            "accuracy_level": self.accuracy_level,
            "graphs": list(self.graphs),
            "int8_tables_and_kernels": {
                "method": "DequantizeLinear, symmetric int8, one scale per table row or output channel",
                "graphs": list(self.int8_stored_graphs),
            },
        }


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")


def quantization_of(weights: str, precision: str) -> Quantization | None:
    """The quantization ``weights`` asks for on an export of ``precision`` (None for fp16/fp32), or a clear error."""
    check_weights(weights)
    if weights not in BITS:
        return None
    if precision != "fp32":
        raise ConfigError(
            f"--weights {weights} quantizes an fp32 export and this one is {precision}: pass a folder from "
            "`star-deploy export --precision fp32`, or --weights fp16"
        )
    return Quantization(BITS[weights])


def site_precision(precision: str, weights: str) -> str:
    """The precision of the graphs a site ships: the export's, or int8/int4 (float32 inputs and outputs)."""
    return weights if weights in BITS else precision


def import_onnx():
    """The onnx package, or an error naming the extra that installs it."""
    try:
        import onnx
    except ImportError:
        raise BackendUnavailableError(
            f"--weights fp16, int8 and int4 rewrite the graphs with the onnx package: {WEB_EXTRA} "
            "(or pass --weights fp32)"
        ) from None
    return onnx


def stored(model, name: str, weights: str, quantization: Quantization | None):
    """The ModelProto of graph ``name`` with its weights stored as ``weights``."""
    if quantization is not None and name in quantization.graphs:
        from ..export.quantize import quantized

        model = quantized(model, quantization.bits, quantization.block_size, quantization.accuracy_level).model
    if quantization is not None and name in quantization.int8_stored_graphs:
        store_int8(model)
    if weights != "fp32":
        store_fp16(model)
    return model
