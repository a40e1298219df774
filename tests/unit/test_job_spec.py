"""Job specs (pure): loading, checks that run before anything reaches a cluster,
the `ray job submit` twin, and the launcher config of cluster.yaml."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import pytest
import yaml

from detr_ray.cli import build_parser, main
from detr_ray.errors import ConfigError
from detr_ray.jobs.spec import (
    check_entrypoint,
    load_job_spec,
    parse_job_spec,
    ray_submit_command,
    with_config_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "jobs").glob("*.yaml"))


def parse(text: str, source="spec.yaml"):
    return parse_job_spec(yaml.safe_load(text), source)


def test_the_three_shipped_specs_exist_and_pass_every_check_from_the_repository_root():
    assert {p.name for p in SHIPPED} == {
        "train_shapes_local.yaml",
        "train_coco_r50.yaml",
        "sweep_costs.yaml",
    }
    parse_args = build_parser().parse_args
    for path in SHIPPED:
        spec = load_job_spec(path)
        check_entrypoint(spec, parse_args, cwd=ROOT)  # config, --set keys, storage path
        assert spec.runtime_env["working_dir"] == "."
        assert spec.metadata["project"] == "detr-ray"
        assert spec.submit_kwargs()["entrypoint"] == spec.entrypoint
    coco = load_job_spec(ROOT / "jobs" / "train_coco_r50.yaml")
    args = build_parser().parse_args(shlex.split(coco.entrypoint)[1:])
    assert (args.num_workers, args.gpu) == ((None, 8), True)  # 8 workers, a fixed size


def test_the_ray_cli_twin_submits_the_same_fields():
    spec = parse(
        "entrypoint: detr-ray train configs/shapes_tiny.yaml --set 'train.lr_drop_epochs=[4, 8]'\n"
        "runtime_env: {working_dir: ., env_vars: {A: '1'}}\n"
        "submission_id: s-1\nmetadata: {team: vision}\n"
        "entrypoint_num_cpus: 0.5\nentrypoint_memory: 1000\nentrypoint_resources: {disk: 1}\n"
    )
    argv = ray_submit_command(spec, "http://127.0.0.1:8265")
    assert argv[:3] == ["ray", "job", "submit"]
    # What `ray job submit` does with its argv: options by name, the entrypoint words joined.
    split = argv.index("--")
    options = dict(zip(argv[3:split:2], argv[4:split:2]))
    assert options["--address"] == "http://127.0.0.1:8265"
    assert options["--submission-id"] == "s-1"
    assert json.loads(options["--runtime-env-json"]) == spec.runtime_env
    assert json.loads(options["--metadata-json"]) == {"team": "vision"}
    assert float(options["--entrypoint-num-cpus"]) == 0.5
    assert int(options["--entrypoint-memory"]) == 1000
    assert json.loads(options["--entrypoint-resources"]) == {"disk": 1}
    rejoined = shlex.join(argv[split + 1 :])  # Ray's CLI: shlex.join(entrypoint words)
    assert shlex.split(rejoined) == shlex.split(spec.entrypoint)
    assert shlex.split(rejoined)[-1] == "train.lr_drop_epochs=[4, 8]"


def test_the_entrypoint_is_stored_as_rays_cli_sends_it():
    # `ray job submit -- WORDS` sends shlex.join(WORDS): a glob or a ~ is a literal word
    # there, and detr-ray submit sends the same string, so /bin/sh cannot expand it.
    spec = parse("entrypoint: detr-ray train c.yaml --set run.name=*x --set a=~/r\n")
    assert spec.entrypoint == "detr-ray train c.yaml --set 'run.name=*x' --set 'a=~/r'"
    assert spec.entrypoint == shlex.join(ray_submit_command(spec)[4:])


def test_a_remote_working_dir_is_not_looked_for_locally(tmp_path):
    spec = parse(
        "entrypoint: detr-ray train configs/c.yaml\n"
        "runtime_env: {working_dir: 's3://bucket/code.zip'}\n"
    )
    check_entrypoint(spec, build_parser().parse_args, cwd=tmp_path)  # no configs/ here
    bad_flags = parse("entrypoint: detr-ray train\nruntime_env: {working_dir: 's3://b/c.zip'}\n")
    with pytest.raises(ConfigError, match="arguments do not parse"):
        check_entrypoint(bad_flags, build_parser().parse_args, cwd=tmp_path)


def test_an_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"spec.yaml: unknown key 'runtime_envs'.*'runtime_env'"):
        parse("entrypoint: detr-ray train c.yaml\nruntime_envs: {}\n")


@pytest.mark.parametrize(
    "text, message",
    [
        ("runtime_env: {}\n", "'entrypoint' must be a command"),
        ("entrypoint: detr-ray train c.yaml && rm -rf x\n", "shell syntax"),
        ("entrypoint: echo $HOME\n", "shell syntax"),
        ("entrypoint: 'detr-ray train \"c.yaml'\n", "not a valid command"),
        ("entrypoint: x\nruntime_env: {env_vars: {N: 4}}\n", r"env_vars.N must be a string"),
        ("entrypoint: x\nentrypoint_num_cpus: -1\n", "entrypoint_num_cpus must be a number >= 0"),
        ("entrypoint: x\nentrypoint_memory: 1.5\n", "entrypoint_memory is in bytes"),
        ("entrypoint: x\nmetadata: {n: 3}\n", "metadata.n must be a string"),
        ("- a list\n", "a job spec is a mapping"),
        ("entrypoint: |\n  detr-ray train c.yaml\n  rm x\n", "spans several lines"),
    ],
)
def test_bad_specs_are_refused_with_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse(text)


def _repo_like(tmp_path: Path, storage: str) -> Path:
    (tmp_path / "configs").mkdir()
    text = (ROOT / "configs" / "shapes_tiny.yaml").read_text()
    assert "storage_path: runs" in text
    (tmp_path / "configs" / "c.yaml").write_text(
        text.replace("storage_path: runs", f"storage_path: {storage}")
    )
    return tmp_path


def test_entrypoint_checks_catch_what_would_fail_on_the_cluster(tmp_path):
    parse_args = build_parser().parse_args
    repo = _repo_like(tmp_path, "runs")
    uploaded = parse("entrypoint: detr-ray train configs/c.yaml\nruntime_env: {working_dir: .}\n")
    # A relative storage path would live in Ray's temporary copy of working_dir.
    with pytest.raises(ConfigError, match="run.storage_path is 'runs'.*deleted with it"):
        check_entrypoint(uploaded, parse_args, cwd=repo)
    for storage in ("~/detr-ray/runs", "/shared/runs"):
        check_entrypoint(
            with_config_overrides(uploaded, [f"run.storage_path={storage}"]), parse_args, cwd=repo
        )
    # Without an upload the job runs where the cluster started: relative is allowed.
    check_entrypoint(parse("entrypoint: detr-ray train configs/c.yaml\n"), parse_args, cwd=repo)
    # A bad --set key is named, locally.
    bad = with_config_overrides(uploaded, ["train.epoch=2"])
    with pytest.raises(ConfigError, match="train.epoch"):
        check_entrypoint(bad, parse_args, cwd=repo)
    # Submitting from the wrong folder: the config is not in the uploaded working_dir.
    with pytest.raises(ConfigError, match=r"config configs/c.yaml is not in the working_dir"):
        check_entrypoint(uploaded, parse_args, cwd=repo / "configs")
    for entrypoint in ("detr-ray train configs/c.yaml", "python train.py"):
        missing = parse(f"entrypoint: {entrypoint}\nruntime_env: {{working_dir: nowhere}}\n")
        with pytest.raises(ConfigError, match="working_dir 'nowhere' is not a folder"):
            check_entrypoint(missing, parse_args, cwd=repo)
    # Any other entrypoint is the user's business: only its working_dir is checked.
    check_entrypoint(parse("entrypoint: python train.py --set x=1\n"), parse_args, cwd=repo)


def test_set_appends_quoted_overrides_to_a_detr_ray_entrypoint_only():
    spec = parse("entrypoint: python -m detr_ray.cli tune c.yaml --space s.yaml\n")
    spec = with_config_overrides(spec, ["train.lr_drop_epochs=[2, 3]", "run.name=a b"])
    words = shlex.split(spec.entrypoint)
    assert words[-4:] == ["--set", "train.lr_drop_epochs=[2, 3]", "--set", "run.name=a b"]
    with pytest.raises(ConfigError, match="not a 'detr-ray train|tune' command"):
        with_config_overrides(parse("entrypoint: python train.py\n"), ["a=1"])


def test_the_command_line_names_the_file_and_key_of_a_bad_spec(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("entrypoint: detr-ray train configs/shapes_tiny.yaml\nruntime_env: 3\n")
    assert main(["submit", str(path), "--print-ray-command"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 'runtime_env' must be a mapping" in err
    assert main(["submit", str(tmp_path / "absent.yaml")]) == 2
    assert "job spec" in capsys.readouterr().err


# ------------------------------------------------------------------ cluster.yaml
def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_launcher_schema_and_is_safe_by_default():
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    _validate(cluster)
    # The validator is not a rubber stamp: a misspelt key and a missing head type fail.
    misspelt = copy.deepcopy(cluster)
    misspelt["available_node_types"]["head"]["node_confg"] = {}
    with pytest.raises(Exception, match="node_confg"):
        _validate(misspelt)
    wrong_head = dict(cluster, head_node_type="cpu_head")
    with pytest.raises(ValueError, match="head_node_type"):
        _validate(wrong_head)
    # Loopback dashboard, token authentication on every `ray start`, MLflow on loopback
    # (+ the private address for the nodes), and the token shipped to every node.
    starts = [
        c
        for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
        if "ray start" in c
    ]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "--host 127.0.0.1" in head and "MLFLOW_TRACKING_URI=http://$HEAD_IP:5000" in head
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("/shared" in c for c in cluster["initialization_commands"])


def test_the_address_comes_from_the_flag_then_the_api_variable_then_ray_address(monkeypatch):
    from detr_ray.jobs.client import resolve_address

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == (None, "the local Ray cluster")
    monkeypatch.setenv("RAY_ADDRESS", "http://b:8265")
    assert resolve_address(None) == ("http://b:8265", "RAY_ADDRESS")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://a:8265")
    assert resolve_address(None) == ("http://a:8265", "RAY_API_SERVER_ADDRESS")
    assert resolve_address("http://c:8265") == ("http://c:8265", "--address")
    assert resolve_address("auto") == (None, "--address")  # Ray's word for "this machine"


def test_train_with_an_unreachable_address_fails_fast_naming_it(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    small = ["data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.size=32"]
    sets = [arg for item in small for arg in ("--set", item)]
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "detr_ray.cli",
            "train",
            str(ROOT / "configs" / "shapes_tiny.yaml"),
            "--address",
            closed,
            *sets,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot reach the Ray cluster at {closed} (from --address)" in out.stderr
