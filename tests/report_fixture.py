"""A made-up but valid result store for the report tests: run.json through the store's writer,
telemetry through `write_telemetry`, probes through the probe store's writer (all validated).

Shape: resnet18 and resnet50 x FULL/Nres/Nbn/Nboth x `seeds`; resnet50-Nboth seed `seeds[-1]`
diverges; resnet18-Nbn seed `seeds[0]` has no probe; numbers are drawn from a seeded generator.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from resdeg.config import make_config
from resdeg.probes.criteria import CRITERIA
from resdeg.probes.store import SIGNAL_KEYS, BlockSignal, ProbedRun, ProbeRecord, ProbeSettings, write_probe
from resdeg.store import Epoch, RunRecord, Summary, run_dir, write_run, write_telemetry

STAGES = [f"stage{i}" for i in range(5)]
# (final test accuracy, final eval-mode train accuracy, log10 g(stage0)/g(stage4)) per model-variant
TARGETS = {
    ("resnet18", "FULL"): (0.80, 0.99, 0.0), ("resnet18", "Nres"): (0.78, 0.97, 0.3),
    ("resnet18", "Nbn"): (0.70, 0.80, -0.5), ("resnet18", "Nboth"): (0.40, 0.42, -4.0),
    ("resnet50", "FULL"): (0.82, 0.99, 0.2), ("resnet50", "Nres"): (0.60, 0.65, -1.0),
    ("resnet50", "Nbn"): (0.66, 0.75, -1.5), ("resnet50", "Nboth"): (0.10, 0.10, -5.0),
}


def _epochs(rng, n_epochs, test, eval_train, steps, diverge_epoch=None):
    out = []
    for e in range(1, n_epochs + 1):
        f = e / n_epochs
        row = {"epoch": e, "train_loss": float(2.3 * (1 - f) + 0.05 + rng.uniform(0, .01)),
               "train_acc": float(min(1, eval_train * f * 0.98 + rng.uniform(0, .01))),
               "eval_train_acc": float(np.clip(eval_train * f + rng.normal(0, .005), 0, 1)),
               "test_loss": float(2.3 * (1 - f) + 0.4 + rng.uniform(0, .01)),
               "test_acc": float(max(0, min(1, test * f + rng.normal(0, .005)))),
               "lr": 0.05 * (1 - f) + 1e-4, "wall_s": 1.0, "steps": steps}
        if e == diverge_epoch:
            row.update(train_loss=None, test_loss=None, train_acc=0.1, eval_train_acc=0.1, test_acc=0.1)
        out.append(row)
        if e == diverge_epoch:
            break
    return out


def _probe(cfg, run, rng, variant, stages=STAGES):
    """A probe whose separability falls with depth for Nres/Nboth and rises for the others."""
    trend = -1.0 if variant in ("Nres", "Nboth") else 1.0
    criteria = {}
    for name, crit in CRITERIA.items():
        base = rng.uniform(0.2, 0.5)
        values = [base * (1 + trend * (0.15 * i) * (1 if crit.higher_is_better else -1)) + rng.normal(0, 0.005)
                  for i in range(len(stages))]
        criteria[name] = {s: float(v) for s, v in zip(stages, values, strict=True)}
    errors = {}
    if variant == "Nbn":  # one criterion failed on one stage: the report must say so
        criteria["lda_score"]["stage2"] = None
        errors = {"lda_score": {"stage2": "singular within-class scatter"}}
    signal = {phase: {key: {s: float(abs(rng.normal(1 + i, 0.1)) * (10 ** (-i) if variant == "Nboth" else 1))
                            for i, s in enumerate(stages)} for key in SIGNAL_KEYS} for phase in ("init", "trained")}
    collapse = variant == "Nboth"  # plain without BatchNorm: rank and variance collapse with depth
    blocks, ranks = {}, {}
    for phase in ("init", "trained"):
        blocks[phase] = tuple(
            BlockSignal(f"{s}.{j}", s, j, 0.1, float(0.5 ** (3 * i + j) if collapse else 1.0 + 0.4 * (3 * i + j)),
                        float(0.0 if variant in ("Fixup", "SkipInit") and phase == "init" else 1.0))
            for i, s in enumerate(stages[1:]) for j in range(3))
        ranks[phase] = {s: float(40 / (4 ** i) if collapse else 40 - i) for i, s in enumerate(stages)}
    settings = ProbeSettings()
    return ProbeRecord(
        run=ProbedRun(run.config_hash, cfg.model, cfg.variant, cfg.seed, cfg.protocol, cfg.dataset),
        settings=settings, settings_hash=settings.hash, status="done", reason=None, images=settings.probe_images,
        classes_present=10, stages=tuple(stages), stage_shapes={s: (16 * 2 ** i, 8, 8) for i, s in enumerate(stages)},
        criteria=criteria, criterion_errors=errors, signal=signal, environment=run.environment, wall_s=1.5,
        image_indices=tuple(range(settings.probe_images)), blocks=blocks, effective_rank=ranks)


ENVIRONMENT = {"resdeg": "0.1.0", "python": "3.11", "torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2",
               "platform": "Linux", "device_type": "cpu", "device": "cpu", "cpu_threads": 2, "precision": "fp32",
               "git_commit": "0123456789abcdef"}
DATA = {"name": "synthetic", "source": "synthetic (test fixture)", "fingerprint": "f" * 64,
        "classes": [f"c{i}" for i in range(10)], "n_train": 2048, "n_test": 512, "image_shape": [3, 32, 32],
        "train_used": 1024, "test_used": 512, "eval_train_used": 256}


def write_fake_run(root: Path, cfg, test: float, eval_train: float, log_ratio: float, steps_per_epoch: int = 25,
                   diverge: bool = False, probe: bool = True, stages=STAGES, exact: bool = False,
                   environment: dict | None = None, data: dict | None = None) -> Path:
    """One made-up run (and its probe) through the stores' writers; `exact`: the last epoch's test
    and eval_train train accuracies are exactly `test` and `eval_train`."""
    rng = np.random.default_rng(zlib.crc32(f"{cfg.model}-{cfg.variant}-{cfg.seed}".encode()))
    rows = _epochs(rng, cfg.epochs, test + rng.normal(0, .01), eval_train + rng.normal(0, .005), steps_per_epoch,
                   diverge_epoch=2 if diverge else None)
    if exact:
        rows[-1].update(test_acc=test, eval_train_acc=eval_train)
    n, k = len(rows) * steps_per_epoch, len(stages)
    g_last = np.exp(rng.normal(-6, 0.3, n))
    g = np.stack([g_last * 10 ** (log_ratio * (k - 1 - i) / (k - 1) + rng.normal(0, .2, n)) for i in range(k)], 1)
    loss = np.linspace(2.3, 0.1, n)
    if diverge:
        loss[-3:] = np.nan
        g[-3:] = np.inf
    folder = run_dir(root, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    tel = write_telemetry(folder, list(stages), {
        "step": np.arange(n), "epoch": np.repeat(np.arange(1, len(rows) + 1), steps_per_epoch),
        "loss": loss, "act_grad_mean_abs": g.astype(np.float32),
        "param_grad_mean_abs": (g * 0.5).astype(np.float32), "param_grad_l2": (g * 3).astype(np.float32)})
    epochs = tuple(Epoch(**r) for r in rows)
    last = epochs[-1]
    run = RunRecord(config=cfg, config_hash=cfg.hash, config_schema=2, environment=environment or ENVIRONMENT,
                    data=data or DATA,
                    status="diverged" if diverge else "done", epochs_done=len(epochs), epochs=epochs,
                    diverged_at_step=n - 3 if diverge else None,
                    summary=Summary(last.train_acc, last.eval_train_acc, last.test_acc, last.test_loss,
                                    max(e.test_acc for e in epochs), 1000, steps_per_epoch, float(len(epochs))),
                    telemetry=tel, created="2026-01-01T00:00:00+00:00", updated="2026-01-01T00:00:00+00:00")
    write_run(folder, run)
    if probe:
        write_probe(folder, _probe(cfg, run, rng, cfg.variant, stages))
    return folder


def make_results(root: Path, seeds=(1, 2, 3), epochs: int = 4, steps_per_epoch: int = 25,
                 protocol: str = "smoke", probes: bool = True, models=("resnet18", "resnet50"), **fields) -> Path:
    """Fake runs of every variant of `models`; `fields` override the protocol's config (precision="bf16")."""
    root = Path(root)
    for (model, variant), (test, eval_train, log_ratio) in TARGETS.items():
        if model not in models:
            continue
        for seed in seeds:
            cfg = make_config(protocol, {"epochs": epochs, **fields}, model=model, variant=variant, seed=seed,
                              dataset="synthetic")
            diverge = model == "resnet50" and variant == "Nboth" and seed == seeds[-1]
            unprobed = model == "resnet18" and variant == "Nbn" and seed == seeds[0]
            write_fake_run(root, cfg, test, eval_train, log_ratio, steps_per_epoch, diverge, probes and not unprobed)
    return root


# The depth and BatchNorm studies (protocol depth): plain nets degrade with depth, residual ones do not;
# Fixup and SkipInit train about as well as FULL; Nboth at depth 56 does not learn.
DEPTH_TARGETS = {
    ("resnet20", "FULL"): (0.86, 0.90, 0.0), ("resnet56", "FULL"): (0.88, 0.93, 0.0),
    ("resnet20", "Nres"): (0.84, 0.87, 0.0), ("resnet56", "Nres"): (0.76, 0.78, -0.5),
    ("resnet20", "Nbn"): (0.80, 0.83, 0.0), ("resnet56", "Nbn"): (0.60, 0.62, 1.0),
    ("resnet20", "Fixup"): (0.86, 0.90, 0.0), ("resnet56", "Fixup"): (0.875, 0.925, 0.0),
    ("resnet20", "SkipInit"): (0.85, 0.89, 0.0), ("resnet56", "SkipInit"): (0.87, 0.92, 0.0),
    ("resnet20", "Nboth"): (0.50, 0.51, -2.0), ("resnet56", "Nboth"): (0.10, 0.10, -6.0),
}


# a CIFAR-100-shaped data set: 100 classes, its own name and fingerprint
CIFAR100_DATA = {**DATA, "name": "cifar100", "source": "cifar100 (test fixture)", "fingerprint": "e" * 64,
                 "classes": [f"class{i}" for i in range(100)]}


def make_depth_results(root: Path, seeds=(1, 2), epochs: int | None = 4, protocol: str = "depth",
                       targets: dict | None = None, steps_per_epoch: int = 25, data: dict = DATA) -> Path:
    """Fake runs of He et al.'s nets (`epochs` None: the protocol's own length, as declared) on
    `data` (its name is the runs' --dataset)."""
    root = Path(root)
    for (model, variant), (test, eval_train, log_ratio) in (targets or DEPTH_TARGETS).items():
        for seed in seeds:
            cfg = make_config(protocol, {} if epochs is None else {"epochs": epochs}, model=model, variant=variant,
                              seed=seed, dataset=data["name"])
            write_fake_run(root, cfg, test, eval_train, log_ratio, steps_per_epoch, stages=STAGES[:4], data=data)
    return root


# -- helpers of the page and figure tests ---------------------------------------------------------------

SITE_PAGES = ("index", "method", "setup", "reflection", "reproducibility")
STUDY_PAGES = {"native": ("h1", "h2", "h3", "signal"), "depth": ("degradation",), "batchnorm": ("batchnorm",)}


def page(docs: Path, lang: str, name: str) -> str:
    return (docs / lang / f"{name}.md").read_text()


def all_pages():
    return [*SITE_PAGES, *(f"{study}/{p}" for study, pages in STUDY_PAGES.items() for p in pages)]


def build_store(rendered):
    from resdeg.report.collect import load_store

    return load_store(rendered.results)
