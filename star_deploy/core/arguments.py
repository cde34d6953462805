"""Checks of the Python API's arguments: each bad value is refused with a ConfigError naming the argument."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

MAX_SEED = 2**63
"""Seeds are in [0, 2**63): every sampler and the PNG metadata read them as signed 64-bit integers."""


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (numpy integers too; bool refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {_kind(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def optional_integer(name: str, value: Any, minimum: int | None = None) -> int | None:
    """None, or ``value`` checked by ``integer``."""
    return None if value is None else integer(name, value, minimum)


def real(name: str, value: Any) -> float:
    """``value`` as a float (ints and numpy numbers too; bool and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {_kind(value)}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """A bool (numpy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {_kind(value)}")
    return bool(value)


def text(name: str, value: Any, optional: bool = False) -> str | None:
    """A str (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str{' or None' if optional else ''}, got {_kind(value)}")
    return value


def one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def seed_value(name: str, value: Any) -> int:
    """One seed: an integer in [0, 2**63)."""
    seed = integer(name, value)
    if not 0 <= seed < MAX_SEED:
        raise ConfigError(f"{name} must be in [0, 2**63), got {seed}")
    return seed


def seeds(seed: Any, count: int) -> list[int]:
    """An integer seeds image i with ``seed + i``; a list gives every image its own seed, each range-checked."""
    if isinstance(seed, np.ndarray) and seed.ndim == 1:
        seed = list(seed)
    if isinstance(seed, (str, bytes)) or not isinstance(seed, (numbers.Integral, Sequence)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer or a list of integers, got {_kind(seed)}")
    if isinstance(seed, numbers.Integral):
        first = seed_value("seed", seed)
        if first + count - 1 >= MAX_SEED:
            raise ConfigError(
                f"seed {first}: image {count - 1} would use seed {first + count - 1} >= 2**63; use a smaller seed"
            )
        return [first + i for i in range(count)]
    values = [seed_value(f"seed[{i}]", s) for i, s in enumerate(seed)]
    if len(values) != count:
        raise ConfigError(f"seed: {len(values)} seeds for {count} images; give one per image or a single int")
    return values


def threads(value: Any) -> int:
    """ONNX Runtime intra-op threads: 0 (one per physical core) up to the CPU count."""
    count = integer("threads", value)
    cpus = os.cpu_count() or 1
    if not 0 <= count <= cpus:
        raise ConfigError(f"threads={count}: choose 0 (one per physical core) to {cpus} (the CPU count)")
    return count


def mapping(name: str, value: Any) -> dict | None:
    """None or a dict."""
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a dict or None, got {_kind(value)}")
    return value


def session_options(value: Any) -> Any:
    """None or an ``onnxruntime.SessionOptions``."""
    if value is None:
        return None
    import onnxruntime

    if not isinstance(value, onnxruntime.SessionOptions):
        raise ConfigError(f"session_options must be an onnxruntime.SessionOptions or None, got {_kind(value)}")
    return value


def callback_result(value: Any) -> bool | None:
    """What ``callback_on_scale_end`` returned: None or a bool (numpy bools too) is obeyed."""
    if value is None:
        return None
    try:
        return flag("callback_on_scale_end's return value", value)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; return None or True to go on, False to stop") from None
