"""Command-line entry point: `detr-ray`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("detr-ray: no commands yet", file=sys.stderr)
    return 2
