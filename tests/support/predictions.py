"""Comparing ``predict --cluster``'s records with in-process ``predict``'s."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_same_predictions(records: list[dict], expected: dict[str, dict]) -> None:
    """``records`` hold every image of ``expected`` (in-process records by file
    name) once, with its size and detections (scores to 2e-4, boxes to 0.02 px:
    the actors' torch may add in another order)."""
    names = [Path(r["file"]).name for r in records]
    assert sorted(names) == sorted(expected)  # every image, once
    for record in records:
        want = expected[Path(record["file"]).name]
        assert (record["width"], record["height"]) == (want["width"], want["height"])
        got, wanted = record["detections"], want["detections"]
        assert [d["label"] for d in got] == [d["label"] for d in wanted]
        for a, b in zip(got, wanted):
            assert a["score"] == pytest.approx(b["score"], abs=2e-4)
            assert a["box_xyxy"] == pytest.approx(b["box_xyxy"], abs=0.02)
