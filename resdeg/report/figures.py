"""The report's figures: one function per figure, registered beside its code with the page it
belongs to (showyourwork's rule: a figure is made from cached results only). Each is drawn with
English or Chinese labels and written as a PNG at 150 dpi, atomically.

Sizes are chosen for the page: at most 8 inches wide, so that the 9-10 pt fonts stay at least
9 pt when the page shows the figure at its width. Chinese needs a CJK font from the system
(fonts-noto-cjk or fonts-wqy-microhei); without one the Chinese figures get English labels and a
warning, never boxes for missing glyphs. Variants differ in colour (Okabe-Ito, colour-blind
safe) *and* line style and marker; legends sit outside the axes, so they never cover data.
"""
from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..atomic import atomic_write_bytes  # noqa: E402
from ..probes.criteria import CRITERIA  # noqa: E402
from . import analysis  # noqa: E402
from .collect import Store, StudyResults, depth  # noqa: E402
from .verdicts import EXPLODE, VANISH  # noqa: E402

STYLE = {  # variant -> colour, line style, marker
    "FULL": ("#0072B2", "-", "o"), "Nres": ("#D55E00", "--", "s"),
    "Nbn": ("#009E73", "-.", "^"), "Nboth": ("#CC79A7", ":", "D"),
    "Fixup": ("#E69F00", "-", "v"), "SkipInit": ("#56B4E9", "-", "P"),
}
DEPTH_COLOURS = ("#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#000000")
DPI = 150
WIDTH = 8.0  # inches: the widest figure
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK", "Source Han Sans SC", "WenQuanYi Micro Hei",
                "WenQuanYi Zen Hei", "Noto Serif CJK SC", "Noto Serif CJK JP", "Droid Sans Fallback", "AR PL UMing CN")
_CJK_FILE = re.compile(r"cjk|wqy|wenquanyi|sourcehan|droidsansfallback|uming|ukai", re.I)

LABELS = {
    "en": {"lang": "en", "epoch": "epoch", "step": "training step", "stage": "stage", "acc": "accuracy (%)",
           "err": "error (%)", "train_acc": "train accuracy (running, train mode)",
           "eval_train_acc": "train accuracy (eval mode)", "test_acc": "test accuracy",
           "train_err": "training error (running)", "test_err": "test error",
           "eval_train_err": "training error (eval mode)",
           "grad": "mean |dL/d stage output|", "first": "first stage ({s})", "last": "last stage ({s})",
           "median_grad": "median over steps of mean |dL/d output|", "ratio": "g(first stage) / g(last stage)",
           "vanish": "vanishing (< 1e-3)", "explode": "exploding (> 1e3)",
           "act_std": "activation std", "init": "at initialisation", "trained": "after training",
           "n_seeds": "{n} seeds", "seed": "1 seed", "chance": "chance", "depth": "depth (layers)",
           "plain": "plain (Nres)", "residual": "residual (FULL)", "lower_better": " (lower = more separable)",
           "block": "residual block", "sq_mean": "average channel squared mean", "variance": "average channel variance",
           "branch_variance": "residual branch variance (before the add)", "rank": "effective rank",
           "test_marker": "test", "train_marker": "train (eval mode)",
           "sep": ", ", "colon": ": ", "paren": " ({})", "seed_range": "{lo}-{hi} seeds",
           "plain_short": "plain", "residual_short": "residual",
           "list_sep": ", ", "zero_series": "{} = 0 (off the log scale)", "same_series": "{} on top of {}",
           "corr": "input-gradient correlation", "corr_at": "at distance {d}",
           "distance": "distance (data standard deviations)",
           "lambda_max": "top Hessian eigenvalue λmax", "alpha": "step along a filter-normalised direction",
           "slice_loss": "training loss", "no_grad_plain": "plain without BatchNorm (Nboth)", "seed_n": "seed {n}",
           "layers": "{d} layers", "log_loss": "log10 training loss",
           "direction": "step along filter-normalised direction {k}"},
    "zh": {"lang": "zh", "epoch": "训练轮次", "step": "训练步数", "stage": "阶段", "acc": "准确率（%）",
           "err": "错误率（%）",
           "train_acc": "训练准确率（训练模式，逐批统计）", "eval_train_acc": "训练集准确率（评估模式）",
           "test_acc": "测试准确率", "train_err": "训练错误率（逐批统计）", "test_err": "测试错误率",
           "eval_train_err": "训练集错误率（评估模式）",
           "grad": "损失对阶段输出梯度的平均绝对值", "first": "第一个阶段（{s}）", "last": "最后一个阶段（{s}）",
           "median_grad": "梯度平均绝对值在各步的中位数", "ratio": "第一个与最后一个阶段的 g 之比",
           "vanish": "梯度消失（< 1e-3）", "explode": "梯度爆炸（> 1e3）",
           "act_std": "激活值标准差", "init": "初始化时", "trained": "训练结束后",
           "n_seeds": "{n} 个种子", "seed": "1 个种子", "chance": "随机猜测", "depth": "深度（层数）",
           "plain": "普通网络（Nres）", "residual": "残差网络（FULL）", "lower_better": "（越小越可分）",
           "block": "残差块", "sq_mean": "通道均值平方的平均", "variance": "通道方差的平均",
           "branch_variance": "残差分支方差（相加之前）", "rank": "有效秩",
           "test_marker": "测试集", "train_marker": "训练集（评估模式）",
           "sep": "，", "colon": "：", "paren": "（{}）", "seed_range": "{lo}–{hi} 个种子",
           "plain_short": "普通", "residual_short": "残差",
           "list_sep": "、", "zero_series": "{} 恒为 0（对数坐标上不显示）", "same_series": "{} 与 {} 重合",
           "corr": "输入梯度的相关系数", "corr_at": "距离 {d}", "distance": "距离（数据标准差）",
           "lambda_max": "Hessian 最大特征值 λmax", "alpha": "沿滤波器归一化方向的步长",
           "slice_loss": "训练损失", "no_grad_plain": "无批归一化的普通网络（Nboth）", "seed_n": "种子 {n}",
           "layers": "{d} 层", "log_loss": "训练损失的 log10",
           "direction": "沿滤波器归一化方向 {k} 的步长"},
}


# -- the registry -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FigureSpec:
    name: str  # file name stem
    pages: tuple[str, ...]  # the pages it belongs to (study pages, or "index" for the landing page)
    draw: Callable  # draw(results, lang, path, *args)
    per_model: bool = False  # one figure per model of the study (file name gets -<model>)
    needs: Callable | None = None  # needs(results) -> bool: is there data for it?


FIGURES: list[FigureSpec] = []


def figure(name: str, *pages: str, per_model: bool = False, needs: Callable | None = None):
    """Register a figure function for one or more pages."""
    def register(fn):
        FIGURES.append(FigureSpec(name, pages, fn, per_model, needs))
        return fn
    return register


def planned(results, page: str) -> list[tuple[str, FigureSpec, tuple]]:
    """(file name, spec, extra args) of every figure of a page whose data exist."""
    out = []
    for spec in FIGURES:
        if page not in spec.pages or (spec.needs is not None and not spec.needs(results)):
            continue
        if spec.per_model:
            out += [(f"{spec.name}-{m}.png", spec, (m,)) for m in results.models]
        else:
            out.append((f"{spec.name}.png", spec, ()))
    return out


# -- drawing helpers ---------------------------------------------------------------------------------

@cache
def cjk_font() -> str | None:
    """A CJK font family matplotlib can use, or None. Registers system CJK fonts that matplotlib's
    font cache missed (installed after the cache was built)."""
    def known():
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((n for n in CJK_FAMILIES if n in names), None) or \
            next((n for n in sorted(names) if "CJK" in n or "WenQuanYi" in n), None)

    found = known()
    if found is None:
        for path in font_manager.findSystemFonts():
            if _CJK_FILE.search(Path(path).name):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        found = known()
    return found


def figure_language(lang: str) -> str:
    """The language the figure labels can be drawn in: zh falls back to en without a CJK font (the
    report says so once, in NO_CJK_FONT)."""
    return "en" if lang == "zh" and cjk_font() is None else lang


NO_CJK_FONT = ("no CJK font found, so the Chinese pages' figures have English labels; for Chinese labels install "
               "one (apt-get install fonts-noto-cjk) and run `resdeg report` again")
# Names of the figures drawn with a glyph no font had (each would show a box): the report says so
# once, instead of matplotlib's warning for every character of every label.
MISSING_GLYPHS: set[str] = set()


def _rc(lang: str) -> dict:
    family = ["DejaVu Sans"] + ([cjk_font()] if lang == "zh" else [])
    return {"font.family": family, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
            "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9, "axes.spines.top": False,
            "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "axes.unicode_minus": False}


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _draw(path: Path, lang: str, nrows: int, ncols: int, height: float, body, width: float = WIDTH) -> None:
    """Make a figure in the language's font setting, let `body(fig, axes, labels)` fill it, save it."""
    lang = figure_language(lang)
    with matplotlib.rc_context(_rc(lang)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        body(fig, axes, LABELS[lang])
        _save(fig, path)
    for w in caught:
        if re.match(r"Glyph \d+ .* missing from font", str(w.message)):
            MISSING_GLYPHS.add(path.name)
        else:  # anything else is not ours to hide
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _legend_below(fig: Figure, axes, ncol: int = 4) -> None:
    """One legend for the figure, below the axes: it never covers data."""
    handles, labels = {}, {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            if lab not in labels:
                labels[lab], handles[lab] = lab, h
    if handles:
        fig.legend(list(handles.values()), list(labels), loc="outside lower center", ncol=min(ncol, len(handles)),
                   frameon=False)


def _seed_label(n: int, t: dict) -> str:
    return t["seed"] if n == 1 else t["n_seeds"].format(n=n)


def _seeds_text(counts: list[int], t: dict) -> str:
    """'3 seeds', or '1-3 seeds' when the panels sharing one legend entry differ."""
    lo, hi = min(counts, default=0), max(counts, default=0)
    return _seed_label(hi, t) if lo == hi else t["seed_range"].format(lo=lo, hi=hi)


def _log_y(ax, min_ratio: float = 10.0) -> None:
    """Log scale whose range spans at least `min_ratio`: a nearly constant series then looks flat
    instead of filling the panel with noise in the fourth digit, and the axis keeps readable ticks."""
    ax.set_yscale("log")
    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if np.isfinite(lo) and np.isfinite(hi) and 0 < lo and hi / lo < min_ratio:
        centre = np.sqrt(lo * hi)
        ax.set_ylim(centre / np.sqrt(min_ratio), centre * np.sqrt(min_ratio))


def _variant_label(sr: StudyResults, variant: str, t: dict, *models: str) -> str:
    """The legend entry of a variant drawn for `models` (one per panel, one legend for the figure)."""
    counts = [n for m in models if (n := len(sr.cell(m, variant)))]
    return variant + t["paren"].format(_seeds_text(counts, t))


def _line(ax, x, mean, std, variant, label, n_max, colour=None, ls=None, marker=None):
    c, s, m = STYLE.get(variant, ("#000000", "-", "o"))
    colour, ls, marker = colour or c, ls or s, marker or m
    ax.plot(x, mean, color=colour, ls=ls, marker=marker, ms=3.5, lw=1.6, label=label)
    if n_max > 1:
        ax.fill_between(x, np.subtract(mean, std), np.add(mean, std), color=colour, alpha=0.15, lw=0)


def _chance(ax, sr, t, error: bool = False) -> None:
    """A dotted line at chance level (1 / classes) on an accuracy (or error) axis."""
    classes = sr.num_classes
    y = 100 / classes
    ax.axhline(100 - y if error else y, color="#555555", ls=(0, (1, 2)), lw=1, label=t["chance"])


def _has_epochs(sr) -> bool:
    return any(r.epochs for r in sr.runs)


def _has_telemetry(sr) -> bool:
    return any(r.telemetry is not None for r in sr.runs)


def _has_probes(sr) -> bool:
    return bool(sr.probed)


def _has_blocks(sr) -> bool:
    return any(r.probe and r.probe.blocks for r in sr.runs)


# -- the landing page ----------------------------------------------------------------------------------

@figure("headline", "index", needs=lambda store: bool(store.studies))
def headline(store: Store, lang: str, path: Path) -> None:
    """Final test accuracy (filled) and train accuracy in eval mode (hollow) of every model and
    variant, one panel per study; chance level dotted."""
    studies = store.studies

    def body(fig, axes, t):
        for ax, sr in zip(axes.flat, studies, strict=False):
            for i, model in enumerate(sr.models):
                variants = [v for v in sr.variants if sr.cell(model, v)]
                for j, v in enumerate(variants):
                    x = i + (j - (len(variants) - 1) / 2) * 0.12
                    colour, _, marker = STYLE.get(v, ("#000000", "-", "o"))
                    runs = sr.cell(model, v)
                    test = [100 * r.final.test_acc for r in runs if r.final]
                    train = [100 * r.final.eval_train_acc for r in runs if r.final]
                    if test:
                        ax.plot([x] * len(test), test, marker, color=colour, ms=5, alpha=0.9,
                                label=v if i == 0 else None)
                        ax.plot([x] * len(train), train, marker, color=colour, ms=6, mfc="none", alpha=0.9)
            ax.set_xticks(range(len(sr.models)), sr.models)
            ax.set_xlim(-0.6, len(sr.models) - 0.4)
            ax.set_ylim(0, 101)
            ax.set_ylabel(t["acc"])
            ax.set_title(sr.title[t["lang"]])  # t: the labels of the language the figure can be drawn in
            _chance(ax, sr, t)
        fig.legend(handles=[Line2D([], [], marker="o", ls="", color="#444444", label=t["test_marker"]),
                            Line2D([], [], marker="o", ls="", mfc="none", color="#444444", label=t["train_marker"])],
                   loc="outside upper center", ncol=2, frameon=False)
        for ax in list(axes.flat)[len(studies):]:  # a grid cell with no study: no empty axes
            ax.set_visible(False)
        _legend_below(fig, axes, ncol=7)
    ncols = 2 if len(studies) in (2, 4) else min(3, len(studies))  # 4 studies: 2x2, not 3+1 and two empty cells
    nrows = -(-len(studies) // ncols)
    _draw(path, lang, nrows, ncols, 3.2 * nrows + 0.9, body)


# -- H1 ----------------------------------------------------------------------------------------------

H1_KEYS = ("train_acc", "eval_train_acc", "test_acc")


def _accuracy_per_epoch(path: Path, lang: str, sr: StudyResults, model: str, keys, title) -> None:
    """One panel per accuracy key: every variant of `model` per epoch (mean over seeds, ± std band),
    chance dotted; `title(labels, key)` names each panel."""
    def body(fig, axes, t):
        for col, key in enumerate(keys):
            ax = axes[0, col]
            for v in sr.variants:
                c = analysis.epoch_curves(sr, model, v, key)
                if c["epoch"]:
                    _line(ax, c["epoch"], np.multiply(c["mean"], 100), np.multiply(c["std"], 100), v,
                          _variant_label(sr, v, t, model), max(c["n"]))
            _chance(ax, sr, t)
            ax.set_title(title(t, key), fontsize=9.5)
            ax.set_xlabel(t["epoch"])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0, 101)
        axes[0, 0].set_ylabel(t["acc"])
        _legend_below(fig, axes)
    _draw(path, lang, 1, len(keys), 3.3 if len(keys) > 2 else 3.4, body)


@figure("h1-accuracy", "h1", per_model=True, needs=_has_epochs)
def h1_accuracy(sr: StudyResults, lang: str, path: Path, model: str) -> None:
    """Running train, eval-mode train and test accuracy per epoch of one model's variants."""
    _accuracy_per_epoch(path, lang, sr, model, H1_KEYS, lambda t, key: t[key])


# -- H2 ----------------------------------------------------------------------------------------------

def _binned_median(y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of consecutive blocks of `width` steps (NaN-aware): (block centre steps, block medians)."""
    n = max(width, len(y) // width * width)
    y = np.pad(y, (0, max(0, n - len(y))), constant_values=np.nan)
    blocks = y[:n].reshape(-1, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks after a divergence are all NaN
        return np.arange(len(blocks)) * width + (width - 1) / 2, np.nanmedian(blocks, axis=1)


def _pooled(series: list[np.ndarray]) -> np.ndarray:
    """Per step the median over seeds (runs of different length padded with NaN)."""
    stacked = np.full((len(series), max(len(s) for s in series)), np.nan)
    for i, s in enumerate(series):
        stacked[i, :len(s)] = s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps after a divergence
        return np.nanmedian(stacked, axis=0)


@figure("h2-gradient-steps", "h2", per_model=True, needs=_has_telemetry)
def h2_steps(sr: StudyResults, lang: str, path: Path, model: str) -> None:
    """Per-step mean |dL/d stage output| of the first and last stage of one model's variants, log
    scale: every step a faint point, the median over blocks of steps (of the median over seeds) a
    line; a vertical line where a run diverged."""
    longest = max((len(g) for r in sr.runs if (g := analysis.grad_series(r)) is not None), default=1)
    width = max(1, longest // 200)  # the same block width for every run, so short runs look alike

    def body(fig, axes, t):
        for col, which in enumerate(("first", "last")):
            ax = axes[0, col]
            stage_name = None
            for v in sr.variants:
                colour, ls, _ = STYLE.get(v, ("#000000", "-", "o"))
                series = []
                for r in sr.cell(model, v):
                    g = analysis.grad_series(r)
                    if g is None:
                        continue
                    stage_name = r.stages[0 if which == "first" else -1]
                    y = g[:, 0 if which == "first" else -1].copy()
                    y[~np.isfinite(y) | (y <= 0)] = np.nan
                    series.append(y)
                    step = np.arange(len(y))
                    keep = slice(None, None, max(1, len(y) // 3000))
                    ax.scatter(step[keep], y[keep], s=1.5, color=colour, alpha=0.12, lw=0, rasterized=True)
                    if r.status == "diverged" and r.record.diverged_at_step is not None:
                        ax.axvline(r.record.diverged_at_step, color=colour, ls=ls, lw=0.9)
                if series:
                    ax.plot(*_binned_median(_pooled(series), width), color=colour, ls=ls, lw=1.6,
                            label=_variant_label(sr, v, t, model))
            ax.set_yscale("log")
            ax.set_title(t[which].format(s=stage_name or "?"))
            ax.set_xlabel(t["step"])
        axes[0, 0].set_ylabel(t["grad"])
        _legend_below(fig, axes)
    _draw(path, lang, 1, 2, 3.4, body)


@figure("h2-ratio", "h2", "degradation", needs=_has_telemetry)
def h2_ratio(sr: StudyResults, lang: str, path: Path) -> None:
    """The H2 statistic itself: g(first stage) / g(last stage) per step (binned median over seeds),
    one panel per model, with the 1e-3 and 1e3 thresholds that decide the verdict."""
    longest = max((len(g) for r in sr.runs if (g := analysis.grad_series(r)) is not None), default=1)
    width = max(1, longest // 200)
    models = sr.models

    def body(fig, axes, t):
        for ax, model in zip(axes.flat, models, strict=False):
            for v in sr.variants:
                colour, ls, _ = STYLE.get(v, ("#000000", "-", "o"))
                series = [s for r in sr.cell(model, v) if (s := analysis.ratio_series(r)) is not None]
                if series:
                    ax.plot(*_binned_median(_pooled(series), width), color=colour, ls=ls, lw=1.6,
                            label=_variant_label(sr, v, t, *models))
            ax.axhspan(1e-12, VANISH, color="#D55E00", alpha=0.08, lw=0)
            ax.axhspan(EXPLODE, 1e12, color="#CC79A7", alpha=0.08, lw=0)
            ax.axhline(VANISH, color="#D55E00", lw=1, ls=(0, (4, 2)), label=t["vanish"])
            ax.axhline(EXPLODE, color="#CC79A7", lw=1, ls=(0, (4, 2)), label=t["explode"])
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, VANISH / 10), max(hi, EXPLODE * 10))
            ax.set_title(model)
            ax.set_xlabel(t["step"])
        axes.flat[0].set_ylabel(t["ratio"])
        _legend_below(fig, axes)
    _draw(path, lang, 1, len(models), 3.4, body)


@figure("h2-stage-profile", "h2", needs=_has_telemetry)
def h2_profile(sr: StudyResults, lang: str, path: Path) -> None:
    """Median over steps of the gradient at every stage, per variant (mean over seeds, min-max bars)."""
    models = sr.models

    def body(fig, axes, t):
        for ax, model in zip(axes.flat, models, strict=False):
            for v in sr.variants:
                runs = [r for r in sr.cell(model, v) if analysis.stage_medians(r)]
                if not runs:
                    continue
                stages = runs[0].stages
                spreads = analysis.stage_spreads(runs, stages, analysis.stage_medians)
                mid = np.array([s.mean if s else np.nan for s in spreads])
                err = [mid - [s.lo if s else np.nan for s in spreads], [s.hi if s else np.nan for s in spreads] - mid]
                colour, ls, marker = STYLE.get(v, ("#000000", "-", "o"))
                ax.errorbar(range(len(stages)), mid, yerr=err, color=colour, ls=ls, marker=marker, ms=4, lw=1.6,
                            capsize=2, label=_variant_label(sr, v, t, *models))
                ax.set_xticks(range(len(stages)), stages)
            ax.set_yscale("log")
            ax.set_title(model)
            ax.set_xlabel(t["stage"])
        axes.flat[0].set_ylabel(t["median_grad"])
        _legend_below(fig, axes)
    _draw(path, lang, 1, len(models), 3.4, body)


# -- H3 ----------------------------------------------------------------------------------------------

def _stage_lines(ax, sr: StudyResults, model: str, t: dict, values_of) -> None:
    """One line per variant over the stages: the mean over probed seeds of `values_of(run)`
    (a stage -> value map), with a ±std band when there are several seeds."""
    for v in sr.variants:
        runs = [r for r in sr.cell(model, v) if r.probe]
        if not runs:
            continue
        stages = list(runs[0].probe.stages)
        spreads = analysis.stage_spreads(runs, stages, values_of)  # a stage no run has is drawn as a gap
        mean = np.array([s.mean if s else np.nan for s in spreads])
        std = np.array([(s.sd or 0.0) if s else 0.0 for s in spreads])
        _line(ax, np.arange(len(stages)), mean, std, v, _variant_label(sr, v, t, model), len(runs))
        ax.set_xticks(range(len(stages)), [s.replace("stage", "") for s in stages])


@figure("h3-separability", "h3", per_model=True, needs=_has_probes)
def h3_separability(sr: StudyResults, lang: str, path: Path, model: str) -> None:
    """Every separability criterion by stage for the probed variants of one model (mean ± std over seeds)."""
    crits = analysis.criteria_present(sr.runs)
    ncols = 3
    nrows = max(1, -(-len(crits) // ncols))

    def body(fig, axes, t):
        for i, ax in enumerate(axes.flat):
            if i >= len(crits):
                ax.set_visible(False)
                continue
            crit = crits[i]
            _stage_lines(ax, sr, model, t, lambda r, crit=crit: analysis.probe_values(r, crit))
            title = CRITERIA[crit].title[t["lang"]] if crit in CRITERIA else crit
            if not CRITERIA[crit].higher_is_better:
                title += t["lower_better"]
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(t["stage"])
        _legend_below(fig, axes)
    _draw(path, lang, nrows, ncols, 2.4 * nrows + 0.6, body)


# -- signal propagation -----------------------------------------------------------------------------

@figure("signal-activation-std", "signal", needs=_has_probes)
def signal_std(sr: StudyResults, lang: str, path: Path) -> None:
    """Forward activation std by stage at initialisation and after training, per variant."""
    models = sr.models

    def body(fig, axes, t):
        for row, model in enumerate(models):
            for col, phase in enumerate(("init", "trained")):
                ax = axes[row, col]
                _stage_lines(ax, sr, model, t, lambda r, phase=phase: analysis.signal_values(r, phase))
                _log_y(ax)
                ax.set_title(f"{model}{t['colon']}{t[phase]}")
                ax.set_xlabel(t["stage"])
            axes[row, 0].set_ylabel(t["act_std"])
        _legend_below(fig, axes)
    _draw(path, lang, len(models), 2, 2.9 * len(models) + 0.6, body)


# -- the depth study ----------------------------------------------------------------------------------

def _depth_lines(ax, sr: StudyResults, key: str, t: dict, as_error: bool = True) -> None:
    """He et al.'s Fig. 6: one curve per depth, plain dashed, residual solid; colour = depth."""
    for i, model in enumerate(sr.models):
        colour = DEPTH_COLOURS[i % len(DEPTH_COLOURS)]
        for v, ls in (("Nres", "--"), ("FULL", "-")):
            c = analysis.epoch_curves(sr, model, v, key)
            if not c["epoch"]:
                continue
            mean = 100 * (1 - np.asarray(c["mean"])) if as_error else 100 * np.asarray(c["mean"])
            kind = t["plain_short"] if v == "Nres" else t["residual_short"]
            _line(ax, c["epoch"], mean, 100 * np.asarray(c["std"]), v,
                  f"{depth(model)}{t['sep']}{kind}" + t["paren"].format(_seed_label(max(c["n"]), t)), max(c["n"]),
                  colour=colour, ls=ls, marker="")


@figure("depth-curves", "degradation", needs=_has_epochs)
def depth_curves(sr: StudyResults, lang: str, path: Path) -> None:
    """Training error (running, as He et al. plot it) and test error per epoch for every depth;
    plain nets dashed, residual nets solid (He et al. 2015, Fig. 6)."""
    def body(fig, axes, t):
        for ax, key, title in ((axes[0, 0], "train_acc", "train_err"), (axes[0, 1], "test_acc", "test_err")):
            _depth_lines(ax, sr, key, t)
            ax.set_title(t[title])
            ax.set_xlabel(t["epoch"])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
        axes[0, 0].set_ylabel(t["err"])
        _legend_below(fig, axes, ncol=4)
    _draw(path, lang, 1, 2, 3.8, body)


@figure("depth-final", "degradation", needs=_has_epochs)
def depth_final(sr: StudyResults, lang: str, path: Path) -> None:
    """Final training error (eval mode) and test error against depth: one line plain, one residual;
    bars span the seeds (min to max), points are the mean."""
    def body(fig, axes, t):
        for ax, key, title in ((axes[0, 0], "eval_train_acc", "eval_train_err"),
                               (axes[0, 1], "test_acc", "test_err")):
            for v, label in (("Nres", t["plain"]), ("FULL", t["residual"])):
                points = analysis.final_by_depth(sr, v, key)
                if points:
                    colour, ls, marker = STYLE[v]
                    ax.errorbar([d for d, _ in points], [s.mean for _, s in points],
                                yerr=[[s.mean - s.lo for _, s in points], [s.hi - s.mean for _, s in points]],
                                color=colour, ls=ls, marker=marker, ms=5, lw=1.6, capsize=3,
                                label=label + t["sep"] + _seeds_text([s.n for _, s in points], t))
            ax.set_xticks([depth(m) for m in sr.models])
            ax.set_title(t[title])
            ax.set_xlabel(t["depth"])
            ax.set_ylim(bottom=0)
        axes[0, 0].set_ylabel(t["err"])
        _legend_below(fig, axes)
    _draw(path, lang, 1, 2, 3.4, body)


# -- the BatchNorm study ------------------------------------------------------------------------------

@figure("bn-accuracy", "batchnorm", per_model=True, needs=_has_epochs)
def bn_accuracy(sr: StudyResults, lang: str, path: Path, model: str) -> None:
    """Train accuracy in eval mode and test accuracy per epoch of every variant of one depth."""
    _accuracy_per_epoch(path, lang, sr, model, ("eval_train_acc", "test_acc"),
                        lambda t, key: f"{model}{t['colon']}{t[key]}")


def hidden_series(series: dict[str, np.ndarray], rtol: float = 1e-3) -> tuple[list[str], dict[str, list[str]]]:
    """What a log-scale line plot of `series` (drawn in order) would hide: the series that are zero
    everywhere (Fixup's and SkipInit's branches at initialisation), and for each series the ones
    drawn before it that it covers exactly (BatchNorm sets FULL's and Nres's branches to variance 1)."""
    zero = [v for v, vals in series.items() if not np.any(np.asarray(vals) > 0)]
    drawn, on_top = {}, {}
    for v, vals in series.items():
        if v in zero:
            continue
        under = [w for w, prev in drawn.items() if len(prev) == len(vals) and np.allclose(prev, vals, rtol=rtol)]
        if under:
            on_top[v] = under
        drawn[v] = np.asarray(vals)
    return zero, on_top


def _note_hidden(ax, zero: list[str], on_top: dict[str, list[str]], t: dict) -> None:
    """Say in the panel what it cannot show, rather than let a line vanish unexplained."""
    notes = [t["same_series"].format(v, t["list_sep"].join(under)) for v, under in on_top.items()]
    if zero:
        notes.append(t["zero_series"].format(t["list_sep"].join(zero)))
    if notes:
        ax.text(0.03, 0.03, "\n".join(notes), transform=ax.transAxes, fontsize=7.5, va="bottom", color="#333333")


@figure("bn-signal", "batchnorm", per_model=True, needs=_has_blocks)
def bn_signal(sr: StudyResults, lang: str, path: Path, model: str) -> None:
    """Signal propagation by residual block (Brock et al. 2021): average channel squared mean,
    average channel variance, and the residual branch's variance before the add; at initialisation
    (top) and after training (bottom), log scale, one line per variant."""
    keys = ("sq_mean", "variance", "branch_variance")

    def body(fig, axes, t):
        for row, phase in enumerate(("init", "trained")):
            for col, key in enumerate(keys):
                ax = axes[row, col]
                series = {v: analysis.block_series(sr.cell(model, v), phase, key)[1] for v in sr.variants}
                series = {v: vals for v, vals in series.items() if len(vals)}
                zero, on_top = hidden_series(series)
                for v, vals in series.items():
                    if v not in zero:
                        _line(ax, np.arange(1, len(vals) + 1), np.where(vals > 0, vals, np.nan), 0, v,
                              _variant_label(sr, v, t, model), 1)
                _note_hidden(ax, zero, on_top, t)
                _log_y(ax)
                ax.set_title(f"{t[key]}\n{t[phase]}", fontsize=9)
                ax.set_xlabel(t["block"])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend_below(fig, axes)
    _draw(path, lang, 2, 3, 5.8, body)


@figure("bn-rank", "batchnorm", needs=_has_blocks)
def bn_rank(sr: StudyResults, lang: str, path: Path) -> None:
    """Effective rank of every stage's features on the probe images, at initialisation and after
    training, one line per variant and one panel per depth."""
    models = sr.models

    def body(fig, axes, t):
        for row, model in enumerate(models):
            for col, phase in enumerate(("init", "trained")):
                ax = axes[row, col]
                series = {}
                for v in sr.variants:
                    ranks = analysis.rank_values(sr.cell(model, v), phase)
                    if ranks:
                        stages = list(ranks)
                        series[v] = np.array([ranks[s] if ranks[s] is not None else np.nan for s in stages])
                        _line(ax, range(len(stages)), series[v], 0, v, _variant_label(sr, v, t, *models), 1)
                        ax.set_xticks(range(len(stages)), [s.replace("stage", "") for s in stages])
                _note_hidden(ax, *hidden_series(series), t)
                _log_y(ax)
                ax.set_title(f"{model}{t['colon']}{t[phase]}")
                ax.set_xlabel(t["stage"])
            axes[row, 0].set_ylabel(t["rank"])
        _legend_below(fig, axes)
    _draw(path, lang, len(models), 2, 2.8 * len(models) + 0.6, body)


# -- what shapes the optimisation (H4, H5), at initialisation --------------------------------------------

def _has_optim(sr) -> bool:
    return any(o.done for o in sr.optim)


_MECHANISM_LABEL = {"Nres": "plain", "FULL": "residual", "Nboth": "no_grad_plain"}


def _correlation_and_curvature_axes(axes, t: dict, distance: float) -> None:
    """H4's panel (left: correlation at `distance`, with its zero line) and H5's (right: lambda_max, log)."""
    axes[0, 0].set_title(t["corr"] + t["sep"] + t["corr_at"].format(d=f"{distance:g}"))
    axes[0, 0].axhline(0, color="#555555", lw=0.8)
    axes[0, 1].set_title(t["lambda_max"])
    axes[0, 1].set_yscale("log")


@figure("mechanism-depth", "mechanism", needs=_has_optim)
def mechanism_depth(sr: StudyResults, lang: str, path: Path) -> None:
    """Against depth, at initialisation: the input-gradient correlation at the summary distance
    (left; Balduzzi et al. 2017) and the top Hessian eigenvalue (right, log scale; Li et al. 2018).
    Plain dashed, residual solid; points are the mean (geometric for lambda_max), bars span the seeds.
    Hollow markers: the same after training, for the runs measured as they trained."""
    rows = analysis.at_init_by_depth(sr)
    trained = analysis.optim_over_training(sr)
    distance = next(o.settings.summary_distance for o in sr.optim if o.done)

    def body(fig, axes, t):
        for ax, key, summary in ((axes[0, 0], "corr", "corr_mean"), (axes[0, 1], "lambda_max", "lambda_gmean")):
            for variant in analysis.MECHANISM_VARIANTS:
                mine = [r for r in rows if r["variant"] == variant and r[summary] is not None]
                if not mine:
                    continue
                xs = [r["depth"] for r in mine]
                mid = [r[summary] for r in mine]
                lo = [m - min(v for v in r[key] if v is not None) for m, r in zip(mid, mine, strict=True)]
                hi = [max(v for v in r[key] if v is not None) - m for m, r in zip(mid, mine, strict=True)]
                colour, ls, marker = STYLE[variant]
                ns = [len([v for v in r[key] if v is not None]) for r in mine]
                ax.errorbar(xs, mid, yerr=[lo, hi], color=colour, ls=ls, marker=marker, ms=5, lw=1.6, capsize=3,
                            label=t[_MECHANISM_LABEL[variant]] + t["sep"] + _seeds_text(ns, t))
            for variant in ("Nres", "FULL"):  # after training, where runs were measured as they trained
                ends = [(r["depth"], r["points"][-1]) for r in trained if r["variant"] == variant
                        and r["points"][-1]["epoch"] > 0 and r["points"][-1][key] is not None]
                if ends:
                    colour, _, marker = STYLE[variant]
                    ax.plot([d for d, _ in ends], [p[key] for _, p in ends], ls="none", marker=marker, ms=8,
                            mfc="none", mec=colour, mew=1.6, label=t[_MECHANISM_LABEL[variant]] + t["sep"]
                            + t["trained"] + t["sep"] + _seeds_text([len(p["seeds"]) for _, p in ends], t))
            ax.set_xlabel(t["depth"])
            ax.set_xticks(sorted({r["depth"] for r in rows}))
        _correlation_and_curvature_axes(axes, t, distance)
        _legend_below(fig, axes, ncol=3)
    _draw(path, lang, 1, 2, 3.6, body)


def _has_training_optim(sr) -> bool:
    return any(r.optim for r in sr.runs)


@figure("mechanism-training", "mechanism", needs=_has_training_optim)
def mechanism_training(sr: StudyResults, lang: str, path: Path) -> None:
    """Through training: the input-gradient correlation at the summary distance (left) and lambda_max
    (right, log scale) at initialisation (epoch 0), after the first epoch, at each learning-rate drop
    and at the end. One colour per depth; plain dashed, residual solid; mean over the measured seeds."""
    rows = [r for r in analysis.optim_over_training(sr) if r["variant"] in _MECHANISM_LABEL]
    depths = sorted({r["depth"] for r in rows})
    distance = next(o.settings.summary_distance for r in sr.runs for o in r.optim)

    def body(fig, axes, t):
        for ax, key in ((axes[0, 0], "corr"), (axes[0, 1], "lambda_max")):
            for r in rows:
                pts = [p for p in r["points"] if p[key] is not None]
                _, ls, marker = STYLE[r["variant"]]
                ax.plot([p["epoch"] for p in pts], [p[key] for p in pts], ls=ls, marker=marker, ms=4, lw=1.6,
                        color=DEPTH_COLOURS[depths.index(r["depth"]) % len(DEPTH_COLOURS)],
                        label=t["layers"].format(d=r["depth"]) + t["sep"] + t[_MECHANISM_LABEL[r["variant"]]]
                        + t["sep"] + _seeds_text([len(r["points"][-1]["seeds"])], t))
            ax.set_xlabel(t["epoch"])
        _correlation_and_curvature_axes(axes, t, distance)
        _legend_below(fig, axes, ncol=2)
    _draw(path, lang, 1, 2, 3.8, body)


def _surfaces(sr) -> list[tuple[int, dict]]:
    """(depth, {variant: trained run with a 2-D slice}) for the depths whose plain and residual nets
    both have one (the first seed that has it), shallowest first."""
    out = []
    for model in sr.models:
        runs = {v: next((r for r in sr.cell(model, v) if r.surface is not None), None) for v in ("Nres", "FULL")}
        if all(runs.values()):
            out.append((depth(model), runs))
    return out


@figure("mechanism-surface", "mechanism", needs=lambda sr: bool(_surfaces(sr)))
def mechanism_surface(sr: StudyResults, lang: str, path: Path) -> None:
    """The training loss on a plane through the trained weights, spanned by two filter-normalised
    random directions (Li et al. 2018's Fig. 5: ResNet-56 with and without skip connections):
    contours of log10 loss, one row per depth, plain left, residual right, shared levels."""
    shown = _surfaces(sr)
    grids = {(d, v): np.log10(np.array([[np.nan if x is None or x <= 0 else x for x in row]
                                        for row in r.surface.slice_2d.losses], dtype=float))
             for d, runs in shown for v, r in runs.items()}
    finite_values = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    levels = np.linspace(finite_values.min(), min(finite_values.max(), finite_values.min() + 2.5), 21)

    def body(fig, axes, t):
        for row, (d, runs) in enumerate(shown):
            for col, variant in enumerate(("Nres", "FULL")):
                ax, r = axes[row, col], runs[variant]
                alphas = r.surface.slice_2d.alphas
                filled = ax.contourf(alphas, alphas, grids[(d, variant)].T, levels=levels, cmap="viridis",
                                     extend="max")
                ax.contour(alphas, alphas, grids[(d, variant)].T, levels=levels, colors="white", linewidths=0.4,
                           negative_linestyles="solid")
                ax.plot([0], [0], marker="+", color="white", ms=8)
                ax.set_aspect("equal")
                ax.grid(False)
                ax.set_title(t["layers"].format(d=d) + t["sep"] + t[_MECHANISM_LABEL[variant]] + t["sep"]
                             + t["seed_n"].format(n=r.seed))
                ax.set_xlabel(t["direction"].format(k=1))
            axes[row, 0].set_ylabel(t["direction"].format(k=2))
        fig.colorbar(filled, ax=axes, shrink=0.8, label=t["log_loss"],
                     format=lambda v, _: f"{v:.1f}".replace("-0.0", "0.0"))
    _draw(path, lang, len(shown), 2, 3.6 * len(shown), body, width=7.0)


@figure("mechanism-correlation", "mechanism", needs=_has_optim)
def mechanism_correlation(sr: StudyResults, lang: str, path: Path) -> None:
    """The input-gradient correlation against the distance between the inputs, at initialisation, for
    the shallowest and deepest net measured: mean over seeds (Balduzzi et al. 2017, Fig. 1's question)."""
    rows = [r for r in analysis.at_init_by_depth(sr) if r["variant"] in ("Nres", "FULL")]
    depths = sorted({r["depth"] for r in rows})
    shown = [d for d in (depths[0], depths[-1])] if depths else []

    def body(fig, axes, t):
        for ax, d in zip(axes[0], shown, strict=False):
            for r in (r for r in rows if r["depth"] == d):
                mean = [np.nan if m is None else m for m in analysis.correlation_curve(r["records"])]
                colour, ls, marker = STYLE[r["variant"]]
                ax.plot(r["records"][0].gradients.distances, mean, color=colour, ls=ls, marker=marker, ms=3.5, lw=1.6,
                        label=t[_MECHANISM_LABEL[r["variant"]]] + t["sep"] + _seeds_text([len(r["records"])], t))
            ax.set_xscale("log")
            ax.axhline(0, color="#555555", lw=0.8)
            ax.set_title(t["layers"].format(d=d))
            ax.set_xlabel(t["distance"])
        axes[0, 0].set_ylabel(t["corr"])
        _legend_below(fig, axes, ncol=2)
    _draw(path, lang, 1, max(1, len(shown)), 3.4, body)


@figure("mechanism-slices", "mechanism", needs=_has_optim)
def mechanism_slices(sr: StudyResults, lang: str, path: Path) -> None:
    """The training loss along one filter-normalised random direction through the initial weights
    (Li et al. 2018), log scale, for the shallowest and deepest plain and residual net (first seed)."""
    rows = [r for r in analysis.at_init_by_depth(sr) if r["variant"] in ("Nres", "FULL")]
    depths = sorted({r["depth"] for r in rows})
    # the shallowest, Li et al.'s ResNet-56, and the deepest
    shown = sorted({depths[0], 56 if 56 in depths else depths[-1], depths[-1]}) if depths else []

    def body(fig, axes, t):
        for ax, d in zip(axes[0], shown, strict=False):
            for r in (r for r in rows if r["depth"] == d):
                first = r["records"][0]
                s = first.slice_1d
                ok = [(a, loss) for a, loss in zip(s.alphas, s.losses, strict=True) if loss is not None and loss > 0]
                colour, ls, marker = STYLE[r["variant"]]
                ax.plot([a for a, _ in ok], [loss for _, loss in ok], color=colour, ls=ls, lw=1.6,
                        label=t[_MECHANISM_LABEL[r["variant"]]] + t["sep"] + t["seed_n"].format(n=first.net.seed))
            ax.set_yscale("log")
            ax.set_title(t["layers"].format(d=d))
            ax.set_xlabel(t["alpha"])
        axes[0, 0].set_ylabel(t["slice_loss"])
        _legend_below(fig, axes, ncol=2)
    _draw(path, lang, 1, max(1, len(shown)), 3.4, body)
