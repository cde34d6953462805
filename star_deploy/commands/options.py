"""Command-line options declared once, by the typed options they fill: ``LoadOptions`` and ``CallOptions``.

Every field with a ``CliOption`` is an option (``--name-with-dashes`` unless it names its flag) with that
help and the field's default; ``takes(LoadOptions, "load")`` adds them to a command and hands it one
checked ``LoadOptions`` as ``load``. A field added to ``LoadOptions`` (or ``CallOptions``) with a
``CliOption`` is thereby an option of every command that takes them: ``run``, ``bench``, ``serve`` and
``bench-serve`` take the load options, ``run`` and ``bench`` the call options.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Annotated, Any, TypeVar

import typer

from ..core.arguments import CliOption, check_values

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def cli_parameters(options_type: type) -> dict[str, tuple[str, inspect.Parameter]]:
    """Every field of ``options_type`` that is a command-line option: its flag, and the parameter typer reads."""
    hints = typing.get_type_hints(options_type, include_extras=True)
    out = {}
    for field in fields(options_type):
        cli = [m for m in getattr(hints[field.name], "__metadata__", ()) if isinstance(m, CliOption)]
        if not cli:
            continue
        flag = cli[0].flag or "--" + field.name.replace("_", "-")
        kind = cli[0].type or hints[field.name].__origin__
        default = field.default if cli[0].default is ... else cli[0].default
        annotation = Annotated[kind, typer.Option(flag, help=cli[0].help)]
        parameter = inspect.Parameter(
            field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )
        out[field.name] = (flag, parameter)
    return out


def takes(
    options_type: type, into: str, exclude: Iterable[str] = (), only: Iterable[str] | None = None
) -> Callable[[F], F]:
    """Give the command ``options_type``'s options (``only`` those, or all but ``exclude``) as one ``into`` object."""
    excluded, wanted = set(exclude), None if only is None else set(only)
    chosen = [n for n in cli_parameters(options_type) if n not in excluded and (wanted is None or n in wanted)]
    flags = {name: cli_parameters(options_type)[name][0] for name in chosen}

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in chosen}
            check_values(options_type, values, flags)
            kwargs[into] = options_type(**values)
            return command(*args, **kwargs)

        extra = [cli_parameters(options_type)[name][1] for name in chosen]
        wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
