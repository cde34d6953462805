"""Polygraphy's TensorRT loaders as star-deploy calls them: its log in Python logging, its failures in one line.

Polygraphy (NVIDIA's TensorRT toolkit) prints to stdout by default and raises ``PolygraphyException`` after
logging the reasons (the ONNX parser's errors, say) one by one. Here its messages go to the "Polygraphy" Python
logger (stderr, like every log), and a failure becomes the project's error naming the file and the reasons.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import StarDeployError

POLYGRAPHY_LOGGER = "Polygraphy"


def quiet_polygraphy() -> None:
    """Route Polygraphy's log to Python logging: warnings and errors by default, its verbose log with -v."""
    from polygraphy.logger import G_LOGGER

    verbose = logging.getLogger("star_deploy").isEnabledFor(logging.DEBUG)
    G_LOGGER.use_python_logging_system = True
    G_LOGGER.module_severity = G_LOGGER.VERBOSE if verbose else G_LOGGER.WARNING


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def polygraphy_errors(what: str, error: type[StarDeployError], fix: str) -> Iterator[None]:
    """Raise ``error("<what> (<Polygraphy's error messages>); <fix>")`` when Polygraphy gives up inside the block."""
    from polygraphy.exception import PolygraphyException

    quiet_polygraphy()
    collect = _Collect()
    logger = logging.getLogger(POLYGRAPHY_LOGGER)
    logger.addHandler(collect)
    try:
        yield
    except (PolygraphyException, RuntimeError) as exc:
        reasons = [m for m in collect.messages if m] or [" ".join(str(exc).split())]
        raise error(f"{what} ({'; '.join(reasons)}); {fix}") from None
    finally:
        logger.removeHandler(collect)
