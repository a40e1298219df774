"""``detr-ray submit`` and ``detr-ray jobs ...``: job specs on a Ray cluster's Jobs API."""

from __future__ import annotations

import argparse

from detr_ray.errors import ClusterError


def run_submit(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    from detr_ray.jobs.spec import (
        check_entrypoint,
        load_job_spec,
        ray_submit_command,
        with_config_overrides,
    )

    spec = with_config_overrides(load_job_spec(args.job), args.overrides)
    if args.submission_id:
        spec = dataclasses.replace(spec, submission_id=args.submission_id)
    # the whole command line's parser (the parser module passes it: no import circle)
    check_entrypoint(spec, args.parse_entrypoint)
    if args.print_ray_command:
        print(shlex.join(ray_submit_command(spec, args.address)))
        return 0

    from detr_ray.jobs import client as jobs

    connection = jobs.connect(args.address)
    retry = jobs.retry_id(connection, spec)
    if retry is not None:
        new_id, earlier = retry
        print(
            f"[detr-ray] job {spec.submission_id} ended {earlier}: submitting it again as "
            f"{new_id} (the same run.name resumes from its latest checkpoint)",
            flush=True,
        )
        spec = dataclasses.replace(spec, submission_id=new_id)
    job_id = jobs.submit(connection, spec)
    address = connection.get_address()
    print(f"[detr-ray] submitted {job_id} to {address}: {spec.entrypoint}", flush=True)
    if not args.follow:
        print(f"[detr-ray] follow it: detr-ray jobs logs {job_id} --follow --address {address}")
        return 0
    try:
        status = jobs.follow(connection, job_id)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"stopped following; job {job_id} keeps running (detr-ray jobs stop {job_id} "
            f"--address {address} stops it)"
        ) from None
    print(f"[detr-ray] job {job_id} {status}", flush=True)
    return jobs.status_exit_code(status)


def run_jobs(args: argparse.Namespace) -> int:
    from detr_ray.jobs import client as jobs

    connection = jobs.connect(args.address)
    try:
        if args.action == "list":
            rows = jobs.job_table(connection)
            print(f"{'ID':<32} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT")
            for row in rows:
                print(
                    f"{row['id']:<32} {row['status']:<10} {row['start']:<19} "
                    f"{row['entrypoint'][:80]}"
                )
            if not rows:
                print("(no jobs)")
            return 0
        if args.action == "status":
            info = connection.get_job_info(args.id)
            message = f" ({info.message})" if info.message else ""
            print(f"{args.id}: {info.status.value}{message}")
            return 0
        if args.action == "logs":
            if args.follow:
                return jobs.status_exit_code(jobs.follow(connection, args.id))
            print(connection.get_job_logs(args.id), end="")
            return 0
        stopped = connection.stop_job(args.id)
        print(f"{args.id}: " + ("stop requested" if stopped else "not running (nothing to stop)"))
        return 0
    except RuntimeError as e:  # the Jobs API's answer, e.g. an unknown id
        raise ClusterError(f"{args.action} {getattr(args, 'id', '')}: {e}") from None
