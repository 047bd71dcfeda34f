"""Render the report's Markdown pages from Jinja2 templates (report_templates/<lang>/<page>.md.j2).

The context holds numbers and file names only; all wording lives in the templates, one per page
and language. Tables are built by shared macros (report_templates/_macros.j2).
"""
from __future__ import annotations

import math
from pathlib import Path

import jinja2

from ..probes.store import ProbeSettings
from . import analysis as A
from . import verdicts as V
from .collect import Study, depth

TEMPLATES = Path(__file__).resolve().parents[2] / "report_templates"
LANGS = ("en", "zh")
PAGES = ("index", "method", "setup", "h1", "h2", "h3", "signal", "reflection", "reproducibility")
CIFAR10_CLASSES = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


# -- formatting filters: the one place numbers become text -------------------------------------------

def pct(x, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def pm(ms, scale: float = 100.0, fmt: str = ".2f") -> str:
    """(mean, std, n) -> 'mean ± std' (std only with several values)."""
    m, s, n = ms
    if m is None:
        return "—"
    out = f"{m * scale:{fmt}}"
    return out + (f" ± {s * scale:{fmt}}" if s is not None else "")


def sci(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def num(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def ratio_text(est) -> str:
    if est is None:
        return "—"
    out = f"{10 ** est.value:.2e}"
    return out + (f" [{10 ** est.low:.2e}, {10 ** est.high:.2e}]" if est.has_interval else "")


def environment(loader=None) -> jinja2.Environment:
    env = jinja2.Environment(loader=loader or jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, pm=pm, sci=sci, num=num, ratio=ratio_text)
    return env


# -- the context ------------------------------------------------------------------------------------

def data_kind(data: dict) -> str:
    """synthetic / cifar10-jpeg / cifar10-folder / torchvision / other: how the pages describe the data."""
    if data["name"] == "synthetic":
        return "synthetic"
    if data["name"] == "imagefolder" and set(data.get("classes", [])) == CIFAR10_CLASSES:
        return "cifar10-jpeg" if any(k in data["source"].lower() for k in ("jpeg", "jpg")) else "cifar10-folder"
    if data["name"] in ("cifar10", "cifar100"):
        return "torchvision"
    return "other"


def commands(study: Study) -> dict:
    """The exact commands that reproduce the study's runs, probes and report."""
    sets = " ".join(f"--set {k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in sorted(study.overrides.items()))
    data_dir = " --data-dir DATA_DIR" if study.dataset == "imagefolder" else ""
    probes = [r.probe for r in study.runs if r.probe]
    images = probes[0]["settings"]["probe_images"] if probes else ProbeSettings().probe_images
    grid = (f"resdeg run-all --protocol {study.protocol} --dataset {study.dataset}{data_dir} "
            f"--models {','.join(study.models)} --variants {','.join(study.variants)} "
            f"--seeds {','.join(map(str, study.seeds))}"
            + (f" --probe-images {images}" if images != ProbeSettings().probe_images else "") + (f" {sets}" if sets else ""))
    return {"run_all": grid, "report": f"resdeg report --protocol {study.protocol} --dataset {study.dataset}",
            "site": "mkdocs build --strict"}


def context(study: Study, figures: dict, downloads: dict) -> dict:
    verdict_rows = A.all_verdicts(study)
    probes = [r.probe for r in study.runs if r.probe]
    crits = A.criteria_present(study)
    h1 = A.h1_rows(study)
    seed_spread = [(f"{r['model']}-{r['variant']}", r["test_acc"]) for r in h1 if r["test_acc"][2] > 1]
    counts = {o: sum(v.outcome == o for row in verdict_rows for v in row["verdicts"].values())
              for o in V.OUTCOME_TEXT}
    return {
        "study": study, "runs": study.runs, "models": study.models, "variants": study.variants,
        "seeds": study.seeds, "protocol": study.protocol, "dataset": study.dataset, "smoke": study.is_smoke,
        "config": study.config, "overrides": study.overrides,
        "data": study.data, "data_kind": data_kind(study.data), "environments": study.environments,
        "unused": study.unused, "other_studies": study.other_studies,
        "h1_rows": h1, "h2_rows": A.h2_rows(study), "h3_rows": A.h3_rows(study),
        "verdict_rows": verdict_rows, "verdict_counts": counts, "rules": V.RULES, "rules_version": V.RULES_VERSION,
        "outcome_text": V.OUTCOME_TEXT, "symptom_text": V.SYMPTOM_TEXT, "vanish": V.VANISH, "explode": V.EXPLODE,
        "criteria": crits, "probe_settings": probes[0]["settings"] if probes else None,
        "probed": [r for r in study.runs if r.probe], "unprobed": [r for r in study.runs if not r.probe],
        "criterion_errors": [(r, name, stage, msg) for r in study.runs if r.probe
                             for name, per in r.probe["criterion_errors"].items() for stage, msg in per.items()],
        "seed_spread": seed_spread, "single_seed_cells": [f"{r['model']}-{r['variant']}" for r in h1 if len(r["seeds"]) < 2],
        "diverged_runs": [r for r in study.runs if r.status == "diverged"],
        "figures": figures, "downloads": downloads, "commands": commands(study),
        "results_dir": study.results.as_posix(), "pages": PAGES, "A": A, "depth": depth,
    }


def render(env: jinja2.Environment, lang: str, page: str, ctx: dict) -> str:
    return env.get_template(f"{lang}/{page}.md.j2").render(lang=lang, **ctx)
