"""One-command GPU readiness check: one table (and JSON) of what a GPU changes.

    make gpu-check                                   # = python bench/gpu_check.py
    python bench/gpu_check.py --device cpu --tiny    # the CPU form CI runs (under a minute)

On one GPU, at the official scale (``detr_r50`` and ``deformable_detr_r50``,
91 classes, validation-size images: short side 800, long side up to 1333,
batch 2 and 4), for each model family it measures:

- ``step``: detr-ray's training step (:meth:`Engine.train_step`, a step that
  does not log) in fp32, bf16 and fp16 autocast: images/s and peak memory;
- ``hf``: HF transformers' ``DetrForObjectDetection`` /
  ``DeformableDetrForObjectDetection`` built to the same architecture with
  the same trainable parameters (the counts are printed: equal at the
  official scale; the tiny form's group-norm ResNet differs by 0.1%), its
  loss, backward and AdamW step, on the same images and targets;
- ``match+loss``: the share of detr-ray's step spent in matching and the
  losses (forward and backward, on the step's own outputs);
- ``host syncs``: host-device synchronisations in one step (CUDA's sync debug
  mode counts them; on the CPU, calls that would synchronise are counted);
- ``ray``: a 1-worker ``detr-ray train`` against the same loop in this
  process, images/s as training logs them;
- ``eval``: detection and COCOeval of the validation images, images/s;
- ``loader``: the training data loader (decoding and DETR's augmentation) in
  images/s, against the fp32 step's.

``--tiny`` shrinks the model and images so the whole check takes under a
minute on a CPU (most of it Ray's start). Optional dependencies
(``transformers``) are checked before anything runs. Results go to
``--out`` (default ``gpu_check.json``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("off", "bf16", "fp16")  # train.amp


def refuse_without_dependencies(device: str) -> None:
    """Stop before any work when something the check needs is missing."""
    missing = []
    try:
        import transformers  # noqa: F401
    except ImportError:
        missing.append("transformers (pip install 'detr-ray[bench]')")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        missing.append(f"a CUDA device for --device {device} (torch {torch.__version__} sees none)")
    if missing:
        sys.exit("gpu-check cannot run: missing " + "; ".join(missing))


class Scale:
    """The sizes of the check: the official scale, or --tiny."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        # family -> preset
        self.presets = (
            {"detr": "detr_r18_tiny", "deformable_detr": "deformable_detr_r18_small"}
            if tiny
            else {"detr": "detr_r50", "deformable_detr": "deformable_detr_r50"}
        )
        self.preset = self.presets["detr"]
        self.image_size = 96 if tiny else 1333  # generated images' long side
        # tiny: 128x96 inputs, whose last maps are 3+ cells wide (torch 2.13's CPU
        # bfloat16 stride-2 conv is wrong on 1-2-cell-wide maps, in HF's model too)
        self.val_scale, self.max_size = (96, 128) if tiny else (800, 1333)
        self.batches = (2,) if tiny else (2, 4)
        self.warmup, self.steps = (1, 2) if tiny else (3, 10)
        self.ray_steps = 4 if tiny else 30
        self.num_images = 12 if tiny else 24


# ---------------------------------------------------------------------- setup
def make_config(
    scale: Scale, data, device: str, batch: int, amp: str, storage: str, family: str = "detr"
):
    from detr_ray.config import ExperimentConfig

    augmentation = {"val_scale": scale.val_scale, "max_size": scale.max_size}
    if scale.tiny:
        augmentation.update(train_scales=[64], crop_prob=0.0)
    return ExperimentConfig.from_dict(
        {
            "model": {"preset": scale.presets[family], "num_classes": 91},
            "data": {
                "train_ann": str(data.train_ann),
                "train_images": str(data.train_images),
                "val_ann": str(data.val_ann),
                "val_images": str(data.val_images),
                "augmentation": augmentation,
                "num_workers": 0,
            },
            "train": {"batch_size": batch, "amp": amp, "log_every": 10_000, "epochs": 1},
            "scaling": {"num_workers": 1, "use_gpu": device.startswith("cuda")},
            "run": {"storage_path": storage, "name": f"gpu-check-{time.time_ns()}"},
            "tracking": {"log_images": 0, "register_model": None, "system_metrics_every": 0},
        }
    )


def make_engine(config, device: str):

    from detr_ray.data.labels import LabelMap
    from detr_ray.model.build import build_model
    from detr_ray.train.build import build_engine
    from detr_ray.train.seeds import seed_everything

    seed_everything(0)
    # COCO's 91 ids; the generated images use the first three
    label_map = LabelMap(tuple(range(1, 92)), tuple(f"class{i}" for i in range(1, 92)))
    return build_engine(config, label_map, device, detr=build_model(config.model))


def fixed_batch(engine, batch: int):
    """``batch`` validation images (deterministic sizes: the official eval scale)."""
    return engine.collate([engine.val_set[i] for i in range(batch)])


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, warmup: int, steps: int) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def peak_memory(device: str, out: dict):
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    yield
    out["peak_mb"] = (
        torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    )


# ---------------------------------------------------------------------- measurements
def measure_step(engine, batch, device: str, scale: Scale) -> dict:
    result: dict = {}
    with peak_memory(device, result):
        seconds = timed(lambda: engine.train_step(batch), device, scale.warmup, scale.steps)
    result["images_per_s"] = len(batch) / seconds
    result["step_s"] = seconds
    return result


def measure_match_and_loss(engine, batch, device: str, scale: Scale) -> float:
    """Seconds of matching and the losses (forward and backward) on the step's outputs."""
    import torch

    from detr_ray.criterion.matcher import FlatTargets
    from detr_ray.model.training_detr import as_training_output

    moved = batch.to(device)
    images, mask = moved.inputs()
    with torch.no_grad(), engine.autocast():
        outputs = as_training_output(engine.distributed_model(images, mask))

    def match_and_loss():
        leaves = outputs._replace(
            **{
                name: value.detach().float().requires_grad_(True)
                for name, value in outputs._asdict().items()
                if isinstance(value, torch.Tensor)
            }
        )
        flat = FlatTargets.from_list(moved.targets, device=device)
        host = engine.objective.costs_to_host(leaves, flat, rider=torch.zeros(2, device=device))
        engine.objective(leaves, flat, host).objective.backward()

    return timed(match_and_loss, device, scale.warmup, scale.steps)


def count_host_syncs(engine, batch, device: str) -> int:
    """Host-device synchronisations in one train_step (see the module docstring)."""
    import torch

    engine.train_step(batch)  # warm: the optimiser's state exists
    if device.startswith("cuda"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                engine.train_step(batch)
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    calls: collections.Counter = collections.Counter()
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counting(name):
        def counted(self, *args, **kwargs):
            calls[name] += 1
            return originals[name](self, *args, **kwargs)

        return counted

    try:
        for name in names:
            setattr(torch.Tensor, name, counting(name))
        engine.train_step(batch)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return sum(calls.values())


def hf_model(scale: Scale, ours, device: str):
    """HF's DETR or Deformable DETR with detr-ray's architecture and the same
    parameters trained."""
    from hf_twins import hf_twin

    cfg = ours.config.model
    model = hf_twin(cfg, 91).to(device)
    # detr-ray trains the backbone's stages from `trainable_backbone_stages` on
    # (the official recipe: all but the stem and stage 1); HF freezes it all.
    frozen_stages = 5 - cfg.trainable_backbone_stages  # stem = 1, stage i = i + 1
    encoder = model.model.backbone.model
    encoder.embedder.requires_grad_(frozen_stages < 1)
    for index, stage in enumerate(encoder.encoder.stages):
        stage.requires_grad_(index + 2 > frozen_stages)
    return model


def measure_hf(model, engine, batch, device: str, scale: Scale) -> dict:
    import torch

    moved = batch.to(device)
    images, mask = moved.inputs()
    pixel_mask = (~mask).long()
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in moved.targets]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = engine.config.train.amp
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")

    def step():
        context = (
            torch.autocast(torch.device(device).type, dtype=dtype)
            if dtype
            else contextlib.nullcontext()
        )
        with context:
            loss = model(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        scaler.step(optimizer)
        scaler.update()

    result: dict = {}
    with peak_memory(device, result):
        seconds = timed(step, device, scale.warmup, scale.steps)
    result["images_per_s"] = len(batch) / seconds
    return result


def measure_eval(engine, device: str) -> float:
    from detr_ray.evaluation.coco_eval import evaluate

    synchronize(device)
    start = time.perf_counter()
    gathered = engine.evaluate()
    known = set(engine.val_set.coco.getCatIds())  # the untrained model's other classes
    results = [r for r in gathered.results if r["category_id"] in known]
    evaluate(engine.val_set.coco, results, image_ids=gathered.image_ids)
    return len(gathered.image_ids) / (time.perf_counter() - start)


def measure_loader(engine, batch: int) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(engine.train_set, batch_size=batch, collate_fn=engine.collate)
    start = time.perf_counter()
    seen = sum(len(b) for b in loader if b is not None)
    return seen / (time.perf_counter() - start)


def measure_ray(scale: Scale, data, device: str, storage: str) -> dict:
    """1-worker detr-ray train against the same loop here, images/s as logged."""
    from dataclasses import replace

    import torch
    from mlflow.tracking import MlflowClient

    from detr_ray.train.launcher import run_training

    base = make_config(scale, data, device, scale.batches[0], "off", storage)
    train = replace(base.train, max_steps_per_epoch=scale.ray_steps, log_every=1, eval_every=1000)
    config = replace(base, train=train)
    rates: list[float] = []
    engine = make_engine(config, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))  # as the Ray worker
    try:
        engine.train_epoch(on_log=lambda log: rates.append(log.metrics["images_per_s"]))
    finally:
        torch.set_num_threads(threads)
    outcome = run_training(config)
    client = MlflowClient(outcome.tracking_uri)
    history = client.get_metric_history(outcome.mlflow_run_id, "images_per_s")
    ray_rates = [m.value for m in sorted(history, key=lambda m: m.step)]
    plain = statistics.median(rates[1:] or rates)
    in_ray = statistics.median(ray_rates[1:] or ray_rates)
    return {"plain_images_per_s": plain, "ray_images_per_s": in_ray, "ratio": in_ray / plain}


def measure_row(
    scale: Scale, data, storage: str, family: str, batch_size: int, amp: str, device: str
) -> dict:
    """One row of the table: one family, batch size and precision."""
    from hf_twins import trainable

    from detr_ray.errors import DetrRayError

    row: dict = {"family": family, "batch": batch_size, "amp": amp}
    try:
        config = make_config(scale, data, device, batch_size, amp, storage, family)
        engine = make_engine(config, device)
        batch = fixed_batch(engine, batch_size)
        row["size"] = list(batch.images.shape[-2:])
        row["step"] = measure_step(engine, batch, device, scale)
        match_s = measure_match_and_loss(engine, batch, device, scale)
        row["match_loss_share"] = match_s / row["step"]["step_s"]
        row["host_syncs"] = count_host_syncs(engine, batch, device)
        hf = hf_model(scale, engine, device)
        row["params"] = {"detr_ray": trainable(engine.trained_module), "hf": trainable(hf)}
        row["hf"] = measure_hf(hf, engine, batch, device, scale)
    except (DetrRayError, RuntimeError, NotImplementedError) as error:  # fp16 on a CPU
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return row


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="a small model and images (CPU form)")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--skip-ray", action="store_true", help="leave out the Ray comparison")
    args = parser.parse_args()
    refuse_without_dependencies(args.device)

    import torch

    from detr_ray.data.synthetic import generate

    scale = Scale(args.tiny)
    report: dict = {"device": args.device, "torch": torch.__version__, "scale": scale.presets}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        data = generate(
            Path(folder) / "data", num_train=scale.num_images, num_val=scale.num_images // 2,
            size=scale.image_size, seed=0,
        )  # fmt: skip
        storage = str(Path(folder) / "runs")
        for family, batch_size, amp in itertools.product(scale.presets, scale.batches, PRECISIONS):
            rows.append(measure_row(scale, data, storage, family, batch_size, amp, args.device))
            print_row(rows[-1], flush=True)
        report["steps"] = rows
        engine = make_engine(make_config(scale, data, args.device, 2, "off", storage), args.device)
        report["eval_images_per_s"] = measure_eval(engine, args.device)
        report["loader_images_per_s"] = measure_loader(engine, scale.batches[0])
        if not args.skip_ray:
            report["ray"] = measure_ray(scale, data, args.device, storage)
    print_summary(report)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"written: {args.out}")


def print_row(row: dict, flush: bool = False) -> None:
    where = f"{row['family']:<15} batch {row['batch']} {row['amp']:>4}"
    if "error" in row:
        print(f"{where}: not measured ({row['error']})", flush=flush)
        return
    step, hf = row["step"], row["hf"]
    memory = (
        f", peak {step['peak_mb']:.0f} MB (HF {hf['peak_mb']:.0f} MB)" if step["peak_mb"] else ""
    )
    print(
        f"{where} {row['size'][0]}x{row['size'][1]}: "
        f"{step['images_per_s']:.2f} img/s (HF {hf['images_per_s']:.2f}, "
        f"{step['images_per_s'] / hf['images_per_s']:.2f}x){memory}; "
        f"match+loss {row['match_loss_share']:.1%} of the step; {row['host_syncs']} host sync(s); "
        f"trainable parameters {row['params']['detr_ray']:,} / HF {row['params']['hf']:,}",
        flush=flush,
    )


def print_summary(report: dict) -> None:
    fp32 = [r for r in report["steps"] if r["amp"] == "off" and "step" in r]  # DETR's first
    step_rate = fp32[0]["step"]["images_per_s"] if fp32 else float("nan")
    print(f"evaluation: {report['eval_images_per_s']:.1f} images/s (detection + COCOeval)")
    print(
        f"data loader: {report['loader_images_per_s']:.1f} images/s against the fp32 step's "
        f"{step_rate:.2f} ({report['loader_images_per_s'] / step_rate:.1f}x)"
    )
    if "ray" in report:
        ray = report["ray"]
        print(
            f"1-worker Ray Train: {ray['ray_images_per_s']:.2f} images/s against "
            f"{ray['plain_images_per_s']:.2f} in a plain process ({ray['ratio']:.3f}x)"
        )


if __name__ == "__main__":
    main()
