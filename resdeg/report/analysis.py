"""From a study's results to the report's tables, comparisons and verdicts (numbers only, no wording)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..probes.criteria import CRITERIA
from ..study import Comparison
from . import verdicts
from .collect import RunResults, StudyResults, depth, finite


def label(model: str, variant: str) -> str:
    return f"{model}-{variant}"


# -- per run ---------------------------------------------------------------------------------------

def grad_series(run: RunResults) -> np.ndarray | None:
    """Per-step mean |dL/d stage output|, (steps, stages), or None without telemetry."""
    tel = run.telemetry
    return None if tel is None else np.asarray(tel["act_grad_mean_abs"], dtype=float)


def ratio_series(run: RunResults) -> np.ndarray | None:
    """Per-step g(first stage) / g(last stage) (NaN where either is not finite and positive)."""
    g = grad_series(run)
    if g is None or g.shape[1] < 2:
        return None
    first, last = g[:, 0], g[:, -1]
    ok = np.isfinite(first) & np.isfinite(last) & (first > 0) & (last > 0)
    out = np.full(len(g), np.nan)
    out[ok] = first[ok] / last[ok]
    return out


def median_ratio(run: RunResults) -> float | None:
    """Median over steps of g(first stage) / g(last stage), over the steps where both are finite and > 0."""
    r = ratio_series(run)
    if r is None or not np.isfinite(r).any():
        return None
    return float(np.nanmedian(r))


def stage_medians(run: RunResults) -> dict[str, float | None]:
    g = grad_series(run)
    if g is None:
        return {}
    out = {}
    for i, stage in enumerate(run.stages):
        col = g[:, i][np.isfinite(g[:, i])]
        out[stage] = float(np.median(col)) if len(col) else None
    return out


def probe_values(run: RunResults, criterion: str) -> dict[str, float | None]:
    return run.probe.criteria.get(criterion, {}) if run.probe else {}


def sep_change(run: RunResults, criterion: str, control: bool = False) -> float | None:
    """Deepest minus shallowest stage with a value, signed so that negative = less separable. With
    `control`, minus the same change in the untrained net of the run (its init probe): what training
    did beyond the random features' own fall with depth (None without an init probe)."""
    values = probe_values(run, criterion)
    init = run.init_probe.criteria.get(criterion, {}) if control and run.init_probe else {}
    stages = [s for s in run.probe.stages if values.get(s) is not None and (not control or init.get(s) is not None)] \
        if run.probe else []
    if len(stages) < 2:
        return None
    change = values[stages[-1]] - values[stages[0]]
    if control:
        change -= init[stages[-1]] - init[stages[0]]
    return change if CRITERIA[criterion].higher_is_better else -change


def criteria_present(runs) -> list[str]:
    present = {c for r in runs if r.probe for c in r.probe.criteria}
    return [c for c in CRITERIA if c in present]


def voting_criteria(runs) -> list[str]:
    """The criteria present that vote on H3: those comparable across stage widths (criteria.py says
    why each of the others is not); the others are shown on the pages, not counted."""
    return [c for c in criteria_present(runs) if CRITERIA[c].width_dependent is None]


def signal_values(run: RunResults, phase: str, key: str = "act_std") -> dict[str, float | None]:
    return run.probe.signal.get(phase, {}).get(key, {}) if run.probe else {}


def init_correlation(record, where: str = "input") -> float | None:
    """H4's statistic of one net at initialisation: the mean correlation of its `where` gradients at
    the settings' summary distance (None where undefined: Fixup's zero last layer has no input gradient)."""
    return record.gradients.at_summary.get(where)


# -- per model -------------------------------------------------------------------------------------

def side(sr: StudyResults, model: str, variant: str, last_epoch: bool = False) -> verdicts.Side:
    """One model of a comparison, read at its final figure (RunResults.final), or at its last epoch."""
    runs = sr.cell(model, variant)
    test, eval_train = [], []
    for r in runs:
        f = r.record.final if last_epoch else r.final
        if f is not None:
            test.append(f.test_acc)
            eval_train.append(f.eval_train_acc)
    ratios = [median_ratio(r) for r in runs if r.status != "diverged"]
    changes = {}
    probed = [r for r in runs if r.probe]
    controlled = bool(probed) and all(r.init_probe for r in probed)  # one baseline for every seed of a model
    for crit in voting_criteria(runs):
        vals = [sep_change(r, crit, control=controlled) for r in runs]
        changes[crit] = [v for v in vals if v is not None]
    classes = sr.num_classes
    at_init = sr.optim_cell(model, variant)
    return verdicts.Side(label(model, variant), test, eval_train, diverged=sum(r.status == "diverged" for r in runs),
                  grad_corr=[c for c in (init_correlation(o) for o in at_init) if c is not None],
                  log_lambda_max=[math.log10(o.curvature.lambda_max) for o in at_init
                                  if o.curvature.lambda_max_resolved and o.curvature.lambda_max > 0],
                  log_ratio=[math.log10(x) for x in ratios if x is not None],
                  sep_change={c: v for c, v in changes.items() if v}, sep_controlled=controlled,
                  test_n=min((r.test_n for r in runs), default=0),
                  eval_train_n=min((r.eval_train_n for r in runs), default=0),
                  chance=1 / classes)


# a plain variant -> the residual one with the same normalisation: the control of a plain depth pair
RESIDUAL_CONTROL = {"Nres": "FULL", "Nboth": "Nbn"}


def all_verdicts(sr: StudyResults, last_epoch: bool = False) -> list[dict]:
    """One row per comparison of the study: its H1, H2, H3 verdicts, and `shared`, the verdict of all
    three when the comparison itself leaves nothing to explain (else None)."""
    rows = []
    for comp in sr.comparisons():
        a, b = side(sr, *comp.reference, last_epoch), side(sr, *comp.other, last_epoch)
        control = None
        residual = RESIDUAL_CONTROL.get(comp.reference[1])
        if comp.kind == "depth" and residual and sr.optim_cell(comp.reference[0], residual):
            control = (side(sr, comp.reference[0], residual, last_epoch), side(sr, comp.other[0], residual, last_epoch))
        by_hypothesis = {h: fn(comp.subject, a, b, depth=comp.kind == "depth", control=control)
                         for h, fn in verdicts.RULE_FUNCTIONS.items()}
        reasons = {v.reason for v in by_hypothesis.values()}
        # one reason about the comparison itself, the same for H1-H3: pages state it once
        shared = (next(iter(by_hypothesis.values()))
                  if len(reasons) == 1 and reasons <= verdicts.COMPARISON_REASONS else None)
        rows.append({"comparison": comp, "subject": comp.subject, "kind": comp.kind, "component": comp.component,
                     "verdicts": by_hypothesis, "shared": shared})
    return rows


def effect(sr: StudyResults, comp: Comparison) -> dict:
    """What removing a component (or adding depth) does: other minus reference, on test accuracy
    and on train accuracy in eval mode, each with the noise rule; and whether either did not learn."""
    a, b = side(sr, *comp.reference), side(sr, *comp.other)
    if not (a.test_acc and b.test_acc):
        return {"comparison": comp, "complete": False}
    dtest, dtrain = verdicts.compare(b, a, "test_acc"), verdicts.compare(b, a, "eval_train_acc")
    return {"comparison": comp, "complete": True, "reference": a, "other": b, "dtest": dtest, "dtrain": dtrain,
            "stuck": [s.label for s in (a, b) if s.did_not_learn],
            "seeds": min(len(a.test_acc), len(b.test_acc))}


def degradation(sr: StudyResults) -> list[dict]:
    """Every depth comparison with its *degradation* verdict (He et al.'s sense): the deeper net is
    worse on the training set than the shallower one of the same kind, beyond noise. With seeds on
    both sides a 95% interval that straddles zero leaves it *undecided* (not "no difference")."""
    out = []
    for comp in sr.comparisons():
        if comp.kind != "depth":
            continue
        e = effect(sr, comp)
        if e["complete"]:
            out.append(with_degradation_verdict(e))
    return out


def with_degradation_verdict(e: dict) -> dict:
    """A complete depth effect with its verdict: degrades / improves on the training set, or (an
    interval across zero, seeds on both sides) undecided, or (within one run's noise) no difference."""
    level = "undecided" if e["dtrain"].has_interval else "no_difference"
    e["verdict"] = "inconclusive" if e["stuck"] else {-1: "degrades", 1: "improves", 0: level}[e["dtrain"].sign]
    return e


# -- tables ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """One quantity over seeds, as every table, figure and download states it: the mean, the sample
    standard deviation (ddof=1; None for one seed), the lowest and highest seed, the count."""
    mean: float
    sd: float | None
    lo: float
    hi: float
    n: int


def spread(values) -> Spread | None:
    """The Spread of the finite values (None left out); None when there are none."""
    a = finite(values)
    if not len(a):
        return None
    return Spread(float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else None, float(a.min()), float(a.max()), len(a))


def mean_std(values) -> tuple[float | None, float | None, int]:
    s = spread(values)
    return (None, None, 0) if s is None else (s.mean, s.sd, s.n)


def stage_spreads(runs: list[RunResults], stages: list[str], values_of) -> list[Spread | None]:
    """Per stage, the Spread over `runs` of `values_of(run)` (a stage -> value map)."""
    per_run = [values_of(r) for r in runs]
    return [spread([m.get(stage) for m in per_run]) for stage in stages]


def final_by_depth(sr: StudyResults, variant: str, key: str) -> list[tuple[int, Spread]]:
    """(depth, Spread of the final error in % over seeds) of one variant, for the depth figures;
    `key` is an accuracy field of RunResults.final."""
    out = []
    for model in sr.models:
        s = spread([100 * (1 - getattr(r.final, key)) for r in sr.cell(model, variant) if r.final])
        if s is not None:
            out.append((depth(model), s))
    return out


def correlation_curve(records, where: str = "input") -> list[float | None]:
    """The mean over nets (seeds) of the gradient correlation at each distance of their settings."""
    curves = [o.gradients.mean[where] for o in records]
    return [(s.mean if (s := spread([c[i] for c in curves])) else None) for i in range(len(curves[0]))] \
        if curves else []


def epoch_curves(sr: StudyResults, model: str, variant: str, key: str) -> dict:
    """Per epoch mean, std and count over seeds (epochs a diverged run never reached are absent)."""
    runs = sr.cell(model, variant)
    n_epochs = max((len(r.epochs) for r in runs), default=0)
    epochs, means, stds, counts = [], [], [], []
    for i in range(n_epochs):
        m, s, n = mean_std([getattr(r.epochs[i], key) for r in runs if i < len(r.epochs)])
        if n:
            epochs.append(i + 1)
            means.append(m)
            stds.append(s if s is not None else 0.0)
            counts.append(n)
    return {"epoch": epochs, "mean": means, "std": stds, "n": counts}


def accuracy_rows(sr: StudyResults) -> list[dict]:
    """Final running train, eval-mode train and test accuracy per model and variant (mean, std, n)."""
    rows = []
    for model, variant, runs in sr.cells():
        finals = [r.final for r in runs if r.final is not None]
        s = side(sr, model, variant)
        row = {"study": sr.name, "protocol": sr.protocol, "model": model, "variant": variant,
               "seeds": [r.seed for r in runs], "diverged": sum(r.status == "diverged" for r in runs),
               "did_not_learn": s.did_not_learn,
               "wall_s": mean_std([r.record.summary.wall_s for r in runs]),
               "parameters": runs[0].record.summary.parameters}
        for key in ("train_acc", "eval_train_acc", "test_acc"):
            row[key] = mean_std([getattr(f, key) for f in finals])
        row["gap"] = mean_std([f.eval_train_acc - f.test_acc for f in finals])
        rows.append(row)
    return rows


def h2_rows(sr: StudyResults) -> list[dict]:
    rows = []
    for model, variant, runs in sr.cells():
        s = side(sr, model, variant)
        symptom, est = verdicts.gradient_symptom(s)
        medians = [stage_medians(r) for r in runs]
        stages = runs[0].stages
        rows.append({"model": model, "variant": variant, "seeds": [r.seed for r in runs],
                     "diverged": s.diverged,
                     "diverged_at": [r.record.diverged_at_step for r in runs if r.status == "diverged"],
                     "first": mean_std([m.get(stages[0]) for m in medians]) if stages else (None, None, 0),
                     "last": mean_std([m.get(stages[-1]) for m in medians]) if stages else (None, None, 0),
                     "ratio": est, "symptom": symptom,
                     "no_telemetry": [r.rel for r in runs if r.telemetry is None]})
    return rows


def h3_rows(sr: StudyResults) -> list[dict]:
    """Per model with probes: k of m criteria whose separability falls, and the outcome."""
    rows = []
    for model, variant, runs in sr.cells():
        probed = [r for r in runs if r.probe]
        loss = verdicts.information_loss(side(sr, model, variant))
        rows.append({"model": model, "variant": variant, "seeds": [r.seed for r in probed],
                     "controlled": bool(probed) and all(r.init_probe for r in probed),
                     "missing": [(r.rel, r.probe_note) for r in runs if not r.probe], **loss})
    return rows


# -- the BatchNorm study -----------------------------------------------------------------------------

def block_series(runs: list[RunResults], phase: str, key: str) -> tuple[list[str], np.ndarray]:
    """Per residual block (in order) the mean over the probed runs of one signal statistic
    (sq_mean, variance, branch_variance): (block names, values)."""
    probed = [r for r in runs if r.probe and r.probe.blocks.get(phase)]
    if not probed:
        return [], np.zeros(0)
    names = [b.name for b in probed[0].probe.blocks[phase]]
    vals = np.array([[getattr(b, key) if getattr(b, key) is not None else np.nan for b in r.probe.blocks[phase]]
                     for r in probed if len(r.probe.blocks[phase]) == len(names)], dtype=float)
    with np.errstate(all="ignore"):
        return names, np.nanmean(vals, axis=0)


def rank_values(runs: list[RunResults], phase: str) -> dict[str, float | None]:
    """Per stage the mean over probed runs of the effective rank of the stage's features."""
    probed = [r for r in runs if r.probe and r.probe.effective_rank.get(phase)]
    if not probed:
        return {}
    stages = probed[0].probe.stages
    return {s: mean_std([r.probe.effective_rank[phase].get(s) for r in probed])[0] for s in stages}


def collapse(sr: StudyResults, model: str, variant: str, phase: str = "init") -> dict | None:
    """Does the net collapse at `phase`? The effective rank of the last stage relative to the first
    stage's, and the output variance of the last block relative to the first block's."""
    runs = sr.cell(model, variant)
    ranks = rank_values(runs, phase)
    names, var = block_series(runs, phase, "variance")
    if not ranks or not len(var):
        return None
    stages = list(ranks)
    r0, r1 = ranks[stages[0]], ranks[stages[-1]]
    return {"model": model, "variant": variant, "phase": phase, "rank_first": r0, "rank_last": r1,
            "rank_ratio": (r1 / r0) if r0 and r1 is not None else None,
            "var_first": float(var[0]), "var_last": float(var[-1]),
            "var_ratio": float(var[-1] / var[0]) if var[0] > 0 else None}


def collapse_by_phase(sr: StudyResults, model: str, variant: str) -> dict[str, dict]:
    """`collapse` at initialisation and after training, for the phases that were measured."""
    out = {phase: collapse(sr, model, variant, phase) for phase in ("init", "trained")}
    return {phase: c for phase, c in out.items() if collapsed_in(c) is not None}


def collapse_groups(by_phase: dict[str, dict]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(phases, what collapsed) with equal findings merged: [(("init", "trained"), ())] reads
    'does not collapse at initialisation or after training'."""
    groups: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    for phase, c in by_phase.items():
        kind = collapsed_in(c)
        if groups and groups[-1][1] == kind:
            groups[-1] = (groups[-1][0] + (phase,), kind)
        else:
            groups.append(((phase,), kind))
    return groups


RANK_COLLAPSE = 0.25  # the last stage keeps less than a quarter of the first stage's effective rank
VARIANCE_BLOWUP = 1e3  # ... or its variance changed by more than a factor 1000 over the blocks


def collapsed_in(c: dict | None) -> tuple[str, ...] | None:
    """In what the net collapses by the rules above: () none, ("rank",), ("variance",) or both;
    None when it was not measured."""
    if c is None or c["rank_ratio"] is None:
        return None
    v = c["var_ratio"]
    return tuple(k for k, hit in (("rank", c["rank_ratio"] < RANK_COLLAPSE),
                                  ("variance", v is not None and not 1 / VARIANCE_BLOWUP <= v <= VARIANCE_BLOWUP))
                 if hit)


# -- schedules: the depth studies side by side --------------------------------------------------------

SCHEDULE_PAIR = ("resnet20", "resnet56")  # the depths every schedule of the depth family trains


def schedules(studies: list[StudyResults]) -> list[dict]:
    """The depth studies that differ only in their length (depth, depth-long, depth-he), shortest
    first: per net the final train (eval mode) and test error over seeds, and for the shallow and
    deep net of SCHEDULE_PAIR the plain pair's degradation (train accuracy, deeper minus shallower)
    and the residual pair's test difference (He et al.: the deeper residual net is better)."""
    shallow, deep = SCHEDULE_PAIR
    out = []
    for sr in sorted((s for s in studies if s.kind == "depth"), key=lambda s: s.config["epochs"]):
        rows = {(r["model"], r["variant"]): r for r in accuracy_rows(sr)}
        pairs = {}
        for variant in ("Nres", "FULL"):
            comp = Comparison("depth", "depth", (shallow, variant), (deep, variant))
            if comp.reference in rows and comp.other in rows:
                pairs[variant] = effect(sr, comp)
        complete = {v: e for v, e in pairs.items() if e["complete"]}
        out.append({"study": sr, "epochs": sr.config["epochs"], "cells": rows,
                    "plain": with_degradation_verdict(complete["Nres"]) if "Nres" in complete else None,
                    "residual": complete.get("FULL")})
    return out


# -- the original study's own numbers beside its protocol's runs -------------------------------------------

def original_rows(sr: StudyResults, published: dict) -> list[dict]:
    """Per (model, variant) of the original grid: the original study's final test and running train
    accuracy (`published`, %) beside this study's runs at their last epoch, as the original reports it
    (mean over seeds, %), and the difference; runs None where the cell has not been trained."""
    rows = []
    for (model, variant), (test, train) in published.items():
        lasts = [r.record.final for r in sr.cell(model, variant) if r.record.final is not None]
        here_test = mean_std([e.test_acc for e in lasts])[0] if lasts else None
        here_train = mean_std([e.train_acc for e in lasts])[0] if lasts else None
        rows.append({"model": model, "variant": variant, "published_test": test, "published_train": train,
                     "runs": len(lasts) or None, "test": None if here_test is None else 100 * here_test,
                     "train": None if here_train is None else 100 * here_train,
                     "dtest": None if here_test is None else 100 * here_test - test})
    return rows


def seed_spread(sr: StudyResults | None) -> tuple[float, float] | None:
    """The smallest and largest standard deviation of test accuracy over seeds (points) among the
    study's nets that learned and have several seeds: how much one run can move by its seed alone."""
    if sr is None:
        return None
    stds = [100 * r["test_acc"][1] for r in accuracy_rows(sr)
            if r["test_acc"][1] is not None and not r["did_not_learn"]]
    return (min(stds), max(stds)) if stds else None


def final_sensitivity(sr: StudyResults) -> dict:
    """What reading each run's last epoch instead of its final figure (RunResults.final) would change:
    the verdicts that differ, as (comparison, hypothesis, outcome now, outcome at the last epoch)."""
    now, last = all_verdicts(sr), all_verdicts(sr, last_epoch=True)
    changed = [(a["comparison"], h, a["verdicts"][h].outcome, b["verdicts"][h].outcome)
               for a, b in zip(now, last, strict=False) for h in a["verdicts"]
               if (a["verdicts"][h].outcome, a["verdicts"][h].reason)
               != (b["verdicts"][h].outcome, b["verdicts"][h].reason)]
    return {"verdicts": sum(len(a["verdicts"]) for a in now), "changed": changed}


# -- what shapes the optimisation, at initialisation (H4, H5) ------------------------------------------

MECHANISM_VARIANTS = ("Nres", "FULL", "Nboth")  # plain, residual, and the net that never trains


def at_init_by_depth(sr: StudyResults) -> list[dict]:
    """One row per (variant, depth) measured at initialisation, deepest last: per-seed input-gradient
    correlations at the summary distance and top Hessian eigenvalues, with their summaries (mean
    correlation; geometric mean of lambda_max, as H5 reads log10 lambda_max). The figures, the
    download and the mechanism page all read these rows."""
    rows = []
    for variant in MECHANISM_VARIANTS:
        models = sorted({o.net.model for o in sr.optim if o.net.variant == variant}, key=depth)
        for model in models:
            records = sr.optim_cell(model, variant)
            if not records:
                continue
            corr = [init_correlation(o) for o in records]
            lam = [_lambda_max(o) for o in records]
            ok_c, ok_l = [c for c in corr if c is not None], [x for x in lam if x is not None]
            rows.append({"model": model, "variant": variant, "depth": depth(model),
                         "seeds": [o.net.seed for o in records],
                         "corr": corr, "lambda_max": lam,
                         "lambda_min": [o.curvature.lambda_min if o.curvature.lambda_min_resolved else None
                                        for o in records],
                         "corr_mean": float(np.mean(ok_c)) if ok_c else None,
                         "lambda_gmean": float(10 ** np.mean(np.log10(ok_l))) if ok_l else None,
                         "wall_s": [o.wall_s for o in records], "records": records})
    return rows


def at_init_row(rows: list[dict], model: str, variant: str) -> dict | None:
    return next((r for r in rows if (r["model"], r["variant"]) == (model, variant)), None)


def init_contrast(rows: list[dict], model: str, variant: str, reference: str = "FULL") -> dict | None:
    """`variant` against `reference` at one depth, at initialisation: Welch differences of the
    correlation and of log10 lambda_max (variant minus reference); None when either is unmeasured."""
    a, b = at_init_row(rows, model, variant), at_init_row(rows, model, reference)
    if a is None or b is None:
        return None
    corr = [[c for c in r["corr"] if c is not None] for r in (a, b)]
    lam = [[math.log10(x) for x in r["lambda_max"] if x is not None] for r in (a, b)]
    if not all(corr + lam):
        return None
    return {"corr": verdicts.difference(*corr), "log_lambda": verdicts.difference(*lam), "row": a, "reference": b}


def _lambda_max(record) -> float | None:
    c = record.curvature
    return c.lambda_max if c.lambda_max_resolved and c.lambda_max > 0 else None


def optim_over_training(sr: StudyResults) -> list[dict]:
    """Per (model, variant) whose runs measured H4/H5 while they trained: the input-gradient
    correlation and lambda_max at each measured epoch (0 = the same seed's net at initialisation),
    mean over the seeds that have that epoch (geometric for lambda_max). Shallowest first."""
    rows = []
    for model, variant, runs in sr.cells():
        by_epoch: dict[int, list] = {}
        for r in (r for r in runs if r.optim):
            init = [o for o in sr.optim_cell(model, variant) if o.net.seed == r.seed]
            for o in init + r.optim:
                by_epoch.setdefault(o.net.epoch, []).append(o)
        if not by_epoch:
            continue
        points = []
        for epoch in sorted(by_epoch):
            corr = [c for o in by_epoch[epoch] if (c := init_correlation(o)) is not None]
            lam = [x for o in by_epoch[epoch] if (x := _lambda_max(o)) is not None]
            points.append({"epoch": epoch, "seeds": sorted(o.net.seed for o in by_epoch[epoch]),
                           "corr": float(np.mean(corr)) if corr else None,
                           "lambda_max": float(10 ** np.mean(np.log10(lam))) if lam else None,
                           "wall_s": [o.wall_s for o in by_epoch[epoch] if epoch]})
        rows.append({"model": model, "variant": variant, "depth": depth(model), "points": points})
    return sorted(rows, key=lambda r: (r["depth"], r["variant"]))


def training_contrast(rows: list[dict], shallow: str, deep: str, variant: str) -> dict | None:
    """Deep minus shallow net of one variant along training, at the epochs both were measured:
    [(epoch, correlation difference, lambda_max ratio)]; None unless both have points after training and
    both measures at the first and the last common point."""
    a = next((r for r in rows if (r["model"], r["variant"]) == (shallow, variant)), None)
    b = next((r for r in rows if (r["model"], r["variant"]) == (deep, variant)), None)
    if a is None or b is None:
        return None
    at_a = {p["epoch"]: p for p in a["points"]}
    pairs = [(p["epoch"], at_a[p["epoch"]], p) for p in b["points"] if p["epoch"] in at_a]
    steps = [{"epoch": e, "corr": (q["corr"] - p["corr"]) if None not in (p["corr"], q["corr"]) else None,
              "lambda_ratio": (q["lambda_max"] / p["lambda_max"]) if None not in (p["lambda_max"], q["lambda_max"])
              else None, "shallow": p, "deep": q} for e, p, q in pairs]
    if not any(s["epoch"] > 0 for s in steps) \
            or None in (steps[0]["corr"], steps[-1]["corr"], steps[0]["lambda_ratio"], steps[-1]["lambda_ratio"]):
        return None  # the pages compare the first and the last point: both must be measured
    corr = [s["corr"] for s in steps if s["corr"] is not None]
    ratio = [s["lambda_ratio"] for s in steps if s["lambda_ratio"] is not None]
    return {"variant": variant, "shallow": shallow, "deep": deep, "steps": steps,
            "seeds": sorted(set(steps[-1]["shallow"]["seeds"]) & set(steps[-1]["deep"]["seeds"])),
            # the deeper net more shattered / sharper at every measured epoch, from initialisation on
            "shattered_throughout": bool(corr) and all(c < 0 for c in corr),
            "sharper_throughout": bool(ratio) and all(r > 1 for r in ratio)}


# -- separability while training (H3: cause or consequence) ---------------------------------------------

TRAINING_CRITERION = "linear_probe_acc"  # the criterion the pages follow through training


def separability_over_training(sr: StudyResults, criterion: str = TRAINING_CRITERION) -> list[dict]:
    """Per (model, variant) whose runs recorded probes while they trained: the criterion at the
    shallowest and the deepest stage at each recorded epoch (0 = the untrained net), mean over the
    seeds that have that epoch. Empty when no run recorded any."""
    rows = []
    for model, variant, runs in sr.cells():
        by_epoch: dict[int, list] = {}
        for r in runs:
            for p in ([r.init_probe] if r.init_probe and r.epoch_probes else []) + r.epoch_probes:
                by_epoch.setdefault(p.epoch, []).append(p)
        if not by_epoch:
            continue
        points = []
        for epoch in sorted(by_epoch):
            probes = by_epoch[epoch]
            stages = list(probes[0].stages)
            first = [p.criteria[criterion].get(stages[0]) for p in probes]
            last = [p.criteria[criterion].get(stages[-1]) for p in probes]
            points.append({"epoch": epoch, "seeds": len(probes), "shallow": _mean_of(first), "deep": _mean_of(last)})
        rows.append({"model": model, "variant": variant, "points": points})
    return rows


def _mean_of(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None
