"""The command line as a user meets it: version, help, inspection commands, small mistakes."""

from __future__ import annotations

import pytest
import yaml

from detr_ray import __version__
from detr_ray.cli import build_parser, main
from detr_ray.config.model import PRESETS
from detr_ray.data.synthetic import generate
from detr_ray.model.build import build_model


def test_version_and_help_with_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"detr-ray {__version__}"
    helps = {
        ("tune", "--help"): ["(default: val/AP)", "(default: asha)", "(default: 4)"],
        ("data", "synth", "--help"): ["(default: 512)", "(default: 128)"],
        ("predict", "--help"): ["(default: 0.5)"],
        ("dashboard", "--help"): ["(default: runs)", "(default: 5000)"],
        ("eval", "--help"): ["(default: error)", "(default: 2)"],
    }
    for argv, expected in helps.items():
        with pytest.raises(SystemExit):
            main(list(argv))
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for piece in expected:
            assert piece in text, (argv, piece)


def test_config_show_prints_what_train_would_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shapes = generate(tmp_path / "d", num_train=2, num_val=1, size=32, seed=0)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "detr_r18_tiny"},
                "data": {
                    "train_ann": "d/annotations/train.json",
                    "train_images": "d/train",
                    "val_ann": "d/annotations/val.json",
                    "val_images": "d/val",
                },
                "run": {"storage_path": "~/runs"},
            }
        )
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        main(["config", "show", str(config), "--set", "train.epochs=7", "--num-workers", "3"]) == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["num_classes"] == 3 and shown["model"]["d_model"] == 64
    assert shown["data"]["train_ann"] == str(shapes.train_ann)
    assert shown["run"]["storage_path"] == str(tmp_path / "home" / "runs")
    assert shown["train"]["epochs"] == 7 and shown["scaling"]["num_workers"] == 3
    assert not (tmp_path / "home").exists()  # shown, not created


def test_model_list_counts_parameters(capsys):
    assert main(["model", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == list(PRESETS)
    for line in lines:
        name, columns = line.split()[0], line.split()
        config = PRESETS[name]
        model = build_model(type(config)(**{**vars(config), "num_classes": 91}))
        total = sum(p.numel() for p in model.parameters()) / 1e6
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        assert columns[-2:] == [f"{total:.1f}M", f"{trainable:.1f}M"], line
    # the official detr_r50 (41.3M trainable in the paper's code, 91 + 1 classes)
    r50 = next(line for line in lines if line.startswith("detr_r50 "))
    assert r50.split()[-1] == "41.3M"


def test_data_check_exits_1_when_training_would_stop(tmp_path, capsys):
    shapes = generate(tmp_path / "d", num_train=3, num_val=1, size=32, seed=0)
    assert main(["data", "check", str(shapes.train_ann), str(shapes.train_images)]) == 0
    assert "ready to train" in capsys.readouterr().out
    next(shapes.train_images.iterdir()).unlink()
    assert main(["data", "check", str(shapes.train_ann), str(shapes.train_images)]) == 1
    out = capsys.readouterr().out
    assert "problem: 1 of 3 images" in out and "are missing" in out
    assert "would stop training" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "synth", "--out", "{file}"], "--out .*a_file is a file; give a folder"),
        (["data", "synth", "--out", "{dir}", "--size", "100000"], r"size must be in \[16, 4096\]"),
        (["data", "synth", "--out", "{dir}", "--train", "0"], "num_train must be >= 1, got 0"),
        (["dashboard", "--tracking-uri", "ftp://host/x"], "unsupported scheme 'ftp'"),
        (["dashboard", "--tracking-uri", "file:///tmp/m"], "file store is off by default"),
        (
            ["predict", "--checkpoint", "x.pt", "--out", "{dir}", "{file}", "--threshold", "-1"],
            r"--threshold must be in \[0, 1\]",
        ),
        (["eval", "--ann", "a.json", "--checkpoint", "x.pt"], "--checkpoint needs --images"),
        (
            ["predict", "--model", "models:/m@champion", "--storage-path", "{dir}", "{file}"]
            + ["--out", "{dir}"],
            "no MLflow store at .*mlflow.db for --model models:/m@champion: train first",
        ),
    ],
)
def test_small_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    import re

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [a.format(file=a_file, dir=tmp_path / "out") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detr-ray: error:"), err
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()


def test_the_earlier_metric_spellings_mean_the_mlflow_names():
    from detr_ray.tune.options import METRIC_ALIASES, METRICS

    assert build_parser().parse_args(["tune", "c", "--space", "s", "--metric", "val_AP"])
    assert {alias: METRICS[name] for alias, name in METRIC_ALIASES.items()} == {
        "val_AP": "max",
        "val_AP50": "max",
    }


def test_predict_names_a_registered_model_that_is_not_there(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # an existing store, without that model
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    argv = ["predict", "--model", "models:/nope@champion", "--tracking-uri", uri, str(image)]
    assert main(argv + ["--out", str(tmp_path / "out")]) == 2
    ours = [e for e in capsys.readouterr().err.splitlines() if e.startswith("detr-ray")]
    assert len(ours) == 1 and ours[0].startswith("detr-ray: error: --model models:/nope@champion")
    assert uri in ours[0], ours[0]


@pytest.mark.parametrize(
    "flag, workers",
    [("2:8", (2, 8)), ("4", (None, 4)), ("3:3", (3, 3))],
)
def test_num_workers_takes_a_size_or_an_elastic_range(flag, workers):
    from detr_ray.cli.run import run_config

    args = build_parser().parse_args(["train", "configs/shapes_tiny.yaml", "--num-workers", flag])
    scaling = run_config(args).scaling
    assert (scaling.min_workers, scaling.num_workers) == workers
    assert scaling.elastic == (flag == "2:8")  # 3:3 is a fixed size


@pytest.mark.parametrize("flag", ["8:2", "0", "a:b", "2:"])
def test_a_bad_worker_range_is_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "configs/shapes_tiny.yaml", "--num-workers", flag])
    assert "--num-workers" in capsys.readouterr().err


def test_min_workers_above_num_workers_names_the_key(tmp_path, capsys):
    code = main(["config", "show", "configs/shapes_tiny.yaml", "--set", "scaling.min_workers=3"])
    assert code == 2 and "scaling.min_workers" in capsys.readouterr().err
