"""The decoder's memory layout, NCHW or channels-last, chosen by timing both on the device at hand."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

LAYOUTS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}
"""Layout names (as logged and recorded in bench JSON) and their torch memory formats."""


def layout_name(memory_format: torch.memory_format) -> str:
    return next(name for name, fmt in LAYOUTS.items() if fmt == memory_format)


@dataclass
class LayoutChoice:
    """The layout the decoder runs in; ``seconds`` holds each layout's decode time when it was measured."""

    layout: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.layout]

    @property
    def measured(self) -> bool:
        return bool(self.seconds)

    def record(self) -> dict:
        """What a bench report keeps of it."""
        return {"layout": self.layout, "measured": self.measured, "seconds": dict(self.seconds)}


def set_layout(modules: Sequence[nn.Module], memory_format: torch.memory_format) -> None:
    for module in modules:
        module.to(memory_format=memory_format)


def best_seconds(run: Callable[[], object], synchronize: Callable[[], None], repeat: int) -> float:
    """The fastest of ``repeat`` timed runs, after one untimed run (cuDNN autotuning, allocator warm-up)."""
    run()
    synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_layout(
    modules: Sequence[nn.Module],
    decode: Callable[[torch.memory_format], object],
    synchronize: Callable[[], None],
    repeat: int = 2,
) -> LayoutChoice:
    """Time ``decode`` in each layout (``modules`` converted to it); leave them in the faster one, logged."""
    seconds = {}
    for name, fmt in LAYOUTS.items():
        set_layout(modules, fmt)
        seconds[name] = best_seconds(lambda fmt=fmt: decode(fmt), synchronize, repeat)
    choice = LayoutChoice(min(seconds, key=seconds.get), seconds)
    set_layout(modules, choice.memory_format)
    timings = ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in seconds.items())
    log.info("decoder layout: %s is faster on this device (%s)", choice.layout, timings)
    return choice
