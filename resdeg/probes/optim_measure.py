"""Measuring H4 (shattered gradients) and H5 (curvature, loss slices) on real nets: at
initialisation for a grid of models x variants x seeds, and on trained runs that kept their
weights; one cached record per net and settings (optim_store.py). The metrics are in optim.py.

The loss is the mean cross-entropy over a fixed, class-balanced subset of the run's training images
(the curvature images), in batches of the protocol's batch size. Every measure sees the net with its
BatchNorm statistics fixed, as Li et al. measure (their code takes the loss and its Hessian in eval
mode), but recalibrated: the statistics are those of the curvature images at the measured weights.
- Fixed statistics make the loss a deterministic function of the weights and each image's output
  its own, so that each image has its own input gradient.
- Recalibrated, because at initialisation the running statistics are still 0 and 1: in plain eval
  mode every BatchNorm would be the identity and every net would be measured as its Nbn twin.
- Not the batch's own statistics (train mode), for which the loss is the training step's own: each
  image's output would depend on the others, and the terms through the batch statistics dominated
  the Hessian at initialisation. A pilot in train mode (20 Lanczos
  steps, 128 images) found lambda_min -281 for plain-20 and -28,800 for plain-32, its eigenvector
  87% in the stem's conv weights (plain-20), and lambda_max unresolved beneath them; with fixed
  statistics lambda_max converges within 10 steps and lambda_min within about 20.
Curvature and slices move the weights of convolutions and linear layers only (parameters of two or
more dimensions), as Li et al. do: biases, BatchNorm's scale and shift and Fixup's and SkipInit's
scalars stay where they are. Everything runs in fp32 (second derivatives in bf16 would be noise),
whatever the protocol trains in.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import Config, make_config
from ..data import Dataset, fixed_subset, load_dataset, preprocess, probe_subset
from ..errors import ResdegError
from ..models import ResNet
from ..records import now_iso
from ..store import WEIGHTS_FILE, read_run, read_weights, run_dir, scan
from ..study import canonical_variant
from . import optim
from .features import initial_model, prepare_cpu
from .optim_store import (
    GRADIENT_TARGET,
    CorruptOptim,
    Curvature,
    GradientCurves,
    MeasuredNet,
    OptimRecord,
    OptimSettings,
    Slice1D,
    Slice2D,
    epoch_path,
    init_path,
    read_optim,
    run_path,
    write_optim,
)
from .probe import _environment, model_from_state, probe_epochs

CURVATURE_SALT = 5  # the curvature images: a class-balanced subset of the run's training images
TRAIN_SALT = 1  # the run's training images (train.py) when the protocol trains on a subset


@dataclass
class Job:
    """One net to measure and where its record goes."""
    cfg: Config
    phase: str  # "init" | "trained"
    path: Path
    folder: Path | None = None  # the run folder of a trained net
    epoch: int = 0
    skip: str | None = None  # a reason known before measuring (a diverged run)

    @property
    def label(self) -> str:
        return f"{self.cfg.model:>9} {self.cfg.variant:<8} s{self.cfg.seed} {self.phase}"


# -- the nets as the measures need them ----------------------------------------------------------

def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def frozen_statistics_net(net: ResNet, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> ResNet:
    """A copy in eval mode whose BatchNorm statistics are those of `batches` at the net's weights
    (averaged over the batches), so that each image's output depends on that image alone."""
    net = copy.deepcopy(net)
    norms = _batchnorms(net)
    if norms:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches below
        net.train()
        for x, _ in batches:
            net(x)
    return net.eval()


def with_stages(net: ResNet) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """x -> (logits, the output of every stage but the last): ResNet.forward, keeping the stages.
    The last stage is left out: only the average pool and the linear head follow it, so the
    gradient there is the same for every input (its correlation is 1, telling nothing)."""
    def forward(x):
        stages = net.stage_outputs(x)
        last = stages.pop(list(stages)[-1])
        return net.fc(torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)), stages
    return forward


def _generator(seed: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + purpose)


def unit_rms_directions(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One Gaussian direction per image, scaled to an RMS of exactly 1 per input value."""
    d = torch.randn(shape, generator=generator, dtype=torch.float64).float()
    per_value = d.flatten(1).norm(dim=1) / math.sqrt(d[0].numel())
    return d / per_value.view(-1, *([1] * (d.dim() - 1)))


# -- one net --------------------------------------------------------------------------------------

def measure_net(net: ResNet, x_grad: torch.Tensor, batches: list[tuple[torch.Tensor, torch.Tensor]],
                settings: OptimSettings, progress: Callable[[], None] = lambda: None) -> dict:
    """Every measure of one net: {gradients, curvature, slice_1d, slice_2d, timings}, or
    {"skipped": reason}. `x_grad`: the gradient images (normalised); `batches`: the curvature
    images with labels, split as a training step would batch them."""
    seed, timings = settings.measure_seed, {}
    frozen = frozen_statistics_net(net, batches)  # a copy: `net` is left as it was
    frozen.requires_grad_(False)
    weights = {k: p.detach() for k, p in frozen.named_parameters() if p.dim() > 1}  # what curvature and slices move

    def loss_at(moved: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(F.cross_entropy(torch.func.functional_call(frozen, moved, (x,), strict=False), y)
                   for x, y in batches) / len(batches)

    with torch.no_grad():
        centre = float(loss_at(weights))
    if not math.isfinite(centre):
        return {"skipped": f"the training loss is not finite ({centre})"}

    # H4: shattered gradients
    start = time.perf_counter()
    projection = torch.randn(net.fc.out_features, generator=_generator(seed, 1), dtype=torch.float64).float()
    projection /= projection.norm()
    direction = unit_rms_directions(tuple(x_grad.shape), _generator(seed, 2)).to(x_grad.device)

    def gradients(x):
        progress()
        return optim.projected_gradients(with_stages(frozen), x, projection)

    corr = optim.gradient_correlations(gradients, x_grad, direction, settings.distances)
    timings["gradients"] = time.perf_counter() - start
    gradient_curves = _curves(corr, settings)

    # H5: the extreme Hessian eigenvalues of the loss
    start = time.perf_counter()
    leaves = {k: w.clone().requires_grad_(True) for k, w in weights.items()}
    matvec = optim.hessian_vector_product(
        [lambda x=x, y=y: F.cross_entropy(torch.func.functional_call(frozen, leaves, (x,), strict=False), y)
         for x, y in batches], list(leaves.values()))
    n = sum(w.numel() for w in weights.values())
    extremes = optim.lanczos(matvec, n, settings.lanczos_steps, _generator(seed, 3), device=x_grad.device,
                             progress=progress)
    timings["curvature"] = time.perf_counter() - start
    if not all(math.isfinite(v) for v in (extremes.lambda_max, extremes.lambda_min)):
        return {"skipped": "a Hessian-vector product is not finite"}
    curvature = Curvature(loss=centre, lambda_max=extremes.lambda_max, lambda_min=extremes.lambda_min,
                          ratio=extremes.ratio, residual_max=extremes.residual_max,
                          residual_min=extremes.residual_min, lambda_max_resolved=extremes.max_resolved,
                          lambda_min_resolved=extremes.min_resolved, steps=extremes.steps, ritz=extremes.ritz)

    # H5: loss slices along filter-normalised directions (Li et al.)
    start = time.perf_counter()
    d1 = optim.filter_normalised_direction(weights, _generator(seed, 4))

    def ticking_loss(w):
        progress()
        return loss_at(w)

    alphas = optim.slice_grid(settings.slice_points)
    losses = optim.loss_slice(ticking_loss, weights, [d1], [(a,) for a in alphas])
    slice_1d = Slice1D(alphas=tuple(alphas), losses=tuple(losses), **optim.slice_shape(alphas, losses))
    timings["slice_1d"] = time.perf_counter() - start
    slice_2d = None
    if settings.slice_2d_points:
        start = time.perf_counter()
        d2 = optim.filter_normalised_direction(weights, _generator(seed, 5))
        grid = optim.slice_grid(settings.slice_2d_points)
        flat = optim.loss_slice(ticking_loss, weights, [d1, d2], [(a, b) for a in grid for b in grid])
        slice_2d = Slice2D(alphas=tuple(grid),
                           losses=tuple(tuple(flat[i * len(grid):(i + 1) * len(grid)]) for i in range(len(grid))))
        timings["slice_2d"] = time.perf_counter() - start
    return {"gradients": gradient_curves, "curvature": curvature, "slice_1d": slice_1d, "slice_2d": slice_2d,
            "timings": timings}


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _curves(corr: dict[str, torch.Tensor], settings: OptimSettings) -> GradientCurves:
    at = list(settings.distances).index(settings.summary_distance)
    mean, sd, half, summary = {}, {}, {}, {}
    for name, values in corr.items():  # (distances, images); a constant gradient gives nan: left out
        m = [_finite_or_none(float(row[~row.isnan()].mean())) if (~row.isnan()).any() else None for row in values]
        s = [_finite_or_none(float(row[~row.isnan()].std(correction=0))) if (~row.isnan()).any() else None
             for row in values]
        mean[name], sd[name] = tuple(m), tuple(s)
        half[name] = optim.half_distance(settings.distances, m)
        summary[name] = m[at]
    return GradientCurves(target=GRADIENT_TARGET, distances=tuple(settings.distances), mean=mean, sd=sd,
                          half_distance=half, at_summary=summary)


def work_units(settings: OptimSettings) -> int:
    """The progress bar's steps for one net: gradient passes, Lanczos steps, slice points."""
    return (len(settings.distances) + 1 + settings.lanczos_steps + settings.slice_points
            + settings.slice_2d_points ** 2)


# -- images ---------------------------------------------------------------------------------------

def curvature_indices(data: Dataset, cfg: Config, n: int) -> torch.Tensor:
    """n class-balanced training images of the run (the same for every net of a protocol)."""
    train = fixed_subset(data.train_y, cfg.train_images, salt=TRAIN_SALT)
    if n > len(train):
        raise ResdegError(f"--curvature-images {n} exceeds the {len(train)} training images of {cfg.protocol}")
    return train[fixed_subset(data.train_y[train], n, salt=CURVATURE_SALT)]


def gradient_indices(data: Dataset, cfg: Config, n: int) -> torch.Tensor:
    """n class-balanced test images: the first n of the probe images' order (data.probe_subset)."""
    return probe_subset(data, cfg, n)


def measurement_inputs(data: Dataset, cfg: Config, settings: OptimSettings, device: torch.device):
    """(gradient indices, gradient images, curvature indices, curvature batches), normalised as
    the run's test images are (no augmentation); batches of the protocol's batch size, near-equal."""
    gi = gradient_indices(data, cfg, settings.gradient_images)
    ci = curvature_indices(data, cfg, settings.curvature_images)
    x_grad = preprocess(data.test_x[gi].to(device), cfg)
    x_curv, y_curv = preprocess(data.train_x[ci].to(device), cfg), data.train_y[ci].to(device)
    parts = torch.tensor_split(torch.arange(len(ci)), math.ceil(len(ci) / cfg.batch_size))
    return gi, x_grad, ci, [(x_curv[p], y_curv[p]) for p in parts]


# -- jobs -----------------------------------------------------------------------------------------

def init_jobs(results: str | Path, protocol: str, dataset: str | None, models, variants, seeds,
              settings: OptimSettings, device_type: str = "cpu") -> list[Job]:
    """The nets at initialisation of the grid models x variants x seeds: the nets their runs start from."""
    jobs = []
    for model in models:
        for variant in variants:
            for seed in seeds:
                cfg = make_config(protocol, device_type=device_type, model=model, variant=variant, seed=seed,
                                  dataset=dataset)
                jobs.append(Job(cfg, "init", init_path(results, cfg, settings)))
    return jobs


def trained_jobs(results: str | Path, protocol: str, dataset: str | None, models, variants, seeds,
                 settings: OptimSettings, log: Callable[[str], None] = print) -> list[Job]:
    """The finished runs of the grid that kept their weights (model.pt); a diverged run is a job
    that records why it is skipped. Runs without weights are named, not measured."""
    probe_cfg = make_config(protocol, dataset=dataset)
    stored_protocol = run_dir(results, probe_cfg).parent.parent.name
    models, variants, seeds = {m.lower() for m in models}, {canonical_variant(v) for v in variants}, set(seeds)
    jobs, no_weights = [], []
    for entry in scan(results):
        run = entry.run
        if run is None or entry.problem or entry.path.parent.parent.name != stored_protocol:
            continue
        if not (run.dataset == probe_cfg.dataset and run.model in models and run.variant in variants
                and run.seed in seeds) or run.status == "partial":
            continue
        job = Job(run.config, "trained", run_path(entry.path, settings), entry.path, epoch=run.epochs_done)
        if run.status == "diverged":
            job.skip = f"run diverged at step {run.diverged_at_step}"
        elif not (entry.path / WEIGHTS_FILE).exists():
            no_weights.append(entry.path.name)
            continue
        jobs.append(job)
    if no_weights:
        log(f"{len(no_weights)} finished run(s) without {WEIGHTS_FILE} (weights are not kept in git; retrain to "
            f"measure them): {', '.join(no_weights[:4])}{' ...' if len(no_weights) > 4 else ''}")
    return jobs


def cached(job: Job, settings: OptimSettings) -> OptimRecord | None:
    try:
        return read_optim(job.path, settings)
    except CorruptOptim as e:
        raise ResdegError(f"{job.path}: corrupt record ({e}); redo it with --force") from None


def _net(job: Job, data: Dataset) -> ResNet:
    if job.phase == "init":
        return initial_model(job.cfg, data.num_classes)
    run = read_run(job.folder)
    if data.fingerprint != run.data.get("fingerprint"):
        raise ResdegError(f"{job.folder.name}: the {job.cfg.dataset} data at hand (fingerprint "
                          f"{data.fingerprint[:12]}) is not the data this run was trained on; point --data-dir at it")
    return model_from_state(job.cfg, data.num_classes, read_weights(job.folder, run.config_hash))


def measure_job(job: Job, settings: OptimSettings, data: Dataset | None, device: torch.device,
                progress: bool = True) -> OptimRecord:
    """Measure one net and write its record (done, or skipped with the reason)."""
    started = time.perf_counter()
    net = None if job.skip else _net(job, data).to(device)
    config_hash = job.cfg.hash if job.phase == "init" else read_run(job.folder).config_hash
    return _measure_and_write(net, job, config_hash, settings, data, device, progress, started)


def _measure_and_write(net: ResNet | None, job: Job, config_hash: str, settings: OptimSettings,
                       data: Dataset | None, device: torch.device, progress: bool, started: float,
                       inputs=None) -> OptimRecord:
    """Measure `net` (None: skipped for job.skip) and write its record. `inputs`: measurement_inputs
    already built (a run measured at several epochs builds them once)."""
    timings = {}
    parts: dict = {"skipped": job.skip} if job.skip else {}
    gi = ci = torch.zeros(0, dtype=torch.long)
    if not parts:
        state = [t for t in net.state_dict().values() if t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in state):
            parts = {"skipped": "non-finite weights"}
    if not parts:
        gi, x_grad, ci, batches = inputs or measurement_inputs(data, job.cfg, settings, device)
        timings["setup"] = time.perf_counter() - started
        bar = tqdm(total=work_units(settings), desc=job.label.strip(), unit="pass", leave=False,
                   disable=None if progress else True)
        try:
            parts = measure_net(net, x_grad, batches, settings, progress=lambda: bar.update(1))
        finally:
            bar.close()
        timings.update(parts.pop("timings", {}))
    skipped = parts.get("skipped")
    record = OptimRecord(
        net=MeasuredNet(job.cfg.model, job.cfg.variant, job.cfg.seed, job.cfg.protocol, job.cfg.dataset,
                        config_hash, job.phase, job.epoch,
                        sum(p.numel() for p in net.parameters()) if net is not None else 0),
        config=job.cfg, settings=settings, settings_hash=settings.hash,
        status="skipped" if skipped else "done", reason=skipped,
        data_fingerprint=data.fingerprint if data is not None else None,
        gradient_image_indices=tuple(gi.tolist()) if not skipped else (),
        curvature_image_indices=tuple(ci.tolist()) if not skipped else (),
        gradients=parts.get("gradients"), curvature=parts.get("curvature"), slice_1d=parts.get("slice_1d"),
        slice_2d=parts.get("slice_2d"), timings={k: round(v, 3) for k, v in timings.items()},
        environment=_environment(device), wall_s=round(time.perf_counter() - started, 3),
        created=now_iso())
    try:
        write_optim(job.path, record)
    except OSError as e:
        raise ResdegError(f"cannot write {job.path} ({e.strerror or e})") from None
    return record


def _bare_copy(model: nn.Module, cfg: Config, num_classes: int, device: torch.device) -> ResNet:
    """A fresh fp32 net holding the training net's weights and BatchNorm statistics: none of its
    hooks (the telemetry's would record the measurement's backward passes as training steps), its
    compiled stages or its memory format."""
    state = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    return model_from_state(cfg, num_classes, state).to(device)


def epoch_measurer(cfg: Config, data: Dataset, settings: OptimSettings, device: torch.device, folder: Path):
    """A Trainer hook that measures H4 and H5 on the training net after the epochs
    probes.probe.probe_epochs names (after the first, at each learning-rate drop, at the end), into
    the run's folder: the last epoch's record is the trained run's (`resdeg optim --phase trained`
    finds it cached). It works on a copy in fp32 and never moves the training's random streams;
    minutes per measurement on a CPU (about 50 s for ResNet-20, 270 s for ResNet-56 on one core)."""
    wanted = probe_epochs(cfg)
    inputs = measurement_inputs(data, cfg, settings, device)

    def after_epoch(epoch: int, model: ResNet) -> None:
        if epoch not in wanted:
            return
        started = time.perf_counter()
        path = run_path(folder, settings) if epoch == cfg.epochs else epoch_path(folder, epoch, settings)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # building the net draws
            net = _bare_copy(model, cfg, data.num_classes, device)
            _measure_and_write(net, Job(cfg, "trained", path, folder, epoch), cfg.hash, settings, data, device,
                               False, started, inputs)
    return after_epoch


def describe(record: OptimRecord, state: str) -> str:
    """One log line for a measured, cached or skipped net."""
    n = record.net
    head = f"{n.model:>9} {n.variant:<8} s{n.seed} {n.phase:<7} "
    if not record.done:
        return head + ("cached: " if state == "cached" else "") + f"skipped ({record.reason})"
    g, c = record.gradients, record.curvature
    half = g.half_distance["input"]
    at = g.at_summary["input"]
    took = f"measured earlier in {record.wall_s:.0f}s" if state == "cached" else f"{record.wall_s:.0f}s"
    return head + (f"{state:<8} gradient corr at {record.settings.summary_distance:g}: "
                   f"{'n/a' if at is None else f'{at:.3f}'}, halves at {'n/a' if half is None else f'{half:.3g}'}; "
                   f"lambda max {c.lambda_max:.4g}{'' if c.lambda_max_resolved else ' (unresolved)'} "
                   f"min {c.lambda_min:.4g}{'' if c.lambda_min_resolved else ' (unresolved)'} ratio "
                   f"{'n/a' if c.ratio is None else f'{c.ratio:.3g}'}; {took}")


def run_optim(results: str | Path, protocol: str, dataset: str | None, data_dir, models, variants, seeds,
              settings: OptimSettings, device: torch.device, phases=("init", "trained"), force: bool = False,
              dry_run: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> list[str]:
    """Measure every net of the grid that has no record for these settings (the data set is loaded
    only when one is missing); returns the problems, one line each (one net's never stops the rest)."""
    jobs = []
    if "init" in phases:
        jobs += init_jobs(results, protocol, dataset, models, variants, seeds, settings, device.type)
    if "trained" in phases:
        jobs += trained_jobs(results, protocol, dataset, models, variants, seeds, settings, log)
    todo, failures = [], []
    for job in jobs:
        try:
            record = None if force else cached(job, settings)
        except ResdegError as e:
            failures.append(str(e))
            log(f"not measured: {failures[-1]}")
            continue
        if record is not None:
            log(describe(record, "cached"))
        else:
            todo.append(job)
    if dry_run:
        for job in todo:
            log(f"to measure: {job.label.strip()} -> {job.path}")
        log(f"{len(todo)} to measure, {len(jobs) - len(todo)} cached")
        return failures
    if not todo:
        return failures
    data = None
    if any(job.skip is None for job in todo):
        data = load_dataset(todo[0].cfg.dataset, data_dir)
    if device.type == "cpu":
        prepare_cpu(reuse_memory=False)
    bar = tqdm(total=len(todo), desc="optim", unit="net", disable=None if progress else True)
    for job in todo:
        try:
            record = measure_job(job, settings, data, device, progress)
            log(describe(record, "skipped" if not record.done else "measured"))
        except ResdegError as e:
            failures.append(f"{job.label.strip()}: {e}")
            log(f"not measured: {failures[-1]}")
        bar.update(1)
    bar.close()
    return failures
