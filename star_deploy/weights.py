"""Find, validate and load the official STAR release files; infer every size from the tensors."""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import SCHEDULES, StarConfig, TransformerConfig, VaeConfig
from .errors import ConfigError, WeightsError
from .model.text import load_text_encoder, text_encoder_config
from .model.transformer import StarTransformer
from .model.vqvae import UNUSED_VAE_PREFIXES, StarVQVAE

STAR_PATTERNS = ("star*.pth", "star*.safetensors")
VAE_PATTERNS = ("vae*.pth", "vae*.safetensors")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ReleasePaths:
    """The three parts of a STAR weight release."""

    clip: Path
    vae: Path
    star: Path

    @property
    def tokenizer(self) -> Path:
        return self.clip / "tokenizer"

    @property
    def text_encoder(self) -> Path:
        return self.clip / "text_encoder"


def _single_match(folder: Path, patterns: tuple[str, ...], flag: str) -> Path:
    found = sorted({p for pattern in patterns for p in folder.glob(pattern)})
    if not found:
        raise WeightsError(f"{folder}: no file matching {' or '.join(patterns)}; pass it with {flag} FILE")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise WeightsError(f"{folder}: several candidates ({names}); choose one with {flag} FILE")
    return found[0]


def resolve_release(
    weights: Path | None = None, clip: Path | None = None, vae: Path | None = None, star: Path | None = None
) -> ReleasePaths:
    """Explicit paths win; the rest are found in ``weights`` by the release's file names."""
    if weights is not None:
        if not weights.is_dir():
            raise WeightsError(f"{weights}: not a directory; --weights takes the folder of the STAR release")
        clip = clip or weights / "CLIP"
        vae = vae or _single_match(weights, VAE_PATTERNS, "--vae")
        star = star or _single_match(weights, STAR_PATTERNS, "--star")
    missing = [flag for flag, value in (("--clip", clip), ("--vae", vae), ("--star", star)) if value is None]
    if missing:
        raise WeightsError(f"missing {', '.join(missing)}: give them, or --weights DIR with the whole release")
    paths = ReleasePaths(Path(clip), Path(vae), Path(star))
    for sub in (paths.tokenizer, paths.text_encoder):
        if not sub.is_dir():
            raise WeightsError(f"{sub}: not found; --clip takes the release's CLIP folder (tokenizer/ and text_encoder/)")
    for f in (paths.vae, paths.star):
        if not f.is_file():
            raise WeightsError(f"{f}: no such file")
    return paths


def read_state_file(path: Path) -> dict:
    """A .pth (safely, weights_only) or .safetensors file as a dict; clear errors otherwise."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc}); download it again") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unsupported object"
        raise WeightsError(
            f"{path}: refused, it holds objects other than tensors ({first[:120]}); "
            f"only plain state dicts are loaded, never executed"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise WeightsError(f"{path}: truncated or not a PyTorch checkpoint ({str(exc)[:120]}); download it again") from None


def star_state_dict(raw: dict, path: Path) -> StateDict:
    """The transformer's state dict inside an official checkpoint (or a flat converted one)."""
    sd = raw
    if "trainer" in raw:
        trainer = raw["trainer"]
        if not isinstance(trainer, dict) or "var_wo_ddp" not in trainer:
            raise WeightsError(f"{path}: has 'trainer' but no 'var_wo_ddp' state dict; is it a STAR checkpoint?")
        sd = trainer["var_wo_ddp"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    if "encoder_proj.weight" not in sd:
        hint = " (it looks like a class-conditional VAR checkpoint)" if "class_emb.weight" in sd else ""
        raise WeightsError(f"{path}: not a STAR text-to-image transformer{hint}; use a star_rope_d*.pth file")
    return sd


def _shape(sd: StateDict, key: str, path: Path) -> torch.Size:
    if key not in sd:
        raise WeightsError(f"{path}: missing tensor {key!r}; the checkpoint is incomplete or of another model")
    return sd[key].shape


def infer_transformer_config(sd: StateDict, path: Path) -> TransformerConfig:
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


def infer_vae_config(sd: StateDict, path: Path) -> VaeConfig:
    vocab, cvae = _shape(sd, "quantize.embedding.weight", path)
    ch = _shape(sd, "decoder.conv_out.weight", path)[1]
    levels = len({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k))})
    ch_mult = tuple(_shape(sd, f"decoder.up.{i}.block.0.conv2.weight", path)[0] // ch for i in range(levels))
    blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))})
    return VaeConfig(vocab_size=vocab, cvae=cvae, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks - 1)


def load_strict(module: torch.nn.Module, sd: StateDict, path: Path, ignore: tuple[str, ...] = ()) -> None:
    """Load with an exact key and shape match; one message listing every difference."""
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(k for k in set(sd) & set(expected) if sd[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise WeightsError(f"{path}: does not match the expected model; " + "; ".join(parts))
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


@dataclass
class StarModel:
    """The loaded PyTorch reference: text encoder, transformer, VQVAE and their config."""

    config: StarConfig
    text_encoder: torch.nn.Module
    transformer: StarTransformer
    vqvae: StarVQVAE
    tokenizer_dir: Path
    sources: dict[str, Path]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "StarModel":
        """Move to ``device``; the transformer and decoder take ``dtype``, the head stays fp32."""
        self.text_encoder.to(device)
        self.transformer.to(device=device, dtype=dtype)
        self.transformer.head_logits.float()
        self.vqvae.to(device)
        self.vqvae.decoder.to(dtype)
        return self


def load_release(paths: ReleasePaths, resolution: int) -> StarModel:
    """Load the three files of ``paths`` and check that they fit together at ``resolution``."""
    if resolution not in SCHEDULES:
        raise ConfigError(f"no scale schedule for resolution {resolution}; choose one of {', '.join(map(str, SCHEDULES))}")
    star_sd = star_state_dict(read_state_file(paths.star), paths.star)
    vae_sd = read_state_file(paths.vae)
    if "quantize.embedding.weight" not in vae_sd:
        raise WeightsError(f"{paths.vae}: not a VQVAE state dict (no quantize.embedding.weight); use vae_ch160v4096z32.pth")
    try:
        text_encoder = load_text_encoder(paths.text_encoder)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{paths.text_encoder}: not a loadable CLIPTextModel ({str(exc)[:160]})") from None
    config = StarConfig(
        transformer=infer_transformer_config(star_sd, paths.star),
        vae=infer_vae_config(vae_sd, paths.vae),
        text=text_encoder_config(text_encoder),
        resolution=resolution,
    )
    return build_model(config, star_sd, vae_sd, text_encoder, paths)


def build_model(
    config: StarConfig, star_sd: StateDict, vae_sd: StateDict, text_encoder: torch.nn.Module, paths: ReleasePaths
) -> StarModel:
    transformer = StarTransformer(config.transformer)
    load_strict(transformer, star_sd, paths.star)
    vqvae = StarVQVAE(config.vae)
    load_strict(vqvae, vae_sd, paths.vae, ignore=UNUSED_VAE_PREFIXES)
    return StarModel(
        config, text_encoder, transformer.eval(), vqvae.eval(), paths.tokenizer,
        {"clip": paths.clip, "vae": paths.vae, "star": paths.star},
    )

