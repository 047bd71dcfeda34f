"""Speed: resdeg's training engine timed beside a loop written like the original study's.

Three loops train the same model (same config, same images) and each is timed over whole
training steps after a warm-up, with the device synchronised on both sides of the timed region:

    (a) the engine with all telemetry on    (b) the engine with telemetry off
    (c) the reference loop (resdeg.reference: CPU transforms, DataLoader, fp32, .item() hooks)

(a) and (b) alternate repeat by repeat, so that a change in the machine's load falls on both.
Reported: images/s, the ratios a/c and a/b, and on a GPU the model FLOP utilisation (FLOPs of
a training step, counted by torch's FlopCounterMode, per second, over the device's dense bf16
peak). From measured engine rates it projects the wall time of the full `original` and `cifar`
studies. The figures go to a JSON file (schema resdeg.bench).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .config import make_config
from .data import Dataset, fixed_subset, load_dataset, synthetic_dataset
from .errors import ResdegError
from .models import model_from_config
from .records import CorruptRecord, Fields, Record, bounded, now_iso, read_record, require, write_record
from .reference import DEFAULT_WORKERS, ReferenceLoop, reference_loader
from .store import RunEnvironment
from .study import default_grid
from .train import Engine, check_batches, duration, environment, epoch_generator, evaluate, numerics, resolve_precision

BENCH_SCHEMA = "resdeg.bench"
BENCH_SCHEMA_VERSION = 1
# Dense (no sparsity) bf16 tensor-core peak in FLOP/s, from NVIDIA's data sheets. The first
# name found in torch.cuda.get_device_name wins, so the more specific names come first.
PEAK_BF16_FLOPS = (("H200 NVL", 835e12), ("H200", 989.4e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
                   ("H100", 989.4e12), ("A100", 312e12))
STUDY_IMAGES = {"train": 50_000, "test": 10_000}  # CIFAR-10, what both studies train and test on
PROJECTED_PROTOCOLS = ("original", "cifar")
LOOPS = {"engine_telemetry": "(a) engine, telemetry on", "engine_no_telemetry": "(b) engine, telemetry off",
         "reference": "(c) reference (original-style)"}


@dataclass(frozen=True)
class Settings:
    """How much to measure. `--quick` picks small values (a CPU run in under two minutes)."""
    batch_size: int | None  # None = the protocol's
    steps: int  # timed steps per repeat
    warmup: int  # untimed steps first
    repeats: int  # timed repeats; the median counts
    projection_steps: int
    workers: int = DEFAULT_WORKERS

    @classmethod
    def make(cls, quick: bool, device: torch.device, **given) -> Settings:
        cpu = device.type == "cpu"
        if quick:
            base = dict(batch_size=8 if cpu else None, steps=3 if cpu else 10, warmup=1 if cpu else 3,
                        repeats=1, projection_steps=2 if cpu else 10)
        else:
            base = dict(batch_size=None, steps=10 if cpu else 50, warmup=2 if cpu else 10, repeats=3,
                        projection_steps=5 if cpu else 30)
        base.update({k: v for k, v in given.items() if v is not None})
        s = cls(**base)
        for name in ("steps", "repeats", "projection_steps"):
            if getattr(s, name) < 1:
                raise ResdegError(f"--{name.replace('_', '-')} must be at least 1")
        if s.warmup < 0 or s.workers < 0 or (s.batch_size is not None and s.batch_size < 1):
            raise ResdegError("--warmup and --workers must be >= 0 and --batch-size >= 1")
        return s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def train_flops_per_image(cfg, num_classes: int) -> float:
    """FLOPs of one training step (forward + backward) per image, counted on the meta device."""
    with torch.device("meta"):
        model = model_from_config(cfg, num_classes)
        x = torch.empty(2, 3, cfg.image_size, cfg.image_size)
        y = torch.zeros(2, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2


def bench_data(name: str, data_dir, n_train: int, n_test: int) -> Dataset:
    """n_train training images (and n_test test images) of a data set, the same ones every time."""
    if name == "synthetic":
        return synthetic_dataset(n_train, n_test)
    full = load_dataset(name, data_dir)
    if n_train > len(full.train_y):
        raise ResdegError(f"the benchmark needs {n_train} training images; {name} has {len(full.train_y)}")
    tr = fixed_subset(full.train_y, n_train, salt=11)
    te = fixed_subset(full.test_y, n_test, salt=12)
    return dataclasses.replace(full, train_x=full.train_x[tr], train_y=full.train_y[tr],
                               test_x=full.test_x[te], test_y=full.test_y[te])


def _summary(seconds: list[float], steps: int, batch: int) -> dict:
    """Median over repeats of one timed block of `steps` steps."""
    med = statistics.median(seconds)
    return {"images_per_s": steps * batch / med, "step_ms": 1000 * med / steps, "steps": steps,
            "batch_size": batch, "repeat_seconds": list(seconds)}


def _warm_engine(cfg, data: Dataset, device: torch.device, steps: int, warmup: int) -> Engine:
    trainer = Engine(cfg, data, device)  # the engine alone: no run folder, nothing written
    assert trainer.steps_per_epoch == steps, "bench_data sizes the data set to whole steps"
    bs = cfg.batch_size
    gen = epoch_generator(cfg.seed, 0, device)
    trainer.model.train()
    for i in range(warmup):  # compile, cuDNN plans, the allocator: outside the timed region
        j = i % steps
        if j == 0 and trainer.telemetry:
            trainer.telemetry.take_epoch()  # the buffers hold one epoch's rows: more warm-up steps wrap
        trainer.train_step(trainer.train_x[j * bs:(j + 1) * bs], trainer.train_y[j * bs:(j + 1) * bs], gen)
    if trainer.telemetry:
        trainer.telemetry.take_epoch()  # a fresh epoch's rows
    return trainer


def _eval_rate(trainer: Engine, repeats: int) -> float:
    """Forward-only images/s in eval mode: the per-epoch test and eval-mode train scoring."""
    seconds = []
    for _ in range(1 + repeats):  # the first is a warm-up
        sync(trainer.device)
        t0 = time.perf_counter()
        evaluate(trainer.model, trainer.train_x, trainer.train_y, trainer.cfg, trainer.precision,
                 trainer.channels_last)
        sync(trainer.device)
        seconds.append(time.perf_counter() - t0)
    return len(trainer.train_y) / statistics.median(seconds[1:])


def time_engines(cfgs: list, data: Dataset, device: torch.device, steps: int, warmup: int,
                 repeats: int) -> list[dict]:
    """Each config's engine, timed over its own epoch loop (Engine.train_epoch and the one host
    copy per epoch). The repeats interleave (a, b, a, b, ...), so that a change in the machine's
    load falls on every config alike; the first config's eval rate is measured too."""
    trainers = [_warm_engine(cfg, data, device, steps, warmup) for cfg in cfgs]
    seconds = [[] for _ in trainers]
    for r in range(repeats):
        for trainer, secs in zip(trainers, seconds, strict=True):
            sync(device)
            t0 = time.perf_counter()
            trainer.train_epoch(r + 1, None)
            trainer.take_steps(r + 1)
            sync(device)
            secs.append(time.perf_counter() - t0)
    out = [_summary(secs, steps, cfg.batch_size) for secs, cfg in zip(seconds, cfgs, strict=True)]
    out[0]["eval_images_per_s"] = _eval_rate(trainers[0], repeats)
    for trainer in trainers:
        trainer.close()
    return out


def time_reference(cfg, data: Dataset, device: torch.device, steps: int, warmup: int, repeats: int,
                   workers: int) -> dict:
    loop = ReferenceLoop(cfg, data.num_classes, device)
    bs = cfg.batch_size
    loader = reference_loader(data.train_x, data.train_y, cfg, workers=workers,
                              length=(warmup + steps * repeats) * bs, seed=cfg.seed)
    batches = iter(loader)
    for _ in range(warmup):
        loop.step(*next(batches))
    seconds = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loop.step(*next(batches))
        sync(device)
        seconds.append(time.perf_counter() - t0)
    del batches  # stops the loader's workers
    loop.remove_hooks()
    return {**_summary(seconds, steps, bs), "workers": workers}


def project_study(protocol: str, rates: dict[str, dict], models, n_variants: int) -> dict:
    """Wall time of a whole study (models x variants, one seed) from per-model engine rates:
    per epoch, the training images at the training rate plus the test and eval-mode train images
    at the forward-only rate."""
    cfg = make_config(protocol)
    n_train = min(cfg.train_images or STUDY_IMAGES["train"], STUDY_IMAGES["train"])
    n_test = min(cfg.test_images or STUDY_IMAGES["test"], STUDY_IMAGES["test"])
    n_eval_train = min(cfg.eval_train_images, n_train) if cfg.eval_train_images > 0 else n_train
    per_model = {}
    for m in models:
        r = rates[m]
        epoch_s = n_train / r["images_per_s"] + (n_test + n_eval_train) / r["eval_images_per_s"]
        per_model[m] = {"train_images_per_s": r["images_per_s"], "eval_images_per_s": r["eval_images_per_s"],
                        "batch_size": r["batch_size"], "epoch_s": epoch_s, "run_s": epoch_s * cfg.epochs}
    return {"protocol": protocol, "runs": len(models) * n_variants, "epochs": cfg.epochs,
            "images_per_epoch": {"train": n_train, "test": n_test, "eval_train": n_eval_train},
            "variant_measured": "FULL", "models": per_model,
            "total_s": n_variants * sum(v["run_s"] for v in per_model.values())}


def run_benchmark(model: str, variant: str, protocol: str, device: torch.device, settings: Settings,
                  study_models, dataset: str = "synthetic", data_dir=None, overrides: dict | None = None,
                  compile: bool = False, projection: bool = True, log=print) -> dict:
    """Measure the three loops (and the projection's rates); return the JSON document."""
    over = dict(overrides or {})
    if settings.batch_size is not None:
        over["batch_size"] = settings.batch_size
    over["compile"] = compile
    cfg = make_config(protocol, over, device_type=device.type, model=model, variant=variant, dataset=dataset)
    check_batches(cfg)  # before any data is loaded or timed
    bs = cfg.batch_size
    load = (os.getloadavg()[0],) if hasattr(os, "getloadavg") else ()
    started = time.perf_counter()
    data = bench_data(dataset, data_dir, settings.steps * bs, bs)
    precision = resolve_precision(cfg, device)
    peak = peak_bf16_flops(device)
    flops = train_flops_per_image(cfg, data.num_classes)

    log(f"timing {LOOPS['engine_telemetry']} and {LOOPS['engine_no_telemetry']}, interleaved ...")
    with numerics(cfg, device):  # the engine's process-wide settings, as in a run
        engines = time_engines([dataclasses.replace(cfg, telemetry=True), dataclasses.replace(cfg, telemetry=False)],
                               data, device, settings.steps, settings.warmup, settings.repeats)
    results = dict(zip(("engine_telemetry", "engine_no_telemetry"), engines, strict=True))
    log(f"timing {LOOPS['reference']} ...")
    results["reference"] = time_reference(dataclasses.replace(cfg, compile=False), data, device, settings.steps,
                                          settings.warmup, settings.repeats, settings.workers)
    for r in results.values():
        r["model_flops_utilisation"] = flops * r["images_per_s"] / peak if peak else None
    a, b, c = (results[k]["images_per_s"] for k in LOOPS)

    doc = {"schema": BENCH_SCHEMA, "schema_version": BENCH_SCHEMA_VERSION,
           "created": now_iso(),
           "environment": {**environment(device, precision), "cpu_count": os.cpu_count(),
                           "load_average_1min_at_start": load[0] if load else None},
           "setup": {"model": cfg.model, "variant": cfg.variant, "protocol": cfg.protocol, "image_size": cfg.image_size,
                     "batch_size": bs, "dataset": data.describe()["source"], "compile": compile,
                     "deterministic": cfg.deterministic, "precision_engine": precision,
                     "precision_reference": "fp32", "settings": dataclasses.asdict(settings),
                     "overrides": {k: v for k, v in (overrides or {}).items()}},
           "train_flops_per_image": flops, "peak_bf16_flops": peak, "loops": results,
           "ratios": {"a_over_c": a / c, "a_over_b": a / b, "telemetry_overhead": 1 - a / b}}

    if projection:
        doc["projection"] = _projection(cfg, results["engine_telemetry"], device, settings, study_models,
                                        dataset, data_dir, overrides, compile, log)
    doc["environment"]["load_average_1min_at_end"] = os.getloadavg()[0] if load else None
    doc["wall_s"] = time.perf_counter() - started
    return doc


def _projection(cfg, measured: dict, device, settings: Settings, study_models, dataset, data_dir, overrides,
                compile, log) -> dict:
    """Engine rates (telemetry on, variant FULL) of every study model in each projected protocol;
    the comparison's own measurement is reused where it is the same thing."""
    out = {}
    for protocol in PROJECTED_PROTOCOLS:
        rates = {}
        for m in study_models:
            over = {**(overrides or {}), "compile": compile}
            if settings.batch_size is not None:
                over["batch_size"] = settings.batch_size
            pcfg = make_config(protocol, over, device_type=device.type, model=m, variant="FULL", dataset=dataset)
            if cfg.variant == "FULL" and pcfg == dataclasses.replace(cfg, telemetry=True):
                rates[m] = {**measured, "batch_size": pcfg.batch_size}
                continue
            log(f"projection: timing {m} FULL, protocol {protocol} ...")
            data = bench_data(dataset, data_dir, settings.projection_steps * pcfg.batch_size, pcfg.batch_size)
            with numerics(pcfg, device):
                (rates[m],) = time_engines([pcfg], data, device, settings.projection_steps, max(1, settings.warmup), 1)
        out[protocol] = project_study(protocol, rates, study_models, len(default_grid(protocol)[1]))
    return out


def format_report(doc: dict) -> str:
    s, env = doc["setup"], doc["environment"]
    lines = [f"{s['model']} {s['variant']}, protocol {s['protocol']} ({s['image_size']} px), batch {s['batch_size']}, "
             f"{env['device_type']} ({env['device']}), engine {s['precision_engine']}"
             f"{', compiled' if s['compile'] else ''}; data: {s['dataset']}",
             f"{'loop':<34}{'images/s':>10}{'ms/step':>10}{'MFU':>8}"]
    for key, label in LOOPS.items():
        r = doc["loops"][key]
        mfu = "n/a" if r["model_flops_utilisation"] is None else f"{100 * r['model_flops_utilisation']:.1f}%"
        lines.append(f"{label:<34}{r['images_per_s']:>10.1f}{r['step_ms']:>10.1f}{mfu:>8}")
    q = doc["ratios"]
    lines.append(f"a/c = {q['a_over_c']:.2f}x   a/b = {q['a_over_b']:.3f} "
                 f"(telemetry overhead {100 * q['telemetry_overhead']:.1f}%)")
    for protocol, p in doc.get("projection", {}).items():
        per = ", ".join(f"{m} {duration(v['run_s'])}/run" for m, v in p["models"].items())
        lines.append(f"projected {protocol} study ({p['runs']} runs x {p['epochs']} epochs, engine with telemetry, "
                     f"FULL's rate for every variant): {duration(p['total_s'])}  ({per})")
    if env.get("load_average_1min_at_start") is not None:
        lines.append(f"CPU load average (1 min) at start / end: {env['load_average_1min_at_start']:.2f} / "
                     f"{env['load_average_1min_at_end']:.2f} on {env['cpu_count']} cores")
    return "\n".join(lines)


def default_output(doc: dict) -> Path:
    s = doc["setup"]
    stamp = doc["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
    return Path("benchmarks") / f"{doc['environment']['device_type']}-{s['model']}-{s['protocol']}-{stamp}.json"


@dataclass(frozen=True)
class LoopTiming(Fields):
    """One timed loop: the median over repeats of a block of `steps` steps."""
    images_per_s: float
    step_ms: float = bounded(0.0)
    steps: int = bounded(1)
    batch_size: int = bounded(1)
    repeat_seconds: tuple[float, ...] = bounded(0.0)
    model_flops_utilisation: float | None = bounded(0.0)
    eval_images_per_s: float | None = bounded(0.0, default=None)  # the engine with telemetry: forward-only rate too
    workers: int | None = bounded(0, default=None)  # the reference loop's DataLoader workers

    def check(self) -> None:
        require(self.images_per_s > 0, "images_per_s is not positive")


@dataclass(frozen=True)
class Ratios(Fields):
    a_over_c: float
    a_over_b: float
    telemetry_overhead: float


@dataclass(frozen=True)
class BenchEnvironment(RunEnvironment):
    """A benchmark's `environment`: a run's, plus the machine's cores and load around the timing."""
    cpu_count: int | None = bounded(1, default=None)
    load_average_1min_at_start: float | None = bounded(0.0, default=None)
    load_average_1min_at_end: float | None = bounded(0.0, default=None)


@dataclass(frozen=True)
class BenchSetup(Fields):
    """A benchmark's `setup`: what was timed."""
    model: str
    variant: str
    protocol: str
    image_size: int = bounded(1)
    batch_size: int = bounded(1)
    dataset: str
    compile: bool
    deterministic: bool
    precision_engine: str
    precision_reference: str
    settings: dict[str, int | None]
    overrides: dict[str, Any]


def _non_negative_numbers(value, where: str) -> None:
    """Every number in a nested object (the projection's rates, images and seconds) is >= 0."""
    if isinstance(value, dict):
        for k, v in value.items():
            _non_negative_numbers(v, f"{where}.{k}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        require(value >= 0, f"{where}: {value!r} is negative")


@dataclass(frozen=True)
class BenchRecord(Record):
    """benchmarks/*.json: the engine timed beside the reference loop in the same run."""
    SCHEMA: ClassVar[str] = BENCH_SCHEMA
    VERSION: ClassVar[int] = BENCH_SCHEMA_VERSION
    created: str
    environment: dict[str, Any]
    setup: dict[str, Any]
    train_flops_per_image: float = bounded(0.0)
    peak_bf16_flops: float | None = bounded(0.0)
    loops: dict[str, LoopTiming]
    ratios: Ratios
    wall_s: float = bounded(0.0)
    projection: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        require(set(self.loops) == set(LOOPS), "loops missing")
        BenchEnvironment.check_object(self.environment, "environment")
        BenchSetup.check_object(self.setup, "setup")
        _non_negative_numbers(self.projection, "projection")


def write_bench(doc: dict, path: str | Path) -> Path:
    try:
        record = BenchRecord.from_dict(doc)
    except CorruptRecord as e:
        raise ResdegError(f"benchmark JSON: {e}") from None
    write_record(path, record)
    return Path(path)


def read_bench(path: str | Path) -> BenchRecord:
    try:
        return read_record(path, BenchRecord)
    except CorruptRecord as e:
        raise ResdegError(f"{path}: unreadable benchmark JSON ({e})") from None
