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
from resdeg.probes.store import SIGNAL_KEYS, ProbeSettings, write_probe
from resdeg.store import RUN_SCHEMA, RUN_SCHEMA_VERSION, run_dir, write_run, write_telemetry

STAGES = [f"stage{i}" for i in range(5)]
# (final test accuracy, final clean train accuracy, log10 g(stage0)/g(stage4)) per model-variant
TARGETS = {
    ("resnet18", "FULL"): (0.80, 0.99, 0.0), ("resnet18", "Nres"): (0.78, 0.97, 0.3),
    ("resnet18", "Nbn"): (0.70, 0.80, -0.5), ("resnet18", "Nboth"): (0.40, 0.42, -4.0),
    ("resnet50", "FULL"): (0.82, 0.99, 0.2), ("resnet50", "Nres"): (0.60, 0.65, -1.0),
    ("resnet50", "Nbn"): (0.66, 0.75, -1.5), ("resnet50", "Nboth"): (0.10, 0.10, -5.0),
}


def _epochs(rng, n_epochs, test, clean, steps, diverge_epoch=None):
    out = []
    for e in range(1, n_epochs + 1):
        f = e / n_epochs
        row = {"epoch": e, "train_loss": float(2.3 * (1 - f) + 0.05 + rng.uniform(0, .01)),
               "train_acc": float(min(1, clean * f * 0.98 + rng.uniform(0, .01))),
               "clean_train_acc": float(np.clip(clean * f + rng.normal(0, .005), 0, 1)),
               "test_loss": float(2.3 * (1 - f) + 0.4 + rng.uniform(0, .01)),
               "test_acc": float(max(0, min(1, test * f + rng.normal(0, .005)))),
               "lr": 0.05 * (1 - f) + 1e-4, "wall_s": 1.0, "steps": steps}
        if e == diverge_epoch:
            row.update(train_loss=None, test_loss=None, train_acc=0.1, clean_train_acc=0.1, test_acc=0.1)
        out.append(row)
        if e == diverge_epoch:
            break
    return out


def _probe(cfg, run_doc, rng, variant):
    """A probe whose separability falls with depth for Nres/Nboth and rises for FULL/Nbn."""
    trend = -1.0 if variant in ("Nres", "Nboth") else 1.0
    criteria = {}
    for name, crit in CRITERIA.items():
        base = rng.uniform(0.2, 0.5)
        values = [base * (1 + trend * (0.15 * i) * (1 if crit.higher_is_better else -1)) + rng.normal(0, 0.005)
                  for i in range(len(STAGES))]
        criteria[name] = {s: float(v) for s, v in zip(STAGES, values)}
    errors = {}
    if variant == "Nbn":  # one criterion failed on one stage: the report must say so
        criteria["lda_score"]["stage2"] = None
        errors = {"lda_score": {"stage2": "singular within-class scatter"}}
    signal = {phase: {key: {s: float(abs(rng.normal(1 + i, 0.1)) * (10 ** (-i) if variant == "Nboth" else 1))
                            for i, s in enumerate(STAGES)} for key in SIGNAL_KEYS} for phase in ("init", "trained")}
    settings = ProbeSettings()
    return {"schema": "resdeg.probe", "schema_version": 1,
            "run": {"config_hash": run_doc["config_hash"], "model": cfg.model, "variant": cfg.variant,
                    "seed": cfg.seed, "protocol": cfg.protocol, "dataset": cfg.dataset},
            "settings": settings.to_dict(), "settings_hash": settings.hash, "status": "done", "reason": None,
            "images": settings.probe_images, "classes_present": 10, "stages": STAGES,
            "stage_shapes": {s: [16 * 2 ** i, 8, 8] for i, s in enumerate(STAGES)},
            "criteria": criteria, "criterion_errors": errors, "signal": signal,
            "environment": run_doc["environment"], "wall_s": 1.5}


def make_results(root: Path, seeds=(1, 2, 3), epochs: int = 4, steps_per_epoch: int = 25,
                 protocol: str = "smoke", probes: bool = True, models=("resnet18", "resnet50")) -> Path:
    root = Path(root)
    for (model, variant), (test, clean, log_ratio) in TARGETS.items():
        if model not in models:
            continue
        for seed in seeds:
            cfg = make_config(protocol, {"epochs": epochs}, model=model, variant=variant, seed=seed,
                              dataset="synthetic")
            rng = np.random.default_rng(zlib.crc32(f"{model}-{variant}-{seed}".encode()))
            diverge = model == "resnet50" and variant == "Nboth" and seed == seeds[-1]
            rows = _epochs(rng, epochs, test + rng.normal(0, .01), clean + rng.normal(0, .005),
                           steps_per_epoch, diverge_epoch=2 if diverge else None)
            n = len(rows) * steps_per_epoch
            g_last = np.exp(rng.normal(-6, 0.3, n))
            g = np.stack([g_last * 10 ** (log_ratio * (4 - i) / 4 + rng.normal(0, .2, n)) for i in range(5)], 1)
            loss = np.linspace(2.3, 0.1, n)
            if diverge:
                loss[-3:] = np.nan
                g[-3:] = np.inf
            folder = run_dir(root, cfg)
            folder.mkdir(parents=True, exist_ok=True)
            tel = write_telemetry(folder, STAGES, {
                "step": np.arange(n), "epoch": np.repeat(np.arange(1, len(rows) + 1), steps_per_epoch),
                "loss": loss, "act_grad_mean_abs": g.astype(np.float32),
                "param_grad_mean_abs": (g * 0.5).astype(np.float32), "param_grad_l2": (g * 3).astype(np.float32)})
            last = rows[-1]
            doc = {"schema": RUN_SCHEMA, "schema_version": RUN_SCHEMA_VERSION, "config": cfg.to_dict(),
                   "config_hash": cfg.hash,
                   "environment": {"resdeg": "0.1.0", "python": "3.11", "torch": "2.14.1", "torchvision": "0.29.1",
                                   "numpy": "2", "platform": "Linux", "device_type": "cpu", "device": "cpu",
                                   "cpu_threads": 2, "precision": "fp32", "git_commit": "0123456789abcdef"},
                   "data": {"name": "synthetic", "source": "synthetic (test fixture)", "fingerprint": "f" * 64,
                            "classes": [f"c{i}" for i in range(10)], "n_train": 2048, "n_test": 512,
                            "image_shape": [3, 32, 32], "train_used": 1024, "test_used": 512, "clean_train_used": 256},
                   "status": "diverged" if diverge else "done", "epochs_done": len(rows), "epochs": rows,
                   "diverged_at_step": n - 3 if diverge else None,
                   "summary": {"train_acc": last["train_acc"], "clean_train_acc": last["clean_train_acc"],
                               "test_acc": last["test_acc"], "test_loss": last["test_loss"],
                               "best_test_acc": max(r["test_acc"] for r in rows), "parameters": 1000,
                               "steps_per_epoch": steps_per_epoch, "wall_s": float(len(rows))},
                   "telemetry": tel, "created": "2026-01-01T00:00:00+00:00", "updated": "2026-01-01T00:00:00+00:00"}
            write_run(folder, doc)
            if probes and not (model == "resnet18" and variant == "Nbn" and seed == seeds[0]):
                write_probe(folder, _probe(cfg, doc, rng, variant))
    return root
