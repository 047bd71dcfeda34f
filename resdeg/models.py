"""One parametrised ResNet builder: variants are arguments (residual, norm), not classes.

Two families share the blocks:
- ImageNet-style ResNet18/34/50/101/152 (stem "imagenet": 7x7/2 conv + max-pool, as the
  original study at 224 px; stem "cifar": 3x3/1 conv, no pool, for 32 px input);
- He et al. (2016) CIFAR nets resnet20/32/44/56/110: 3x3 stem, widths 16/32/64, option-A
  (parameter-free) shortcuts, so that their Nres form is exactly the paper's plain net.
Stages are named stage0 (the stem) .. stageN; `stage_outputs` returns each one's output.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# name -> (block, blocks per stage). Variants as data, after timm.
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
from .study import VARIANTS, canonical_variant  # noqa: F401  (variants are declared in study.py)


NormLayer = Callable[[int], nn.Module]


def _norm_layer(norm: bool) -> NormLayer:
    # Nbn/Nboth: every BatchNorm (stem, blocks, shortcut) becomes an identity.
    return nn.BatchNorm2d if norm else (lambda channels: nn.Identity())


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, residual: bool, norm_layer: NormLayer,
                 bias: bool, shortcut: str = "conv"):
        super().__init__()
        out_ch = width * self.expansion
        self.residual = residual
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=bias)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=bias)
        self.bn2 = norm_layer(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm_layer, bias, shortcut)

    def branch(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        out = self.branch(x)
        # Nres: relu(F(x)); the shortcut module still exists (as in the original) but is unused.
        return F.relu(out + self.shortcut(x) if self.residual else out)


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, residual: bool, norm_layer: NormLayer,
                 bias: bool, shortcut: str = "conv"):
        nn.Module.__init__(self)
        out_ch = width * self.expansion
        self.residual = residual
        # The original (torchvision v1) puts the stride on the first 1x1 conv.
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride, 0, bias=bias)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=bias)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, 1, 0, bias=bias)
        self.bn3 = norm_layer(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm_layer, bias, shortcut)

    def branch(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class PadShortcut(nn.Module):
    """He et al.'s option A: subsample and zero-pad channels; no parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def _shortcut(in_ch, out_ch, stride, norm_layer, bias, kind) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=bias), norm_layer(out_ch))


class ResNet(nn.Module):
    """Stages stage0..stageN then global average pool and a linear head."""

    def __init__(self, stages: list[nn.Module], features: int, num_classes: int):
        super().__init__()
        self.stage_names = [f"stage{i}" for i in range(len(stages))]
        for name, stage in zip(self.stage_names, stages):
            self.add_module(name, stage)
        self.fc = nn.Linear(features, num_classes)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(self, name)) for name in self.stage_names]

    def stage_outputs(self, x) -> dict[str, torch.Tensor]:
        """Every stage's output, in order (the input to the probes)."""
        outputs = {}
        for name, stage in self.stages():
            x = stage(x)
            outputs[name] = x
        return outputs

    def forward(self, x):
        for _, stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(arch: str, residual: bool = True, norm: bool = True, stem: str = "imagenet",
                num_classes: int = 10, width_mult: float = 1.0, conv_bias: bool = True,
                init: str = "default") -> ResNet:
    """Build any architecture of ARCHS in any variant, with PyTorch's default initialisation."""
    if init != "default":
        raise ValueError(f"initialisation {init!r} is not implemented")
    kind, layers = ARCHS[arch]
    norm_layer = _norm_layer(norm)
    cifar_family = kind == "cifar_basic"
    base = max(4, round((16 if cifar_family else 64) * width_mult))
    if cifar_family or stem == "cifar":
        stem_layers = [nn.Conv2d(3, base, 3, 1, 1, bias=conv_bias), norm_layer(base), nn.ReLU()]
    else:
        stem_layers = [nn.Conv2d(3, base, 7, 2, 3, bias=conv_bias), norm_layer(base), nn.ReLU(),
                       nn.MaxPool2d(3, 2, 1)]
    block = Bottleneck if kind == "bottleneck" else BasicBlock
    shortcut = "pad" if cifar_family else "conv"
    stages, in_ch = [nn.Sequential(*stem_layers)], base
    for i, n_blocks in enumerate(layers):
        width = base * 2 ** i
        blocks = []
        for j in range(n_blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(block(in_ch, width, stride, residual, norm_layer, conv_bias, shortcut))
            in_ch = width * block.expansion
        stages.append(nn.Sequential(*blocks))
    return ResNet(stages, in_ch, num_classes)


def model_from_config(cfg, num_classes: int) -> ResNet:
    return build_model(cfg.model, stem=cfg.stem, num_classes=num_classes, width_mult=cfg.width_mult,
                       conv_bias=cfg.conv_bias, **VARIANTS[cfg.variant].model_kwargs())
