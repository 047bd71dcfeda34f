"""`resdeg report`: cached results -> figures, data downloads and pages in docs/, for both languages.

The generated part of docs/ (en/, zh/, downloads/, site-nav.json) is a set of symlinks into
docs/_report, the one folder that holds a whole report. Its name never changes, so git sees a
regenerated report as the files that changed and nothing else (a report folder named by its
time made every regeneration add and delete the whole site). A new report is rendered into a
hidden folder, then swapped with docs/_report in one atomic step (renameat2 RENAME_EXCHANGE):
a report killed at any point leaves docs/ showing either the old report or the new one, never a
mix. Where the swap is not available it takes two renames, and a report killed between them is
restored by the next one. Two reports at once are kept apart by a lock. Hand-written files
(docs/assets/) are never touched.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from .. import __version__
from ..atomic import atomic_write_bytes, atomic_write_json, exchange_paths
from ..errors import ResdegError
from ..locks import Locked, acquire
from ..study import PAGES, SITE_PAGES
from . import anchors, downloads, figures, interactive, pages
from .collect import Store, load_store

GENERATED = ("en", "zh", "downloads", "site-nav.json", "report.json")
CURRENT = "_report"  # the folder of the published report, swapped whole
RENDERING = ".report-render-"  # + pid: a report being rendered (dot-folders: MkDocs and git skip them)
REPLACED = ".report-old-"  # + pid: the previous report, between the two renames of the fallback
LEGACY = "_report-2"  # the layout before: _report was a symlink to a folder named by its time
MARKER = ".resdeg-generated"  # in every report folder: only such folders are ever replaced
LOCK_FOLDER = ".report-lock"


# -- navigation -------------------------------------------------------------------------------------

def site_nav(store: Store) -> list[dict]:
    """The site's navigation, read by resdeg/report/mkdocs_hooks.py (docs/site-nav.json)."""
    nav = [{"page": f"{p.name}.md"} for p in SITE_PAGES if p.before_studies]
    for sr in store.studies:
        nav.append({"section": sr.title, "pages": [f"{sr.name}/{p}.md" for p in sr.study.pages]})
    nav += [{"page": f"{p.name}.md"} for p in SITE_PAGES if not p.before_studies]
    return nav


# -- publishing -------------------------------------------------------------------------------------

def _check_generated(docs: Path) -> None:
    """Refuse to replace anything `resdeg report` did not make."""
    for name in GENERATED + (CURRENT,):
        p = docs / name
        if p.is_symlink():
            continue
        if p.is_dir() and (p / MARKER).exists():
            continue  # a report folder, or a report from before the symlink layout: replaced on publish
        if p.exists():
            raise ResdegError(f"{p} was not made by `resdeg report`; move it away, then rerun")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _recover(docs: Path) -> None:
    """Undo what a killed report left: a report folder out of place between the fallback's two
    renames is put back; half-rendered folders and the previous layout's folders are deleted."""
    current = docs / CURRENT
    replaced = sorted(docs.glob(f"{REPLACED}*"), key=lambda p: p.stat().st_mtime)
    if replaced and not (current.exists() or current.is_symlink()):
        os.rename(replaced.pop(), current)
    for leftover in [*replaced, *docs.glob(f"{RENDERING}*")]:
        _remove(leftover)
    if not current.is_symlink():
        for legacy in docs.glob(f"{LEGACY}*"):
            _remove(legacy)


def _publish(new: Path, docs: Path) -> None:
    """Swap docs/_report with `new` atomically, make the generated names point into it, and
    delete the previous report."""
    current = docs / CURRENT
    if not (current.exists() or current.is_symlink()):
        os.rename(new, current)
    else:
        if not exchange_paths(new, current):
            replaced = docs / f"{REPLACED}{os.getpid()}"
            os.rename(current, replaced)  # until the next rename there is no report: _recover restores it
            os.rename(new, current)
            new = replaced
        _remove(new)  # now the previous report (or the previous layout's symlink)
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
    _recover(docs)


def _lock(docs: Path, log):
    """The run lock of resdeg.locks on a hidden folder of docs/ (MkDocs skips dot-folders)."""
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
    if figures.cjk_font() is None:
        log(f"resdeg: note: {figures.NO_CJK_FONT}")
    figures.MISSING_GLYPHS.clear()
    with _lock(docs, log):
        _recover(docs)
        new = docs / f"{RENDERING}{os.getpid()}"
        try:
            n_fig, n_pages = _render(store, new, configured_repository(docs))
            _publish(new, docs)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
    if figures.MISSING_GLYPHS:
        log(f"resdeg: note: {len(figures.MISSING_GLYPHS)} figures have characters no installed font draws "
            f"(e.g. {sorted(figures.MISSING_GLYPHS)[0]}); install fonts-noto-cjk")
    summary = {"studies": [s.name for s in store.studies], "runs": len(store.runs), "unused": len(store.unused),
               "figures": n_fig, "pages": n_pages, "wall_s": round(time.perf_counter() - t0, 2)}
    log(f"report: {', '.join(summary['studies'])}: "
        f"{pages.count(summary['runs'], 'run', 'en')} ({summary['unused']} unused), "
        f"{n_fig} figures, {n_pages} pages in {docs}/ ({summary['wall_s']} s); "
        "build the site with `mkdocs build --strict`")
    return summary


def _interactive(plans, results, lang: str, data: set) -> dict[str, dict]:
    """Page path of each figure ("figures/<file>") -> {"plot": its interactive description as JSON,
    "data": the CSV it reads}, for the figures that have one; adds those CSVs to `data`."""
    out = {}
    for name, spec, args in plans:
        description = interactive.describe(spec.name, results, lang, *args)
        if description is not None:
            data.add(description["data"])
            out[f"figures/{name}"] = {"plot": interactive.as_attribute(description), "data": description["data"]}
    return out


def configured_repository(docs: Path) -> str | None:
    """The repository's address as the site configures it (`repo_url` in the mkdocs.yml beside
    docs/), or None: pages name no repository that nobody configured."""
    try:
        text = (docs.resolve().parent / "mkdocs.yml").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"""^repo_url:[ \t]*["']?([^"'\s#]+)""", text, re.M)
    return found.group(1) if found else None


def _render(store: Store, out: Path, repository: str | None = None) -> tuple[int, int]:
    out.mkdir(parents=True)
    (out / MARKER).write_text("generated by `resdeg report`; rebuilt whole on every run\n")
    env = pages.environment()
    n_fig = n_pages = 0
    site_downloads = downloads.write_site_downloads(store, out / "downloads")
    study_downloads = {sr.name: downloads.write_study_downloads(sr, out / "downloads" / sr.name)
                       for sr in store.studies}
    downloads.write_archive(out / "downloads")
    site_figures = figures.planned(store, "index")
    data = set()  # the CSVs that interactive figures read
    for lang in pages.LANGS:
        for name, spec, args in site_figures:
            spec.draw(store, lang, out / lang / "figures" / name, *args)
            n_fig += 1
        ctx = pages.site_context(store, lang, {"index": [n for n, _, _ in site_figures]}, site_downloads)
        ctx.update(anchors=anchors, repository=repository,
                   interactive=_interactive(site_figures, store, lang, data))
        for page in (p.name for p in SITE_PAGES):
            atomic_write_bytes(out / lang / f"{page}.md", pages.render(env, page, ctx).encode())
            n_pages += 1
        for sr in store.studies:
            figure_names = {}
            for page in sr.study.pages:
                plan = figures.planned(sr, page)
                for name, spec, args in plan:
                    spec.draw(sr, lang, out / lang / sr.name / "figures" / name, *args)
                    n_fig += 1
                figure_names[page] = [n for n, _, _ in plan]
            ctx = pages.study_context(store, sr, lang, figure_names, study_downloads[sr.name])
            plans = [p for page in sr.study.pages for p in figures.planned(sr, page)]
            ctx.update(anchors=anchors, repository=repository, interactive=_interactive(plans, sr, lang, data))
            for page in sr.study.pages:
                atomic_write_bytes(out / lang / sr.name / f"{page}.md", pages.render(env, page, ctx).encode())
                n_pages += 1
    for key in sorted(data):
        downloads.write_figure_data(out / "downloads", key)
    atomic_write_json(out / "site-nav.json", site_nav(store))
    # read by the site's hook: the one date the site shows is the report's
    atomic_write_json(out / "report.json", {"date": store.date, "resdeg": __version__})
    assert all(p in PAGES for sr in store.studies for p in sr.study.pages)
    return n_fig, n_pages
