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
)}


def canonical_variant(name: str) -> str:
    """The declared spelling of a variant name given in any case; a one-line error if unknown."""
    for v in VARIANTS:
        if v.lower() == name.strip().lower():
            return v
    from .errors import ResdegError
    raise ResdegError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")


@dataclass(frozen=True)
class Study:
    name: str
    protocol: str
    models: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...] = (42,)


ORIGINAL_MODELS = ("resnet18", "resnet50")
ABLATION_VARIANTS = ("FULL", "Nres", "Nbn", "Nboth")
DEPTH_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56")

STUDIES: dict[str, Study] = {s.protocol: s for s in (
    Study("original", "seed", ORIGINAL_MODELS, ABLATION_VARIANTS),
    Study("native", "native", ORIGINAL_MODELS, ABLATION_VARIANTS),
    Study("depth", "depth", DEPTH_MODELS, ("FULL", "Nres")),
    Study("cifar", "cifar", ORIGINAL_MODELS, ABLATION_VARIANTS),
    Study("smoke", "smoke", ORIGINAL_MODELS, ABLATION_VARIANTS),
)}


def study_of(protocol: str) -> Study:
    return STUDIES[protocol]
