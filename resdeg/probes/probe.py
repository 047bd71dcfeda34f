"""Probing finished runs: every stage's features scored by every criterion, plus signal
propagation at initialisation and after training; one cached probe file per run and settings.

A diverged run, or one whose weights are not finite, gets a probe file with status "skipped"
and the reason: that is a result, not an error. A missing or unfinished run, or more probe
images than the run's test set, is a user mistake (a ResdegError), and nothing is written.
"""
from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import Dataset, load_dataset
from ..errors import ResdegError
from ..models import model_from_config
from ..records import CorruptRecord, now_iso, write_record
from ..store import RUN_FILE, RunRecord, read_run, read_weights, scan
from ..study import canonical_variant
from . import criteria
from .features import block_signals, initial_model, prepare_cpu, probe_images, signal_propagation, stage_features
from .signal import effective_rank, effective_rank_from_gram
from .store import (
    SIGNAL_KEYS,
    SIGNAL_PHASES,
    InitProbeRecord,
    ProbedRun,
    ProbeRecord,
    ProbeSettings,
    epoch_probe_path,
    init_probe_path,
    read_init_probe,
    read_probe,
    write_probe,
)


def criterion_kwargs(settings: ProbeSettings) -> dict[str, dict]:
    """The settings that parametrise a criterion, as its keyword arguments."""
    return {"lda_score": {"n_components": settings.lda_components},
            "linear_probe_acc": {"test_fraction": settings.linear_probe_test_fraction},
            "knn_acc": {"k": settings.knn_k},
            "coding_rate_reduction": {"eps2": settings.coding_rate_eps2}}


# Criteria whose work after the shared Gram matrices is small n x n algebra (eigh, Cholesky,
# L-BFGS steps). On a CPU those run on one thread: with two, every small LAPACK call waits on an
# OpenMP barrier, and on a busy machine a 500 x 500 eigh went from 0.06 s to 2-5 s.
SMALL_ALGEBRA = {"lda_score", "linear_probe_acc", "knn_acc", "nc1", "silhouette", "coding_rate_reduction",
                 "cka_labels"}


@contextmanager
def _threads(n: int | None):
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def score_stage(features: torch.Tensor, labels: torch.Tensor, settings: ProbeSettings,
                timings: dict[str, float] | None = None):
    """Every criterion of the settings on one stage: (values, errors), a value None exactly when
    the criterion is undefined there, and then its one-line reason in errors. `features` may come
    as their criteria._Batch, which the caller shares (_score_stages: with the effective rank). With
    `timings`, adds each criterion's seconds to it (the shared Gram matrices count to the first that needs them)."""
    values, errors = {}, {}
    try:
        # Criteria accept one shared validated batch in place of the features (as all_criteria
        # does), so the n x n Gram matrices are computed once per stage, not once per criterion.
        batch = criteria._as_batch(features, labels)
    except criteria.ProbeInputError as e:
        return {name: None for name in settings.criteria}, {name: str(e) for name in settings.criteria}
    kwargs = criterion_kwargs(settings)
    cpu = batch.x.device.type == "cpu"
    for name in settings.criteria:
        start = time.perf_counter()
        try:
            if cpu and name in SMALL_ALGEBRA:
                _ = batch.centred_gram  # computes the shared Gram matrices (the large products) on every thread
            with _threads(1 if cpu and name in SMALL_ALGEBRA else None):
                value = criteria.CRITERIA[name].fn(batch, labels, **kwargs.get(name, {}))
            if not math.isfinite(value):
                raise criteria.ProbeInputError(f"the value is not finite ({value})")
            values[name] = value
        except (criteria.ProbeInputError, torch.linalg.LinAlgError) as e:
            values[name] = None
            errors[name] = str(e).splitlines()[0]
        if timings is not None:  # each criterion returns a Python float: the device has synced
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return values, errors


def _environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"device": f"{device.type} ({name})" if name else device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _record(run: RunRecord, settings: ProbeSettings, device: torch.device, started: float, *,
            status: str = "done", reason: str | None = None, indices=(), classes_present: int = 0,
            shapes: dict | None = None, values: dict | None = None, errors: dict | None = None,
            signal: dict | None = None, blocks: dict | None = None, ranks: dict | None = None) -> ProbeRecord:
    shapes = shapes or {}
    return ProbeRecord(
        run=ProbedRun(run.config_hash, run.model, run.variant, run.seed, run.protocol, run.dataset),
        settings=settings, settings_hash=settings.hash, status=status, reason=reason, images=len(indices),
        classes_present=classes_present, stages=tuple(shapes), stage_shapes={k: tuple(v) for k, v in shapes.items()},
        criteria=values or {name: {} for name in settings.criteria}, criterion_errors=errors or {},
        signal=signal or {phase: {key: {} for key in SIGNAL_KEYS} for phase in SIGNAL_PHASES},
        environment=_environment(device), wall_s=round(time.perf_counter() - started, 3),
        created=now_iso(), image_indices=tuple(indices),
        blocks=blocks or {}, effective_rank=ranks or {})


def probe_run(folder: str | Path, settings: ProbeSettings, device: torch.device, data_dir=None,
              force: bool = False, datasets: dict[str, Dataset] | None = None,
              progress: bool = True) -> tuple[ProbeRecord, str]:
    """Probe one run folder; return (probe record, "cached" | "probed" | "skipped")."""
    folder, started = Path(folder), time.perf_counter()
    if not (folder / RUN_FILE).exists():
        raise ResdegError(f"{folder} is not a run folder (no {RUN_FILE})")
    run = read_run(folder)  # CorruptRun: a one-line error
    cfg = run.config
    if run.status == "partial":
        raise ResdegError(f"{folder.name} is not finished ({run.epochs_done}/{cfg.epochs} epochs); "
                          f"finish it with `resdeg run` first")
    if not force:
        try:
            cached = read_probe(folder, settings, run)
        except CorruptRecord as e:
            raise ResdegError(f"{folder.name}: corrupt probe ({e}); redo it with --force") from None
        if cached is not None:
            return cached, "cached"

    def skipped(reason: str) -> tuple[ProbeRecord, str]:
        probe = _record(run, settings, device, started, status="skipped", reason=reason)
        _write(folder, probe)
        return probe, "skipped"

    if run.status == "diverged":
        return skipped(f"run diverged at step {run.diverged_at_step}")
    state = read_weights(folder, run.config_hash)
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        return skipped("non-finite weights")

    data, indices, x_u8, y = _probe_data(run, settings, data_dir, datasets)
    classes_present = len(torch.unique(y))

    if device.type == "cpu":
        prepare_cpu()
    model = model_from_state(cfg, data.num_classes, state).to(device)
    shapes, values, errors, trained_ranks = _score_stages(model, x_u8, y, cfg, device, settings, progress,
                                                          f"probe {cfg.model} {cfg.variant} s{cfg.seed}")
    ranks: dict[str, dict] = {"init": {}, "trained": trained_ranks}
    init = initial_model(cfg, data.num_classes).to(device)
    for stage, feats in stage_features(init, x_u8, cfg, device, batch_stats=True):
        ranks["init"][stage] = _finite_or_none(effective_rank(feats))
        del feats
    signal = {"init": signal_propagation(init, x_u8, y, cfg, device),
              "trained": signal_propagation(model, x_u8, y, cfg, device)}
    blocks = {"init": block_signals(init, x_u8, cfg, device), "trained": block_signals(model, x_u8, cfg, device)}
    probe = _record(run, settings, device, started, indices=indices.tolist(), classes_present=classes_present,
                    shapes=shapes, values=values, errors=errors, signal=signal, blocks=blocks, ranks=ranks)
    _write(folder, probe)
    return probe, "probed"


def probe_init_run(folder: str | Path, settings: ProbeSettings, device: torch.device, data_dir=None,
                   force: bool = False, datasets: dict[str, Dataset] | None = None,
                   progress: bool = True) -> tuple[InitProbeRecord, str]:
    """Probe the untrained net a run starts from (its config and seed; no weights needed): every
    criterion at every stage, BatchNorm on batch statistics, on the same probe images. H3 reads it
    as the control of the trained net's separability. Returns (record, "cached" | "probed")."""
    folder = Path(folder)
    if not (folder / RUN_FILE).exists():
        raise ResdegError(f"{folder} is not a run folder (no {RUN_FILE})")
    run = read_run(folder)
    cfg = run.config
    path = init_probe_path(folder, cfg.run_name, settings)
    if not force:
        try:
            cached = read_init_probe(folder, run, settings)
        except CorruptRecord as e:
            raise ResdegError(f"{path.name}: corrupt probe ({e}); redo it with --force") from None
        if cached is not None:
            return cached, "cached"
    data, indices, x_u8, y = _probe_data(run, settings, data_dir, datasets)
    if device.type == "cpu":
        prepare_cpu()
    init = initial_model(cfg, data.num_classes).to(device)
    probe = snapshot_probe(init, cfg, x_u8, y, indices, settings, device, epoch=0, progress=progress)
    try:
        write_record(path, probe)
    except OSError as e:
        raise ResdegError(f"cannot write {path} ({e.strerror or e})") from None
    return probe, "probed"


def snapshot_probe(model, cfg, x_u8, y, indices, settings: ProbeSettings, device: torch.device, epoch: int,
                   progress: bool = False) -> InitProbeRecord:
    """Separability of `model` at one point of its run: epoch 0 = the untrained net (BatchNorm on
    batch statistics, since its running statistics are still 0 and 1), epoch k = after k epochs (eval)."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # never moves the training's random streams
        shapes, values, errors, ranks = _score_stages(model, x_u8, y, cfg, device, settings, progress,
                                                      f"probe epoch {epoch} {cfg.model} {cfg.variant} s{cfg.seed}",
                                                      batch_stats=epoch == 0)
    return InitProbeRecord(
        run=ProbedRun(cfg.hash, cfg.model, cfg.variant, cfg.seed, cfg.protocol, cfg.dataset),
        settings=settings, settings_hash=settings.hash, images=len(indices), stages=tuple(shapes), criteria=values,
        criterion_errors=errors, effective_rank=ranks, image_indices=tuple(int(i) for i in indices),
        environment=_environment(device), wall_s=round(time.perf_counter() - started, 3),
        created=now_iso(), epoch=epoch)


def epoch_prober(cfg, data: Dataset, settings: ProbeSettings, device: torch.device, folder: Path):
    """A Trainer hook that records the separability of the training net after the epochs
    `probe_epochs(cfg)` names, into the run's folder (seconds each: the same criteria as `probe`)."""
    indices, x_u8, y = probe_images(data, cfg, settings.probe_images)
    wanted = probe_epochs(cfg)

    def after_epoch(epoch: int, model) -> None:
        if epoch in wanted:
            write_record(epoch_probe_path(folder, epoch, settings),
                         snapshot_probe(model, cfg, x_u8, y, indices, settings, device, epoch))
    return after_epoch


def probe_epochs(cfg) -> set[int]:
    """After the first epoch, after the last epoch at each learning rate (the drops of a multistep
    schedule), and at the end."""
    drops = {math.ceil(cfg.epochs * f) for f in (0.5, 0.75)} if cfg.schedule == "multistep" else set()
    return {1, cfg.epochs} | {e for e in drops if 1 <= e <= cfg.epochs}


def _score_stages(model, x_u8, y, cfg, device: torch.device, settings: ProbeSettings, progress: bool, desc: str,
                  batch_stats: bool = False):
    """Every criterion and the effective rank at every stage of `model` on the probe images:
    (stage shapes, criterion -> stage -> value, criterion -> stage -> reason, stage -> rank)."""
    labels = y.to(device)
    shapes, errors, ranks = {}, {}, {}
    values: dict[str, dict] = {name: {} for name in settings.criteria}
    stages = tqdm(stage_features(model, x_u8, cfg, device, batch_stats=batch_stats), total=len(model.stages()),
                  unit="stage", leave=False, desc=desc, disable=None if progress else True)
    for stage, feats in stages:
        shapes[stage] = list(feats.shape[1:])
        batch = _criteria_batch(feats, labels)
        ranks[stage] = _stage_rank(feats, batch)
        stage_values, stage_errors = score_stage(feats if batch is None else batch, labels, settings)
        del feats, batch  # the batch holds the features too: free both before the next stage
        for name, v in stage_values.items():
            values[name][stage] = v
        for name, reason in stage_errors.items():
            errors.setdefault(name, {})[stage] = reason
    return shapes, values, errors, ranks


def _criteria_batch(features: torch.Tensor, labels: torch.Tensor) -> criteria._Batch | None:
    """One stage's validated batch, whose centred Gram serves every criterion and the effective
    rank; None where the features cannot be scored (score_stage then says why, per criterion)."""
    try:
        return criteria._Batch(features, labels)
    except criteria.ProbeInputError:
        return None


def _stage_rank(features: torch.Tensor, batch: criteria._Batch | None) -> float | None:
    """The stage's effective rank from the centred Gram its criteria's batch holds; from the
    features themselves where there is no batch (the rank needs no labels)."""
    return _finite_or_none(effective_rank(features) if batch is None else effective_rank_from_gram(batch.centred_gram))


def _probe_data(run: RunRecord, settings: ProbeSettings, data_dir, datasets: dict | None):
    """(data set, probe image indices, uint8 images, labels) of a run, from the data it trained on."""
    cfg = run.config
    datasets = {} if datasets is None else datasets
    if cfg.dataset not in datasets:
        datasets[cfg.dataset] = load_dataset(cfg.dataset, data_dir)
    data = datasets[cfg.dataset]
    if data.fingerprint != run.data.get("fingerprint"):
        raise ResdegError(f"{cfg.run_name}: the {cfg.dataset} data at hand (fingerprint {data.fingerprint[:12]}) "
                          f"is not the data this run was trained on; point --data-dir at that data")
    indices, x_u8, y = probe_images(data, cfg, settings.probe_images)
    if len(torch.unique(y)) < 2:
        raise ResdegError(f"the {len(y)} probe images hold a single class; the criteria need at least 2 "
                          f"(raise --probe-images)")
    return data, indices, x_u8, y


def _finite_or_none(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _write(folder: Path, probe: ProbeRecord) -> None:
    try:
        write_probe(folder, probe)
    except OSError as e:
        raise ResdegError(f"cannot write the probe into {folder} ({e.strerror or e})") from None


def model_from_state(cfg, num_classes: int, state: dict):
    model = model_from_config(cfg, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ResdegError(f"stored weights do not fit {cfg.model} {cfg.variant} "
                          f"({str(e).splitlines()[0][:120]}); retrain with --force") from None
    return model


def describe(probe: ProbeRecord, state: str) -> str:
    """One log line for a probed, cached or skipped run."""
    r = probe.run
    head = f"{r.model:>9} {r.variant:<5} seed {r.seed}: "
    if probe.status == "skipped":
        return head + ("cached: " if state == "cached" else "") + f"skipped ({probe.reason})"
    undefined = sum(len(v) for v in probe.criterion_errors.values())
    note = f"; {undefined} criterion values undefined (see criterion_errors)" if undefined else ""
    # a cached probe's time is the earlier call's, not this one's
    took = f"probed earlier in {probe.wall_s:.1f}s" if state == "cached" else f"{probe.wall_s:.1f}s"
    return head + (f"{state:<7} {probe.images} images, {len(probe.stages)} stages, {len(probe.criteria)} "
                   f"criteria  {took}{note}")


def probe_folders(folders: list[Path], settings: ProbeSettings, device: torch.device, data_dir=None,
                  force: bool = False, progress: bool = True, deadline: float | None = None,
                  log: Callable[[str], None] = print) -> list[str]:
    """Probe each finished (done or diverged) run folder; one run's problem never stops the rest.
    Returns the problems, one line each."""
    failures, datasets = [], {}
    bar = tqdm(total=len(folders), desc="probes", unit="run", disable=None if progress and folders else True)
    for folder in folders:
        if deadline is not None and time.time() >= deadline:
            log(f"time limit reached: {folder.name} and later runs not probed")
            break
        try:
            doc, state = probe_run(folder, settings, device, data_dir, force, datasets, progress)
            log(describe(doc, state))
        except ResdegError as e:
            failures.append(f"{folder.name}: {e}")
            log(f"not probed: {failures[-1]}")
        bar.update(1)
    bar.close()
    return failures


def probe_init_folders(folders: list[Path], settings: ProbeSettings, device: torch.device, data_dir=None,
                       force: bool = False, progress: bool = True, deadline: float | None = None,
                       log: Callable[[str], None] = print) -> list[str]:
    """Probe the untrained net of each run folder (probe_init_run); one run's problem never stops
    the rest. Returns the problems, one line each."""
    failures, datasets = [], {}
    for folder in tqdm(folders, desc="init probes", unit="run", disable=None if progress and folders else True):
        if deadline is not None and time.time() >= deadline:
            log(f"time limit reached: {folder.name} and later runs not probed at initialisation")
            break
        try:
            doc, state = probe_init_run(folder, settings, device, data_dir, force, datasets, progress)
            r = doc.run
            took = f"probed earlier in {doc.wall_s:.1f}s" if state == "cached" else f"{doc.wall_s:.1f}s"
            log(f"{r.model:>9} {r.variant:<5} seed {r.seed}: at initialisation {state:<7} {doc.images} images, "
                f"{len(doc.stages)} stages  {took}")
        except ResdegError as e:
            failures.append(f"{folder.name}: {e}")
            log(f"not probed at initialisation: {failures[-1]}")
    return failures


def raise_failures(failures: list[str]) -> None:
    if failures:
        many = len(failures) > 1
        raise ResdegError(f"{len(failures)} run{'s' if many else ''} not probed"
                          f"{' (first: ' if many else ' ('}{failures[0]})")


def check_probe_images(configs, settings: ProbeSettings) -> None:
    """Fail before any training when a protocol's test subset is smaller than the probe images."""
    for cfg in configs:
        if 0 < cfg.test_images < settings.probe_images:
            raise ResdegError(f"--probe-images {settings.probe_images} exceeds test_images={cfg.test_images} of "
                              f"these runs; use --probe-images {cfg.test_images} or fewer, or --no-probe")


def finished_runs(results: str | Path, protocol=None, dataset=None, models=None, variants=None, seeds=None,
                  log: Callable[[str], None] = print) -> tuple[list[Path], list[str]]:
    """The done or diverged run folders under results/ that pass the filters, and the corrupt
    ones (as problems); unfinished runs are mentioned, not probed."""
    if not Path(results).is_dir():
        raise ResdegError(f"no result store at {results}/ (train first, or pass --results)")
    seeds = None if seeds is None else set(seeds)  # integers (cli._csv checks them)
    variants = None if variants is None else {canonical_variant(v) for v in variants}
    models = None if models is None else {m.lower() for m in models}
    folders, problems = [], []
    for run in scan(results):
        row = run.row()
        if not ((protocol is None or row["protocol"] == protocol) and (dataset is None or row["dataset"] == dataset)
                and (models is None or row["model"] in models) and (variants is None or row["variant"] in variants)
                and (seeds is None or row["seed"] in seeds)):
            continue
        if run.resumable:
            log(f"not probed: {run.path.name} is unfinished ({run.problem})")
        elif run.duplicate_of:
            log(f"not probed: {run.path.name} is {run.problem}")
        elif run.problem:
            problems.append(f"{run.path.name}: corrupt run ({run.problem})")
            log(f"not probed: {problems[-1]}")
        elif run.status == "partial":
            log(f"not probed: {run.path.name} is unfinished ({row['epochs_done']}/{row['epochs']} epochs)")
        else:
            folders.append(run.path)
    return folders, problems
