"""A stop signal always stops a driver, whatever it waits for.

SIGTERM (``ray job stop``, a scheduler's preemption notice, ``kill``) ends a
driver as Ctrl-C does: :class:`sigterm_as_interrupt` for a training driver
(its MLflow run is marked KILLED, its checkpoints are kept), and
:class:`sigterm_as_sigint` for a sweep, whose Tune loop handles Ctrl-C itself
(it saves the sweep's state, to resume).

Ctrl-C itself keeps its handler across a run: :class:`sigint_kept` puts back
the handler that Ray Train's ``fit`` replaces for good with its own (which
aborts *that* run's controller, and holds the controller alive).
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


class sigint_kept:
    """Inside, anything may install a SIGINT handler; on leaving, the one
    there before is back. Ray Train's ``fit`` installs one that calls its run's
    controller: left in place after the run, Ctrl-C in a notebook or script
    that trained would no longer interrupt anything, and the finished run's
    controller would live on, held by the handler, until the next run."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
