"""From a Study to the report's tables, comparisons and verdicts (numbers only, no wording)."""
from __future__ import annotations

import math

import numpy as np

from ..probes.criteria import CRITERIA
from . import verdicts as V
from .collect import Run, Study, finite

# Comparisons within one depth: (healthy-by-design, ablated); the data decide which one degraded.
VARIANT_PAIRS = (("FULL", "Nres", "residual"), ("Nbn", "Nboth", "residual"),
                 ("FULL", "Nbn", "batchnorm"), ("Nres", "Nboth", "batchnorm"))


def label(model: str, variant: str) -> str:
    return f"{model}-{variant}"


# -- per run ---------------------------------------------------------------------------------------

def grad_series(run: Run) -> np.ndarray | None:
    """Per-step mean |dL/d stage output|, (steps, stages), or None without telemetry."""
    tel = run.telemetry
    return None if tel is None else np.asarray(tel["act_grad_mean_abs"], dtype=float)


def median_ratio(run: Run) -> float | None:
    """Median over steps of g(first stage) / g(last stage), over the steps where both are finite and > 0."""
    g = grad_series(run)
    if g is None or g.shape[1] < 2:
        return None
    first, last = g[:, 0], g[:, -1]
    ok = np.isfinite(first) & np.isfinite(last) & (first > 0) & (last > 0)
    return float(np.median(first[ok] / last[ok])) if ok.any() else None


def stage_medians(run: Run) -> dict[str, float | None]:
    g = grad_series(run)
    if g is None:
        return {}
    out = {}
    for i, stage in enumerate(run.stages):
        col = g[:, i][np.isfinite(g[:, i])]
        out[stage] = float(np.median(col)) if len(col) else None
    return out


def probe_values(run: Run, criterion: str) -> dict[str, float | None]:
    if run.probe is None:
        return {}
    return run.probe["criteria"].get(criterion, {})


def sep_change(run: Run, criterion: str) -> float | None:
    """Deepest minus shallowest stage with a value, signed so that negative = less separable."""
    values = probe_values(run, criterion)
    stages = [s for s in run.probe["stages"] if values.get(s) is not None] if run.probe else []
    if len(stages) < 2:
        return None
    change = values[stages[-1]] - values[stages[0]]
    return change if CRITERIA[criterion].higher_is_better else -change


def criteria_present(study: Study) -> list[str]:
    present = {c for r in study.runs if r.probe for c in r.probe["criteria"]}
    return [c for c in CRITERIA if c in present]


# -- per model -------------------------------------------------------------------------------------

def side(study: Study, model: str, variant: str) -> V.Side:
    runs = study.cell(model, variant)
    test, clean = [], []
    for r in runs:
        t, c = r.final.get("test_acc"), r.final.get("clean_train_acc")
        if t is not None and c is not None and math.isfinite(t) and math.isfinite(c):
            test.append(t)
            clean.append(c)
    ratios = [median_ratio(r) for r in runs if r.status != "diverged"]
    changes = {}
    for crit in criteria_present(study):
        vals = [sep_change(r, crit) for r in runs]
        changes[crit] = [v for v in vals if v is not None]
    return V.Side(label(model, variant), test, clean, diverged=sum(r.status == "diverged" for r in runs),
                  log_ratio=[math.log10(x) for x in ratios if x is not None],
                  sep_change={c: v for c, v in changes.items() if v})


def comparisons(study: Study) -> list[dict]:
    """Every pair the data allow: variant pairs within a depth, then each variant across depths."""
    out = []
    for model in study.models:
        for a, b, kind in VARIANT_PAIRS:
            if study.cell(model, a) and study.cell(model, b):
                out.append({"kind": kind, "model": model, "a": (model, a), "b": (model, b),
                            "subject": f"{model}: {a} vs {b}"})
    models = study.models
    for shallow, deep in zip(models, models[1:]):
        for v in study.variants:
            if study.cell(shallow, v) and study.cell(deep, v):
                out.append({"kind": "depth", "model": None, "a": (shallow, v), "b": (deep, v),
                            "subject": f"{v}: {shallow} vs {deep}"})
    return out


def all_verdicts(study: Study) -> list[dict]:
    """One row per comparison with its H1, H2, H3 verdicts (H3 only where both sides are probed)."""
    rows = []
    for comp in comparisons(study):
        a, b = side(study, *comp["a"]), side(study, *comp["b"])
        row = dict(comp, verdicts={h: fn(comp["subject"], a, b) for h, fn in V.RULE_FUNCTIONS.items()})
        rows.append(row)
    return rows


# -- tables ----------------------------------------------------------------------------------------

def mean_std(values) -> tuple[float | None, float | None, int]:
    a = finite(values)
    if not len(a):
        return None, None, 0
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None), len(a)


def epoch_curves(study: Study, model: str, variant: str, key: str) -> dict:
    """Per epoch mean, std and count over seeds (epochs a diverged run never reached are absent)."""
    runs = study.cell(model, variant)
    n_epochs = max((len(r.epochs) for r in runs), default=0)
    epochs, means, stds, counts = [], [], [], []
    for i in range(n_epochs):
        m, s, n = mean_std([r.epochs[i][key] for r in runs if i < len(r.epochs)])
        if n:
            epochs.append(i + 1)
            means.append(m)
            stds.append(s if s is not None else 0.0)
            counts.append(n)
    return {"epoch": epochs, "mean": means, "std": stds, "n": counts}


def h1_rows(study: Study) -> list[dict]:
    rows = []
    for model, variant, runs in study.cells():
        row = {"model": model, "variant": variant, "seeds": [r.seed for r in runs],
               "diverged": sum(r.status == "diverged" for r in runs)}
        for key in ("train_acc", "clean_train_acc", "test_acc"):
            row[key] = mean_std([r.final.get(key) for r in runs])
        row["gap"] = mean_std([r.final["clean_train_acc"] - r.final["test_acc"] for r in runs
                               if r.final.get("clean_train_acc") is not None and r.final.get("test_acc") is not None])
        rows.append(row)
    return rows


def h2_rows(study: Study) -> list[dict]:
    rows = []
    for model, variant, runs in study.cells():
        s = side(study, model, variant)
        symptom, est = V.gradient_symptom(s)
        first = [stage_medians(r) for r in runs]
        stages = runs[0].stages
        rows.append({"model": model, "variant": variant, "seeds": [r.seed for r in runs],
                     "diverged": s.diverged,
                     "diverged_at": [r.doc.get("diverged_at_step") for r in runs if r.status == "diverged"],
                     "first": mean_std([m.get(stages[0]) for m in first]) if stages else (None, None, 0),
                     "last": mean_std([m.get(stages[-1]) for m in first]) if stages else (None, None, 0),
                     "ratio": est, "symptom": symptom,
                     "no_telemetry": [r.rel for r in runs if r.telemetry is None]})
    return rows


def h3_rows(study: Study) -> list[dict]:
    """Per model with probes: k of m criteria whose separability falls, and the outcome."""
    rows = []
    for model, variant, runs in study.cells():
        probed = [r for r in runs if r.probe]
        loss = V.information_loss(side(study, model, variant))
        rows.append({"model": model, "variant": variant, "seeds": [r.seed for r in probed],
                     "missing": [(r.rel, r.probe_note) for r in runs if not r.probe], **loss})
    return rows


def signal_values(run: Run, phase: str, key: str = "act_std") -> dict[str, float | None]:
    if run.probe is None:
        return {}
    return run.probe["signal"].get(phase, {}).get(key, {})
