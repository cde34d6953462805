"""Checks of the Python API's arguments: each bad value is refused with a ConfigError naming the argument.

A check is a function ``(name, value) -> value``. ``Checked(check)`` as ``Annotated`` metadata makes it the
field's type: ``check_fields`` runs every one of a dataclass (``LoadOptions``), and pydantic runs the same one
where such a dataclass is embedded in a model (``ServeOptions``), reporting its message as the field's error.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

MAX_SEED = 2**63
"""Seeds are in [0, 2**63): every sampler and the PNG metadata read them as signed 64-bit integers."""

Check = Callable[[str, Any], Any]
"""Checks ``value`` of the argument ``name``: returns it (normalized) or raises a ConfigError naming it."""


class Checked:
    """A check as the metadata of a type: ``Annotated[int, Checked(functools.partial(integer, minimum=1))]``."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def __call__(self, name: str, value: Any) -> Any:
        return self.check(name, value)

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        """In a pydantic model: the field's own type first (strings parsed), then this check; its ConfigError is
        the field's validation error."""
        from pydantic_core import core_schema

        def validate(value: Any, info: Any) -> Any:
            try:
                return self.check(info.field_name, value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None

        return core_schema.with_info_after_validator_function(validate, handler(source))


@dataclasses.dataclass(frozen=True)
class CliOption:
    """A field that is also a command-line option (``--name-with-dashes``): its help text, and where the command
    line differs from the field: its type (one seed, where Python takes a list too), flag and default."""

    help: str
    type: Any = None
    flag: str | None = None
    default: Any = ...


@functools.cache
def field_checks(cls: type) -> dict[str, tuple[Checked, ...]]:
    """The ``Checked`` metadata of every field of the dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        f.name: tuple(m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Checked))
        for f in dataclasses.fields(cls)
    }


def checked(name: str, value: Any, checks: Sequence[Checked]) -> Any:
    """``value`` through ``checks``; an error names the argument (prefixed where its message does not)."""
    try:
        for check in checks:
            value = check(name, value)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(name) else f"{name}: {text}") from None
    return value


def check_fields(instance: Any) -> None:
    """Run every field's checks on a (frozen) dataclass instance, keeping the values they normalize."""
    for name, checks in field_checks(type(instance)).items():
        object.__setattr__(instance, name, checked(name, getattr(instance, name), checks))


def check_values(cls: type, values: dict[str, Any], names: dict[str, str]) -> None:
    """The checks of ``cls``'s fields on ``values``, errors naming each field as ``names`` spell it (CLI flags)."""
    checks = field_checks(cls)
    for field, value in values.items():
        checked(names.get(field, field), value, checks[field])


def spelled(name: str, value: Any) -> str:
    """An argument and its value as written: ``--threads 3`` on the command line, ``threads=3`` in Python."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value}"


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


def threads(name: str, value: Any) -> int:
    """ONNX Runtime intra-op threads: 0 (one per physical core) up to the CPU count."""
    count = integer(name, value)
    cpus = os.cpu_count() or 1
    if not 0 <= count <= cpus:
        raise ConfigError(f"{spelled(name, count)}: choose 0 (one per physical core) to {cpus} (the CPU count)")
    return count


def mapping(name: str, value: Any) -> dict | None:
    """None or a dict."""
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a dict or None, got {_kind(value)}")
    return value


def session_options(name: str, value: Any) -> Any:
    """None or an ``onnxruntime.SessionOptions``."""
    if value is None:
        return None
    import onnxruntime

    if not isinstance(value, onnxruntime.SessionOptions):
        raise ConfigError(f"{name} must be an onnxruntime.SessionOptions or None, got {_kind(value)}")
    return value


def path(name: str, value: Any) -> Path | None:
    """None, or a str or pathlib.Path as a Path."""
    if value is None:
        return None
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"{name} must be a str, a pathlib.Path or None, got {_kind(value)}")
    return Path(value)


def prompts(texts: Sequence[str]) -> list[str]:
    """Prompts that can be encoded: each valid UTF-8 text (a lone surrogate is refused, naming the prompt)."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"prompt {i} is not valid UTF-8 text ({text!r}); pass the prompt in UTF-8") from None
    return list(texts)


def callback_result(value: Any) -> bool | None:
    """What ``callback_on_scale_end`` returned: None or a bool (numpy bools too) is obeyed."""
    if value is None:
        return None
    try:
        return flag("callback_on_scale_end's return value", value)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; return None or True to go on, False to stop") from None
