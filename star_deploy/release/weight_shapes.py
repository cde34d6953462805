"""A checkpoint's model config from its tensor shapes alone: safetensors headers and CLIP's config.json, no torch.

A safetensors file starts with the little-endian length of a JSON header that names every
tensor's dtype and shape, so ``inspect`` reads the header and nothing else. The config
inference works on anything with a ``shape`` (torch tensors or :class:`TensorShape`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..core.config import HF_FIELDS, TransformerConfig, VaeConfig
from ..errors import WeightsError
from ..files.regular import open_regular

MAX_HEADER = 100 << 20
"""The safetensors format caps its JSON header at 100 MB."""
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class Shaped(Protocol):
    shape: Any


@dataclass(frozen=True)
class TensorShape:
    """A tensor as a safetensors header describes it: dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]

    def numel(self) -> int:
        return math.prod(self.shape)


def _unreadable(path: Path, why: str) -> WeightsError:
    return WeightsError(f"{path}: not a readable safetensors file ({why}); download or convert it again")


def _tensor_shape(name: str, entry: Any, path: Path) -> TensorShape:
    if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) or "dtype" not in entry:
        raise _unreadable(path, f"tensor {name!r} has no dtype and shape")
    if not all(isinstance(d, int) and d >= 0 for d in entry["shape"]):
        raise _unreadable(path, f"tensor {name!r} has a bad shape")
    return TensorShape(SAFETENSORS_DTYPES.get(str(entry["dtype"]), str(entry["dtype"])), tuple(entry["shape"]))


def safetensors_shapes(path: Path) -> tuple[dict[str, TensorShape], dict[str, str]]:
    """Every tensor's dtype and shape, and the metadata, from a safetensors header (no tensor is read)."""
    try:
        with open_regular(path) as f:
            prefix = f.read(8)
            size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 2 <= size <= MAX_HEADER:
                raise _unreadable(path, "no header")
            header = json.loads(f.read(size))
    except OSError as exc:
        raise WeightsError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _unreadable(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    return {k: _tensor_shape(k, v, path) for k, v in header.items()}, metadata


def _shape(sd: Mapping[str, Shaped], key: str, path: Path) -> tuple[int, ...]:
    if key not in sd:
        raise WeightsError(f"{path}: missing tensor {key!r}; the checkpoint is incomplete or of another model")
    return tuple(sd[key].shape)


def infer_transformer_config(sd: Mapping[str, Shaped], path: Path) -> TransformerConfig:
    """The STAR transformer's shape from its state dict."""
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise WeightsError(f"{path}: no transformer blocks found")
    return TransformerConfig(
        depth=depth,
        width=_shape(sd, "pos_start", path)[-1],
        heads=_shape(sd, "blocks.0.attn.scale_mul_1H11", path)[1],
        text_width=_shape(sd, "encoder_proj.weight", path)[1],
        vocab_size=_shape(sd, "head_logits.weight", path)[0],
        cvae=_shape(sd, "word_embed.weight", path)[1],
        num_scales=_shape(sd, "lvl_embed.weight", path)[0],
    )


def infer_vae_config(sd: Mapping[str, Shaped], path: Path) -> VaeConfig:
    """The VQVAE's shape from its state dict."""
    vocab, cvae = _shape(sd, "quantize.embedding.weight", path)
    ch = _shape(sd, "decoder.conv_out.weight", path)[1]
    levels = len({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))})
    ch_mult = tuple(_shape(sd, f"decoder.up.{i}.block.0.conv2.weight", path)[0] // ch for i in range(levels))
    blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))})
    return VaeConfig(vocab_size=vocab, cvae=cvae, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks - 1)


def text_config_fields(encoder_dir: Path) -> dict[str, Any]:
    """The CLIP text encoder's shape as its config.json states it (fields it leaves out are None)."""
    path = encoder_dir / "config.json"
    try:
        with open_regular(path) as f:
            data = json.loads(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"{encoder_dir}: no readable CLIPTextModel config.json ({exc}); download CLIP/ again"
        ) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: not a CLIPTextModel config (not a JSON object); download CLIP/ again")
    return {ours: data.get(theirs) for ours, theirs in HF_FIELDS.items()}
