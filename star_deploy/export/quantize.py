"""Weight-only int8 quantization of an fp32 artefact directory with ONNX Runtime's tools.

The MatMuls with constant weights of the transformer steps and the text encoder become
``MatMulNBits`` (8-bit symmetric blocks of 32; graph inputs and outputs stay float32).
The logits head stays float32: it decides the sampled tokens and is ~2% of the FLOPs.
The other graphs are copied unchanged. The result is a separate artefact directory whose
manifest says ``precision: int8``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..artifacts.loadable import check_loadable, read_onnx
from ..artifacts.manifest import MANIFEST, TOKENIZER_DIR, dumps, graph_digest, load_manifest, sealed
from ..core.graphs import ACCURACY_LEVEL, PRUNED_STEP
from ..errors import ArtifactError, BackendUnavailableError
from ..files.atomic import atomic_dir, write_text

log = logging.getLogger(__name__)

QUANTIZED_GRAPHS = ("text_encoder", "transformer_step", PRUNED_STEP)
BLOCK_SIZE = 32
"""MatMulNBits accuracy level 4: int8 activations inside the kernel (VNNI/AMX on x86); 1 keeps fp32 compute."""


def head_matmuls(model, output: str = "logits") -> list[str]:
    """The float MatMul that produces ``output`` through its bias Add (and a Reshape of the token map, in the
    pruned step); empty if there is none."""
    producers = {name: node for node in model.graph.node for name in node.output}
    node = producers.get(output)
    while node is not None and node.op_type in ("Add", "Reshape"):
        node = next((producers[i] for i in node.input if i in producers), None)
    return [node.name] if node is not None and node.op_type == "MatMul" else []


def quantized(model, bits: int, block_size: int, accuracy_level: int):
    """``model``'s weight MatMuls as ``bits``-bit symmetric MatMulNBits in blocks of ``block_size``; the logits
    head (where there is one) stays float. Returns ONNX Runtime's ``ONNXModel`` wrapper, topologically sorted."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:
        raise BackendUnavailableError("quantization needs onnxruntime >= 1.20: pip install -U onnxruntime") from None
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=accuracy_level,
        nodes_to_exclude=head_matmuls(model),
    )
    quantizer.process()
    quantizer.model.topological_sort()
    return quantizer.model


def quantize_graph(src: Path, dst: Path, bits: int = 8, accuracy_level: int = ACCURACY_LEVEL) -> None:
    """Rewrite ``src``'s weight MatMuls as ``bits``-bit MatMulNBits into ``dst``; the logits head stays float."""
    model = quantized(read_onnx(src), bits, BLOCK_SIZE, accuracy_level)
    large = model.model.ByteSize() > 1_800_000_000
    model.save_model_to_file(str(dst), use_external_data_format=large)


def quantize_artifacts(
    src: Path, out: Path, bits: int = 8, overwrite: bool = False, accuracy_level: int = ACCURACY_LEVEL
) -> Path:
    """Write an int8 copy of the fp32 artefact directory ``src`` into ``out``."""
    rewrites = {name: partial(quantize_graph, bits=bits, accuracy_level=accuracy_level) for name in QUANTIZED_GRAPHS}
    info = {
        "method": "onnxruntime MatMulNBits, weight-only, symmetric",
        "bits": bits,
        "block_size": BLOCK_SIZE,
        "accuracy_level": accuracy_level,
        "graphs": [g for g in QUANTIZED_GRAPHS if g in load_manifest(src).graphs],
        "source_precision": "fp32",
    }
    return rewrite_artifacts(src, out, f"int{bits}", rewrites, info, overwrite)


def rewrite_artifacts(
    src: Path,
    out: Path,
    precision: str,
    rewrites: dict[str, Callable[[Path, Path], None]],
    info: dict,
    overwrite: bool = False,
) -> Path:
    """Copy the fp32 artefact directory ``src`` into ``out``, the graphs in ``rewrites`` through their function."""
    manifest = load_manifest(src)
    if manifest.precision != "fp32":
        raise ArtifactError(
            f"{src}: precision {manifest.precision}; quantize an fp32 export (`star-deploy export --precision fp32`)"
        )
    data = json.loads((src / MANIFEST).read_text())
    with atomic_dir(out, overwrite) as tmp:
        for name, spec in manifest.graphs.items():
            check_loadable(manifest.path(name))  # a graph that cannot be read is never copied into a sealed folder
            if name in rewrites:
                log.info("quantizing %s to %s", spec.file, precision)
                rewrites[name](manifest.path(name), tmp / spec.file)
            else:
                shutil.copy2(manifest.path(name), tmp / spec.file)
            data["graphs"][name]["sha256"] = graph_digest(tmp, spec)
        shutil.copytree(manifest.tokenizer_dir, tmp / TOKENIZER_DIR)
        data["precision"] = precision
        data["quantization"] = info
        write_text(tmp / MANIFEST, dumps(sealed(data, tmp)))
    return out
