"""One parametrised ResNet builder: variants are arguments (residual, norm, init), not classes.

Two families share the blocks:
- ImageNet-style ResNet18/34/50/101/152 (stem "imagenet": 7x7/2 conv + max-pool, as the
  original study at 224 px; stem "cifar": 3x3/1 conv, no pool, for 32 px input);
- He et al. (2016) CIFAR nets resnet20/32/44/56/110: 3x3 stem, widths 16/32/64, option-A
  (parameter-free) shortcuts, so that their Nres form is exactly the paper's plain net.
Stages are named stage0 (the stem) .. stageN; `stage_outputs` returns each one's output.

Initialisations (`init`), for residual nets without normalisation only:
- "default": PyTorch's initialisation of every layer.
- "fixup" (Zhang et al. 2019, rules 1-3 of §3; facts checked against the authors' code,
  hongyi-zhang/Fixup): He-normal init (fan_out, as the authors' code) of every conv (rule 1's
  "standard method"; the authors' CIFAR code leaves the stem conv at PyTorch's default); inside each
  residual branch the last conv is zero and the others are scaled by L^(-1/(2m-2)) (L residual
  branches, m convs per branch); the classifier is zero. A learnable scalar bias (init 0) comes
  before every conv, activation and the classifier, and a learnable scalar multiplier `scale`
  (init 1) ends every branch (before its last bias). Convs have no bias of their own (the
  scalar biases replace them, whatever `conv_bias` says). A downsampling shortcut (option A pad,
  or the 1x1 projection of the ImageNet-style nets) sees the branch's biased input x + bias1a.
- "skipinit" (De & Smith 2020, §5): the net of "default" (Nbn) plus one learnable scalar alpha,
  `scale`, initialised at 0, multiplying the end of every residual branch before the add. De &
  Smith's extra biases and dropout (their ImageNet runs) are left out: this is the minimal form,
  so that SkipInit differs from Nbn by alpha alone.
Either makes every residual branch output exactly zero at initialisation: the net starts as
its shortcut path.

The base initialisation of the weights (`weight_init`) is a protocol's choice:
- "pytorch": PyTorch's defaults (convs at variance 1/(3 fan_in)), as the original study ran;
- "he": He et al.'s (2015, "Delving deep into rectifiers") normal init of every conv, variance
  2/fan_out as torchvision's ResNet, which He et al.'s CIFAR recipe uses. Without BatchNorm it
  keeps the signal's scale through depth, where PyTorch's default shrinks it by about 0.4 per
  conv + ReLU (its second moment by 6).
Fixup starts from "he" whatever `weight_init` says (its rule 1).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ResdegError
from .study import ARCHS, VARIANTS, WEIGHT_INITS  # architectures, variants, weight inits: declared in study.py

INITS = ("default", "fixup", "skipinit")


NormLayer = Callable[[int], nn.Module]


def _norm_layer(norm: bool) -> NormLayer:
    # Nbn/Nboth: every BatchNorm (stem, blocks, shortcut) becomes an identity.
    return nn.BatchNorm2d if norm else (lambda channels: nn.Identity())


class ScalarBias(nn.Module):
    """Fixup's scalar bias: one learnable number (init 0) added to the whole input."""

    def __init__(self):
        super().__init__()
        # 0-dim, so that under bf16 autocast a bf16 activation plus it stays bf16.
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.bias


class ScalarScale(nn.Module):
    """One learnable number multiplying a residual branch: Fixup's scale (init 1), SkipInit's alpha (init 0)."""

    def __init__(self, value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.weight


def _scalar_biases(init: str, n: int) -> list[nn.Module]:
    # Identities otherwise: no parameters, so default nets keep their state_dict keys.
    return [ScalarBias() if init == "fixup" else nn.Identity() for _ in range(n)]


def _branch_scale(init: str) -> nn.Module:
    if init == "fixup":
        return ScalarScale(1.0)  # the branch itself starts at zero (last conv zero)
    if init == "skipinit":
        return ScalarScale(0.0)  # alpha = 0: the branch starts at zero
    return nn.Identity()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, residual: bool, norm_layer: NormLayer,
                 bias: bool, shortcut: str = "conv", init: str = "default"):
        super().__init__()
        out_ch = width * self.expansion
        self.residual = residual
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=bias)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=bias)
        self.bn2 = norm_layer(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm_layer, bias, shortcut)
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = _scalar_biases(init, 4)
        self.scale = _branch_scale(init)

    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def branch(self, x):
        out = F.relu(self.bias1b(self.bn1(self.conv1(self.bias1a(x)))))
        out = self.bn2(self.conv2(self.bias2a(out)))
        return self.bias2b(self.scale(out))

    def forward(self, x):
        out = self.branch(x)
        if not self.residual:
            # Nres: relu(F(x)); the shortcut module still exists (as in the original) but is unused.
            return F.relu(out)
        # Fixup's authors feed a downsampling shortcut the biased input x + bias1a (else identity).
        return F.relu(out + self.shortcut(x if isinstance(self.shortcut, nn.Identity) else self.bias1a(x)))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, residual: bool, norm_layer: NormLayer,
                 bias: bool, shortcut: str = "conv", init: str = "default"):
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
        (self.bias1a, self.bias1b, self.bias2a, self.bias2b,
         self.bias3a, self.bias3b) = _scalar_biases(init, 6)
        self.scale = _branch_scale(init)

    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def branch(self, x):
        out = F.relu(self.bias1b(self.bn1(self.conv1(self.bias1a(x)))))
        out = F.relu(self.bias2b(self.bn2(self.conv2(self.bias2a(out)))))
        return self.bias3b(self.scale(self.bn3(self.conv3(self.bias3a(out)))))


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


class InputBiasedLinear(nn.Linear):
    """Fixup's classifier: a linear layer whose input first gets a learnable scalar bias (init 0)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.input_bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return super().forward(x + self.input_bias)


class ResNet(nn.Module):
    """Stages stage0..stageN then global average pool and a linear head (`fc`)."""

    def __init__(self, stages: list[nn.Module], features: int, num_classes: int, head_bias: bool = False):
        super().__init__()
        self.stage_names = [f"stage{i}" for i in range(len(stages))]
        for name, stage in zip(self.stage_names, stages, strict=True):
            self.add_module(name, stage)
        self.fc = InputBiasedLinear(features, num_classes) if head_bias else nn.Linear(features, num_classes)

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Every residual block as ("stageI.J", block), in forward order."""
        return [(f"{name}.{j}", block) for name, stage in self.stages()
                for j, block in stage.named_children() if isinstance(block, BasicBlock)]

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
                init: str = "default", weight_init: str = "pytorch") -> ResNet:
    """Build any architecture of ARCHS in any variant and initialisation (see the module's doc)."""
    if init not in INITS:
        raise ResdegError(f"unknown initialisation {init!r}; choose one of {', '.join(INITS)}")
    if weight_init not in WEIGHT_INITS:
        raise ResdegError(f"unknown weight initialisation {weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}")
    if init != "default" and (norm or not residual):
        # Both are defined for residual nets without normalisation: on a plain net a zero branch
        # is a dead net.
        raise ResdegError(f"initialisation {init!r} needs a residual net without normalisation "
                          f"(got residual={residual}, norm={norm})")
    kind, layers = ARCHS[arch]
    norm_layer = _norm_layer(norm)
    fixup = init == "fixup"
    conv_bias = conv_bias and not fixup  # Fixup: scalar biases instead of per-channel conv biases
    cifar_family = kind == "cifar_basic"
    base = max(4, round((16 if cifar_family else 64) * width_mult))
    stem_norm = ScalarBias() if fixup else norm_layer(base)  # Fixup: relu(conv(x) + bias)
    if cifar_family or stem == "cifar":
        stem_layers = [nn.Conv2d(3, base, 3, 1, 1, bias=conv_bias), stem_norm, nn.ReLU()]
    else:
        stem_layers = [nn.Conv2d(3, base, 7, 2, 3, bias=conv_bias), stem_norm, nn.ReLU(),
                       nn.MaxPool2d(3, 2, 1)]
    block = Bottleneck if kind == "bottleneck" else BasicBlock
    shortcut = "pad" if cifar_family else "conv"
    stages, in_ch = [nn.Sequential(*stem_layers)], base
    for i, n_blocks in enumerate(layers):
        width = base * 2 ** i
        blocks = []
        for j in range(n_blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(block(in_ch, width, stride, residual, norm_layer, conv_bias, shortcut, init))
            in_ch = width * block.expansion
        stages.append(nn.Sequential(*blocks))
    net = ResNet(stages, in_ch, num_classes, head_bias=fixup)
    if weight_init == "he" or fixup:
        _init_he(net)
    if fixup:
        _init_fixup(net)
    return net


def fixup_factor(n_branches: int, layers_per_branch: int) -> float:
    """Fixup's scale of the non-final branch layers, L^(-1/(2m-2)) (Zhang et al. 2019, §3, rule 2)."""
    return n_branches ** (-1.0 / (2 * layers_per_branch - 2))


@torch.no_grad()
def _init_he(net: ResNet) -> None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@torch.no_grad()
def _init_fixup(net: ResNet) -> None:
    # Rule 1's "standard method" is _init_he (fan_out, as the authors' code); the stem and the
    # projection shortcuts keep it unscaled.
    blocks = [block for _, block in net.blocks()]
    for block in blocks:
        convs = block.branch_convs()
        factor = fixup_factor(len(blocks), len(convs))
        for conv in convs[:-1]:
            conv.weight.mul_(factor)
        nn.init.zeros_(convs[-1].weight)  # rule 1: the last layer of every branch starts at 0
    nn.init.zeros_(net.fc.weight)  # rule 1: and so does the classifier
    nn.init.zeros_(net.fc.bias)


def model_from_config(cfg, num_classes: int) -> ResNet:
    return build_model(cfg.model, stem=cfg.stem, num_classes=num_classes, width_mult=cfg.width_mult,
                       conv_bias=cfg.conv_bias, weight_init=cfg.weight_init, **VARIANTS[cfg.variant].model_kwargs())
