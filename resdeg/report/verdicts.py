"""The verdict rules of STUDY.md §4, versioned, as pure functions of per-seed numbers.

Every comparison pairs two models (an ablation at one depth, or one variant at two depths).
The one with the lower test accuracy is the *worse* one, its partner the *better* one (pages
call the worse one *degraded* only in a depth comparison). With several seeds a difference
counts only when its 95% t interval excludes zero (one seed against several: a prediction interval
from the other model's seed spread); with one seed each only when it exceeds the noise of a single
run (twice the binomial standard error, and at least one point). A model at chance
*did not learn*, and no hypothesis is said to explain anything about it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..study import HYPOTHESIS_IDS

RULES_VERSION = 7  # 2: single-seed noise rule, "did not learn"; 3: a depth pair explains only degradation;
# 4: Welch intervals use the t quantile of their fractional df (it was rounded down); 5: one seed against
# several gets the other model's seed spread (it had only the binomial noise of one run); 6: H1 needs
# positive evidence of equal fit, H3 counts only criteria comparable across stage widths, an architecture
# change is not a depth pair, verdicts read the mean of the last epochs under a constant learning rate;
# 7: H3 against the untrained net's own change; H4 and H5 (at initialisation, with a residual control)
VANISH, EXPLODE = 1e-3, 1e3  # median g(first stage) / g(last stage) thresholds
MIN_DIFFERENCE = 0.01  # a single run's difference counts only from one point of accuracy up
# H1's equal fit, shown positively: both nets at the training-set ceiling, or the 95% interval of their
# train-accuracy difference inside +-EQUIVALENCE_MARGIN (two one-sided tests at 2.5% each). A failure to
# reject a difference is not evidence of equal fit.
TRAIN_CEILING = 0.99
EQUIVALENCE_MARGIN = 0.01

RULES = {
    "H1": {
        "en": "Of two models, the worse one is the one with the lower test accuracy. Overfitting explains the "
              "difference when the worse model is shown to fit the training set at least as well (train accuracy "
              "in eval mode): higher beyond noise, or both models at the ceiling (at least 99%), or the 95% "
              "interval of the difference within ±1 point. Worse on test and no worse on the training set "
              "means a larger train-test gap, which the pages report. If the worse model is worse on the "
              "training set as well, overfitting does not explain it; if neither is shown, it is undecided.",
        "zh": "两个模型中，测试准确率较低的一个是较差的模型。只有证明较差模型对训练集的拟合不比较好模型差"
              "（评估模式下的训练集准确率更高且超出噪声，或两者都达到 99% 以上的上限，或两者之差的 95% 区间落在"
              " ±1 个百分点以内），过拟合才能解释两者的差异；测试更差而训练集不差，训练与测试之间的差距自然更大，"
              "页面会给出这个差距。若较差模型在训练集上同样更差，过拟合就解释不了；两者都无法证明时，判为无法判定。",
    },
    "H2": {
        "en": "A model shows vanishing gradients when the median over training steps of "
              "g(first stage) / g(last stage) is below 1e-3, exploding ones when it is above 1e3 or the loss "
              "became non-finite (g = mean |dL/d stage output|). H2 explains the difference when the worse "
              "model shows a symptom and the better one does not.",
        "zh": "记 g 为损失对阶段输出 h 的梯度的平均绝对值 mean|∂L/∂h|。若训练全程第一个阶段与最后一个阶段的 g 之比"
              "的中位数小于 1e-3，判为梯度消失；大于 1e3 或损失出现非有限值，判为梯度爆炸。"
              "若较差模型出现这一现象而较好模型没有，H2 可以解释两者的差异。",
    },
    "H3": {
        "en": "A model loses information when its separability falls from the shallowest to the deepest stage, "
              "beyond seed noise (a 95% interval over seeds; one seed decides nothing), for more than half of the "
              "criteria that can be compared across stage widths (k of m; nc1 falls when it rises; the per-channel-"
              "map Fisher ratio, the silhouette and the coding-rate reduction depend on the width and are shown, "
              "not counted). The fall is measured against the untrained net of the same run (same seed, "
              "BatchNorm on batch statistics: `resdeg probe --phase init`): the trained net's change minus the "
              "untrained net's, since random features lose separability with depth by themselves; a model whose "
              "seeds lack that control is judged on the trained change alone, and its verdict says so. H3 explains "
              "the difference when the worse model loses information and the better one does not.",
        "zh": "在可以跨不同宽度的阶段比较的可分性判据中，若超过一半（k/m；nc1 越大越不可分）从最浅的阶段到最深的阶段"
              "下降，且下降超出种子间的噪声（各种子的 95% 区间；单个种子不作判定），判该模型发生信息丢失。"
              "逐通道特征图的 Fisher 比值、轮廓系数和编码率缩减都依赖宽度，只展示，不计入。"
              "下降量以同一次训练的未训练网络为对照（同一种子，批归一化使用批次统计量：`resdeg probe --phase init`）："
              "取训练后网络的变化减去未训练网络的变化，因为随机特征本身就会随深度失去可分性；若某个模型的种子缺少"
              "这一对照，只按训练后的变化判定，判定中会注明。"
              "若较差模型发生信息丢失而较好模型没有，H3 可以解释两者的差异。",
    },
    "H4": {
        "en": "Gradients are shattered when the gradient of the output with respect to the input decorrelates "
              "between nearby inputs: measured at initialisation as the correlation of the input gradients at x "
              "and at x moved by 0.01 data standard deviations along a random direction (64 test images, a fixed "
              "random projection of the logits). H4 explains the difference when the worse model's correlation "
              "is lower beyond seed noise (the 95% Welch interval of the difference below zero; one seed decides "
              "nothing); higher beyond noise is not supported; otherwise inconclusive. In a depth pair of plain nets "
              "the residual nets of the same depths are the control: if their correlation loses more than half the "
              "share the plain nets lose (the change relative to the shallower net's value), the fall does not "
              "single out the plain nets and H4 is not supported.",
        "zh": "梯度破碎指输出对输入的梯度在相邻的输入之间失去相关性。在初始化时测量：沿随机方向把输入移动 0.01 个"
              "数据标准差，移动前后输入梯度的相关系数（64 张测试图像，对 logits 取固定的随机投影）。若较差模型的"
              "相关系数更低且超出种子间的噪声"
              "（差值的 95% Welch 区间在零以下；单个种子不作判定），H4 可以解释两者的差异；"
              "若更高且超出噪声，判为不支持；否则无法判定。在普通网络的深度对比中，以同样深度的残差网络为对照："
              "若残差网络相关系数损失的比例（相对较浅网络的数值）超过普通网络损失比例的一半，这一下降就不能把普通网络"
              "区分出来，判为不支持。",
    },
    "H5": {
        "en": "A sharper loss surface has a larger top Hessian eigenvalue λmax of the training loss, measured at "
              "initialisation on 128 class-balanced training images (Lanczos, 20 Hessian-vector products; an "
              "eigenvalue counts only when its residual is at most 5% of it). H5 explains the difference when "
              "the worse model's log10 λmax is higher beyond seed noise (95% Welch interval; one seed decides "
              "nothing); lower beyond noise is not supported; otherwise inconclusive. The most negative "
              "eigenvalue is shown, not judged: at 32 layers and more it did not converge in 20 steps. In a depth pair "
              "of plain nets the residual nets of the same depths are the control, as for H4 (on log10 λmax).",
        "zh": "损失曲面越尖锐，训练损失的 Hessian 最大特征值 λmax 越大。在初始化时于 128 张类别均衡的训练图像上"
              "测量（Lanczos，20 次 Hessian 向量积；残差不超过特征值 5% 时才算数）。若较差模型的 log10 λmax 更高且超出"
              "种子间的噪声（95% Welch 区间；单个种子不作判定），H5 可以解释两者的差异；若更低且超出噪声，判为不支持；"
              "否则无法判定。最负的特征值只展示，不作判定：32 层及以上的网络在 20 步内没有收敛。"
              "在普通网络的深度对比中，与 H4 一样以同样深度的残差网络为对照（比较 log10 λmax）。",
    },
    "depth": {
        "en": "In a depth comparison the hypotheses explain degradation only: they are judged when the deeper "
              "net is the worse one. When the shallower net is worse, there is no degradation to explain.",
        "zh": "在深度比较中，这些假说只用来解释退化：只有较深的网络是较差的模型时才作判定；"
              "若较浅的网络更差，就没有需要解释的退化。",
    },
    "comparisons": {
        "en": "Comparisons are typed. An ablation removes one component from the same net; a depth pair is the "
              "same block and widths with more blocks (He et al.'s nets), the only kind that can show degradation; "
              "ResNet18 → ResNet50 is an architecture change (bottleneck blocks, four times wider outputs), "
              "reported but never called degradation, since it differs in more than depth.",
        "zh": "比较分为几类。消融：同一个网络去掉一个组成部分；深度对比：块的类型和宽度相同、块更多（He 等人的网络），"
              "只有这一类能显示退化；ResNet18 到 ResNet50 是架构变化（瓶颈块，输出宽四倍），只报告，不称为退化，"
              "因为它们的区别不只是深度。",
    },
    "final": {
        "en": "Verdicts, tables and figures read one final figure per run: after a decayed learning rate (the "
              "depth and cifar protocols) the last epoch; under a constant learning rate (the original and native "
              "protocols) the mean of the last 3 epochs, because one epoch there is a noisy snapshot.",
        "zh": "判定、表格和图都读每次训练的同一个最终数字：学习率衰减的方案（depth、cifar 协议）取最后一个轮次；"
              "学习率不变的方案（original、native 协议）取最后 3 个轮次的均值，因为那里单个轮次的数字波动很大。",
    },
    "seeds": {
        "en": "With several seeds a difference counts only when its 95% t interval (Welch for two groups, "
              "paired within a run) excludes zero. When one model has a single seed and the other k seeds, the "
              "single run is taken to vary across seeds as the other model's runs do: the interval is the "
              "difference ± t(k−1)·s·√(1/k + 1), s being their standard deviation, and never narrower than the "
              "noise of one run below. With one seed on both sides no interval exists: a difference of accuracies "
              "counts only when it is at least twice the binomial standard error of the two accuracies (on the "
              "number of images they were measured on) and at least 1 point; otherwise the verdict is "
              "inconclusive (marked 'single seed'). A model whose test accuracy is within that noise of chance "
              "(1 / number of classes) did not learn, and no hypothesis is said to explain anything about it.",
        "zh": "有多个随机种子时，只有 95% t 区间"
              "（两组比较用 Welch 区间，同一次训练内部用配对区间）不包含零的差异才算数。"
              "若一个模型只有一个种子、另一个有 k 个种子，则假定这次训练随种子的波动与另一模型相同："
              "区间取差值 ± t(k−1)·s·√(1/k + 1) 所给的范围（s 为另一模型各种子的标准差），且不窄于下述单次训练的噪声。"
              "两边都只有一个种子时无法给出区间：准确率之差至少要达到两者二项标准误的两倍（按各自所用的图像数计算），"
              "并且不小于 1 个百分点，才算数；否则判为无法判定（标注“单一种子”）。测试准确率与随机猜测水平"
              "（1 / 类别数）之差在这一噪声以内的模型判为“没有学会”，不用任何假说解释它。",
    },
}

def _t_central_probability(x: float, df: float) -> float:
    """P(-x < T < x) for Student's t with (possibly fractional) df: Simpson's rule on the density,
    which is smooth on [0, x]; 2048 intervals are accurate to far below the 1e-4 needed here."""
    t = np.linspace(0.0, x, 2049)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
    weights = np.ones_like(t)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return float(2 * (x / 2048) / 3 * (weights * density).sum())


@lru_cache(maxsize=4096)  # a report asks for the same whole df (seeds - 1) many times
def t975(df: float) -> float:
    """The two-sided 95% quantile of Student's t. Welch's df is fractional and is used as it is:
    rounding it down to a whole df would widen the interval (at df 1.4 from 6.6 to 12.7 standard
    errors), which is no longer the Welch interval the method page names."""
    df = max(float(df), 1.0)  # Welch's df is never below the smaller group's n - 1 >= 1
    lo, hi = 1.959, 12.71  # the quantile at df = infinity and df = 1 bracket every df >= 1
    for _ in range(40):  # bisection: the bracket shrinks below 1e-11
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central_probability(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Estimate:
    """A mean (or a difference of means) with its 95% interval; low/high are None for a single seed."""
    value: float
    low: float | None
    high: float | None
    n: tuple[int, ...]
    noise: float | None = None  # single seed: the smallest difference that counts

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    @property
    def sign(self) -> int:
        """+1 / -1 when the estimate is above / below zero beyond noise (its interval, or with a
        single seed the noise of one run), else 0."""
        if not self.has_interval:
            if self.noise is not None and abs(self.value) < self.noise:
                return 0
            return int(np.sign(self.value))
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def beyond(self, threshold: float, above: bool) -> bool | None:
        """Whether the value lies above (below) the threshold; None when the interval straddles it."""
        lo, hi = (self.low, self.high) if self.has_interval else (self.value, self.value)
        if (lo > threshold) if above else (hi < threshold):
            return True
        if (hi <= threshold) if above else (lo >= threshold):
            return False
        return None

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": list(self.n), "noise": self.noise}


def mean(x) -> Estimate:
    """Mean with a one-sample t interval (a paired difference when x holds per-run differences)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return Estimate(float(x[0]), None, None, (len(x),))
    half = t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    m = float(x.mean())
    return Estimate(m, m - half, m + half, (len(x),))


def single_run_noise(variance: float | None) -> float | None:
    """The smallest difference a single seed can show: twice its binomial standard error, at least
    MIN_DIFFERENCE. `variance` is the binomial variance of the difference (None: no noise floor)."""
    if variance is None:
        return None
    return max(2 * math.sqrt(max(variance, 0.0)), MIN_DIFFERENCE)


def binomial_variance(acc: float, n: int) -> float:
    """Variance of an accuracy measured on n images (n = 0: unknown; only the 1-point floor applies)."""
    return acc * (1 - acc) / n if n > 0 else 0.0


def difference(a, b, variance: float | None = None) -> Estimate:
    """mean(a) - mean(b) with Welch's 95% interval (seeds of two models are independent runs); one
    seed against several gets a prediction interval; with one seed on each side the difference
    counts only beyond the noise of `variance` (the binomial variance of the difference)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 and len(b) < 2:
        return Estimate(d, None, None, (len(a), len(b)), single_run_noise(variance))
    if len(a) < 2 or len(b) < 2:
        return _one_against_several(d, b if len(a) < 2 else a, (len(a), len(b)), single_run_noise(variance))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(d, d, d, (len(a), len(b)))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t975(df) * se
    return Estimate(d, d - half, d + half, (len(a), len(b)))


def _one_against_several(d: float, several: np.ndarray, n: tuple[int, int], noise: float | None) -> Estimate:
    """One seed against several: the single run varies from seed to seed as much as the other model's
    runs do (the only spread measured), so d gets the prediction interval d ± t(k-1)·s·√(1/k + 1),
    never narrower than the noise of one run (Crawford & Howell's 1998 test of a single case against a
    small sample). The binomial noise alone would call a 3-point gap decided between models whose
    seeds scatter by 6 points."""
    k = len(several)
    half = t975(k - 1) * float(several.std(ddof=1)) * math.sqrt(1 / k + 1)
    half = max(half, noise or 0.0)
    return Estimate(d, d - half, d + half, n, noise)


# -- per-run inputs -------------------------------------------------------------------------------

@dataclass
class Side:
    """One model of a comparison: per-seed final numbers, gradient ratios and probe changes."""
    label: str
    test_acc: list[float]
    eval_train_acc: list[float]
    diverged: int = 0  # runs whose loss went non-finite
    test_n: int = 0  # images the test accuracy is measured on (0: unknown)
    eval_train_n: int = 0  # images of the eval-mode train subset
    chance: float = 0.1  # 1 / number of classes
    log_ratio: list[float] = field(default_factory=list)  # log10 median g(first)/g(last), finite runs
    # criterion -> per-seed change from the shallowest to the deepest stage, oriented so that
    # negative = less separable (nc1's sign flipped)
    sep_change: dict[str, list[float]] = field(default_factory=dict)
    sep_controlled: bool = False  # sep_change is net of the untrained net's own change (init probes)
    # at initialisation, per seed (optim records): the input-gradient correlation at the summary
    # distance (H4), and log10 of the largest Hessian eigenvalue of the training loss (H5)
    grad_corr: list[float] = field(default_factory=list)
    log_lambda_max: list[float] = field(default_factory=list)

    @property
    def gap(self) -> list[float]:
        return [c - t for c, t in zip(self.eval_train_acc, self.test_acc, strict=True)]

    def variance(self, key: str) -> float:
        """Binomial variance of the mean of `key` (test_acc, eval_train_acc or gap) over the seeds."""
        k = max(1, len(self.test_acc))
        t = binomial_variance(float(np.mean(self.test_acc)), self.test_n) if self.test_acc else 0.0
        c = binomial_variance(float(np.mean(self.eval_train_acc)), self.eval_train_n) if self.eval_train_acc else 0.0
        return {"test_acc": t, "eval_train_acc": c, "gap": t + c}[key] / k

    @property
    def did_not_learn(self) -> bool:
        """Test accuracy within the noise of a single run of chance (STUDY.md §4)."""
        if not self.test_acc:
            return False
        floor = single_run_noise(binomial_variance(self.chance, self.test_n) / len(self.test_acc))
        return float(np.mean(self.test_acc)) - self.chance < floor


def compare(a: Side, b: Side, key: str) -> Estimate:
    """Side a minus side b on `key`, with the noise rule of a single seed."""
    return difference(getattr(a, key), getattr(b, key), a.variance(key) + b.variance(key))


@dataclass
class Verdict:
    hypothesis: str
    subject: str  # e.g. "resnet50: FULL vs Nres"
    worse: str | None  # lower test accuracy (the degraded one in a depth comparison)
    better: str | None
    outcome: str  # supported | not_supported | inconclusive
    reason: str  # a key of REASONS
    numbers: dict
    single_seed: bool

    def explain(self, lang: str) -> str:
        fmt = {k: v[lang] if isinstance(v, dict) else v for k, v in self.numbers.get("_fmt", {}).items()}
        return REASONS[self.reason][lang].format(worse=self.worse, better=self.better, **fmt)

    def as_dict(self) -> dict:
        return {"hypothesis": self.hypothesis, "subject": self.subject, "worse": self.worse,
                "better": self.better, "outcome": self.outcome, "reason": self.reason,
                "explanation": {lang: self.explain(lang) for lang in ("en", "zh")},
                "numbers": {k: v for k, v in self.numbers.items() if k != "_fmt"}, "single_seed": self.single_seed}


REASONS = {
    "no_data": {"en": "Not enough results to decide.", "zh": "结果不足，无法判定。"},
    "did_not_learn": {"en": "{nl} did not learn (test accuracy within noise of chance): no hypothesis is said "
                            "to explain anything about it.",
                      "zh": "{nl} 没有学会（测试准确率与随机猜测之差在噪声以内），不用任何假说解释它。"},
    "no_degradation": {"en": "Test accuracies do not differ beyond noise ({dtest}); there is nothing to explain.",
                       "zh": "两者的测试准确率之差没有超出噪声（{dtest}），没有需要解释的差异。"},
    "undecided": {"en": "The 95% interval of the test difference includes zero ({dtest}): too uncertain to say "
                        "which model is worse.",
                  "zh": "测试准确率之差的 95% 区间包含零（{dtest}），还不能确定哪个模型更差。"},
    "deeper_not_worse": {"en": "The deeper net {better} is better on the test set ({dtest}): there is no degradation "
                               "to explain.",
                         "zh": "较深的网络 {better} 在测试集上更好（{dtest}），没有需要解释的退化。"},
    "worse_on_train": {"en": "{worse} is worse on the training set too (train accuracy in eval mode {dtrain}): "
                             "not overfitting.",
                       "zh": "{worse} 在训练集上同样更差（评估模式下的训练集准确率 {dtrain}），不是过拟合。"},
    "overfits": {"en": "{worse} fits the training set at least as well ({dtrain}; {fit}) yet is worse on test: "
                       "its train-test gap is larger ({dgap}).",
                 "zh": "{worse} 对训练集的拟合不比对方差（{dtrain}；{fit}），"
                       "测试却更差：训练与测试之间的差距更大（{dgap}）。"},
    "fit_undecided": {"en": "Whether {worse} fits the training set as well is not shown ({dtrain}): the models are "
                            "not both at the ceiling and the interval is not within ±1 point.",
                      "zh": "无法证明 {worse} 对训练集拟合得一样好（{dtrain}）："
                            "两者并非都达到上限，区间也不在 ±1 个百分点以内。"},
    "symptom_only_worse": {"en": "{worse}: {sd}; {better}: {sh}.", "zh": "{worse}：{sd}；{better}：{sh}。"},
    "symptom_both": {"en": "Both show it ({worse}: {sd}; {better}: {sh}), so it does not explain the difference.",
                     "zh": "两者都有这一现象（{worse}：{sd}；{better}：{sh}），因此它解释不了两者的差异。"},
    "no_symptom": {"en": "{worse}: {sd}.", "zh": "{worse}：{sd}。"},
    "symptom_unclear": {"en": "The interval straddles a threshold ({worse}: {sd}; {better}: {sh}).",
                        "zh": "区间跨越了阈值（{worse}：{sd}；{better}：{sh}）。"},
    "loss_only_worse": {"en": "{worse} loses information ({kd}); {better} does not ({kh}).",
                           "zh": "{worse} 出现信息丢失（{kd}）；{better} 没有（{kh}）。"},
    "loss_both": {"en": "Both lose information ({worse}: {kd}; {better}: {kh}).",
                  "zh": "两者都出现信息丢失（{worse}：{kd}；{better}：{kh}）。"},
    "no_loss": {"en": "{worse} does not lose information ({kd}).", "zh": "{worse} 没有出现信息丢失（{kd}）。"},
    "loss_unclear": {"en": "Too few criteria give a clear answer ({worse}: {kd}; {better}: {kh}).",
                     "zh": "给出明确结论的判据太少（{worse}：{kd}；{better}：{kh}）。"},
    "more_shattered": {"en": "{worse}'s input gradients are more shattered at initialisation: correlation {vd}, "
                             "{better} {vh} (difference {dv}).",
                       "zh": "{worse} 在初始化时的输入梯度更破碎：相关系数 {vd}，{better} 为 {vh}（差 {dv}）。"},
    "more_shattered_control": {"en": "{worse}'s input gradients are more shattered at initialisation: correlation "
                                     "{vd}, "
                                     "{better} {vh} (difference {dv}); the residual nets of the same depths change far "
                                     "less ({ctrl}).",
                               "zh": "{worse} 在初始化时的输入梯度更破碎：相关系数 {vd}，{better} 为 {vh}（差 {dv}）；"
                                     "同样深度的"
                                     "残差网络变化小得多（{ctrl}）。"},
    "sharper_control": {"en": "{worse}'s loss surface is sharper at initialisation: λmax {vd}, {better} {vh} (log10 "
                              "difference "
                              "{dv}); the residual nets of the same depths change far less ({ctrl}).",
                        "zh": "{worse} 在初始化时的损失曲面更尖锐：λmax 为 {vd}，{better} 为 {vh}（log10 之差 {dv}）；"
                              "同样深度的"
                              "残差网络变化小得多（{ctrl}）。"},
    "less_shattered": {"en": "{worse}'s input gradients are less shattered at initialisation: correlation {vd}, "
                             "{better} {vh} (difference {dv}).",
                       "zh": "{worse} 在初始化时的输入梯度反而不那么破碎：相关系数 {vd}，"
                             "{better} 为 {vh}（差 {dv}）。"},
    "sharper": {"en": "{worse}'s loss surface is sharper at initialisation: λmax {vd}, {better} {vh} (log10 difference "
                      "{dv}).",
                "zh": "{worse} 在初始化时的损失曲面更尖锐：λmax 为 {vd}，{better} 为 {vh}（log10 之差 {dv}）。"},
    "flatter": {"en": "{worse}'s loss surface is flatter at initialisation: λmax {vd}, {better} {vh} (log10 difference "
                      "{dv}).",
                "zh": "{worse} 在初始化时的损失曲面反而更平缓：λmax 为 {vd}，{better} 为 {vh}（log10 之差 {dv}）。"},
    "measure_unclear": {"en": "The difference is within seed noise or rests on one seed ({worse}: {vd}; {better}: "
                              "{vh}; "
                              "difference {dv}).",
                        "zh": "差异在种子间的噪声以内，或只有一个种子（{worse}：{vd}；{better}：{vh}；差 {dv}）。"},
    "control_too": {"en": "{worse} differs from {better} in the predicted direction ({dv}), but the residual nets of "
                          "the "
                          "same depths change about as much ({ctrl}): it does not single out the plain nets.",
                    "zh": "{worse} 与 {better} 的差异方向与预测一致（{dv}），但同样深度的残差网络变化也差不多（{ctrl}）"
                          "，"
                          "因此它不能把普通网络区分出来。"},
    "not_measured": {"en": "Not measured at initialisation for both models (`resdeg optim`).",
                     "zh": "两个模型在初始化时没有都测量过（`resdeg optim`）。"},
}
# The reasons `_degradation` gives before any hypothesis is looked at: they are about the comparison
# (no data, a net that did not learn, no degraded net), so H1-H3 share them.
COMPARISON_REASONS = frozenset({"no_data", "did_not_learn", "no_degradation", "undecided", "deeper_not_worse"})
OUTCOME_TEXT = {"supported": {"en": "supported", "zh": "支持"},
                "not_supported": {"en": "not supported", "zh": "不支持"},
                "inconclusive": {"en": "inconclusive", "zh": "无法判定"}}


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def human(x) -> str:
    """A ratio as people write it: 0.58, 2.0, 28, 3,600; beyond that 2 × 10⁻²² (no e-notation)."""
    if x is None or not math.isfinite(x):
        return "—"
    if 0.01 <= abs(x) < 10_000:
        return f"{float(f'{x:.2g}'):,.{max(0, 1 - math.floor(math.log10(abs(x))))}f}"
    exponent = math.floor(math.log10(abs(x)))
    mantissa = round(x / 10 ** exponent)
    if abs(mantissa) == 10:
        mantissa, exponent = mantissa // 10, exponent + 1
    return f"{'' if mantissa == 1 else f'{mantissa} × '}10{str(exponent).translate(SUPERSCRIPT)}"


def fmt_diff(e: Estimate, lang: str = "en", scale: float = 100.0) -> str:
    """A difference of accuracies in points, with its 95% interval or, for one seed, its noise floor."""
    unit = " pp" if lang == "en" else " 个百分点"
    s = f"{e.value * scale:+.2f}{unit}"
    if e.has_interval:
        return s + f" [{e.low * scale:+.2f}, {e.high * scale:+.2f}]"
    if e.noise is None:
        return s
    # a comma, not brackets: the difference usually stands in brackets itself, and brackets do not nest
    return s + (f", noise ±{e.noise * scale:.2f}" if lang == "en" else f"，噪声 ±{e.noise * scale:.2f}")


def fmt_both(e: Estimate) -> dict:
    return {lang: fmt_diff(e, lang) for lang in ("en", "zh")}


# -- the rules --------------------------------------------------------------------------------------

def _order(a: Side, b: Side):
    """((worse, better), test difference worse - better), or (None, difference b - a: second minus
    first, as every page states) when the test accuracies do not differ beyond noise."""
    d = compare(a, b, "test_acc")
    if d.sign == 0:
        return None, compare(b, a, "test_acc")
    return ((a, b) if d.sign < 0 else (b, a)), (d if d.sign < 0 else compare(b, a, "test_acc"))


def _single(*sides: Side) -> bool:
    return any(len(s.test_acc) < 2 for s in sides)


def _verdict(h, subject, pair, outcome, reason, numbers, single):
    d, hl = (pair[0].label, pair[1].label) if pair else (None, None)
    return Verdict(h, subject, d, hl, outcome, reason, numbers, single)


def _degradation(h: str, subject: str, a: Side, b: Side, needs_train: bool = False, depth: bool = False):
    """The shared first steps of every rule: enough data? which model degraded? In a depth comparison
    (`b` the deeper net) only the deeper net can have degraded: a worse shallower net is not explained.
    Returns (early verdict, None, None, single) or (None, (worse, better), numbers, single)."""
    single = _single(a, b)
    have = a.test_acc and b.test_acc and (not needs_train or (a.eval_train_acc and b.eval_train_acc))
    if not have:
        return _verdict(h, subject, None, "inconclusive", "no_data", {}, single), None, None, single
    stuck = [s.label for s in (a, b) if s.did_not_learn]
    if stuck:
        nums = {"did_not_learn": stuck, "_fmt": {"nl": {"en": " and ".join(stuck), "zh": " 和 ".join(stuck)}}}
        return _verdict(h, subject, None, "inconclusive", "did_not_learn", nums, single), None, None, single
    pair, dtest = _order(a, b)
    nums = {"test_diff": dtest.as_dict(), "_fmt": {"dtest": fmt_both(dtest)}}
    if pair is None:  # with seeds on both sides an interval across zero is undecided, not "no difference"
        reason = "undecided" if dtest.has_interval else "no_degradation"
        return _verdict(h, subject, None, "inconclusive", reason, nums, single), None, None, single
    if depth and pair[0] is a:
        up = compare(b, a, "test_acc")  # deeper minus shallower: second minus first, as the pages state
        nums = {"test_diff": up.as_dict(), "_fmt": {"dtest": fmt_both(up)}}
        return _verdict(h, subject, pair, "inconclusive", "deeper_not_worse", nums, single), None, None, single
    return None, pair, nums, single


def h1(subject: str, a: Side, b: Side, depth: bool = False, control=None) -> Verdict:
    """Overfitting (STUDY §4 H1)."""
    early, pair, nums, single = _degradation("H1", subject, a, b, needs_train=True, depth=depth)
    if early:
        return early
    worse, better = pair
    dtrain = compare(worse, better, "eval_train_acc")
    dgap = compare(worse, better, "gap")
    nums.update(eval_train_diff=dtrain.as_dict(), gap_diff=dgap.as_dict())
    nums["_fmt"].update(dtrain=fmt_both(dtrain), dgap=fmt_both(dgap))
    if dtrain.sign < 0:
        return _verdict("H1", subject, pair, "not_supported", "worse_on_train", nums, single)
    fit = equal_fit(worse, better, dtrain)
    nums["equal_fit"] = fit
    if fit is None:
        return _verdict("H1", subject, pair, "inconclusive", "fit_undecided", nums, single)
    nums["_fmt"]["fit"] = FIT_TEXT[fit]
    return _verdict("H1", subject, pair, "supported", "overfits", nums, single)


FIT_TEXT = {"better": {"en": "better beyond noise", "zh": "更好，且超出噪声"},
            "ceiling": {"en": f"both at the ceiling of {TRAIN_CEILING:.0%}",
                        "zh": f"两者都达到 {TRAIN_CEILING:.0%} 的上限"},
            "equivalent": {"en": f"within the ±{EQUIVALENCE_MARGIN * 100:g} point margin",
                           "zh": f"在 ±{EQUIVALENCE_MARGIN * 100:g} 个百分点的等价范围内"}}


def equal_fit(worse: Side, better: Side, dtrain: Estimate) -> str | None:
    """How the worse model is shown to fit the training set at least as well as the better one
    (a key of FIT_TEXT), or None when it is not shown."""
    if dtrain.sign > 0:
        return "better"
    if min(worse.eval_train_acc + better.eval_train_acc) >= TRAIN_CEILING:
        return "ceiling"
    if dtrain.has_interval and -EQUIVALENCE_MARGIN <= dtrain.low and dtrain.high <= EQUIVALENCE_MARGIN:
        return "equivalent"
    return None


def gradient_symptom(side: Side) -> tuple[str, Estimate | None]:
    """vanishing / exploding / none / unclear / no_data for one model over its seeds."""
    if side.diverged:
        return "exploding", None
    if not side.log_ratio:
        return "no_data", None
    e = mean(side.log_ratio)
    if e.beyond(math.log10(VANISH), above=False):
        return "vanishing", e
    if e.beyond(math.log10(EXPLODE), above=True):
        return "exploding", e
    inside = e.beyond(math.log10(VANISH), above=False) is False and e.beyond(math.log10(EXPLODE), above=True) is False
    return ("none" if inside else "unclear"), e


SYMPTOM_TEXT = {"vanishing": {"en": "vanishing", "zh": "梯度消失"}, "exploding": {"en": "exploding", "zh": "梯度爆炸"},
                "none": {"en": "none", "zh": "无"}, "unclear": {"en": "unclear", "zh": "不确定"},
                "no_data": {"en": "no data", "zh": "无数据"}}


def _symptom_fmt(side: Side, symptom: str, e: Estimate | None) -> dict:
    """The symptom in each language, with the ratio (10^mean log10 median) or the diverged count."""
    name = SYMPTOM_TEXT[symptom]
    if side.diverged:
        runs = "1 run" if side.diverged == 1 else f"{side.diverged} runs"
        return {"en": f"{name['en']}, {runs} diverged", "zh": f"{name['zh']}，{side.diverged} 次训练发散"}
    if e is None:
        return name
    ratio = f"{10 ** e.value:.2e}"
    if e.has_interval:
        ratio += f" [{10 ** e.low:.2e}, {10 ** e.high:.2e}]"
    if symptom == "none":
        return {"en": f"no gradient symptom, its first-to-last-stage gradient ratio {ratio} lies between "
                      f"{VANISH:g} and {EXPLODE:g}",
                "zh": f"没有梯度异常，首末阶段梯度比值 {ratio} 在 {VANISH:g} 与 {EXPLODE:g} 之间"}
    return {"en": f"{name['en']}, first-to-last-stage gradient ratio {ratio}",
            "zh": f"{name['zh']}，首末阶段梯度比值 {ratio}"}


def h2(subject: str, a: Side, b: Side, depth: bool = False, control=None) -> Verdict:
    """Vanishing / exploding gradients (STUDY §4 H2)."""
    early, pair, nums, single = _degradation("H2", subject, a, b, depth=depth)
    if early:
        return early
    worse, better = pair
    (sw, ew), (sb, eb) = gradient_symptom(worse), gradient_symptom(better)
    nums.update(worse_symptom=sw, better_symptom=sb, worse_log10_ratio=ew and ew.as_dict(),
                better_log10_ratio=eb and eb.as_dict(), worse_diverged=worse.diverged,
                better_diverged=better.diverged)
    nums["_fmt"].update(sd=_symptom_fmt(worse, sw, ew), sh=_symptom_fmt(better, sb, eb))
    bad = ("vanishing", "exploding")
    if sw == "no_data" or sb == "no_data":
        return _verdict("H2", subject, pair, "inconclusive", "no_data", nums, single)
    if sw == "none":
        return _verdict("H2", subject, pair, "not_supported", "no_symptom", nums, single)
    if sw in bad and sb == "none":
        return _verdict("H2", subject, pair, "supported", "symptom_only_worse", nums, single)
    if sw in bad and sb in bad:
        return _verdict("H2", subject, pair, "not_supported", "symptom_both", nums, single)
    return _verdict("H2", subject, pair, "inconclusive", "symptom_unclear", nums, single)


def information_loss(side: Side) -> dict:
    """Per criterion whether separability falls (paired over seeds); the k-of-m count and the outcome."""
    per = {}
    for name, changes in side.sep_change.items():
        if changes:
            e = mean(changes)
            # one seed has no measured spread: its change is shown but counts neither way
            per[name] = {"change": e.as_dict(), "falls": e.has_interval and e.sign < 0,
                         "rises": e.has_interval and e.sign > 0}
    m = len(per)
    k = sum(v["falls"] for v in per.values())
    clear_no = sum(v["rises"] for v in per.values())  # a clear "does not fall" is a rise beyond seed noise
    if m == 0:
        outcome = "no_data"
    elif k > m / 2:
        outcome = "supported"
    elif clear_no > m / 2:
        outcome = "not_supported"
    else:
        outcome = "inconclusive"
    return {"criteria": per, "k": k, "m": m, "outcome": outcome}


def _k_of_m(loss: dict, controlled: bool = False) -> dict:
    if controlled:
        return {"en": f"{loss['k']} of {loss['m']} criteria fall more than at initialisation",
                "zh": f"{loss['m']} 个判据中 {loss['k']} 个比初始化时下降得更多"}
    return {"en": f"{loss['k']} of {loss['m']} criteria fall", "zh": f"{loss['m']} 个判据中 {loss['k']} 个下降"}


def h3(subject: str, a: Side, b: Side, depth: bool = False, control=None) -> Verdict:
    """Information loss (STUDY §4 H3)."""
    early, pair, nums, single = _degradation("H3", subject, a, b, depth=depth)
    if early:
        return early
    worse, better = pair
    lw, lb = information_loss(worse), information_loss(better)
    nums.update(worse=lw, better=lb)
    nums.update(worse_controlled=worse.sep_controlled, better_controlled=better.sep_controlled)
    nums["_fmt"].update(kd=_k_of_m(lw, worse.sep_controlled), kh=_k_of_m(lb, better.sep_controlled))
    if lw["outcome"] == "no_data" or lb["outcome"] == "no_data":
        return _verdict("H3", subject, pair, "inconclusive", "no_data", nums, single)
    if lw["outcome"] == "not_supported":
        return _verdict("H3", subject, pair, "not_supported", "no_loss", nums, single)
    if lw["outcome"] == "supported" and lb["outcome"] == "not_supported":
        return _verdict("H3", subject, pair, "supported", "loss_only_worse", nums, single)
    if lw["outcome"] == "supported" and lb["outcome"] == "supported":
        return _verdict("H3", subject, pair, "not_supported", "loss_both", nums, single)
    return _verdict("H3", subject, pair, "inconclusive", "loss_unclear", nums, single)


CONTROL_SHARE = 0.5  # a plain depth pair's change must exceed the residual pair's at least twice over


def _at_init(h: str, key: str, more: tuple[str, str], subject: str, a: Side, b: Side, depth: bool,
             show, control) -> Verdict:
    """H4 and H5: a measurement of both nets at initialisation, per seed (`key` of Side); the worse
    net's value minus the better's, with Welch's interval. `more` = (reason, its opposite) when the
    worse net's value is (lower for H4, higher for H5) beyond noise; `show` writes one value.
    `control`: for a plain depth pair, the residual nets of the same depths (shallow, deep); the
    plain change then explains degradation only if the residual change is at most CONTROL_SHARE of it."""
    early, pair, nums, single = _degradation(h, subject, a, b, depth=depth)
    if early:
        return early
    worse, better = pair
    vw, vb = getattr(worse, key), getattr(better, key)
    if not vw or not vb:
        return _verdict(h, subject, pair, "inconclusive", "not_measured", nums, single)
    d = difference(vw, vb)
    nums.update({key: {"worse": vw, "better": vb, "difference": d.as_dict()}})
    nums["_fmt"].update(vd={lang: show(vw, lang) for lang in ("en", "zh")},
                        vh={lang: show(vb, lang) for lang in ("en", "zh")},
                        dv={lang: f"{d.value:+.2f}" + (f" [{d.low:+.2f}, {d.high:+.2f}]" if d.has_interval else "")
                            for lang in ("en", "zh")})
    predicts_worse = -1 if h == "H4" else 1  # lower correlation / higher curvature predicts harder training
    sign = d.sign if min(len(vw), len(vb)) >= 2 else 0  # one seed has no measured spread: it decides nothing
    if sign == predicts_worse and control is not None:
        shallow, deep = (getattr(side, key) for side in control)
        if shallow and deep:
            # H4 compares shares of the correlation lost (a net at zero cannot fall further, so a raw
            # difference would favour the residual pair); H5's log10 lambda_max is relative already
            change = _change(np.mean(getattr(better, key)), np.mean(getattr(worse, key)), key)
            ctrl = _change(np.mean(shallow), np.mean(deep), key)
            nums["control_change"] = ctrl
            unit = "relative change" if key == "grad_corr" else "log10 change"
            unit_zh = "相对变化" if key == "grad_corr" else "log10 变化"
            nums["_fmt"]["ctrl"] = {"en": f"{unit} {ctrl:+.2f} against the plain nets' {change:+.2f}",
                                    "zh": f"{unit_zh} {ctrl:+.2f}，普通网络为 {change:+.2f}"}
            if ctrl * predicts_worse > CONTROL_SHARE * change * predicts_worse:
                return _verdict(h, subject, pair, "not_supported", "control_too", nums, single)
            return _verdict(h, subject, pair, "supported", more[0] + "_control", nums, single)
    if sign == predicts_worse:
        return _verdict(h, subject, pair, "supported", more[0], nums, single)
    if sign == -predicts_worse:
        return _verdict(h, subject, pair, "not_supported", more[1], nums, single)
    return _verdict(h, subject, pair, "inconclusive", "measure_unclear", nums, single)


def _change(shallow: float, deep: float, key: str) -> float:
    """The change from the shallower to the deeper net on the scale the control compares."""
    if key == "grad_corr":
        return float(deep / shallow - 1) if shallow > 0 else float("nan")
    return float(deep - shallow)


def _mean_text(values, fmt, lang: str) -> str:
    n = len(values)  # no brackets: the value often stands in brackets itself, and brackets do not nest
    seeds = (f" over {n} seeds" if n != 1 else " from 1 seed") if lang == "en" else f"，{n} 个种子"
    return fmt(float(np.mean(values))) + seeds


def h4(subject: str, a: Side, b: Side, depth: bool = False, control=None) -> Verdict:
    """Shattered gradients (Balduzzi et al. 2017), at initialisation."""
    return _at_init("H4", "grad_corr", ("more_shattered", "less_shattered"), subject, a, b, depth,
                    lambda v, lang: _mean_text(v, lambda x: f"{x:.2f}", lang), control)


def h5(subject: str, a: Side, b: Side, depth: bool = False, control=None) -> Verdict:
    """A sharper loss surface (Li et al. 2018): the top Hessian eigenvalue at initialisation."""
    return _at_init("H5", "log_lambda_max", ("sharper", "flatter"), subject, a, b, depth,
                    lambda v, lang: _mean_text(v, lambda x: human(10 ** x), lang), control)


# each declared hypothesis (study.HYPOTHESES) registered with its rule: the function and its text in RULES
RULE_FUNCTIONS = {"H1": h1, "H2": h2, "H3": h3, "H4": h4, "H5": h5}
assert tuple(RULE_FUNCTIONS) == HYPOTHESIS_IDS and set(HYPOTHESIS_IDS) <= set(RULES), "a hypothesis without its rule"
