"""SIGTERM, SIGHUP and SIGINT become one exception, so all run the same clean-up as Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP)."""
        return 128 + self.signum


_received: list[int] = []
"""Signals received in the current block, kept in case a library swallows the exception raised for them."""


def _raise(signum: int, frame: FrameType | None) -> None:
    """Raise once; later signals are ignored so that the clean-up they interrupt can finish."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise ``Interrupted`` again if a signal arrived whose exception a library caught and dropped.

    A signal handler's exception can surface inside a finaliser (a weakref callback during a torch
    export, seen in practice) or a library's catch-all and be lost. Long loops call this between
    steps, and outputs before they are published, so an interrupted command stops soon and never
    completes an output.
    """
    if _received:
        raise Interrupted(_received[0])


def _quiet_unraisable(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook that drops ``Interrupted`` (kept in ``_received``) and passes the rest on."""

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            previous(unraisable)

    return hook


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise ``Interrupted``; the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    previous_hook = sys.unraisablehook
    _received.clear()
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    for sig in SIGNALS:
        signal.signal(sig, _raise)
    try:
        yield
        raise_if_interrupted()
    finally:
        _received.clear()
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopRequest:
    """Set by the first SIGINT or SIGTERM inside ``stop_requests``: long work stops at its next safe point."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, a first SIGINT or SIGTERM only sets the yielded ``StopRequest``; a second one raises
    ``Interrupted`` (as under ``signals_as_interrupts``). The previous handlers come back after the block."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def request(signum: int, frame: FrameType | None) -> None:
        stop.signum = signum
        for sig in SIGNALS:
            signal.signal(sig, _raise)

    for sig in SIGNALS:
        signal.signal(sig, request)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
