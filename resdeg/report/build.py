"""`resdeg report`: cached results -> figures, data downloads and pages in docs/, for both languages.

Generated folders (docs/en, docs/zh, docs/downloads) are rebuilt whole in a hidden temporary folder and
then swapped in, so stale files never survive and a failed render leaves the old report in place.
Hand-written files (docs/assets/) are never touched.
"""
from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

from ..atomic import atomic_write_bytes, atomic_write_json
from ..errors import ResdegError
from . import analysis as A
from . import figures as F
from . import pages as P
from . import verdicts as V
from .collect import Study, load_study

GENERATED = ("en", "zh", "downloads")
MARKER = ".resdeg-generated"  # in every generated folder: only such folders are ever replaced
VERDICTS_SCHEMA, VERDICTS_SCHEMA_VERSION = "resdeg.verdicts", 1


def figure_plan(study: Study) -> dict[str, list[tuple[str, callable, tuple]]]:
    """page -> [(file name, figure function, extra args)]; figures whose inputs are absent are left out."""
    plan = {"h1": [("h1-accuracy.png", F.h1_accuracy, ())],
            "h2": [], "h3": [], "signal": []}
    if any(r.telemetry is not None for r in study.runs):
        plan["h2"] = [("h2-gradient-steps.png", F.h2_steps, ()), ("h2-stage-profile.png", F.h2_profile, ())]
    probed_models = [m for m in study.models if any(r.probe for r in study.runs if r.model == m)]
    if A.criteria_present(study):
        plan["h3"] = [(f"h3-separability-{m}.png", F.h3_separability, (m,)) for m in probed_models]
    if probed_models:
        plan["signal"] = [("signal-activation-std.png", F.signal_std, ())]
    return plan


def _csv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _g(x) -> str:
    return "" if x is None else f"{x:.6g}"


def write_downloads(study: Study, verdict_rows: list[dict], out: Path) -> dict[str, str]:
    """The data behind every figure and table, as CSV and JSON; page -> file names."""
    keys = ("model", "variant", "seed")
    _csv(out / "runs.csv", ["folder", *keys, "config_hash", "status", "epochs_done", "train_acc", "clean_train_acc",
                            "test_acc", "diverged_at_step", "probe_file"],
         ([r.rel, r.model, r.variant, r.seed, r.config_hash, r.status, len(r.epochs), _g(r.final.get("train_acc")),
           _g(r.final.get("clean_train_acc")), _g(r.final.get("test_acc")), r.doc.get("diverged_at_step") or "",
           r.probe_file or ""] for r in study.runs))
    fields = ("train_loss", "train_acc", "clean_train_acc", "test_loss", "test_acc", "lr", "wall_s")
    _csv(out / "h1_epochs.csv", [*keys, "config_hash", "epoch", *fields],
         ([r.model, r.variant, r.seed, r.config_hash, e["epoch"], *(_g(e[f]) for f in fields)]
          for r in study.runs for e in r.epochs))

    def steps():
        for r in study.runs:
            g = A.grad_series(r)
            if g is not None:
                for i, (first, last) in enumerate(zip(g[:, 0], g[:, -1])):
                    yield r.model, r.variant, r.seed, i, f"{first:.4g}", f"{last:.4g}"
    _csv(out / "h2_gradient_steps.csv", [*keys, "step", "g_first_stage", "g_last_stage"], steps())
    _csv(out / "h2_stage_medians.csv", [*keys, "stage", "median_grad"],
         ([r.model, r.variant, r.seed, s, _g(v)] for r in study.runs for s, v in A.stage_medians(r).items()))
    _csv(out / "h3_separability.csv", [*keys, "criterion", "stage", "value"],
         ([r.model, r.variant, r.seed, c, s, _g(v)] for r in study.runs if r.probe
          for c, per in r.probe["criteria"].items() for s, v in per.items()))
    sig = ("act_mean", "act_std", "grad_mean", "grad_std")
    _csv(out / "signal.csv", [*keys, "phase", "stage", *sig],
         ([r.model, r.variant, r.seed, ph, s, *(_g(r.probe["signal"][ph][k].get(s)) for k in sig)]
          for r in study.runs if r.probe for ph in ("init", "trained") for s in r.probe["stages"]))
    atomic_write_json(out / "verdicts.json", {
        "schema": VERDICTS_SCHEMA, "schema_version": VERDICTS_SCHEMA_VERSION, "rules_version": V.RULES_VERSION,
        "rules": V.RULES, "protocol": study.protocol, "dataset": study.dataset,
        "comparisons": [{"subject": row["subject"], "kind": row["kind"],
                         "verdicts": {h: v.as_dict() for h, v in row["verdicts"].items()}} for row in verdict_rows]})
    return {"index": ["verdicts.json", "runs.csv"], "h1": ["h1_epochs.csv", "runs.csv"],
            "h2": ["h2_gradient_steps.csv", "h2_stage_medians.csv"], "h3": ["h3_separability.csv"],
            "signal": ["signal.csv"], "reproducibility": ["runs.csv", "verdicts.json"]}


def _check_generated(docs: Path) -> None:
    for name in GENERATED:
        d = docs / name
        if d.exists() and not (d / MARKER).exists():
            raise ResdegError(f"{d} was not made by `resdeg report` (no {MARKER}); move it away, then rerun")


def _publish(tmp: Path, docs: Path) -> None:
    for name in GENERATED:
        new, cur, old = tmp / name, docs / name, docs / f".report-old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        if cur.exists():
            cur.rename(old)
        new.rename(cur)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def build_report(results: str | Path, docs: str | Path = "docs", protocol: str | None = None,
                 dataset: str | None = None, log=print) -> dict:
    """Render every figure, download and page of one study into docs/; returns a summary."""
    t0 = time.perf_counter()
    docs = Path(docs)
    study = load_study(results, protocol, dataset)
    _check_generated(docs)
    tmp = docs / ".report-new"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name in GENERATED:
            (tmp / name).mkdir(parents=True)
            (tmp / name / MARKER).write_text("generated by `resdeg report`; rebuilt whole on every run\n")
        plan = figure_plan(study)
        verdict_rows = A.all_verdicts(study)
        downloads = write_downloads(study, verdict_rows, tmp / "downloads")
        env = P.environment()
        n_fig = 0
        ctx = P.context(study, {page: [name for name, _, _ in figs] for page, figs in plan.items()}, downloads)
        ctx["h3_figures"] = [(name, args[0]) for name, _, args in plan["h3"]]  # one figure per depth
        for lang in P.LANGS:
            for page, figs in plan.items():
                for name, fn, args in figs:
                    fn(study, lang, tmp / lang / "figures" / name, *args)
                    n_fig += 1
            for page in P.PAGES:
                atomic_write_bytes(tmp / lang / f"{page}.md", P.render(env, lang, page, ctx).encode())
        _publish(tmp, docs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"protocol": study.protocol, "dataset": study.dataset, "runs": len(study.runs),
               "unused": len(study.unused), "figures": n_fig, "pages": len(P.PAGES) * len(P.LANGS),
               "wall_s": round(time.perf_counter() - t0, 2)}
    log(f"report: {study.protocol}/{study.dataset}, {summary['runs']} runs ({summary['unused']} unused), "
        f"{n_fig} figures, {summary['pages']} pages in {docs}/ ({summary['wall_s']} s); "
        "build the site with `mkdocs build --strict`")
    return summary
