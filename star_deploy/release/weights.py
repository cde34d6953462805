"""Find, validate and load the official STAR release files; infer every size from the tensors."""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ..core.config import SCHEDULES, StarConfig, TextEncoderConfig
from ..errors import ConfigError, WeightsError
from ..model.text import load_text_encoder, text_encoder_config
from ..model.transformer import StarTransformer
from ..model.vqvae import UNUSED_VAE_PREFIXES, StarVQVAE
from .finder import ReleasePaths, check_readable, check_resolution_name, choose_resolution, release_paths
from .weight_shapes import infer_transformer_config, infer_vae_config

log = logging.getLogger("star_deploy")

StateDict = dict[str, torch.Tensor]


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({str(exc)[:120]}); download or convert it again"
        ) from None


def _check_zip(path: Path) -> bool:
    """True for a zip-format checkpoint whose every entry passes its CRC check."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"{path}: truncated or corrupted checkpoint ({str(exc)[:120]}); download it again") from None
    if bad is not None:
        raise WeightsError(f"{path}: corrupted checkpoint (checksum mismatch in {bad}); download it again")
    return True


LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
"""The pickled magic number that starts a pre-zip torch.save file."""


def _refusal(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"(Unsupported operand \d+)", text)
    return (
        f"unsupported global {match.group(1)}"
        if match and "GLOBAL" in match.group(0)
        else (match.group(1) if match else "unsupported object")
    )


def read_state_file(path: Path) -> dict:
    """A .pth (safely, weights_only, never executing pickled code) or .safetensors file as a dict."""
    check_readable(path)
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    is_zip = _check_zip(path)
    if not is_zip:
        with path.open("rb") as f:
            if f.read(len(LEGACY_MAGIC)) != LEGACY_MAGIC:
                raise WeightsError(f"{path}: truncated or not a PyTorch checkpoint (unknown format); download it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused, it holds objects other than tensors ({_refusal(exc)}); "
            f"only plain state dicts are loaded, never executed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on damaged input
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: truncated or not a PyTorch checkpoint ({detail}); download it again") from None


def _tensor_dict(sd: object, path: Path, what: str) -> StateDict:
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; expected {what}")
    return sd


def star_state_dict(raw: dict, path: Path) -> StateDict:
    """The transformer's state dict inside an official checkpoint (or a flat converted one)."""
    sd = raw
    if isinstance(raw, dict) and "trainer" in raw:
        trainer = raw["trainer"]
        if not isinstance(trainer, dict) or "var_wo_ddp" not in trainer:
            raise WeightsError(f"{path}: has 'trainer' but no 'var_wo_ddp' state dict; is it a STAR checkpoint?")
        sd = trainer["var_wo_ddp"]
    sd = _tensor_dict(sd, path, "a STAR transformer (star_rope_d*.pth)")
    if "encoder_proj.weight" not in sd:
        if "quantize.embedding.weight" in sd:
            raise WeightsError(f"{path}: is a VQVAE checkpoint, not the STAR transformer; pass it with --vae")
        hint = " (it looks like a class-conditional VAR checkpoint)" if "class_emb.weight" in sd else ""
        raise WeightsError(f"{path}: not a STAR text-to-image transformer{hint}; use a star_rope_d*.pth file")
    return sd


def vae_state_dict(raw: dict, path: Path) -> StateDict:
    """The VQVAE's state dict; a transformer checkpoint given by mistake is named as such."""
    if isinstance(raw, dict) and ("trainer" in raw or "encoder_proj.weight" in raw):
        raise WeightsError(f"{path}: is a STAR transformer checkpoint, not the VQVAE; pass it with --star")
    sd = _tensor_dict(raw, path, "the VQVAE (vae_ch160v4096z32.pth)")
    if "quantize.embedding.weight" not in sd:
        raise WeightsError(f"{path}: not a VQVAE state dict (no quantize.embedding.weight); use vae_ch160v4096z32.pth")
    return sd


def check_tensor_values(sd: StateDict, expected: StateDict | None, path: Path) -> None:
    """Refuse a tensor that is not floating point where the model has one, or holds NaN or infinity."""
    for key, tensor in sd.items():
        want_float = expected[key].is_floating_point() if expected is not None and key in expected else True
        if want_float and not tensor.is_floating_point():
            raise WeightsError(
                f"{path}: tensor {key} has dtype {str(tensor.dtype).removeprefix('torch.')}, expected floating point; "
                f"the checkpoint is damaged or of another model, download it again"
            )
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(
                f"{path}: tensor {key} holds NaN or infinite values; the checkpoint is damaged, download it again"
            )


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
    check_tensor_values(sd, expected, path)
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


@dataclass
class StarTorchModel:
    """The loaded PyTorch reference: text encoder, transformer, VQVAE and their config."""

    config: StarConfig
    text_encoder: torch.nn.Module
    transformer: StarTransformer
    vqvae: StarVQVAE
    tokenizer_dir: Path
    sources: dict[str, Path]
    inputs: tuple[Path, ...] = ()
    """The release folder and files it was loaded from (outputs are kept apart from them)."""

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> StarTorchModel:
        """Move to ``device``; the transformer and decoder take ``dtype``, the head stays fp32."""
        self.text_encoder.to(device)
        self.transformer.to(device=device, dtype=dtype)
        self.transformer.head_logits.float()
        self.vqvae.to(device)
        self.vqvae.decoder.to(dtype)
        return self


ConfigCheck = Callable[[StarConfig], None]


def read_text_config(encoder_dir: Path) -> TextEncoderConfig:
    """The CLIP text encoder's shape from its config.json, without loading its weights."""
    from transformers import CLIPTextConfig

    try:
        hf_config = CLIPTextConfig.from_pretrained(str(encoder_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"{encoder_dir}: no readable CLIPTextModel config.json ({str(exc)[:120]}); download CLIP/ again"
        ) from None
    return text_encoder_config(SimpleNamespace(config=hf_config))


def read_release_config(paths: ReleasePaths, resolution: int) -> tuple[StarConfig, StateDict, StateDict]:
    """The release's config and (memory-mapped) state dicts; nothing is materialized yet."""
    if resolution not in SCHEDULES:
        raise ConfigError(
            f"no scale schedule for resolution {resolution}; choose one of {', '.join(map(str, SCHEDULES))}"
        )
    check_resolution_name(paths.star, resolution)
    star_sd = star_state_dict(read_state_file(paths.star), paths.star)
    vae_sd = vae_state_dict(read_state_file(paths.vae), paths.vae)
    transformer = infer_transformer_config(star_sd, paths.star)
    vae = infer_vae_config(vae_sd, paths.vae)
    text = read_text_config(paths.text_encoder)
    try:
        config = StarConfig(transformer=transformer, vae=vae, text=text, resolution=resolution)
    except ConfigError as exc:
        raise ConfigError(f"{paths.star.name} with {paths.vae.name}: {exc}") from None
    return config, star_sd, vae_sd


def load_release(paths: ReleasePaths, resolution: int, check: ConfigCheck | None = None) -> StarTorchModel:
    """Load the three files of ``paths`` and check that they fit together at ``resolution``.

    ``check`` sees the inferred config before any weight is materialized (memory estimates).
    """
    config, star_sd, vae_sd = read_release_config(paths, resolution)
    if check is not None:
        check(config)
    try:
        text_encoder = load_text_encoder(paths.text_encoder)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise WeightsError(
            f"{paths.text_encoder}: not a loadable CLIPTextModel ({str(exc)[:160]}); download CLIP/ again"
        ) from None
    if text_encoder_config(text_encoder) != config.text:
        raise WeightsError(f"{paths.text_encoder}: weights do not match its config.json; download CLIP/ again")
    return build_model(config, star_sd, vae_sd, text_encoder, paths)


def build_model(
    config: StarConfig, star_sd: StateDict, vae_sd: StateDict, text_encoder: torch.nn.Module, paths: ReleasePaths
) -> StarTorchModel:
    transformer = StarTransformer(config.transformer)
    load_strict(transformer, star_sd, paths.star)
    vqvae = StarVQVAE(config.vae)
    load_strict(vqvae, vae_sd, paths.vae, ignore=UNUSED_VAE_PREFIXES)
    return StarTorchModel(
        config,
        text_encoder,
        transformer.eval(),
        vqvae.eval(),
        paths.tokenizer,
        {"clip": paths.clip, "vae": paths.vae, "star": paths.star},
        tuple(paths.inputs),
    )


def load_model(
    weights: Path | None,
    clip: Path | None,
    vae: Path | None,
    star: Path | None,
    resolution: int | None,
    check: ConfigCheck | None = None,
) -> StarTorchModel:
    """Load the selected release; ``check`` sees the config before the weights are materialized."""
    paths = release_paths(weights, clip, vae, star)
    resolution = choose_resolution(paths, resolution)
    log.info("loading %s", paths.star)
    return load_release(paths, resolution, check)
