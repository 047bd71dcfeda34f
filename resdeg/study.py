"""What the study is, declared once: each study's protocol and grid (models x variants x seeds).

Everything that needs a default grid (the CLI's run-all, the report) reads it from here.
"""
from __future__ import annotations

from dataclasses import dataclass


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
