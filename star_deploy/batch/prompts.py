"""Prompt files: a ``.txt`` (one prompt a line) or a ``.jsonl`` (one JSON object a line), checked line by line."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import arguments
from ..core.config import SamplingConfig
from ..errors import ConfigError

log = logging.getLogger("star_deploy")

SUFFIXES = (".txt", ".jsonl")
FIELDS = ("prompt", "seed", "n", "cfg", "top_k", "top_p", "id")
"""The fields of a .jsonl line that ``batch`` reads; others are kept as the line's metadata."""


@dataclass(frozen=True)
class PromptLine:
    """One prompt of the file: its line number, its place among the prompts, and what the line asks.

    ``seed``, ``n``, ``cfg``, ``top_k`` and ``top_p`` are None where the line leaves them to the command.
    ``record`` is the line's JSON object as read (``{"prompt": ...}`` for a .txt line).
    """

    line: int
    position: int
    prompt: str
    id: str
    seed: int | None = None
    n: int | None = None
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


def read_prompts(path: Path) -> list[PromptLine]:
    """Every prompt of ``path``; blank lines are skipped, anything else wrong is refused naming its line."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"PROMPTS {path}: give a .txt file (one prompt a line) or .jsonl (one JSON object a line)")
    lines = text_lines(path)
    parse = parse_json_line if suffix == ".jsonl" else parse_text_line
    prompts: list[PromptLine] = []
    for number, text in lines:
        prompts.append(parse(path, number, len(prompts), text))
    if not prompts:
        raise ConfigError(f"PROMPTS {path}: holds no prompt; write one prompt a line (.txt) or one JSON object a line")
    check_ids(path, prompts)
    unknown = sorted({key for p in prompts for key in p.record if key not in FIELDS})
    if unknown and suffix == ".jsonl":
        log.info("%s: fields %s are not read; --layout geneval copies them into metadata.jsonl", path, unknown)
    return prompts


def text_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of ``path`` (UTF-8, a BOM allowed) with their 1-based numbers."""
    if not path.is_file():
        raise ConfigError(f"PROMPTS {path}: no such file; give a .txt or .jsonl file of prompts")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"PROMPTS {path}: cannot be read ({exc.strerror}); fix its permissions") from None
    found = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise ConfigError(f"PROMPTS {path} line {number}: not UTF-8 text; save the file as UTF-8") from None
        if text.strip():
            found.append((number, text))
    return found


def parse_text_line(path: Path, number: int, position: int, text: str) -> PromptLine:
    """A .txt line is the prompt itself."""
    return PromptLine(number, position, text, str(position), record={"prompt": text})


def parse_json_line(path: Path, number: int, position: int, text: str) -> PromptLine:
    """A .jsonl line: a JSON object with a ``prompt`` and optional settings, each checked."""
    where = f"PROMPTS {path} line {number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not JSON ({exc.msg} at column {exc.colno}); fix that line") from None
    if not isinstance(record, dict):
        raise ConfigError(f'{where}: a JSON {type(record).__name__}, not an object; write {{"prompt": "..."}}')
    try:
        return checked_line(record, number, position)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; fix that line") from None


def checked_line(record: dict[str, Any], number: int, position: int) -> PromptLine:
    """The line's fields, each checked (ConfigError names the field)."""
    if "prompt" not in record:
        raise ConfigError('no "prompt" field')
    prompt = arguments.text("prompt", record["prompt"])
    seed = None if record.get("seed") is None else arguments.seed_value("seed", record["seed"])
    n = arguments.optional_integer("n", record.get("n"), 1)
    cfg = None if record.get("cfg") is None else arguments.real("cfg", record["cfg"])
    top_k = arguments.optional_integer("top_k", record.get("top_k"))
    top_p = None if record.get("top_p") is None else arguments.real("top_p", record["top_p"])
    check_sampling(cfg, top_k, top_p)
    if seed is not None and seed + (n or 1) - 1 >= arguments.MAX_SEED:
        raise ConfigError(f"seed {seed}: its last image would use a seed >= 2**63; use a smaller seed")
    return PromptLine(number, position, prompt, item_id(record.get("id"), position), seed, n, cfg, top_k, top_p, record)


def check_sampling(cfg: float | None, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampler settings the pipeline would refuse (SamplingConfig's rules and messages)."""
    given = {k: v for k, v in (("cfg", cfg), ("top_k", top_k), ("top_p", top_p)) if v is not None}
    SamplingConfig(**given)


def item_id(value: Any, position: int) -> str:
    """The line's ``id`` (a string or an integer), else its position among the prompts."""
    if value is None:
        return str(position)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ConfigError(f"id {value!r}: give a non-empty string or an integer")
    return str(value)


def check_ids(path: Path, prompts: list[PromptLine]) -> None:
    """Refuse two lines with the same id (the index and resumption tell items apart by it)."""
    seen: dict[str, int] = {}
    for p in prompts:
        if p.id in seen:
            raise ConfigError(
                f"PROMPTS {path} line {p.line}: id {p.id!r} repeats line {seen[p.id]}'s; give each line its own id"
            )
        seen[p.id] = p.line
