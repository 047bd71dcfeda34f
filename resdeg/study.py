"""What the study is, declared once: the variants and their properties, and each study's
protocol and grid (models x variants x seeds).

Everything downstream (model builder, CLI, report) reads these records; none re-derives a
variant's properties from its name. Import-light on purpose: no torch here.
"""
from __future__ import annotations

from dataclasses import dataclass


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


def canonical_variant(name: str) -> str:
    """The declared spelling of a variant name given in any case; a one-line error if unknown."""
    for v in VARIANTS:
        if v.lower() == name.strip().lower():
            return v
    from .errors import ResdegError
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
    pairs = list(zip(models, models[1:]))
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


# The report's pages: site pages once, study pages once per study that has results (in its folder).
SITE_PAGES = (
    Page("index", {"en": "The answer", "zh": "结论"}),
    Page("method", {"en": "Hypotheses and method", "zh": "假说与方法"}),
    Page("setup", {"en": "Setup", "zh": "实验设置"}),
    Page("reflection", {"en": "Reflection", "zh": "反思"}),
    Page("reproducibility", {"en": "Reproducibility", "zh": "可复现性"}),
)
PAGES = {p.name: p for p in SITE_PAGES + (
    Page("h1", {"en": "H1: overfitting", "zh": "H1：过拟合"}),
    Page("h2", {"en": "H2: vanishing or exploding gradients", "zh": "H2：梯度消失或爆炸"}),
    Page("h3", {"en": "H3: information loss", "zh": "H3：信息丢失"}),
    Page("signal", {"en": "Signal propagation", "zh": "信号传播"}),
    Page("degradation", {"en": "Degradation with depth", "zh": "随深度的退化"}),
    Page("batchnorm", {"en": "What BatchNorm does", "zh": "批归一化的作用"}),
)}
STUDY_PAGES = {"variants": ("h1", "h2", "h3", "signal"), "depth": ("degradation",), "batchnorm": ("batchnorm",)}
