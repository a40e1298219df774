"""Job specs (``jobs/*.yaml``): a Ray job described as data. Pure: no Ray here.

A spec's keys are the keyword arguments of Ray's
``JobSubmissionClient.submit_job``, each of which is also a ``ray job submit``
option, so a spec is not a private format::

    entrypoint: detr-ray train configs/shapes_tiny.yaml   # ray job submit -- CMD
    runtime_env: {working_dir: ., env_vars: {...}}        # --runtime-env-json
    submission_id: my-run-1                               # --submission-id
    metadata: {project: detr-ray}                         # --metadata-json
    entrypoint_num_cpus: 0                                # --entrypoint-num-cpus
    entrypoint_num_gpus: 0                                # --entrypoint-num-gpus
    entrypoint_memory: 0                                  # --entrypoint-memory (bytes)
    entrypoint_resources: {}                              # --entrypoint-resources

:func:`ray_submit_command` writes the equivalent ``ray job submit`` command.
The entrypoint is a plain command (no ``$``, ``;``, ``|``, newlines...): ``ray job
submit -- CMD`` quotes each word, so shell syntax would mean something else
there. It is stored as Ray's CLI would send it (``shlex.join`` of its words), so
the two ways of submitting run the very same string: a glob or a ``~`` is a
literal word in both.
Relative paths (``runtime_env.working_dir``) are relative to the current
directory, as with ``ray job submit``.

:func:`check_entrypoint` catches, before anything reaches a cluster, what
would otherwise fail minutes later on it: a ``detr-ray train|tune`` entrypoint
whose config file is not in the working directory, a bad ``--set`` key, or a
relative ``run.storage_path`` (which would put checkpoints inside Ray's
temporary copy of the working directory, deleted with it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from detr_ray.config import ExperimentConfig, load_config, read_yaml_file
from detr_ray.errors import ConfigError

SHELL_SYNTAX = set("$`;|&<>()")
DETR_PROGRAMS = {"detr-ray"}  # also ``python -m detr_ray.cli``
DETR_SUBCOMMANDS = {"train", "tune"}


@dataclass(frozen=True)
class JobSpec:
    """One Ray job: the fields of ``JobSubmissionClient.submit_job``."""

    entrypoint: str
    runtime_env: dict = field(default_factory=dict)
    submission_id: str | None = None
    metadata: dict = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict | None = None
    source: str = "<job spec>"  # the file it came from, for messages

    def submit_kwargs(self) -> dict:
        """Keyword arguments for ``JobSubmissionClient.submit_job`` (unset ones left out)."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs.pop("source")
        return {k: v for k, v in kwargs.items() if v not in (None, {}) or k == "entrypoint"}


_KEYS = [f.name for f in dataclasses.fields(JobSpec) if f.name != "source"]


def load_job_spec(path: str | os.PathLike) -> JobSpec:
    """Read and check a job spec YAML; every error names the file and the key."""
    raw = read_yaml_file(path, "job spec")
    return parse_job_spec(raw, str(path))


def parse_job_spec(raw, source: str) -> JobSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a job spec is a mapping with an 'entrypoint' key")
    for key in raw:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key {key!r}{hint}; a job spec holds "
                f"{', '.join(_KEYS)} (the options of `ray job submit`)"
            )
    entrypoint = raw.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise ConfigError(
            f"{source}: 'entrypoint' must be a command, e.g. "
            "'detr-ray train configs/shapes_tiny.yaml'"
        )
    entrypoint = _check_plain_command(entrypoint, source)
    for key in ("runtime_env", "metadata", "entrypoint_resources"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"{source}: {key!r} must be a mapping, got {raw[key]!r}")
    env_vars = (raw.get("runtime_env") or {}).get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise ConfigError(f"{source}: 'runtime_env.env_vars' must be a mapping of strings")
    for name, value in env_vars.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"{source}: runtime_env.env_vars.{name} must be a string "
                f"(quote it in YAML), got {value!r}"
            )
    for key, value in (raw.get("metadata") or {}).items():
        if not isinstance(value, str):
            raise ConfigError(f"{source}: metadata.{key} must be a string, got {value!r}")
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ConfigError(f"{source}: {key} must be a number >= 0, got {value!r}")
    if isinstance(raw.get("entrypoint_memory"), float):
        raise ConfigError(f"{source}: entrypoint_memory is in bytes, a whole number")
    submission_id = raw.get("submission_id")
    if submission_id is not None and not isinstance(submission_id, str):
        raise ConfigError(f"{source}: submission_id must be a string, got {submission_id!r}")
    fields = {k: raw[k] for k in _KEYS if raw.get(k) is not None}
    fields["entrypoint"] = entrypoint
    fields.setdefault("runtime_env", {})
    fields.setdefault("metadata", {})
    return JobSpec(**fields, source=source)


def _check_plain_command(entrypoint: str, source: str) -> str:
    """The entrypoint as ``ray job submit -- WORDS`` sends it, or an error for shell syntax."""
    if "\n" in entrypoint.strip():
        raise ConfigError(
            f"{source}: entrypoint spans several lines; a job spec holds one "
            "command (YAML '>-' folds lines into one)"
        )
    try:
        words = shlex.split(entrypoint)
    except ValueError as e:
        raise ConfigError(
            f"{source}: entrypoint is not a valid command ({e}): {entrypoint}"
        ) from None
    lexer = shlex.shlex(entrypoint, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    operators = [w for w in lexer if w and set(w) <= SHELL_SYNTAX]
    if operators or any(c in word for word in words for c in "$`"):
        raise ConfigError(
            f"{source}: entrypoint uses shell syntax ({entrypoint!r}); a job spec holds one "
            "plain command, run alike by `detr-ray submit` and `ray job submit -- CMD`. Put "
            "environment variables in runtime_env.env_vars and steps in a script."
        )
    return shlex.join(words)


def with_config_overrides(spec: JobSpec, overrides: list[str]) -> JobSpec:
    """The spec whose ``detr-ray train|tune`` entrypoint gets ``--set KEY=VALUE`` appended."""
    if not overrides:
        return spec
    if detr_command(spec) is None:
        raise ConfigError(
            f"{spec.source}: --set changes a detr-ray config, but the entrypoint is not a "
            f"'detr-ray train|tune' command: {spec.entrypoint}"
        )
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
    extra = " ".join(f"--set {shlex.quote(item)}" for item in overrides)
    return dataclasses.replace(spec, entrypoint=f"{spec.entrypoint} {extra}")


def detr_command(spec: JobSpec) -> list[str] | None:
    """The arguments after ``detr-ray`` if the entrypoint is ``detr-ray train|tune ...``."""
    words = shlex.split(spec.entrypoint)
    if words[:1] and Path(words[0]).name in DETR_PROGRAMS:
        args = words[1:]
    elif (
        len(words) >= 3
        and Path(words[0]).name.startswith("python")
        and words[1:3] == ["-m", "detr_ray.cli"]
    ):
        args = words[3:]
    else:
        return None
    return args if args[:1] and args[0] in DETR_SUBCOMMANDS else None


def working_dir(spec: JobSpec, cwd: str | os.PathLike = ".") -> Path | None:
    """The local folder the job's working directory is uploaded from (None: none or remote)."""
    value = spec.runtime_env.get("working_dir")
    if value is None or _is_remote(value):
        return None
    folder = Path(cwd) / Path(str(value)).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{spec.source}: runtime_env.working_dir {value!r} is not a folder (it is relative "
            f"to the current directory, {Path(cwd).resolve()}, as with `ray job submit`)"
        )
    return folder.resolve()


def _is_remote(working_dir) -> bool:
    return "://" in str(working_dir)  # s3://, gs://, https://...zip: Ray downloads it


def check_entrypoint(spec: JobSpec, parse_args, cwd: str | os.PathLike = ".") -> None:
    """Check a ``detr-ray train|tune`` entrypoint the way the job will see it.

    ``parse_args`` is the ``detr-ray`` argument parser's ``parse_args``: the
    entrypoint's flags must parse, its config (and search space) must load from
    the job's working directory with its ``--set`` overrides, and
    ``run.storage_path`` must be absolute (or start with ``~``) whenever a
    working directory is uploaded. A local ``runtime_env.working_dir`` must
    exist whatever the entrypoint. With a remote working_dir (``s3://...``)
    only the flags can be checked here.
    """
    upload = working_dir(spec, cwd)
    args = detr_command(spec)
    if args is None:
        return
    try:
        parsed = parse_args(args)
    except SystemExit:
        raise ConfigError(
            f"{spec.source}: the entrypoint's arguments do not parse (see the "
            f"usage above): {spec.entrypoint}"
        ) from None
    if _is_remote(spec.runtime_env.get("working_dir", "")):
        return
    job_cwd = upload or Path(cwd).resolve()
    config_path = job_cwd / parsed.config
    if not config_path.is_file():
        where = f"the working_dir {job_cwd}" if upload else f"{job_cwd}"
        raise ConfigError(
            f"{spec.source}: the entrypoint's config {parsed.config} is not in {where}; run "
            "`detr-ray submit` from the folder runtime_env.working_dir is relative to "
            "(the repository root for the shipped specs)"
        )
    try:
        config = load_config(config_path, parsed.overrides)
    except ConfigError as e:
        raise ConfigError(f"{spec.source}: the entrypoint's config: {e}") from None
    if getattr(parsed, "space", None) and not (job_cwd / parsed.space).is_file():
        raise ConfigError(
            f"{spec.source}: the entrypoint's --space {parsed.space} is not in {job_cwd}"
        )
    if upload is not None:
        _check_storage_outlives_job(config, spec)


def _check_storage_outlives_job(config: ExperimentConfig, spec: JobSpec) -> None:
    storage = config.run.storage_path
    if not (storage.startswith("~") or os.path.isabs(storage)):
        raise ConfigError(
            f"{spec.source}: run.storage_path is {storage!r}, relative to the job's working "
            "directory, which is Ray's temporary copy of runtime_env.working_dir: checkpoints "
            "and the MLflow store would be deleted with it. Add e.g. --set "
            "run.storage_path=~/detr-ray/runs on one machine, or an absolute path every node "
            "reaches (a shared file system) on a cluster."
        )


def ray_submit_command(spec: JobSpec, address: str | None = None) -> list[str]:
    """The ``ray job submit`` command (argv) that submits exactly this spec."""
    argv = ["ray", "job", "submit"]
    if address:
        argv += ["--address", address]
    if spec.submission_id:
        argv += ["--submission-id", spec.submission_id]
    if spec.runtime_env:
        argv += ["--runtime-env-json", json.dumps(spec.runtime_env, sort_keys=True)]
    if spec.metadata:
        argv += ["--metadata-json", json.dumps(spec.metadata, sort_keys=True)]
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        if getattr(spec, key) is not None:
            argv += ["--" + key.replace("_", "-"), str(getattr(spec, key))]
    if spec.entrypoint_resources:
        argv += ["--entrypoint-resources", json.dumps(spec.entrypoint_resources)]
    return argv + ["--"] + shlex.split(spec.entrypoint)
