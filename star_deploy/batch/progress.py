"""What a batch job shows: a progress bar (images done, images/s, time left) and the final summary."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Summary:
    """Images done by this run, skipped (done before), failed; seconds of this run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    total: int = 0
    seconds: float = 0.0
    interrupted: str | None = None
    """The signal that stopped the run (SIGINT, SIGTERM), if one did."""
    error: str | None = None
    """Why the run ended early, if an error ended it (its images not done count as failed)."""
    out: str = ""
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def finish(self) -> Summary:
        self.seconds = time.perf_counter() - self.started
        return self

    def line(self) -> str:
        state = f"interrupted by {self.interrupted}, " if self.interrupted else ""
        left = self.total - self.done - self.skipped
        rest = f", {left} left: run the same command again to finish" if self.interrupted and left else ""
        return (
            f"{state}{self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} images in "
            f"{self.seconds:.1f} s ({self.images_per_second:.2f} images/s){rest}"
        )

    def to_json(self) -> str:
        data: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "started"}
        data["seconds"] = round(self.seconds, 3)
        data["images_per_second"] = round(self.images_per_second, 3)
        return json.dumps(data)


@contextmanager
def progress_bar(total: int, skipped: int) -> Iterator[Any]:
    """A rich bar on stderr (only on a terminal): advance it with the number of images finished."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("images"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("images", total=total, completed=skipped, rate="")
        start, first = time.perf_counter(), skipped

        def advance(count: int) -> None:
            done = bar.tasks[0].completed + count - first
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=count, rate=f"{rate:.2f} images/s")

        yield advance
