"""The GPU memory a site needs in the browser (WebGPU), computed from a model size and a weights mode.

What onnxruntime-web holds on the GPU while one image generates: every graph's weights as they are after loading
(float16 storage is cast back to the export's float type; ``MatMulNBits`` keeps its packed blocks and scales; int8
or int4 tables and kernels stay packed and are dequantized while their graph runs), the KV cache of the whole
schedule (the page keeps it until the image is decoded), and the larger of two peaks: the step's self-attention at
the last scale (float32 scores and their softmax, whole or one query piece, and the layer's keys and values the
MatMuls read) and the VQVAE decoder's feature maps (ONNX Runtime's measured CPU profile). A WebGPU adapter also
caps each buffer (``maxBufferSize``, ``maxStorageBufferBindingSize``): the largest single tensor is compared with
that.

The parameter counts come from the reference modules built on torch's meta device (shapes only, no memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.registry import backend_spec
from ..core.config import StarConfig
from ..core.dtypes import itemsize, tensor_bytes
from ..core.graphs import activation_dtype
from ..engines.buffers import kv_cache_bytes
from ..engines.memory import attention_scores_bytes
from ..errors import BackendUnavailableError
from ..runtime.memory import decode_bytes
from .table_storage import MIN_ELEMENTS, TableLayout
from .weights import BITS, BLOCK_SIZES, KERNELS, TABLES, check_weights

BUFFER_LIMITS = (2 << 30, 4 << 30)
"""Largest buffer laptop adapters commonly allow: 2 GiB and 4 GiB (Chromium's SwiftShader: 1 GiB)."""
LAPTOP_GPU = 16 * 10**9
UNUSED = ("class_emb",)
"""Transformer parameters of the class-conditional model that no exported graph reads."""
FLOAT_ONLY = ("head_logits", "word_embed")
"""Linear layers that stay float: the logits head, and the scale-update graph's embedding (not quantized)."""
TEXT_CONTEXT = ("encoder_proj", "mat_kv")
"""Transformer layers the text_context graph runs (the pooled text's projection, each block's cross K/V)."""


@dataclass(frozen=True)
class WeightCounts:
    """Values per storage class of ``--weights int8/int4``, per graph: ``MatMulNBits`` weights, tables and kernels,
    and everything else (kept float)."""

    matmul: dict[str, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    other: int = 0

    @property
    def total(self) -> int:
        return sum(self.matmul.values()) + sum(self.tables.values()) + self.other


def weight_counts(config: StarConfig) -> WeightCounts:
    """The exported graphs' weights of ``config``, by how the quantized sites store them."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            "--gpu-memory counts a model size's weights with torch (on its meta device): pip install torch"
        ) from None
    from ..model.text import random_text_encoder
    from ..model.transformer import StarTransformer
    from ..model.vqvae import StarVQVAE

    matmul = {"text_encoder": 0, "text_context": 0, "transformer_step": 0}
    tables, other = {"text_encoder": 0, "vq_decoder": 0}, 0
    with torch.device("meta"):
        parts = {
            "text_encoder": random_text_encoder(config.text),
            "transformer": StarTransformer(config.transformer),
            "vq_decoder": StarVQVAE(config.vae),
        }
    for part, root in parts.items():
        for name, module in root.named_modules():
            top = name.split(".")[0]
            for pname, p in module.named_parameters(recurse=False):
                n = p.numel()
                if top in UNUSED:
                    continue
                if isinstance(module, torch.nn.Linear) and pname == "weight" and top not in FLOAT_ONLY:
                    matmul[_matmul_graph(part, name)] += n
                elif part in tables and _int8_stored(part, top, module, pname, n):
                    tables[part] += n
                else:
                    other += n
    return WeightCounts(matmul, tables, other)


def _matmul_graph(part: str, name: str) -> str:
    """The quantized graph that holds the Linear layer ``name`` of ``part``."""
    if part != "transformer":
        return part
    return "text_context" if name.split(".")[0] in TEXT_CONTEXT or name.endswith(TEXT_CONTEXT) else "transformer_step"


def _int8_stored(part: str, top: str, module, pname: str, n: int) -> bool:
    """A table (text encoder's Embedding) or decoder Conv kernel large enough for int8 storage."""
    import torch

    if pname != "weight" or n < MIN_ELEMENTS:
        return False
    if part == "text_encoder":
        return isinstance(module, torch.nn.Embedding)
    return top == "decoder" and isinstance(module, torch.nn.Conv2d)


@dataclass(frozen=True)
class GpuMemory:
    """Bytes one generation holds on the GPU, by part, and the largest single tensor."""

    weights: int
    dequantized: int
    kv_cache: int
    attention: int
    decoder: int
    largest_buffer: int
    largest_buffer_is: str

    @property
    def activation(self) -> int:
        """The larger peak: the step's attention or the decoder (with its kernels dequantized)."""
        return max(self.attention, self.decoder + self.dequantized)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activation

    def buffer_fits(self, limit: int) -> bool:
        """Whether the largest single tensor fits an adapter's per-buffer ``limit``."""
        return self.largest_buffer <= limit


def weight_bytes(counts: WeightCounts, weights: str, float_type: str) -> tuple[int, int]:
    """Weights on the GPU after loading, and the largest graph's tables dequantized to ``float_type``."""
    f = itemsize(float_type)
    if weights not in BITS:
        return counts.total * f, 0
    blocks = BLOCK_SIZES[weights]
    packed = sum(n * BITS[weights] // 8 + n // blocks[graph] * f for graph, n in counts.matmul.items())
    layouts = {"text_encoder": TABLES[weights], "vq_decoder": KERNELS}
    tables = sum(_table_bytes(n, layouts[graph], f) for graph, n in counts.tables.items())
    return packed + tables + counts.other * f, max(counts.tables.values()) * f


def _table_bytes(values: int, layout: TableLayout, scale_size: int) -> int:
    """Bytes of ``values`` stored in ``layout``: packed values and, for blocks, one scale per block (per row: few)."""
    scales = values // layout.block_size * scale_size if layout.block_size else 0
    return values * layout.bits // 8 + scales


def gpu_memory(
    config: StarConfig, weights: str, precision: str, query_chunk: int | None, counts: WeightCounts | None = None
) -> GpuMemory:
    """The browser's GPU memory for one image of ``config`` with ``weights`` from an export of ``precision``
    (fp32 or fp16: the float type of activations, K/V and float weights), the last scale's self-attention whole
    (``query_chunk`` None) or in pieces of that many queries."""
    check_weights(weights)
    float_type = activation_dtype(precision)
    counts = counts or weight_counts(config)
    stored, dequantized = weight_bytes(counts, weights, float_type)
    t = config.transformer
    scores = attention_scores_bytes(config, 1, query_chunk)
    layer_kv = tensor_bytes((2, t.heads, config.total_tokens, t.head_dim), float_type)
    side = config.image_size
    candidates = {
        "attention scores": scores,
        "decoder feature map": tensor_bytes((1, config.vae.ch * config.vae.ch_mult[0], side, side), float_type),
        "text encoder token table": tensor_bytes((config.text.vocab_size, config.text.width), float_type),
        "one layer's keys": layer_kv,
    }
    largest = max(candidates, key=candidates.get)
    return GpuMemory(
        weights=stored,
        dequantized=dequantized,
        kv_cache=kv_cache_bytes(config, 1, precision),
        attention=2 * scores + 2 * layer_kv,
        decoder=decode_bytes(config, 1, float_type, backend_spec("onnxruntime").memory),
        largest_buffer=candidates[largest],
        largest_buffer_is=largest,
    )


def gpu_memory_table(config: StarConfig, weights: str, query_chunk: int) -> list[str]:
    """One line per export precision and attention form: the parts, the total and the buffer limits it meets."""
    counts = weight_counts(config)
    gb = 1e9
    lines = [
        f"{'export':<7}{'attention':<22}{'weights':>9}{'KV cache':>10}{'activation':>12}{'total':>9}"
        f"  largest buffer             2 GiB  4 GiB  16 GB",
    ]
    for precision in ("fp32", "fp16"):
        for chunk in (None, query_chunk):
            m = gpu_memory(config, weights, precision, chunk, counts)
            form = f"pieces of {chunk} queries" if chunk else "whole"
            yes = ["yes" if m.buffer_fits(limit) else "no" for limit in BUFFER_LIMITS]
            lines.append(
                f"{precision:<7}{form:<22}{m.weights / gb:>8.2f}G{m.kv_cache / gb:>9.2f}G{m.activation / gb:>11.2f}G"
                f"{m.total / gb:>8.2f}G  {m.largest_buffer / gb:5.2f}G {m.largest_buffer_is:<20}{yes[0]:>5}"
                f"{yes[1]:>7}{'yes' if m.total <= LAPTOP_GPU else 'no':>7}"
            )
    return lines
