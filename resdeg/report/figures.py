"""The report's figures: one function per figure, cached results in, a PNG out (written atomically).

Each figure is drawn with English or Chinese labels. Chinese needs a CJK font from the system
(fonts-noto-cjk or fonts-wqy-microhei); without one the Chinese figures get English labels and a
warning, never boxes for missing glyphs. Variants differ in colour (Okabe-Ito, colour-blind safe)
*and* line style and marker.
"""
from __future__ import annotations

import io
import re
import warnings
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..atomic import atomic_write_bytes  # noqa: E402
from ..probes.criteria import CRITERIA  # noqa: E402
from . import analysis as A  # noqa: E402
from .collect import Study  # noqa: E402

STYLE = {  # variant -> colour, line style, marker
    "FULL": ("#0072B2", "-", "o"), "Nres": ("#D55E00", "--", "s"),
    "Nbn": ("#009E73", "-.", "^"), "Nboth": ("#CC79A7", ":", "D"),
}
DPI = 100
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK", "Source Han Sans SC", "WenQuanYi Micro Hei",
                "WenQuanYi Zen Hei", "Noto Serif CJK SC", "Noto Serif CJK JP", "Droid Sans Fallback", "AR PL UMing CN")
_CJK_FILE = re.compile(r"cjk|wqy|wenquanyi|sourcehan|droidsansfallback|uming|ukai", re.I)

LABELS = {
    "en": {"epoch": "epoch", "step": "training step", "stage": "stage", "acc": "accuracy (%)",
           "train_acc": "train accuracy (running, train mode)", "clean_train_acc": "train accuracy (clean, eval mode)",
           "test_acc": "test accuracy", "grad": "mean |dL/d stage output|", "first": "first stage ({s})",
           "last": "last stage ({s})", "median_grad": "median over steps of mean |dL/d output|",
           "act_std": "activation std", "init": "at initialisation", "trained": "after training",
           "seeds": "{n} seeds: mean ± std", "n_seeds": "{n} seeds", "seed": "1 seed", "diverged": "diverged",
           "lower_better": "(lower = more separable)", "no_data": "no data"},
    "zh": {"epoch": "训练轮次", "step": "训练步数", "stage": "阶段", "acc": "准确率 (%)",
           "train_acc": "训练准确率(滑动,训练模式)", "clean_train_acc": "训练准确率(干净,评估模式)",
           "test_acc": "测试准确率", "grad": "阶段输出梯度平均绝对值", "first": "第一阶段 ({s})",
           "last": "最后阶段 ({s})", "median_grad": "各步梯度平均绝对值的中位数",
           "act_std": "激活值标准差", "init": "初始化时", "trained": "训练结束后",
           "seeds": "{n} 个种子:均值 ± 标准差", "n_seeds": "{n} 个种子", "seed": "1 个种子", "diverged": "发散",
           "lower_better": "(越小越可分)", "no_data": "无数据"},
}
CRITERION_NAMES = {
    "en": {"fisher_trace_ratio": "Fisher tr(S_B)/tr(S_W), per image", "fisher_channel_maps": "Fisher, per channel map",
           "lda_score": "LDA score (PCA-64)", "linear_probe_acc": "linear probe accuracy", "knn_acc": "kNN accuracy (k=20)",
           "nc1": "NC1", "silhouette": "silhouette", "coding_rate_reduction": "coding rate reduction ΔR",
           "cka_labels": "CKA with labels"},
    "zh": {"fisher_trace_ratio": "Fisher 判据(逐图像)", "fisher_channel_maps": "Fisher 判据(逐通道特征图)",
           "lda_score": "LDA 得分(PCA 64 维)", "linear_probe_acc": "线性探针准确率", "knn_acc": "kNN 准确率(k=20)",
           "nc1": "NC1", "silhouette": "轮廓系数", "coding_rate_reduction": "编码率缩减 ΔR",
           "cka_labels": "与标签的 CKA"},
}


@lru_cache(maxsize=None)
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
    """The language the figure labels can be drawn in: zh falls back to en (warning) without a CJK font."""
    if lang == "zh" and cjk_font() is None:
        warnings.warn("no CJK font found (install fonts-noto-cjk or fonts-wqy-microhei): "
                      "Chinese figures use English labels", stacklevel=2)
        return "en"
    return lang


def _rc(lang: str) -> dict:
    family = ["DejaVu Sans"] + ([cjk_font()] if lang == "zh" else [])
    return {"font.family": family, "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9,
            "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False,
            "axes.grid": True, "grid.alpha": 0.3}


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _draw(path: Path, lang: str, nrows: int, ncols: int, size, body) -> None:
    """Make a figure in the language's font setting, let `body(fig, axes, labels)` fill it, save it."""
    lang = figure_language(lang)
    with matplotlib.rc_context(_rc(lang)):
        fig = Figure(figsize=size, layout="constrained")
        axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
        body(fig, axes, LABELS[lang], lang)
        _save(fig, path)


def _legend_label(study: Study, model: str, variant: str, t: dict, spread: bool = True) -> str:
    """'FULL (3 seeds: mean ± std)', or with spread=False just the seed count."""
    n = len(study.cell(model, variant))
    if n == 1:
        return f"{variant} ({t['seed']})"
    return f"{variant} ({(t['seeds'] if spread else t['n_seeds']).format(n=n)})"


def _line(ax, x, mean, std, variant, label, n_max):
    colour, ls, marker = STYLE[variant]
    ax.plot(x, mean, color=colour, ls=ls, marker=marker, ms=3.5, lw=1.6, label=label)
    if n_max > 1:
        ax.fill_between(x, np.subtract(mean, std), np.add(mean, std), color=colour, alpha=0.15, lw=0)


# -- H1 ----------------------------------------------------------------------------------------------

H1_KEYS = ("train_acc", "clean_train_acc", "test_acc")


def h1_accuracy(study: Study, lang: str, path: Path) -> None:
    """Running train, clean train and test accuracy per epoch; one row per depth, mean ± std over seeds."""
    def body(fig, axes, t, lang):
        for row, model in enumerate(study.models):
            for col, key in enumerate(H1_KEYS):
                ax = axes[row, col]
                for v in study.variants:
                    c = A.epoch_curves(study, model, v, key)
                    if c["epoch"]:
                        _line(ax, c["epoch"], np.multiply(c["mean"], 100), np.multiply(c["std"], 100), v,
                              _legend_label(study, model, v, t), max(c["n"]))
                ax.set_title(f"{model}: {t[key]}")
                ax.set_xlabel(t["epoch"])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_ylabel(t["acc"])
                ax.set_ylim(0, 101)
            axes[row, -1].legend(loc="lower right")
    _draw(path, lang, len(study.models), 3, (12, 3.2 * len(study.models)), body)


# -- H2 ----------------------------------------------------------------------------------------------

def _binned_median(y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of consecutive blocks of `width` steps (NaN-aware): (block centre steps, block medians)."""
    n = max(width, len(y) // width * width)
    y = np.pad(y, (0, max(0, n - len(y))), constant_values=np.nan)
    blocks = y[:n].reshape(-1, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # blocks after a divergence are all NaN
        return np.arange(len(blocks)) * width + (width - 1) / 2, np.nanmedian(blocks, axis=1)


def h2_steps(study: Study, lang: str, path: Path) -> None:
    """Per-step mean |dL/d stage output| of the first and the last stage, log scale: every step as a
    faint point, the median over blocks of steps (of the median over seeds) as a line; divergence marked."""
    longest = max((len(g) for r in study.runs if (g := A.grad_series(r)) is not None), default=1)
    width = max(1, longest // 200)  # the same block width for every run, so short runs look alike

    def body(fig, axes, t, lang):
        for row, model in enumerate(study.models):
            for col, which in enumerate(("first", "last")):
                ax = axes[row, col]
                stage_name = None
                for v in study.variants:
                    colour, ls, marker = STYLE[v]
                    series = []
                    for r in study.cell(model, v):
                        g = A.grad_series(r)
                        if g is None:
                            continue
                        stage_name = r.stages[0 if which == "first" else -1]
                        y = g[:, 0 if which == "first" else -1].copy()
                        y[~np.isfinite(y) | (y <= 0)] = np.nan
                        series.append(y)
                        step = np.arange(len(y))
                        keep = slice(None, None, max(1, len(y) // 4000))
                        ax.scatter(step[keep], y[keep], s=1.5, color=colour, alpha=0.12, lw=0, rasterized=True)
                        if r.status == "diverged" and r.doc.get("diverged_at_step") is not None:
                            ax.axvline(r.doc["diverged_at_step"], color=colour, ls=ls, lw=0.9)
                    if not series:
                        continue
                    n = max(len(s) for s in series)
                    stacked = np.full((len(series), n), np.nan)
                    for i, s in enumerate(series):
                        stacked[i, :len(s)] = s
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps after a divergence
                        pooled = np.nanmedian(stacked, axis=0)
                    ax.plot(*_binned_median(pooled, width), color=colour, ls=ls, lw=1.6,
                            label=_legend_label(study, model, v, t, spread=False))
                ax.set_yscale("log")
                ax.set_title(f"{model}: {t[which].format(s=stage_name or '?')}")
                ax.set_xlabel(t["step"])
                ax.set_ylabel(t["grad"])
            axes[row, -1].legend(loc="best")
    _draw(path, lang, len(study.models), 2, (11, 3.4 * len(study.models)), body)


def h2_profile(study: Study, lang: str, path: Path) -> None:
    """Median over steps of the gradient at every stage, per variant (mean over seeds, min-max bars)."""
    def body(fig, axes, t, lang):
        for col, model in enumerate(study.models):
            ax = axes[0, col]
            for v in study.variants:
                per_run = [A.stage_medians(r) for r in study.cell(model, v)]
                per_run = [m for m in per_run if m]
                if not per_run:
                    continue
                stages = list(per_run[0])
                vals = np.array([[m.get(s) if m.get(s) is not None else np.nan for s in stages] for m in per_run])
                colour, ls, marker = STYLE[v]
                mid = np.nanmean(vals, 0)
                ax.errorbar(range(len(stages)), mid, yerr=[mid - np.nanmin(vals, 0), np.nanmax(vals, 0) - mid],
                            color=colour, ls=ls, marker=marker, ms=4, lw=1.6, capsize=2,
                            label=_legend_label(study, model, v, t))
                ax.set_xticks(range(len(stages)), stages)
            ax.set_yscale("log")
            ax.set_title(model)
            ax.set_xlabel(t["stage"])
            ax.set_ylabel(t["median_grad"])
            ax.legend(loc="best")
    _draw(path, lang, 1, len(study.models), (5.5 * len(study.models), 3.6), body)


# -- H3 ----------------------------------------------------------------------------------------------

def _stage_lines(ax, study: Study, model: str, t: dict, values_of) -> None:
    """One line per variant over the stages: the mean over probed seeds of `values_of(run)`
    (a stage -> value map), with a ±std band when there are several seeds."""
    for v in study.variants:
        runs = [r for r in study.cell(model, v) if r.probe]
        if not runs:
            continue
        stages = runs[0].probe["stages"]
        vals = np.array([[values_of(r).get(s) for s in stages] for r in runs], dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN stage is drawn as a gap
            mean, std = np.nanmean(vals, 0), np.nan_to_num(np.nanstd(vals, 0))
        _line(ax, np.arange(len(stages)), mean, std, v, _legend_label(study, model, v, t), len(runs))
        ax.set_xticks(range(len(stages)), stages)


def h3_separability(study: Study, lang: str, path: Path, model: str) -> None:
    """Every separability criterion by stage for the probed variants of one depth (mean ± std over seeds)."""
    crits = A.criteria_present(study)
    ncols = 3
    nrows = max(1, -(-len(crits) // ncols))

    def body(fig, axes, t, lang):
        for i, ax in enumerate(axes.flat):
            if i >= len(crits):
                ax.set_visible(False)
                continue
            crit = crits[i]
            _stage_lines(ax, study, model, t, lambda r: A.probe_values(r, crit))
            title = CRITERION_NAMES[lang].get(crit, crit)
            if not CRITERIA[crit].higher_is_better:
                title += " " + t["lower_better"]
            ax.set_title(title)
            ax.set_xlabel(t["stage"])
        if crits:
            axes.flat[0].legend(loc="best")
    _draw(path, lang, nrows, ncols, (12, 2.9 * nrows), body)


# -- signal propagation -----------------------------------------------------------------------------

def signal_std(study: Study, lang: str, path: Path) -> None:
    """Forward activation std by stage at initialisation and after training, per variant."""
    def body(fig, axes, t, lang):
        for row, model in enumerate(study.models):
            for col, phase in enumerate(("init", "trained")):
                ax = axes[row, col]
                _stage_lines(ax, study, model, t, lambda r: A.signal_values(r, phase))
                ax.set_yscale("log")
                ax.set_title(f"{model}: {t[phase]}")
                ax.set_xlabel(t["stage"])
                ax.set_ylabel(t["act_std"])
            axes[row, -1].legend(loc="best")
    _draw(path, lang, len(study.models), 2, (11, 3.2 * len(study.models)), body)
