"""SIGTERM and SIGINT end a run at the next step boundary, with a checkpoint.

Schedulers (Slurm, Kubernetes, spot instances) send SIGTERM before they kill; Ctrl-C sends
SIGINT. The handler only sets a flag; the loop reads it after each optimizer step, writes
a checkpoint and stops. A second signal while that happens stops at once, the default way
(the checkpoint being written is then incomplete, and ``--resume`` ignores it).

``preftune train`` then exits with 128 + the signal number, the shell's convention for a
process ended by that signal: 143 for SIGTERM, 130 for SIGINT.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

import torch

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Installed for the duration of a ``with`` block (main thread only: Python delivers
    signals there; elsewhere it does nothing and the defaults stay)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            # Asked twice: stop now.
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def requested(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> Optional[int]:
        """The signal number when any process got one, else None; the same on every rank
        (a signal reaches the processes of a launch at slightly different moments)."""
        local = torch.tensor([float(self.signum or 0)], dtype=torch.float64)
        got = int(all_reduce(local).item())
        if got == 0:
            return None
        # The sum over ranks may mix SIGTERM and SIGINT; report this rank's or the first.
        return self.signum or int(signal.SIGTERM)

    @staticmethod
    def exit_code(signum: int) -> int:
        return 128 + signum
