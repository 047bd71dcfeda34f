"""`resdeg report`: cached results -> figures, data downloads and pages in docs/, for both languages.

The generated part of docs/ (en/, zh/, downloads/, site-nav.json) is a set of symlinks into
docs/_report, itself a symlink to one folder `_report-<stamp>` that holds a whole report. A new
report is rendered into a fresh folder, then `_report` is switched to it with one atomic
rename: a report killed at any point leaves docs/ showing either the old report or the new one,
never a mix. Two reports at once are kept apart by a lock. Hand-written files (docs/assets/)
are never touched.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
from pathlib import Path

from ..atomic import atomic_write_bytes, atomic_write_json
from ..errors import ResdegError
from ..study import PAGES
from . import analysis as A
from . import anchors
from . import figures as F
from . import pages as P
from . import verdicts as V
from .collect import Store, StudyResults, load_store

GENERATED = ("en", "zh", "downloads", "site-nav.json")
CURRENT = "_report"  # docs/_report -> _report-<stamp>: the one name switched atomically
PREFIX = "_report-2"  # report folders are named by the date they were made
MARKER = ".resdeg-generated"  # in every report folder: only such folders are ever replaced
VERDICTS_SCHEMA, VERDICTS_SCHEMA_VERSION = "resdeg.verdicts", 2
LOCK_FOLDER = ".report-lock"


# -- data downloads ---------------------------------------------------------------------------------

def _csv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _g(x) -> str:
    return "" if x is None else f"{x:.6g}"


KEYS = ("model", "variant", "seed")


def _runs_csv(path: Path, runs) -> None:
    _csv(path, ["folder", "protocol", *KEYS, "config_hash", "status", "epochs_done", "train_acc", "clean_train_acc",
                "test_acc", "diverged_at_step", "wall_s", "probe_file"],
         ([r.rel, r.record.protocol, r.model, r.variant, r.seed, r.config_hash, r.status, len(r.epochs),
           _g(r.final and r.final.train_acc), _g(r.final and r.final.clean_train_acc), _g(r.final and r.final.test_acc),
           r.record.diverged_at_step if r.record.diverged_at_step is not None else "", _g(r.record.summary.wall_s),
           r.probe_file or ""] for r in runs))


def _verdict_rows(sr: StudyResults) -> list[dict]:
    return [{"study": sr.name, "protocol": sr.protocol, "subject": row["subject"], "kind": row["kind"],
             "component": row["component"], "verdicts": {h: v.as_dict() for h, v in row["verdicts"].items()}}
            for row in A.all_verdicts(sr)]


def write_study_downloads(sr: StudyResults, out: Path) -> dict[str, list[str]]:
    """The data behind every figure and table of a study's pages, as CSV; page -> file names."""
    _runs_csv(out / "runs.csv", sr.runs)
    fields = ("train_loss", "train_acc", "clean_train_acc", "test_loss", "test_acc", "lr", "wall_s")
    _csv(out / "h1_epochs.csv", [*KEYS, "config_hash", "epoch", *fields],
         ([r.model, r.variant, r.seed, r.config_hash, e.epoch, *(_g(getattr(e, f)) for f in fields)]
          for r in sr.runs for e in r.epochs))

    def steps():
        for r in sr.runs:
            g = A.grad_series(r)
            if g is not None:
                for i, (first, last) in enumerate(zip(g[:, 0], g[:, -1])):
                    yield r.model, r.variant, r.seed, i, f"{first:.4g}", f"{last:.4g}"
    _csv(out / "h2_gradient_steps.csv", [*KEYS, "step", "g_first_stage", "g_last_stage"], steps())
    _csv(out / "h2_stage_medians.csv", [*KEYS, "stage", "median_grad"],
         ([r.model, r.variant, r.seed, s, _g(v)] for r in sr.runs for s, v in A.stage_medians(r).items()))
    _csv(out / "h3_separability.csv", [*KEYS, "criterion", "stage", "value"],
         ([r.model, r.variant, r.seed, c, s, _g(v)] for r in sr.probed for c, per in r.probe.criteria.items()
          for s, v in per.items()))
    sig = ("act_mean", "act_std", "grad_mean", "grad_std")
    _csv(out / "signal.csv", [*KEYS, "phase", "stage", *sig],
         ([r.model, r.variant, r.seed, ph, s, *(_g(r.probe.signal[ph][k].get(s)) for k in sig)]
          for r in sr.probed for ph in ("init", "trained") for s in r.probe.stages))
    _csv(out / "blocks.csv", [*KEYS, "phase", "block", "stage", "index", "sq_mean", "variance", "branch_variance",
                              "stage_effective_rank"],
         ([r.model, r.variant, r.seed, ph, b.name, b.stage, b.index, _g(b.sq_mean), _g(b.variance),
           _g(b.branch_variance), _g(r.probe.effective_rank.get(ph, {}).get(b.stage))]
          for r in sr.probed for ph, blocks in r.probe.blocks.items() for b in blocks))
    atomic_write_json(out / "verdicts.json", {
        "schema": VERDICTS_SCHEMA, "schema_version": VERDICTS_SCHEMA_VERSION, "rules_version": V.RULES_VERSION,
        "rules": V.RULES, "study": sr.name, "protocol": sr.protocol, "dataset": sr.dataset,
        "comparisons": _verdict_rows(sr)})
    return {"h1": ["h1_epochs.csv", "runs.csv"], "h2": ["h2_gradient_steps.csv", "h2_stage_medians.csv"],
            "h3": ["h3_separability.csv"], "signal": ["signal.csv"],
            "degradation": ["runs.csv", "h1_epochs.csv", "verdicts.json"],
            "batchnorm": ["runs.csv", "h1_epochs.csv", "blocks.csv", "verdicts.json"]}


def write_site_downloads(store: Store, out: Path) -> dict[str, list[str]]:
    _runs_csv(out / "runs.csv", store.runs)
    atomic_write_json(out / "verdicts.json", {
        "schema": VERDICTS_SCHEMA, "schema_version": VERDICTS_SCHEMA_VERSION, "rules_version": V.RULES_VERSION,
        "rules": V.RULES, "comparisons": [row for sr in store.studies for row in _verdict_rows(sr)]})
    return {"index": ["verdicts.json", "runs.csv"]}


# -- navigation -------------------------------------------------------------------------------------

def site_nav(store: Store) -> list[dict]:
    """The site's navigation, read by resdeg/report/mkdocs_hooks.py (docs/site-nav.json)."""
    nav = [{"page": "index.md"}, {"page": "method.md"}]
    for sr in store.studies:
        nav.append({"section": sr.study.title, "pages": [f"{sr.name}/{p}.md" for p in sr.study.pages]})
    nav += [{"page": f"{p}.md"} for p in ("setup", "reflection", "reproducibility")]
    return nav


# -- publishing -------------------------------------------------------------------------------------

def _check_generated(docs: Path) -> None:
    """Refuse to replace anything `resdeg report` did not make."""
    for name in GENERATED:
        p = docs / name
        if p.is_symlink():
            continue
        if p.is_dir() and (p / MARKER).exists():
            continue  # a report from before the symlink layout: replaced on publish
        if p.exists():
            raise ResdegError(f"{p} was not made by `resdeg report`; move it away, then rerun")


def _publish(new: Path, docs: Path) -> None:
    """Switch docs/_report to `new` atomically, make the generated names point into it, and
    delete the previous report folders."""
    link_tmp = docs / f".{CURRENT}.tmp-{os.getpid()}"
    link_tmp.unlink(missing_ok=True)
    link_tmp.symlink_to(new.name)
    os.replace(link_tmp, docs / CURRENT)  # the switch: one rename
    for name in GENERATED:  # stable links (only created once, or when upgrading an old layout)
        p, target = docs / name, f"{CURRENT}/{name}"
        if p.is_symlink() and os.readlink(p) == target:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        tmp = docs / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, p)
    for old in docs.glob(f"{PREFIX}*"):
        if old != new and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def _lock(docs: Path, log):
    """The run lock of resdeg.locks on a hidden folder of docs/ (MkDocs skips dot-folders)."""
    from ..locks import Locked, acquire

    try:
        return acquire(docs / LOCK_FOLDER, log=log)
    except Locked as e:
        raise ResdegError(f"another `resdeg report` is writing {docs}/ ({e}); wait for it to finish") from None


def build_report(results: str | Path, docs: str | Path = "docs", protocol: str | None = None,
                 dataset: str | None = None, log=print) -> dict:
    """Render every figure, download and page of every study with results into docs/."""
    t0 = time.perf_counter()
    docs = Path(docs)
    store = load_store(results, protocol, dataset)
    docs.mkdir(parents=True, exist_ok=True)
    _check_generated(docs)
    with _lock(docs, log):
        new = docs / f"_report-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        shutil.rmtree(new, ignore_errors=True)
        try:
            n_fig, n_pages = _render(store, new)
            _publish(new, docs)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
    summary = {"studies": [s.name for s in store.studies], "runs": len(store.runs), "unused": len(store.unused),
               "figures": n_fig, "pages": n_pages, "wall_s": round(time.perf_counter() - t0, 2)}
    log(f"report: {', '.join(summary['studies'])}: {summary['runs']} runs ({summary['unused']} unused), "
        f"{n_fig} figures, {n_pages} pages in {docs}/ ({summary['wall_s']} s); "
        "build the site with `mkdocs build --strict`")
    return summary


def _render(store: Store, out: Path) -> tuple[int, int]:
    out.mkdir(parents=True)
    (out / MARKER).write_text("generated by `resdeg report`; rebuilt whole on every run\n")
    env = P.environment()
    n_fig = n_pages = 0
    site_downloads = write_site_downloads(store, out / "downloads")
    study_downloads = {sr.name: write_study_downloads(sr, out / "downloads" / sr.name) for sr in store.studies}
    site_figures = F.planned(store, "index")
    for lang in P.LANGS:
        for name, spec, args in site_figures:
            spec.draw(store, lang, out / lang / "figures" / name, *args)
            n_fig += 1
        ctx = P.site_context(store, lang, {"index": [n for n, _, _ in site_figures]}, site_downloads)
        ctx["anchors"] = anchors
        for page in ("index", "method", "setup", "reflection", "reproducibility"):
            atomic_write_bytes(out / lang / f"{page}.md", P.render(env, page, ctx).encode())
            n_pages += 1
        for sr in store.studies:
            figures = {}
            for page in sr.study.pages:
                plan = F.planned(sr, page)
                for name, spec, args in plan:
                    spec.draw(sr, lang, out / lang / sr.name / "figures" / name, *args)
                    n_fig += 1
                figures[page] = [n for n, _, _ in plan]
            ctx = P.study_context(store, sr, lang, figures, study_downloads[sr.name])
            ctx["anchors"] = anchors
            for page in sr.study.pages:
                atomic_write_bytes(out / lang / sr.name / f"{page}.md", P.render(env, page, ctx).encode())
                n_pages += 1
    atomic_write_json(out / "site-nav.json", site_nav(store))
    assert all(p in PAGES for sr in store.studies for p in sr.study.pages)
    return n_fig, n_pages
