"""`make gpu-check` in its CPU form, so the script cannot rot before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        # a Ray of its own, in a private Ray temp folder (short: Ray's socket paths)
        env={**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt-", dir="/tmp"), **(env or {})},
    )


def test_the_cpu_form_measures_every_row_and_writes_json(tmp_path):
    out = _run("--device", "cpu", "--tiny", "--out", str(tmp_path / "check.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    rows = {(row["family"], row["amp"]): row for row in report["steps"]}
    families = ("detr", "deformable_detr")
    assert set(rows) == {(f, a) for f in families for a in ("off", "bf16", "fp16")}
    assert all(r["batch"] == 2 for r in rows.values())
    for family in families:
        assert "GPU" in rows[family, "fp16"]["error"]  # fp16 needs a GPU: said, not crashed
    for key in [(f, a) for f in families for a in ("off", "bf16")]:
        row = rows[key]
        assert row["step"]["images_per_s"] > 0 and row["hf"]["images_per_s"] > 0
        assert 0 < row["match_loss_share"] < 1
        # the step's one host read: the matching costs (with the skip flag)
        assert row["host_syncs"] == 1, row
        ours, theirs = row["params"]["detr_ray"], row["params"]["hf"]
        assert abs(ours - theirs) / ours < 0.01  # the same architecture, built twice
    assert report["eval_images_per_s"] > 0 and report["loader_images_per_s"] > 0
    assert report["ray"]["ray_images_per_s"] > 0 and report["ray"]["plain_images_per_s"] > 0
    assert "1-worker Ray Train" in out.stdout and "host sync" in out.stdout
    assert "deformable_detr batch 2  off" in out.stdout


def test_it_refuses_to_start_without_what_it_needs(tmp_path):
    # no GPU here: --device cuda stops before any work, saying why
    out = _run("--device", "cuda", "--out", str(tmp_path / "x.json"), timeout=120)
    assert out.returncode != 0 and "CUDA device" in out.stderr
    assert "batch" not in out.stdout and not (tmp_path / "x.json").exists()
    # transformers missing (a stand-in module that fails to import, first on the path)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "transformers.py").write_text("raise ImportError('not installed')\n")
    out = _run(
        "--device", "cpu", "--tiny", "--out", str(tmp_path / "y.json"),
        env={"PYTHONPATH": str(tmp_path / "fake")}, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0 and "pip install 'detr-ray[bench]'" in out.stderr
    assert not (tmp_path / "y.json").exists()
