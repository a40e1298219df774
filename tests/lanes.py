"""``make test``: the whole suite in two pytest processes at once, then one verdict.

    python tests/lanes.py [PYTEST ARGS]

Lane ``ray`` runs the ray tier (Ray Train and Tune on one shared local Ray)
and one cluster-tier test, the local sweep, which starts a Ray of its own;
lane ``others`` runs every other test (unit, engine, services, cluster). Each
lane's waits (Ray's start-ups and health checks, a fault test's sleeps)
overlap the other's work, on two cores as on more. The ``others`` lane prints
as it runs; the ``ray`` lane's output is kept and printed when both end. The
exit status is the first failing lane's (pytest's own codes: 1 failed tests,
5 nothing collected ...), 0 only when both pass.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# The ray tier, and a test that starts a local Ray of its own, beside the rest:
# about as long as each other on this project's 2-core machines (measured with
# --durations: the test of `make gpu-check` went to the others lane when the
# ray lane was the longer one; with the sweep test too, the others lane was).
BESIDE = ["cluster/test_sweep_local.py"]
LANES = {
    "ray": ["ray", *BESIDE],
    "others": ["unit", "engine", "services", "cluster", *(f"--ignore={t}" for t in BESIDE)],
}


def main(extra: list[str]) -> int:
    started = time.monotonic()
    base = [sys.executable, "-m", "pytest", *extra]
    with tempfile.TemporaryFile("w+") as kept:
        ray = subprocess.Popen(
            base + [_arg(t) for t in LANES["ray"]],
            stdout=kept,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            others = subprocess.run(base + [_arg(t) for t in LANES["others"]]).returncode
            ray_code = ray.wait()
        except KeyboardInterrupt:
            ray.terminate()
            ray.wait(60)
            raise
        kept.seek(0)
        print(f"\n==================== lane ray ({' '.join(LANES['ray'])}) ====================")
        print(kept.read(), end="", flush=True)
    minutes = (time.monotonic() - started) / 60
    print(f"\nlanes: others exit {others}, ray exit {ray_code}; {minutes:.1f} min in all")
    return others or ray_code


def _arg(item: str) -> str:
    """A tier folder or test file as a path; an option (``--ignore=PATH``) with its path."""
    if item.startswith("--"):
        option, _, path = item.partition("=")
        return f"{option}={TESTS / path}"
    return str(TESTS / item)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
