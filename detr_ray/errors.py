"""The errors detr-ray shows a user: one hierarchy, no imports.

Every error a user can act on (a bad config value, a broken annotation file,
an unreadable checkpoint, an unreachable cluster, a run that stopped itself)
is a :class:`DetrRayError`; its message names the file, key or value and what
to do. ``detr-ray`` prints such an error as one line and exits with the
class's ``exit_code``. Anything else that escapes is a bug and keeps its
traceback.
"""

from __future__ import annotations


class DetrRayError(Exception):
    """Base of every user-facing error."""

    exit_code = 2  # usage-like errors: fix the input and run again


class ConfigError(DetrRayError):
    """A bad configuration, job spec, search space or command-line value."""


class DataError(DetrRayError):
    """A problem with the user's data (annotations, images)."""


class CheckpointError(DetrRayError):
    """A checkpoint that is missing, unreadable, unsafe, or of the wrong kind."""


class ClusterError(DetrRayError):
    """A Ray cluster (or its Jobs API) that cannot be reached or refused a request."""

    exit_code = 1


class TrainingStopped(DetrRayError):
    """A run that cannot go on (it diverged, or its workers kept failing).

    Its checkpoints are kept; the message says where and how to resume.
    """

    exit_code = 1


def error_kind(name: str) -> type[DetrRayError]:
    """The user-facing error class called ``name`` (``DetrRayError`` if none is):
    an error crosses a process boundary as its kind and message."""
    kinds = {cls.__name__: cls for cls in DetrRayError.__subclasses__()}
    return kinds.get(name, DetrRayError)
