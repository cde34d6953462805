"""The CLIP text encoder of the release's ``CLIP/text_encoder`` folder (the tokenizer: star_deploy.core.tokenizer)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.config import HF_FIELDS, TextEncoderConfig

log = logging.getLogger(__name__)


def text_encoder_config(model: torch.nn.Module) -> TextEncoderConfig:
    return TextEncoderConfig(**{ours: getattr(model.config, theirs) for ours, theirs in HF_FIELDS.items()})


def load_text_encoder(encoder_dir: Path) -> torch.nn.Module:
    """The CLIPTextModel in ``encoder_dir``, in float32 whatever dtype it was saved in."""
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return CLIPTextModel.from_pretrained(str(encoder_dir), local_files_only=True).float().eval()


def random_text_encoder(config: TextEncoderConfig, seed: int = 0) -> torch.nn.Module:
    """A CLIPTextModel of ``config``'s shape with seeded random weights (benchmarks, tests)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    hf = CLIPTextConfig(
        **{theirs: getattr(config, ours) for ours, theirs in HF_FIELDS.items()},
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    return CLIPTextModel(hf).eval()


class TextEncoderModule(torch.nn.Module):
    """CLIPTextModel as a graph: (input_ids, attention_mask) -> (hidden states, pooled)."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.clip(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output
