"""The data behind every figure and table, as CSV and JSON in docs/downloads/, with a data
dictionary (one entry per file and column, in both languages) and one archive of everything."""
from __future__ import annotations

import csv
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json
from ..study import HYPOTHESES, HYPOTHESIS_IDS
from . import analysis, verdicts
from .collect import Store, StudyResults, depth

VERDICTS_SCHEMA, VERDICTS_SCHEMA_VERSION = "resdeg.verdicts", 5  # 3: hypotheses declared; 4: worse/better keys;
# 5: eval_train_* names (clean_train_* before)
ARCHIVE = "resdeg-data.zip"

# file -> (what it holds, {column: meaning}), in English and Chinese. The pages print it; a column
# a writer adds without an entry here fails tests/test_pages.py.
_RUN = {"model": ("model", "模型"), "variant": ("variant (see the setup page)", "变体（见实验设置页）"),
        "seed": ("random seed", "随机种子")}
_OPTIM = {  # the columns of one H4/H5 measurement (optim_init.csv, optim_training.csv)
    "corr_input": ("mean correlation of the input gradients at the summary distance (empty: undefined)",
                   "在概括距离处输入梯度相关系数的平均（空：无定义）"),
    "summary_distance": ("that distance, in data standard deviations", "该距离，单位为数据标准差"),
    "half_distance": ("distance where the input-gradient correlation first falls to 1/2 (empty: not on the grid)",
                      "输入梯度相关系数首次降到 1/2 的距离（空：不在所测的距离上）"),
    "lambda_max": ("top Hessian eigenvalue of the training loss", "训练损失 Hessian 的最大特征值"),
    "lambda_max_resolved": ("its Lanczos residual is at most 5% of it", "其 Lanczos 残差不超过自身的 5%"),
    "lambda_min": ("most negative (smallest) Hessian eigenvalue", "最小（最负）的 Hessian 特征值"),
    "lambda_min_resolved": ("its Lanczos residual is at most 5% of it", "其 Lanczos 残差不超过自身的 5%"),
    "loss": ("training loss on the curvature images", "在曲率图像上的训练损失"),
    "wall_s": ("measurement wall time, seconds", "测量用时，秒")}
_IDS_EN = ", ".join(HYPOTHESIS_IDS[:-1]) + " and " + HYPOTHESIS_IDS[-1]
DICTIONARY = {
    "runs.csv": (("one row per run", "每次训练一行"), {
        "folder": ("result folder, relative to results/", "结果目录（相对于 results/）"),
        "protocol": ("protocol", "协议"), **_RUN,
        "config_hash": ("hash of every setting that changes results", "所有影响结果的设置的哈希"),
        "status": ("done or diverged", "done（完成）或 diverged（发散）"),
        "epochs_done": ("epochs trained", "已训练的轮次"),
        "train_acc": ("final running train accuracy (train mode, over the epoch's batches), fraction",
                      "最后一轮训练中的准确率（训练模式，对本轮各批次累计），小数"),
        "eval_train_acc": ("final train accuracy in eval mode on the fixed training subset, fraction",
                            "最后一轮在固定训练子集上、评估模式下的训练集准确率，小数"),
        "test_acc": ("final test accuracy, fraction", "最后一轮测试准确率，小数"),
        "diverged_at_step": ("first step with a non-finite loss (empty: none)",
                             "损失首次出现非有限值的步数（空：没有）"),
        "wall_s": ("training wall time, seconds", "训练用时，秒"),
        "probe_file": ("the probe file used (empty: none)", "所用的探针文件（空：没有）")}),
    "h1_epochs.csv": (("one row per run and epoch", "每次训练每个轮次一行"), {
        **_RUN, "config_hash": ("config hash of the run", "该次训练的配置哈希"),
        "epoch": ("epoch, from 1", "轮次，从 1 开始"),
        "train_loss": ("mean training loss over the epoch's batches", "本轮各批次训练损失的平均"),
        "train_acc": ("running train accuracy", "训练中的准确率"),
        "eval_train_acc": ("train accuracy in eval mode", "评估模式下的训练集准确率"),
        "test_loss": ("mean test loss", "平均测试损失"), "test_acc": ("test accuracy", "测试准确率"),
        "lr": ("learning rate at the epoch's last step", "本轮最后一步的学习率"),
        "wall_s": ("wall time of the epoch, seconds", "本轮用时，秒")}),
    "h2_gradient_steps.csv": (("one row per run and training step", "每次训练每个训练步一行"), {
        **_RUN, "step": ("training step, from 0", "训练步，从 0 开始"),
        "g_first_stage": ("mean |dL/d output| of the first stage", "第一个阶段输出梯度的平均绝对值"),
        "g_last_stage": ("mean |dL/d output| of the last stage", "最后一个阶段输出梯度的平均绝对值")}),
    "h2_gradient_blocks.csv": (("one row per run and block of consecutive training steps (the lines of the "
                                "gradient figures)", "每次训练每一段连续训练步一行（梯度图中的曲线）"), {
        **_RUN, "epoch": ("epoch of the block's first step", "该段第一步所在的轮次"),
        "step_first": ("first training step of the block, from 0", "该段的第一个训练步，从 0 开始"),
        "step_last": ("last training step of the block", "该段的最后一个训练步"),
        "g_first_stage": ("median over the block of mean |dL/d output| of the first stage",
                          "该段内第一个阶段输出梯度平均绝对值的中位数"),
        "g_last_stage": ("median over the block of mean |dL/d output| of the last stage",
                         "该段内最后一个阶段输出梯度平均绝对值的中位数"),
        "ratio": ("median over the block of g(first stage) / g(last stage), the H2 statistic",
                  "该段内第一个与最后一个阶段的 g 之比的中位数（H2 的统计量）")}),
    "h2_stage_medians.csv": (("one row per run and stage", "每次训练每个阶段一行"), {
        **_RUN, "stage": ("stage", "阶段"),
        "median_grad": ("median over steps of mean |dL/d stage output|", "阶段输出梯度平均绝对值在各步的中位数")}),
    "h3_separability.csv": (("one row per run, criterion and stage", "每次训练、每个判据、每个阶段一行"), {
        **_RUN, "criterion": ("separability criterion (method page)", "可分性判据（见方法页）"),
        "stage": ("stage", "阶段"), "value": ("its value (empty: undefined there)", "判据值（空：该处无定义）")}),
    "h3_separability_init.csv": (("one row per run, criterion and stage, for the untrained net the run starts from "
                                  "(same seed; H3's control)",
                                  "每次训练、每个判据、每个阶段一行，对应该次训练起点的未训练网络"
                                  "（同一种子；H3 的对照）"), {
        **_RUN, "criterion": ("separability criterion (method page)", "可分性判据（见方法页）"),
        "stage": ("stage", "阶段"), "value": ("its value (empty: undefined there)", "判据值（空：该处无定义）")}),
    "signal.csv": (("one row per run, phase and stage", "每次训练、每个时刻、每个阶段一行"), {
        **_RUN, "phase": ("init (untrained net, same seed) or trained",
                          "init（同一种子的未训练网络）或 trained（训练后）"),
        "stage": ("stage", "阶段"), "act_mean": ("mean of the activations", "激活值的均值"),
        "act_std": ("standard deviation of the activations", "激活值的标准差"),
        "grad_mean": ("mean of dL/d(stage output)", "阶段输出梯度的均值"),
        "grad_std": ("standard deviation of dL/d(stage output)", "阶段输出梯度的标准差"),
        "effective_rank": ("effective rank of the stage's features", "该阶段特征的有效秩")}),
    "blocks.csv": (("one row per run, phase and residual block", "每次训练、每个时刻、每个残差块一行"), {
        **_RUN, "phase": ("init or trained", "init 或 trained"),
        "block": ("block (e.g. stage2.3)", "残差块（如 stage2.3）"),
        "stage": ("its stage", "所在阶段"), "index": ("its index in the stage", "在阶段中的序号"),
        "sq_mean": ("average channel squared mean of its output", "输出的通道均值平方的平均"),
        "variance": ("average channel variance of its output", "输出的通道方差的平均"),
        "branch_variance": ("average channel variance of its residual branch before the add",
                            "残差分支在相加之前的通道方差的平均"),
        "stage_effective_rank": ("effective rank of its stage's features", "所在阶段特征的有效秩")}),
    "optim_init.csv": (("one row per net measured at initialisation (H4, H5; `resdeg optim`)",
                        "每个在初始化时测量的网络一行（H4、H5；`resdeg optim`）"), {
        **_RUN, "depth": ("layers", "层数"),
        **_OPTIM}),
    "optim_training.csv": (("one row per run and epoch measured while it trained (H4, H5; its net at "
                            "initialisation is in optim_init.csv)",
                            "每个运行在训练中每个测量的轮次一行（H4、H5；初始化时的网络在 optim_init.csv 中）"), {
        **_RUN, "depth": ("layers", "层数"), "epoch": ("epochs trained when measured", "测量时已训练的轮次"),
        **_OPTIM}),
    "optim_gradients.csv": (("one row per net, gradient and distance: the correlation curves",
                             "每个网络、每处梯度、每个距离一行：相关系数曲线"), {
        **_RUN, "gradient": ("input, or a stage's output", "输入，或某个阶段的输出"),
        "distance": ("distance between the inputs, data standard deviations", "两个输入之间的距离，单位为数据标准差"),
        "corr_mean": ("mean correlation over the images", "各图像相关系数的平均"),
        "corr_sd": ("its standard deviation over the images", "各图像相关系数的标准差")}),
    "optim_slices.csv": (("one row per net and step of its 1-D loss slice", "每个网络的一维损失切片上每一步一行"), {
        **_RUN, "alpha": ("step along the filter-normalised direction", "沿滤波器归一化方向的步长"),
        "loss": ("training loss there (empty: not finite)", "该处的训练损失（空：非有限值）")}),
    "verdicts.json": ((f"the hypotheses, and every comparison with its {_IDS_EN} verdicts, the deciding numbers "
                       "and the rules (JSON, schema resdeg.verdicts)",
                       f"各假说，以及每组比较的 {'、'.join(HYPOTHESIS_IDS)} 判定、"
                       "判定依据和规则（JSON，schema 为 resdeg.verdicts）"), {}),
}


OPTIM_MEASURES = tuple(_OPTIM)


def _optim_measures(o) -> list:
    """One H4/H5 measurement's OPTIM_MEASURES columns."""
    return [_g(analysis.init_correlation(o)), _g(o.settings.summary_distance),
            _g(o.gradients.half_distance.get("input")),
            _g(o.curvature.lambda_max), o.curvature.lambda_max_resolved, _g(o.curvature.lambda_min),
            o.curvature.lambda_min_resolved, _g(o.curvature.loss), _g(o.wall_s)]


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
    _csv(path, ["folder", "protocol", *KEYS, "config_hash", "status", "epochs_done", "train_acc", "eval_train_acc",
                "test_acc", "diverged_at_step", "wall_s", "probe_file"],
         ([r.rel, r.record.protocol, r.model, r.variant, r.seed, r.config_hash, r.status, len(r.epochs),
           _g(r.final and r.final.train_acc), _g(r.final and r.final.eval_train_acc), _g(r.final and r.final.test_acc),
           r.record.diverged_at_step if r.record.diverged_at_step is not None else "", _g(r.record.summary.wall_s),
           r.probe_file or ""] for r in runs))


def _hypotheses() -> list[dict]:
    """The declaration (study.HYPOTHESES) a reader of verdicts.json needs to read its keys."""
    return [{"id": h.id, "name": h.name, "claim": h.claim, "rule": verdicts.RULES[h.id]} for h in HYPOTHESES]


def _verdict_rows(sr: StudyResults) -> list[dict]:
    return [{"study": sr.name, "protocol": sr.protocol, "subject": row["subject"], "kind": row["kind"],
             "component": row["component"], "verdicts": {h: v.as_dict() for h, v in row["verdicts"].items()}}
            for row in analysis.all_verdicts(sr)]


def write_study_downloads(sr: StudyResults, out: Path) -> dict[str, list[str]]:
    """The data behind every figure and table of a study's pages, as CSV; page -> file names."""
    _runs_csv(out / "runs.csv", sr.runs)
    fields = ("train_loss", "train_acc", "eval_train_acc", "test_loss", "test_acc", "lr", "wall_s")
    _csv(out / "h1_epochs.csv", [*KEYS, "config_hash", "epoch", *fields],
         ([r.model, r.variant, r.seed, r.config_hash, e.epoch, *(_g(getattr(e, f)) for f in fields)]
          for r in sr.runs for e in r.epochs))

    def steps():
        for r in sr.runs:
            g = analysis.grad_series(r)
            if g is not None:
                for i, (first, last) in enumerate(zip(g[:, 0], g[:, -1], strict=True)):
                    yield r.model, r.variant, r.seed, i, f"{first:.4g}", f"{last:.4g}"
    _csv(out / "h2_gradient_steps.csv", [*KEYS, "step", "g_first_stage", "g_last_stage"], steps())
    _csv(out / "h2_gradient_blocks.csv", [*KEYS, "epoch", "step_first", "step_last", "g_first_stage", "g_last_stage",
                                          "ratio"], _gradient_blocks(sr))
    _csv(out / "h2_stage_medians.csv", [*KEYS, "stage", "median_grad"],
         ([r.model, r.variant, r.seed, s, _g(v)] for r in sr.runs for s, v in analysis.stage_medians(r).items()))
    _csv(out / "h3_separability.csv", [*KEYS, "criterion", "stage", "value"],
         ([r.model, r.variant, r.seed, c, s, _g(v)] for r in sr.probed for c, per in r.probe.criteria.items()
          for s, v in per.items()))
    _csv(out / "h3_separability_init.csv", [*KEYS, "criterion", "stage", "value"],
         ([r.model, r.variant, r.seed, c, st, _g(v)] for r in sr.probed if r.init_probe
          for c, per in r.init_probe.criteria.items() for st, v in per.items()))
    sig = ("act_mean", "act_std", "grad_mean", "grad_std")
    _csv(out / "signal.csv", [*KEYS, "phase", "stage", *sig, "effective_rank"],
         ([r.model, r.variant, r.seed, ph, s, *(_g(r.probe.signal[ph][k].get(s)) for k in sig),
           _g(r.probe.effective_rank.get(ph, {}).get(s))]
          for r in sr.probed for ph in ("init", "trained") for s in r.probe.stages))
    _csv(out / "blocks.csv", [*KEYS, "phase", "block", "stage", "index", "sq_mean", "variance", "branch_variance",
                              "stage_effective_rank"],
         ([r.model, r.variant, r.seed, ph, b.name, b.stage, b.index, _g(b.sq_mean), _g(b.variance),
           _g(b.branch_variance), _g(r.probe.effective_rank.get(ph, {}).get(b.stage))]
          for r in sr.probed for ph, blocks in r.probe.blocks.items() for b in blocks))
    at_init = [o for o in sr.optim if o.done]
    _csv(out / "optim_init.csv", [*KEYS, "depth", *OPTIM_MEASURES],
         ([o.net.model, o.net.variant, o.net.seed, depth(o.net.model), *_optim_measures(o)] for o in at_init))
    _csv(out / "optim_training.csv", [*KEYS, "depth", "epoch", *OPTIM_MEASURES],
         ([o.net.model, o.net.variant, o.net.seed, depth(o.net.model), o.net.epoch, *_optim_measures(o)]
          for r in sr.runs for o in r.optim))
    _csv(out / "optim_gradients.csv", [*KEYS, "gradient", "distance", "corr_mean", "corr_sd"],
         ([o.net.model, o.net.variant, o.net.seed, where, _g(dist), _g(m), _g(sd)] for o in at_init
          for where in o.gradients.mean
          for dist, m, sd in zip(o.gradients.distances, o.gradients.mean[where], o.gradients.sd[where], strict=True)))
    _csv(out / "optim_slices.csv", [*KEYS, "alpha", "loss"],
         ([o.net.model, o.net.variant, o.net.seed, _g(a), _g(loss)] for o in at_init
          for a, loss in zip(o.slice_1d.alphas, o.slice_1d.losses, strict=True)))
    atomic_write_json(out / "verdicts.json", {
        "schema": VERDICTS_SCHEMA, "schema_version": VERDICTS_SCHEMA_VERSION, "rules_version": verdicts.RULES_VERSION,
        "rules": verdicts.RULES, "hypotheses": _hypotheses(), "study": sr.name, "protocol": sr.protocol,
        "dataset": sr.dataset,
        "comparisons": _verdict_rows(sr)})
    pages = {}
    for h in HYPOTHESES:  # a page shared by several hypotheses offers each one's files once
        files = pages.setdefault(h.page, [])
        files += [f for f in h.downloads if f not in files]
    return {**pages, "signal": ["signal.csv"],
            "degradation": ["runs.csv", "h1_epochs.csv", "h2_gradient_blocks.csv", "verdicts.json"],
            "batchnorm": ["runs.csv", "h1_epochs.csv", "blocks.csv", "signal.csv", "verdicts.json"]}


GRADIENT_BLOCKS = 200  # blocks of steps over the longest run: a line per run that a page can draw and hover


def _gradient_blocks(sr: StudyResults):
    """Per run and block of consecutive steps: the block's epoch and steps, and the medians over it of
    g(first stage), g(last stage) and their ratio. One block width for the whole study, so that runs
    of one length look alike; non-finite or zero values are left out of the medians."""
    longest = max((len(g) for r in sr.runs if (g := analysis.grad_series(r)) is not None), default=1)
    width = max(1, longest // GRADIENT_BLOCKS)
    for r in sr.runs:
        g, ratio = analysis.grad_series(r), analysis.ratio_series(r)
        if g is None:
            continue
        ratio = np.full(len(g), np.nan) if ratio is None else ratio
        first, last = (np.where(np.isfinite(c) & (c > 0), c, np.nan) for c in (g[:, 0], g[:, -1]))
        epochs = r.telemetry["epoch"]
        for start in range(0, len(g), width):
            block = slice(start, min(start + width, len(g)))
            yield (r.model, r.variant, r.seed, int(epochs[start]), start, block.stop - 1,
                   *(_g(_median(v[block])) for v in (first, last, ratio)))


def _median(values: np.ndarray) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a block after a divergence is all NaN
        m = np.nanmedian(values) if len(values) else np.nan
    return float(m) if np.isfinite(m) else None


def write_figure_data(out: Path, key: str) -> str:
    """`<csv>.js` beside a CSV: its text as a script, for the site's interactive figures (a page
    opened from disk may run scripts but not read files). The figure reads exactly the download's
    bytes, under `key` (its path in downloads/)."""
    text = (out / key).read_text(encoding="utf-8")
    name = f"{key}.js"
    atomic_write_bytes(out / name, (f"(window.resdegData = window.resdegData || {{}})[{json.dumps(key)}] = "
                                    f"{json.dumps(text)};\n").encode())
    return name


def write_site_downloads(store: Store, out: Path) -> dict[str, list[str]]:
    _runs_csv(out / "runs.csv", store.runs)
    atomic_write_json(out / "verdicts.json", {
        "schema": VERDICTS_SCHEMA, "schema_version": VERDICTS_SCHEMA_VERSION, "rules_version": verdicts.RULES_VERSION,
        "rules": verdicts.RULES, "hypotheses": _hypotheses(),
        "comparisons": [row for sr in store.studies for row in _verdict_rows(sr)]})
    return {"index": ["verdicts.json", "runs.csv"]}




def write_archive(out: Path) -> str:
    """Every download in one zip (fixed timestamps: the same data give the same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        # not the interactive figures' copies of the CSVs (<csv>.js)
        for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix != ".js"):
            info = zipfile.ZipInfo(path.relative_to(out).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, path.read_bytes())
    atomic_write_bytes(out / ARCHIVE, buf.getvalue())
    return ARCHIVE
