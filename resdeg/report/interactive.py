"""The site's interactive figures: for a PNG figure of the report, a description of the same chart
that docs/assets/javascripts/figures.js draws with plotly.js (served from the site itself) from
the figure's download CSV, row by row: hovering shows a point's exact value with its model,
variant, seed and epoch (or stage, block, step), legend entries hide series, axes zoom. The PNG
stays on the page for print and for a browser without JavaScript.

A description names its CSV by its path in downloads/ (`data`), the rows it keeps (`where`), the
columns that make one line (`series`) and, per panel, the columns on the axes. It holds no number
of its own: what is drawn is the CSV. The labels are in the page's language.
"""
from __future__ import annotations

import itertools
import json

from ..probes.criteria import CRITERIA
from . import analysis, figures
from .collect import StudyResults, depth
from .verdicts import EXPLODE, VANISH

# matplotlib style -> plotly's
DASH = {"-": "solid", "--": "dash", "-.": "dashdot", ":": "dot"}
SYMBOL = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down", "P": "cross"}
# What the hover box calls each column, per language (the values are the CSV's own)
COLUMNS = {
    "en": {"model": "model", "variant": "variant", "seed": "seed", "epoch": "epoch", "stage": "stage",
           "block": "block", "phase": "phase", "epochs_done": "epochs", "step_first": "first step",
           "step_last": "last step", "criterion": "criterion"},
    "zh": {"model": "模型", "variant": "变体", "seed": "种子", "epoch": "轮次", "stage": "阶段", "block": "残差块",
           "phase": "时刻", "epochs_done": "轮次", "step_first": "第一步",
           "step_last": "最后一步", "criterion": "判据"},
}
SERIES_NAME = {"en": "{variant}, seed {seed}", "zh": "{variant}，种子 {seed}"}
RUN_HOVER = ("model", "variant", "seed")

BUILDERS = {}  # figure name (figures.py) -> builder(sr, lang, *args) -> description


def interactive(name: str):
    def register(fn):
        BUILDERS[name] = fn
        return fn
    return register


def describe(name: str, results, lang: str, *args) -> dict | None:
    """The interactive description of a figure (`name` as registered in figures.py), or None."""
    builder = BUILDERS.get(name)
    return builder(results, lang, *args) if builder else None


def as_attribute(description: dict) -> str:
    """The description as the page carries it (JSON; figures.js reads it from data-plot)."""
    return json.dumps(description, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def variant_styles(variants) -> dict:
    return {v: _style(*figures.STYLE.get(v, ("#000000", "-", "o"))) for v in variants}


def _style(colour: str, ls: str, marker: str) -> dict:
    return {"color": colour, "dash": DASH.get(ls, "solid"), "symbol": SYMBOL.get(marker, "circle")}


def chart(data: str, lang: str, panels: list[dict], *, where=None, series=("variant", "seed"), style_by=("variant",),
           styles=None, name=None, hover=RUN_HOVER, mode="lines+markers", cols=None, hlines=(), xmap=None) -> dict:
    return {"data": data, "where": where or {}, "series": list(series), "style_by": list(style_by),
            "styles": styles or {}, "name": name or SERIES_NAME[lang], "hover": list(hover),
            "columns": COLUMNS[lang], "mode": mode, "cols": cols or len(panels), "panels": panels,
            "hlines": list(hlines), "xmap": xmap or {}}


def panel(title: str, x: str, y: str, xlabel: str, ylabel: str, *, scale: float = 1.0, offset: float = 0.0,
          log: bool = False, category: bool = False, where=None) -> dict:
    """One panel: column `x` against offset + scale * column `y` (accuracy fractions as %, errors as
    100 - 100 * accuracy), its rows those of the chart also matching `where`; x ticks at whole
    numbers when x counts epochs."""
    return {"title": title, "x": x, "y": y, "xlabel": xlabel, "ylabel": ylabel, "scale": scale, "offset": offset,
            "log": log, "category": category, "integer": x == "epoch", "where": where or {}}


def _chance(sr: StudyResults, t: dict, error: bool = False) -> dict:
    classes = sr.num_classes
    return {"y": 100 - 100 / classes if error else 100 / classes, "label": t["chance"]}


# -- per-epoch curves ------------------------------------------------------------------------------------

def _accuracy(sr: StudyResults, lang: str, model: str, keys, title) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(title(t, key), "epoch", key, t["epoch"], t["acc"], scale=100) for key in keys]
    return chart(f"{sr.name}/h1_epochs.csv", lang, panels, where={"model": model},
                  styles=variant_styles(sr.variants), hover=(*RUN_HOVER, "epoch"), hlines=[_chance(sr, t)])


@interactive("h1-accuracy")
def h1_accuracy(sr: StudyResults, lang: str, model: str) -> dict:
    return _accuracy(sr, lang, model, figures.H1_KEYS, lambda t, key: t[key])


@interactive("bn-accuracy")
def bn_accuracy(sr: StudyResults, lang: str, model: str) -> dict:
    return _accuracy(sr, lang, model, ("eval_train_acc", "test_acc"), lambda t, key: f"{model}{t['colon']}{t[key]}")


# -- the depth study ---------------------------------------------------------------------------------------

def _depth_styles(sr: StudyResults) -> dict:
    """model|variant -> colour by depth, plain (Nres) dashed, residual solid (He et al.'s Fig. 6)."""
    colours = figures.DEPTH_COLOURS
    return {f"{m}|{v}": {"color": colours[i % len(colours)], "dash": "dash" if v == "Nres" else "solid",
                         "symbol": "circle"}
            for (i, m), v in itertools.product(enumerate(sr.models), ("Nres", "FULL"))}


@interactive("depth-curves")
def depth_curves(sr: StudyResults, lang: str) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(t[title], "epoch", key, t["epoch"], t["err"], scale=-100, offset=100)
              for key, title in (("train_acc", "train_err"), ("test_acc", "test_err"))]
    name = "{model} {variant}, seed {seed}" if lang == "en" else "{model} {variant}，种子 {seed}"
    return chart(f"{sr.name}/h1_epochs.csv", lang, panels, where={"variant": ["FULL", "Nres"]},
                  series=("model", "variant", "seed"), style_by=("model", "variant"), styles=_depth_styles(sr),
                  name=name, hover=(*RUN_HOVER, "epoch"), mode="lines")


@interactive("depth-final")
def depth_final(sr: StudyResults, lang: str) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(t[title], "model", key, t["depth"], t["err"], scale=-100, offset=100)
              for key, title in (("eval_train_acc", "eval_train_err"), ("test_acc", "test_err"))]
    name = {"en": "{variant}", "zh": "{variant}"}[lang]
    return chart(f"{sr.name}/runs.csv", lang, panels, where={"variant": ["Nres", "FULL"]}, series=("variant",),
                  styles=variant_styles(("Nres", "FULL")), name=name, hover=(*RUN_HOVER, "epochs_done"),
                  mode="markers", xmap={m: depth(m) for m in sr.models})


# -- gradient telemetry ------------------------------------------------------------------------------------

@interactive("h2-gradient-steps")
def h2_steps(sr: StudyResults, lang: str, model: str) -> dict:
    t = figures.LABELS[lang]
    stages = next((r.stages for r in sr.runs if r.model == model and r.stages), ["?"])
    panels = [panel(t[which].format(s=stages[i]), "step_first", f"g_{which}_stage", t["step"], t["grad"], log=True)
              for which, i in (("first", 0), ("last", -1))]
    return chart(f"{sr.name}/h2_gradient_blocks.csv", lang, panels, where={"model": model},
                  styles=variant_styles(sr.variants), hover=(*RUN_HOVER, "epoch", "step_first", "step_last"),
                  mode="lines")


@interactive("h2-ratio")
def h2_ratio(sr: StudyResults, lang: str) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(m, "step_first", "ratio", t["step"], t["ratio"], log=True, where={"model": m}) for m in sr.models]
    return chart(f"{sr.name}/h2_gradient_blocks.csv", lang, panels, styles=variant_styles(sr.variants),
                  hover=(*RUN_HOVER, "epoch", "step_first", "step_last"), mode="lines",
                  hlines=[{"y": VANISH, "label": t["vanish"]}, {"y": EXPLODE, "label": t["explode"]}])


@interactive("h2-stage-profile")
def h2_profile(sr: StudyResults, lang: str) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(m, "stage", "median_grad", t["stage"], t["median_grad"], log=True, category=True,
                     where={"model": m}) for m in sr.models]
    return chart(f"{sr.name}/h2_stage_medians.csv", lang, panels, styles=variant_styles(sr.variants),
                  hover=(*RUN_HOVER, "stage"))


# -- separability -------------------------------------------------------------------------------------------

@interactive("h3-separability")
def h3_separability(sr: StudyResults, lang: str, model: str) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(CRITERIA[c].title[t["lang"]] + ("" if CRITERIA[c].higher_is_better else t["lower_better"]),
                     "stage", "value", t["stage"], "", category=True, where={"criterion": c})
              for c in analysis.criteria_present(sr.runs)]
    return chart(f"{sr.name}/h3_separability.csv", lang, panels, where={"model": model},
                  styles=variant_styles(sr.variants), hover=(*RUN_HOVER, "stage"), cols=3)


# -- signal propagation -------------------------------------------------------------------------------------

def _model_by_phase(sr: StudyResults, lang: str, y: str, ylabel: str) -> list[dict]:
    t = figures.LABELS[lang]
    return [panel(f"{m}{t['colon']}{t[phase]}", "stage", y, t["stage"], ylabel, log=True, category=True,
                   where={"model": m, "phase": phase}) for m in sr.models for phase in ("init", "trained")]


@interactive("signal-activation-std")
def signal_std(sr: StudyResults, lang: str) -> dict:
    return chart(f"{sr.name}/signal.csv", lang, _model_by_phase(sr, lang, "act_std", figures.LABELS[lang]["act_std"]),
                  styles=variant_styles(sr.variants), hover=(*RUN_HOVER, "phase", "stage"), cols=2)


@interactive("bn-rank")
def bn_rank(sr: StudyResults, lang: str) -> dict:
    panels = _model_by_phase(sr, lang, "effective_rank", figures.LABELS[lang]["rank"])
    return chart(f"{sr.name}/signal.csv", lang, panels,
                  styles=variant_styles(sr.variants), hover=(*RUN_HOVER, "phase", "stage"), cols=2)


@interactive("bn-signal")
def bn_signal(sr: StudyResults, lang: str, model: str) -> dict:
    t = figures.LABELS[lang]
    panels = [panel(f"{t[key]}{t['sep']}{t[phase]}", "block", key, t["block"], "", log=True, category=True,
                     where={"phase": phase})
              for phase in ("init", "trained") for key in ("sq_mean", "variance", "branch_variance")]
    return chart(f"{sr.name}/blocks.csv", lang, panels, where={"model": model}, styles=variant_styles(sr.variants),
                  hover=(*RUN_HOVER, "phase", "block", "stage"), cols=3)
