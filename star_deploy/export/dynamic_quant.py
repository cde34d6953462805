"""Int8 with dynamic activation quantization, through ONNX Runtime's ``quantize_dynamic``.

A MatMul with a constant weight becomes DynamicQuantizeLinear + MatMulInteger: the
activations are quantized per tensor at run time, the weights once, per output channel, and
MLAS runs the product on the CPU's integer dot-product instructions (AVX2, AVX-VNNI,
AVX512-VNNI or AMX, whichever it finds at run time). The logits head always stays float32
(it decides the sampled tokens); whole blocks (``keep_blocks``, e.g. the first and the last)
and roles of every block (``keep_roles``) can stay float32 too. adaLN is not in the step
graph: its modulation is computed once per prompt by ``text_context``, in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..artifacts.loadable import read_onnx
from ..core.graphs import PRUNED_STEP
from ..errors import ArtifactError, BackendUnavailableError
from .quantize import head_matmuls

BLOCK_ROLES = ("qkv", "attn_out", "cross_q", "cross_out", "fc1", "fc2")
"""The weight MatMuls of one transformer block, in graph order."""
MIXED_FLOAT_BLOCKS = (0, -1)
MIXED_FLOAT_SCALES = (-1,)
"""The mixed-precision point (bench backend ``onnxruntime-int8-mixed``): first and last blocks float32 in
the int8 step graph, and the last scale on the fp32 step graph. Chosen by measured teacher-forced agreement
on the 256-d16 random-weight model (96.0% all int8, 96.6% with these blocks float, 97.6% with the last
scale float, 98.4% with both; docs/benchmarks.md)."""
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def weight_matmuls(model) -> list[str]:
    """Names of the MatMuls whose second input is a constant weight, in graph order."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def block_matmuls(model, depth: int) -> dict[tuple[int, str], str]:
    """(block, role) -> MatMul name for the step graph's ``depth`` blocks (the head excluded)."""
    head = set(head_matmuls(model))
    names = [n for n in weight_matmuls(model) if n not in head]
    if len(names) != depth * len(BLOCK_ROLES):
        raise ArtifactError(
            f"expected {len(BLOCK_ROLES)} weight MatMuls per block x {depth} blocks, found {len(names)}"
        )
    return {(i // len(BLOCK_ROLES), BLOCK_ROLES[i % len(BLOCK_ROLES)]): n for i, n in enumerate(names)}


def float_nodes(model, depth: int, blocks: Iterable[int] = (), roles: Iterable[str] = ()) -> list[str]:
    """The step graph's MatMuls kept float32: every role of ``blocks`` (negative counts from the end),
    ``roles`` of every block, and the head."""
    keep_blocks = {b % depth for b in blocks}
    keep_roles = set(roles)
    unknown = keep_roles - set(BLOCK_ROLES)
    if unknown:
        raise ValueError(f"unknown block roles {sorted(unknown)}; known: {', '.join(BLOCK_ROLES)}")
    chosen = [n for (b, r), n in block_matmuls(model, depth).items() if b in keep_blocks or r in keep_roles]
    return chosen + head_matmuls(model)


def has_vnni(flags: Iterable[str]) -> bool:
    return bool(VNNI_FLAGS & set(flags))


def dynamic_quantize_graph(src: Path, dst: Path, exclude: list[str], reduce_range: bool) -> None:
    """Write ``src`` with its constant-weight MatMuls (except ``exclude``) as dynamic int8 into ``dst``."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise BackendUnavailableError("quantization needs onnxruntime: pip install onnxruntime") from None
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs every node on the root logger
    try:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)


def dynamic_artifacts(
    src: Path,
    out: Path,
    keep_blocks: tuple[int, ...] = (),
    keep_roles: tuple[str, ...] = (),
    reduce_range: bool | None = None,
    quantize_text: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write an ``int8-dynamic`` copy of the fp32 artefacts ``src``: the step graph's MatMuls (and with
    ``quantize_text`` the text encoder's; measured on the golden model, quantizing the text encoder too
    costs ~0.5 points of teacher-forced agreement for ~0.2 s per prompt, so it stays float32 by default).

    ``reduce_range`` (7-bit weights) defaults to True where the CPU lacks VNNI/AMX: the AVX2
    kernel's u8 x s8 pair sums can saturate int16 at 8 bits.
    """

    from ..artifacts.manifest import load_manifest
    from ..core.cpu_isa import cpu_flags
    from .quantize import rewrite_artifacts

    manifest = load_manifest(src)
    depth = manifest.config.transformer.depth
    if reduce_range is None:
        reduce_range = not has_vnni(cpu_flags())

    def step(path: Path, dst: Path) -> None:
        exclude = float_nodes(read_onnx(path), depth, keep_blocks, keep_roles)
        dynamic_quantize_graph(path, dst, exclude, reduce_range)

    def text(path: Path, dst: Path) -> None:
        dynamic_quantize_graph(path, dst, [], reduce_range)

    rewrites = {"transformer_step": step, PRUNED_STEP: step} | ({"text_encoder": text} if quantize_text else {})
    info = {
        "method": "onnxruntime quantize_dynamic: per-channel int8 weights, per-tensor uint8 activations at run time",
        "reduce_range": reduce_range,
        "float_blocks": list(keep_blocks),
        "float_roles": list(keep_roles),
        "graphs": [g for g in rewrites if g in manifest.graphs],
        "source_precision": "fp32",
    }
    return rewrite_artifacts(src, out, "int8-dynamic", rewrites, info, overwrite)
