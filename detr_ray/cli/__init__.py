"""``detr-ray``: the command line.

:mod:`~detr_ray.cli.parser` holds the argument tree; each command runs one
function of :mod:`~detr_ray.cli.run` (train, tune, config show, dashboard),
:mod:`~detr_ray.cli.tools` (data, model, eval, predict) or
:mod:`~detr_ray.cli.jobs` (submit, jobs). Heavy imports (Ray, MLflow, torch)
happen inside the command that needs them, so ``detr-ray --help`` is instant.
"""

from __future__ import annotations

import logging
import sys

from detr_ray.cli.parser import build_parser
from detr_ray.errors import DetrRayError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except DetrRayError as e:  # the user's to fix; anything else is a bug (traceback)
        print(f"detr-ray: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"detr-ray: {e or 'interrupted'}", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
