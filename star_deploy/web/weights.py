"""How a site stores its graphs' weights: as exported, as float16, or as 8- or 4-bit blocks.

``fp32``  the exported graphs, unchanged.
``fp16``  every float32 weight of at least 1024 values that fits float16 is stored as float16 with a
          ``Cast`` back (fp16_storage.py): half the download, float32 arithmetic.
``int8``  the weight MatMuls of the text encoder, the text context (cross-attention K/V projections) and
``int4``  the transformer step become ONNX Runtime's ``MatMulNBits``, symmetric, one scale per block along
          K (``BLOCK_SIZES``); the text encoder's token and position embeddings and the VQVAE decoder's
          convolution kernels are stored as int8, or for ``int4`` the embeddings as int4 (``TABLES``,
          ``KERNELS``, table_storage.py); the transformer's logits head, embeddings and norms and the
          codebook keep their float values (stored as in ``fp16``). From an fp16 export the graphs keep
          float16 inputs, outputs and arithmetic (``MatMulNBits`` with float16 activations).

``MatMulNBits`` runs in onnxruntime-web on WebAssembly (the CPU kernels) and on WebGPU (4 and 8 bits).
Its ``accuracy_level`` is 1 (float32 arithmetic): the WebAssembly build has no blocked-quantized kernel at
any level (it dequantizes the whole weight to float32 on every call, then multiplies; level 4 measured no
faster there, docs/web.md), and on WebGPU level 4 selects a kernel that also rounds the activations to int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.graphs import EXPORT_PRECISIONS
from ..errors import BackendUnavailableError, ConfigError
from .fp16_storage import store_fp16
from .table_storage import TableLayout, store_tables

WEIGHTS = ("fp16", "fp32", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
BLOCK_SIZES = {
    "int8": {"text_encoder": 32, "text_context": 32, "transformer_step": 32},
    "int4": {"text_encoder": 256, "text_context": 256, "transformer_step": 32},
}
"""Values per scale, per graph; a scale (float16-stored) costs 16 bits per block. The text graphs run once per image
and tolerate large blocks; the step decides every token, and with blocks of 64 there a golden tiny generation on
onnxruntime-web's WebGPU (SwiftShader) took about 8x as long as with 32: it keeps 32. Teacher-forced on the
golden tiny model (6 golden cases / 24 more prompts against the fp32 graphs' own tokens), int4 with int4 tables:
32 everywhere 90.91 / 91.81 %, 128 in the text graphs 91.23 / 92.20 %, 256 there (used) 90.66 / 91.80 %; 256 takes
about 18 MB off 256-d16 against 32 (computed; docs/web.md)."""
ACCURACY_LEVEL = 1
QUANTIZED_GRAPHS = ("text_encoder", "text_context", "transformer_step")
TABLE_GRAPHS = ("text_encoder", "vq_decoder")
"""Where the float weights MatMulNBits leaves are large: CLIP's embeddings (51 M values on 256-d16) and the
decoder's kernels (65 M)."""
TABLES = {"int8": TableLayout(8), "int4": TableLayout(4, 32)}
"""The embeddings (``Gather`` tables): int8 one scale per row; for int4 sites int4 in blocks of 32 along the row,
22 MB less on 256-d16 than int8 for 0.17 / 0.06 points of token agreement on the golden tiny model (int4, blocks
of 32; the 6 golden cases / 24 more prompts)."""
KERNELS = TableLayout(8)
"""The decoder's convolution kernels: int8, one scale per output channel (PSNR of the golden images 68.3 dB in
float16, 45.7 dB in int8). In int4 (blocks of 32 input channels) they fell to 25.4 dB, at the int4 threshold (25
dB), and per output channel to 21.1 dB: they stay int8."""
WEB_EXTRA = "pip install 'star-deploy[web]'"


@dataclass(frozen=True)
class Quantization:
    """What ``int8``/``int4`` did, as site.json records it."""

    bits: int
    block_sizes: dict[str, int] = field(default_factory=lambda: dict(BLOCK_SIZES["int8"]))
    accuracy_level: int = ACCURACY_LEVEL
    graphs: tuple[str, ...] = QUANTIZED_GRAPHS
    table_graphs: tuple[str, ...] = TABLE_GRAPHS
    tables: TableLayout = TABLES["int8"]
    kernels: TableLayout = KERNELS

    def to_dict(self) -> dict:
        return {
            "method": "onnxruntime MatMulNBits, weight-only, symmetric; the logits head stays float",
            "bits": self.bits,
            "block_sizes": self.block_sizes,
            "accuracy_level": self.accuracy_level,
            "graphs": list(self.graphs),
            "tables": self.tables.to_dict(),
            "kernels": self.kernels.to_dict(),
            "tables_and_kernels_graphs": list(self.table_graphs),
        }


def check_weights(weights: str) -> None:
    if weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: choose one of {', '.join(WEIGHTS)}")


def quantization_of(weights: str, precision: str) -> Quantization | None:
    """The quantization ``weights`` asks for on an export of ``precision`` (None for fp16/fp32), or a clear error."""
    check_weights(weights)
    if weights not in BITS:
        return None
    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(
            f"--weights {weights} quantizes an fp32 or fp16 export and this one is {precision}: pass a folder from "
            "`star-deploy export`, or --weights fp16"
        )
    return Quantization(BITS[weights], dict(BLOCK_SIZES[weights]), tables=TABLES[weights])


def site_precision(precision: str, weights: str) -> str:
    """The precision of the graphs a site ships: the export's, or int8/int4 for an fp32 export (float32 inputs
    and outputs); an fp16 export's int8/int4 site keeps ``fp16`` (float16 inputs, outputs and K/V)."""
    return weights if weights in BITS and precision == "fp32" else precision


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

        block = quantization.block_sizes[name]
        model = quantized(model, quantization.bits, block, quantization.accuracy_level).model
    if quantization is not None and name in quantization.table_graphs:
        store_tables(model, {"Gather": quantization.tables, "Conv": quantization.kernels})
    if weights != "fp32":
        store_fp16(model)
    return model
