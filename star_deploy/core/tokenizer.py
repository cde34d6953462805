"""The CLIP tokenizer as the text encoder reads it: 77 ids per prompt, pad token "!" (id 0), no torch.

Runs on Hugging Face ``tokenizers`` from a ``tokenizer.json`` (export writes one, with the
padding and truncation of STAR's CLIP built in). A release's ``CLIP/tokenizer`` folder holds
the original vocab.json/merges.txt instead; it is converted once with ``transformers``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, WeightsError
from .config import MAX_TEXT_TOKENS

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"


@dataclass(frozen=True)
class Tokens:
    """Token ids and attention masks of rows [prompts..., "" x B], padded to 77."""

    input_ids: np.ndarray  # (2B, 77) int64
    attention_mask: np.ndarray  # (2B, 77) int64


def convert_clip_tokenizer(folder: Path):
    """A ``tokenizers.Tokenizer`` from a CLIPTokenizer folder (vocab.json, merges.txt), padded to 77."""
    try:
        from transformers import CLIPTokenizerFast
    except ImportError:
        raise BackendUnavailableError(
            f"{folder} has no {TOKENIZER_JSON}; converting its vocab.json needs transformers: "
            f"pip install 'star-deploy[torch]', or use a folder made by `star-deploy export`"
        ) from None
    try:
        fast = CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(
            f"{folder}: not a readable CLIP tokenizer ({str(exc)[:120]}); download CLIP/ again"
        ) from None
    tok = fast.backend_tokenizer
    tok.enable_truncation(MAX_TEXT_TOKENS)
    tok.enable_padding(length=MAX_TEXT_TOKENS, pad_id=fast.pad_token_id, pad_token=fast.pad_token)
    return tok


def load_tokenizer(folder: Path):
    """The folder's ``tokenizer.json``, else its CLIPTokenizer files converted."""
    path = folder / TOKENIZER_JSON
    if not folder.is_dir():
        raise WeightsError(f"{folder}: tokenizer folder not found; export again, or download CLIP/ again")
    if not path.is_file():
        return convert_clip_tokenizer(folder)
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own untyped exception
        raise WeightsError(f"{path}: not a readable tokenizer ({str(exc)[:120]}); export again") from None


def save_tokenizer_json(source: Path, target: Path) -> None:
    """Write ``target`` (tokenizer.json) for the CLIPTokenizer folder ``source``."""
    load_tokenizer(source).save(str(target))


class PromptTokenizer:
    """Prompts -> (2B, 77) ids and masks: the conditional rows, then one "" row per prompt."""

    def __init__(self, folder: Path) -> None:
        self.tokenizer = load_tokenizer(Path(folder))

    def _overflows(self, prompt: str) -> bool:
        return bool(self.tokenizer.encode(prompt).overflowing)

    def __call__(self, prompts: list[str]) -> Tokens:
        for prompt in prompts:
            if self._overflows(prompt):
                log.warning(
                    "prompt is longer than %d CLIP tokens; CLIP reads the first %d: %r",
                    MAX_TEXT_TOKENS,
                    MAX_TEXT_TOKENS,
                    prompt[:60],
                )
        rows = self.tokenizer.encode_batch(list(prompts) + [""] * len(prompts))
        ids = np.array([r.ids for r in rows], dtype=np.int64)
        mask = np.array([r.attention_mask for r in rows], dtype=np.int64)
        return Tokens(ids, mask)
