"""What the study is, declared once: the variants and their properties, and each study's
protocol and grid (models x variants x seeds).

Everything downstream (model builder, CLI, report) reads these records; none re-derives a
variant's properties from its name. Import-light on purpose: no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ResdegError


@dataclass(frozen=True)
class Variant:
    """A way to build the same architecture: what it keeps of the residual net and how it starts."""
    name: str
    residual: bool  # the block adds its shortcut
    norm: bool  # BatchNorm layers (else identities)
    init: str = "default"  # default (PyTorch's) | fixup | skipinit

    def model_kwargs(self) -> dict:
        return {"residual": self.residual, "norm": self.norm, "init": self.init}


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("FULL", residual=True, norm=True),
    Variant("Nres", residual=False, norm=True),
    Variant("Nbn", residual=True, norm=False),
    Variant("Nboth", residual=False, norm=False),
    # Without normalisation, residual branches that start at zero (models.py says exactly how):
    Variant("Fixup", residual=True, norm=False, init="fixup"),  # Zhang et al. 2019
    Variant("SkipInit", residual=True, norm=False, init="skipinit"),  # De & Smith 2020
)}


# name -> (block, blocks per stage), read by the model builder. Variants as data, after timm.
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
    "resnet20": ("cifar_basic", (3, 3, 3)),
    "resnet32": ("cifar_basic", (5, 5, 5)),
    "resnet44": ("cifar_basic", (7, 7, 7)),
    "resnet56": ("cifar_basic", (9, 9, 9)),
    "resnet110": ("cifar_basic", (18, 18, 18)),
}
# The base initialisation of the weights, a protocol's choice (models.py says what each is).
WEIGHT_INITS = ("pytorch", "he")


def canonical_variant(name: str) -> str:
    """The declared spelling of a variant name given in any case; a one-line error if unknown."""
    for v in VARIANTS:
        if v.lower() == name.strip().lower():
            return v
    raise ResdegError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")


# Protocols, most serious first: the order of the report's studies (`config.PROTOCOLS` holds their settings).
PROTOCOL_RANK = ("original", "native", "depth-he", "depth-long", "depth", "cifar", "smoke")
# He et al.'s CIFAR nets and recipe, differing only in the number of epochs.
DEPTH_PROTOCOLS = ("depth", "depth-long", "depth-he")


@dataclass(frozen=True)
class Comparison:
    """Two models the study compares. `reference` has the component (or is the shallower net),
    `other` lacks it (or is deeper). kind "ablation": same depth, one component removed;
    kind "depth": same variant, same block and widths, more blocks (degradation in He et al.'s sense);
    kind "architecture": same variant, another block (ResNet18 -> ResNet50: bottlenecks, 4x wider
    outputs), which can differ for reasons other than depth and so never shows degradation."""
    kind: str
    component: str  # residual | batchnorm | normfree | depth | architecture
    reference: tuple[str, str]  # (model, variant)
    other: tuple[str, str]

    @property
    def subject(self) -> str:
        return self.label("en")

    def label(self, lang: str) -> str:
        """'resnet20: FULL vs Nres' / 'resnet20：FULL 与 Nres' (same depth) or 'Nres: resnet20 vs resnet56'."""
        (m1, v1), (m2, v2) = self.reference, self.other
        head, a, b = (m1, v1, v2) if m1 == m2 else (v1, m1, m2)
        return f"{head}: {a} vs {b}" if lang == "en" else f"{head}：{a} 与 {b}"


# Same-depth ablations of the note's 2x2 grid: (reference, ablated, component removed)
GRID_ABLATIONS = (("FULL", "Nres", "residual"), ("Nbn", "Nboth", "residual"),
                  ("FULL", "Nbn", "batchnorm"), ("Nres", "Nboth", "batchnorm"))
# What the BatchNorm study asks: BN removed, or replaced by a normalisation-free initialisation
NORM_ABLATIONS = (("FULL", "Nbn", "batchnorm"), ("FULL", "Fixup", "normfree"), ("FULL", "SkipInit", "normfree"),
                  ("Nres", "Nboth", "batchnorm"))


@dataclass(frozen=True)
class Study:
    """A protocol, a grid (models x variants x seeds) and the comparisons it makes."""
    name: str  # also the folder of its pages
    protocol: str
    kind: str  # variants (the note's 2x2 grid) | depth | batchnorm: which comparisons and pages
    models: tuple[str, ...]
    variants: tuple[str, ...]
    title: dict  # {"en": ..., "zh": ...}
    seeds: tuple[int, ...] = (42,)

    def comparisons(self, present) -> list[Comparison]:
        """Every comparison of this study whose two (model, variant) cells are in `present`."""
        out = []
        ablations = NORM_ABLATIONS if self.kind == "batchnorm" else GRID_ABLATIONS
        for model in self.models:
            for ref, other, component in ablations:
                out.append(Comparison("ablation", component, (model, ref), (model, other)))
        if self.kind != "batchnorm":
            for variant in self.variants:
                # pairs among the depths that have runs, so a missing depth leaves no gap
                trained = [m for m in self.models if (m, variant) in present]
                for shallow, deep in _depth_pairs(trained):
                    kind = "depth" if ARCHS[shallow][0] == ARCHS[deep][0] else "architecture"
                    out.append(Comparison(kind, kind, (shallow, variant), (deep, variant)))
        return [c for c in out if c.reference in present and c.other in present]

    @property
    def pages(self) -> tuple[str, ...]:
        return STUDY_PAGES[self.kind]


def _depth_pairs(models) -> list[tuple[str, str]]:
    """Consecutive depths, plus shallowest vs deepest when there are more than two."""
    pairs = list(zip(models, models[1:], strict=False))
    if len(models) > 2:
        pairs.append((models[0], models[-1]))
    return pairs


ORIGINAL_MODELS = ("resnet18", "resnet50")
GRID_VARIANTS = ("FULL", "Nres", "Nbn", "Nboth")
DEPTH_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56")

STUDIES: tuple[Study, ...] = (
    Study("original", "original", "variants", ORIGINAL_MODELS, GRID_VARIANTS,
          {"en": "The original study (224 px)", "zh": "原始研究（224 像素）"}),
    Study("native", "native", "variants", ORIGINAL_MODELS, GRID_VARIANTS,
          {"en": "The original study at 32 px", "zh": "原始研究（32 像素）"}),
    Study("depth", "depth", "depth", DEPTH_MODELS, ("FULL", "Nres"),
          {"en": "Degradation with depth", "zh": "随深度的退化"}),
    Study("depth-long", "depth-long", "depth", ("resnet20", "resnet56"), ("FULL", "Nres"),
          {"en": "Degradation with depth, 60 epochs", "zh": "随深度的退化（60 个轮次）"}),
    Study("depth-he", "depth-he", "depth", ("resnet20", "resnet56", "resnet110"), ("FULL", "Nres"),
          {"en": "Degradation with depth, He et al.'s 164 epochs", "zh": "随深度的退化（He 等人的 164 个轮次）"}),
    Study("batchnorm", "depth", "batchnorm", ("resnet20", "resnet56"),
          ("FULL", "Nbn", "Fixup", "SkipInit", "Nres", "Nboth"),
          {"en": "What BatchNorm does", "zh": "批归一化的作用"}),
    Study("cifar", "cifar", "variants", ORIGINAL_MODELS, GRID_VARIANTS,
          {"en": "The CIFAR recipe", "zh": "CIFAR 常用训练方案"}),
    Study("smoke", "smoke", "variants", ORIGINAL_MODELS, GRID_VARIANTS,
          {"en": "Smoke test (not evidence)", "zh": "冒烟测试（不是证据）"}),
)


def default_cells(protocol: str) -> list[tuple[str, str]]:
    """run-all's default (model, variant) cells: those of every declared study of the protocol."""
    studies = [s for s in STUDIES if s.protocol == protocol] or [STUDIES[0]]
    return list(dict.fromkeys((m, v) for s in studies for m in s.models for v in s.variants))


def default_grid(protocol: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """run-all's default models and variants for a protocol: every declared study of it, in order."""
    studies = [s for s in STUDIES if s.protocol == protocol]
    models = tuple(dict.fromkeys(m for s in studies for m in s.models)) or ORIGINAL_MODELS
    variants = tuple(dict.fromkeys(v for s in studies for v in s.variants)) or GRID_VARIANTS
    return models, variants


@dataclass(frozen=True)
class Page:
    name: str
    title: dict  # {"en": ..., "zh": ...}: the nav's and the page's heading
    before_studies: bool = False  # a site page the navigation lists before the studies' pages


@dataclass(frozen=True)
class Hypothesis:
    """One explanation of degradation under test. The method page, its own page in every study of
    the note's grid, the landing page's counts, verdicts.json and the downloads loop over HYPOTHESES;
    its rule (text and function) is registered under its id in report/verdicts.py."""
    id: str  # H1, H2, ...: the key of its verdicts everywhere
    name: dict  # {"en": "overfitting", ...}
    claim: dict  # what it says, and what it predicts about the worse net
    measured: tuple[dict, dict]  # (when, what): the measurement it is judged on
    page: str  # its page's name, in every study of kind `study_kind`
    downloads: tuple[str, ...]  # the data files its page offers (report/downloads.py writes them)
    study_kind: str = "variants"  # the studies whose pages judge it at length (all studies' tables show it)

    @property
    def title(self) -> dict:
        return {"en": f"{self.id}: {self.name['en']}", "zh": f"{self.id}：{self.name['zh']}"}


HYPOTHESES = (
    Hypothesis(
        "H1", {"en": "overfitting", "zh": "过拟合"},
        {"en": "more layers and more parameters, so the deeper net overfits. If so, the degraded net would be no "
               "worse on the training set, only on the test set.",
         "zh": "层数越多、参数越多，网络越容易过拟合。若如此，"
               "退化的网络在训练集上应当不比浅的网络差，只在测试集上更差。"},
        ({"en": "Per epoch", "zh": "每个训练轮次"},
         {"en": "the running train accuracy over the epoch's batches in train mode (as the original study), the train "
                "accuracy in eval mode on a fixed subset of the training set, and the test accuracy. The train-test "
                "gap is the train accuracy in eval mode minus the test accuracy. An epoch's batches cover the training "
                "set once; a last batch of a single image is merged into the batch before it (BatchNorm in train mode "
                "cannot normalise one image).",
          "zh": "训练中的准确率（训练模式，对本轮各批次累计，与原始研究相同）；"
                "评估模式下的训练集准确率，在训练集的一个固定子集上测得；测试准确率。"
                "训练与测试之间的差距 = 评估模式下的训练集准确率 − 测试准确率。每个训练轮次的各批次"
                "恰好覆盖训练集一次；若最后一批只剩一张图像，就把它并入前一批（训练模式下的批归一化无法只对一张图像归一化）。"}),
        "h1", ("h1_epochs.csv", "runs.csv")),
    Hypothesis(
        "H2", {"en": "vanishing or exploding gradients", "zh": "梯度消失或爆炸"},
        {"en": "the gradient that reaches the shallow stages is tiny or huge, so those stages cannot be optimised.",
         "zh": "传到浅层阶段的梯度极小或极大，浅层无法被优化。"},
        ({"en": "Per training step", "zh": "每个训练步"},
         {"en": "for every stage, the mean absolute gradient of the loss with respect to the stage's output, "
                "\\( g_s = \\operatorname{mean} |\\partial L / \\partial h_s| \\): a gradient of activations, not of "
                "weights, as in the original study. The values stay on the device and are copied to the host once per "
                "epoch.",
          "zh": "每个阶段上损失对阶段输出的梯度的平均绝对值 "
                "\\( g_s = \\operatorname{mean} |\\partial L / \\partial h_s| \\)。"
                "这是激活值的梯度，不是权重的梯度，与原始研究相同。数值先留在设备上，每个训练轮次只拷回主机一次。"}),
        "h2", ("h2_gradient_steps.csv", "h2_gradient_blocks.csv", "h2_stage_medians.csv")),
    Hypothesis(
        "H3", {"en": "information loss", "zh": "信息丢失"},
        {"en": "deep features have lost the information in the input that is needed to classify, so the classes are "
               "less separable at the deep stages than at the shallow ones.",
         "zh": "深层特征丢失了输入中分类所需的信息，所以深层阶段的类别可分性比浅层更差。"},
        ({"en": "Per stage, after training and at initialisation", "zh": "训练结束后与初始化时的每个阶段"},
         {"en": "separability criteria (table below) on the stage outputs of {probe_images} test images in eval mode; "
                "the same for the untrained net of the same seed (BatchNorm on batch statistics), the control.",
          "zh": "在 {probe_images} 张测试图像上、评估模式下，各阶段输出的可分性判据（见下表）；同一种子的未训练网络"
                "（批归一化使用批次统计量）也测一次，作为对照。"}),
        "h3", ("h3_separability.csv", "h3_separability_init.csv")),
    Hypothesis(
        "H4", {"en": "shattered gradients", "zh": "梯度破碎"},
        {"en": "in a deep plain net the gradient with respect to the input changes almost at random as the input "
               "moves, so a gradient step says little about nearby inputs (Balduzzi et al. 2017). If so, the "
               "degraded net's input gradients would decorrelate faster than the shallower net's.",
         "zh": "深的普通网络中，输入稍有变化，对输入的梯度就几乎随机地改变，一步梯度对附近的输入几乎没有指导意义"
               "（Balduzzi 等人 2017）。若如此，退化的网络的输入梯度应当比浅的网络更快地失去相关性。"},
        ({"en": "At initialisation", "zh": "初始化时"},
         {"en": "the correlation of input gradients at nearby inputs against their distance, and the largest Hessian "
                "eigenvalue of the training loss (the mechanism page says how; `resdeg optim`).",
          "zh": "相邻输入处输入梯度的相关系数随距离的变化，以及训练损失 Hessian 的最大特征值"
                "（方法见机制页；`resdeg optim`）。"}),
        "mechanism", ("optim_init.csv", "optim_training.csv", "optim_gradients.csv"), study_kind="depth"),
    Hypothesis(
        "H5", {"en": "a sharper loss surface", "zh": "更尖锐的损失曲面"},
        {"en": "without skip connections the loss surface is chaotic and sharply curved, so gradient descent at a "
               "usable learning rate is unstable (Li et al. 2018). If so, the degraded net's top Hessian eigenvalue "
               "would be larger than the shallower net's.",
         "zh": "没有跳跃连接时损失曲面混乱且曲率很大，在可用的学习率下梯度下降不稳定（Li 等人 2018）。若如此，"
               "退化的网络的 Hessian 最大特征值应当比浅的网络更大。"},
        ({"en": "At initialisation", "zh": "初始化时"},
         {"en": "as for H4, the same records.", "zh": "与 H4 相同的记录。"}),
        "mechanism", ("optim_init.csv", "optim_training.csv", "optim_slices.csv"), study_kind="depth"),
)
HYPOTHESIS_IDS = tuple(h.id for h in HYPOTHESES)


# The report's pages: site pages once, study pages once per study that has results (in its folder).
SITE_PAGES = (
    Page("index", {"en": "The answer", "zh": "结论"}, before_studies=True),
    Page("method", {"en": "Hypotheses and method", "zh": "假说与方法"}, before_studies=True),
    Page("setup", {"en": "Setup", "zh": "实验设置"}),
    Page("reflection", {"en": "Reflection", "zh": "反思"}),
    Page("reproducibility", {"en": "Reproducibility", "zh": "可复现性"}),
)
PAGES = {p.name: p for p in SITE_PAGES + tuple(Page(h.page, h.title) for h in HYPOTHESES if h.page == h.id.lower()) + (
    Page("mechanism", {"en": "What does explain degradation", "zh": "是什么导致了退化"}),
    Page("signal", {"en": "Signal propagation", "zh": "信号传播"}),
    Page("degradation", {"en": "Degradation with depth", "zh": "随深度的退化"}),
    Page("batchnorm", {"en": "What BatchNorm does", "zh": "批归一化的作用"}),
)}
def measures_optimisation(protocol: str) -> bool:
    """Whether runs of `protocol` measure H4 and H5 while they train: those of a study whose pages
    judge them (He's nets at 32 px: minutes per measurement on a CPU, not hours as at 224 px)."""
    kinds = {h.study_kind for h in HYPOTHESES if h.page == "mechanism"}
    return any(s.protocol == protocol and s.kind in kinds for s in STUDIES)


def _hypothesis_pages(kind: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h.page for h in HYPOTHESES if h.study_kind == kind))


STUDY_PAGES = {"variants": (*_hypothesis_pages("variants"), "signal"),
               "depth": ("degradation", *_hypothesis_pages("depth")),
               "batchnorm": ("batchnorm",)}
