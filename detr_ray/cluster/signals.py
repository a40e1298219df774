"""A stop signal always stops a driver, whatever it waits for.

SIGTERM (``ray job stop``, a scheduler's preemption notice, ``kill``) ends a
driver as Ctrl-C does: :class:`sigterm_as_interrupt` for a training driver
(its MLflow run is marked KILLED, its checkpoints are kept), and
:class:`sigterm_as_sigint` for a sweep, whose Tune loop handles Ctrl-C itself
(it saves the sweep's state, to resume).
"""

from __future__ import annotations

import signal
import threading


class _OnSigterm:
    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _on_sigterm(signum, frame):
        raise NotImplementedError


class sigterm_as_interrupt(_OnSigterm):
    """Inside: SIGTERM raises ``KeyboardInterrupt`` where the driver is."""

    @staticmethod
    def _on_sigterm(signum, frame):
        raise KeyboardInterrupt


class sigterm_as_sigint(_OnSigterm):
    """Inside: SIGTERM is handed to the SIGINT handler of the moment (Tune's)."""

    @staticmethod
    def _on_sigterm(signum, frame):
        signal.raise_signal(signal.SIGINT)
