"""SIGTERM and SIGINT end a run as *interrupted*, never as a success.

Inside :func:`signals_interrupt`, both signals raise :class:`RunInterrupted` (a ``BaseException``,
like ``KeyboardInterrupt``, so no ``except Exception`` swallows it). Lightning, which stops
training at the next batch on SIGTERM and then exits with status 0, keeps its own SIGTERM
notifier (it also stops DDP workers) and calls this handler after it. The caller writes the
``INTERRUPTED`` marker and exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). In a
multirun the jobs after the interrupted one are not started: :data:`SWEEP` records them, and the
end-of-sweep callback lists them in ``NOT_RUN.json`` beside the table.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

NOT_RUN_FILE = "NOT_RUN.json"


class RunInterrupted(BaseException):
    """The process received SIGTERM or SIGINT."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class SweepState:
    """This process's sweep: the signal that interrupted it and the jobs it then did not run."""

    signal: Optional[int] = None
    interrupted: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "signal": signal.Signals(self.signal).name if self.signal else None,
            "interrupted": self.interrupted,
            "not_run": self.not_run,
        }


SWEEP = SweepState()


def _raise(signum: int, frame: Any) -> None:
    raise RunInterrupted(signum)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`RunInterrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
