"""Every bad input is caught on the driver before Ray starts, and nothing is written.

The cases run ``detr-ray train`` (or ``tune``) one after another in a fresh
interpreter, as a user would, and each checks: exit code 2 (1 for an unreachable server), a
one-line message naming the file, key or value, Ray never imported (so no Ray
process was started), no run folder and no MLflow store created.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.support.experiments import CliCase, run_cli_cases_reporting_ray
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "shapes_tiny.yaml"


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=4, num_val=2, size=64, seed=2)


def data_flags(shapes, **paths) -> list[str]:
    values = {
        "train_ann": shapes.train_ann,
        "train_images": shapes.train_images,
        "val_ann": shapes.val_ann,
        "val_images": shapes.val_images,
    } | paths
    flags = ["--set", "data.synthetic=null"]
    for key, value in values.items():
        flags += ["--set", f"data.{key}={value}"]
    return flags


def run_cli(tmp_path: Path, *argvs: list[str]) -> list[CliCase]:
    """Each of ``argvs`` (``COMMAND CONFIG ...``), storing under ``tmp_path/runs``
    unless a later ``--set`` says otherwise, in one new interpreter: none imports
    Ray, none creates the storage."""
    storage = tmp_path / "runs"
    where = ["--set", f"run.storage_path={storage}"]
    cases = run_cli_cases_reporting_ray(tmp_path, [[*a[:2], *where, *a[2:]] for a in argvs])
    for case in cases:
        assert not case.ray_imported, (case.argv, case.stderr)
    assert not storage.exists(), f"{storage} was created"
    return cases


def one_line_error(out: CliCase) -> str:
    lines = [x for x in out.stderr.splitlines() if x.startswith("detr-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_bad_inputs_fail_before_ray_naming_what_to_fix(shapes, tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_text(shapes.val_ann.read_text()[:200])
    missing_image = tmp_path / "missing_image.json"
    data = json.loads(shapes.train_ann.read_text())
    data["images"][1]["file_name"] = "gone.png"
    missing_image.write_text(json.dumps(data))
    resized = tmp_path / "resized"
    resized.mkdir()
    for path in shapes.train_images.iterdir():
        Image.open(path).resize((10, 10)).save(resized / path.name)  # headers disagree
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    empty_config = tmp_path / "empty.yaml"
    empty_config.write_text("# nothing here\n")
    port = free_port()  # nothing listens there
    cases = [
        (data_flags(shapes, val_ann=truncated), r"truncated.json is not valid JSON.*truncated"),
        (data_flags(shapes, train_images=tmp_path / "nowhere"), "image folder .*nowhere .*not"),
        (
            data_flags(shapes, train_ann=missing_image),
            r"1 of 4 images in .*missing_image.json are missing .* 'gone.png' \(image id 1\)"
            r".*data.on_bad_image: skip",
        ),
        (
            data_flags(shapes, train_images=resized),
            r"4 of 4 images .* of another size than the annotation says .* is 10x10",
        ),
        (
            [*data_flags(shapes), "--resume-from", str(tmp_path / "no.pt")],
            r"run.resume_from: checkpoint .*no.pt does not exist",
        ),
        (
            [*data_flags(shapes), "--set", f"model.init_from={tmp_path / 'w.pt'}"],
            r"model.init_from: checkpoint .*w.pt does not exist",
        ),
        (
            [*data_flags(shapes), "--set", f"tracking.uri=http://127.0.0.1:{port}"],
            rf"the MLflow server tracking.uri http://127.0.0.1:{port} does not answer",
        ),
        (
            [*data_flags(shapes), "--set", "tracking.uri=ftp://example"],
            "tracking.uri 'ftp://example' has the unsupported scheme 'ftp'",
        ),
        (
            [*data_flags(shapes), "--gpu"],
            r"scaling.use_gpu \(--gpu\) asks for 2 GPU\(s\).*this machine has 0",
        ),
    ]
    # the storage path itself under a file (a later --set wins), and an empty config
    under_a_file = ["--set", f"run.storage_path={a_file}/runs"]
    argvs = [["train", str(CONFIG), *flags] for flags, _ in cases]
    argvs += [["train", str(CONFIG), *data_flags(shapes), *under_a_file]]
    argvs += [["train", str(empty_config)]]
    outs = run_cli(tmp_path, *argvs)
    for (flags, message), out in zip(cases, outs):
        assert out.returncode == 2, (flags, out.stderr)
        line = one_line_error(out)
        assert re.search(message, line), (message, line)
    assert outs[-2].returncode == 2 and "a_file is a file, not a folder" in one_line_error(outs[-2])
    assert outs[-1].returncode == 2 and "empty.yaml is empty" in one_line_error(outs[-1])


def test_a_sweep_checks_its_search_algorithm_and_data_before_ray(shapes, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  loss.bg_cls_weight: {uniform: [0.05, 0.2]}\n")
    tune = ["tune", str(CONFIG), "--space", str(space)]
    argvs = [[*tune, *data_flags(shapes, val_images=tmp_path / "nowhere")]]
    try:
        import optuna  # noqa: F401  (not in the dev extras: CI checks the message)
    except ImportError:
        argvs.append([*tune, "--search", "optuna", *data_flags(shapes)])
    outs = run_cli(tmp_path, *argvs)
    assert outs[0].returncode == 2 and "nowhere" in one_line_error(outs[0])
    if len(outs) == 2:
        assert outs[1].returncode == 2
        assert "--search optuna needs Optuna, which is not installed" in one_line_error(outs[1])
