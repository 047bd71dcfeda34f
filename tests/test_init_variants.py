"""Fixup (Zhang et al. 2019) and SkipInit (De & Smith 2020): declared once, initialised as their
papers say (every residual branch zero at init, Fixup's L^(-1/(2m-2)) rule, zero classifier),
and trainable through the same engine as every other variant."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resdeg.config import make_config
from resdeg.data import synthetic_dataset
from resdeg.errors import ResdegError
from resdeg.models import BasicBlock, InputBiasedLinear, ScalarBias, ScalarScale, build_model, fixup_factor
from resdeg.study import VARIANTS, canonical_variant
from resdeg.train import Engine

NEW = ("Fixup", "SkipInit")
# He CIFAR nets at full width (their Fixup scale depends on depth only); ImageNet-style nets narrow.
NETS = {"resnet20": {}, "resnet56": {}, "resnet18": dict(stem="cifar", width_mult=0.25),
        "resnet50": dict(stem="cifar", width_mult=0.25)}


def _build(arch, variant, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(arch, **NETS.get(arch, {}), **kw, **VARIANTS[variant].model_kwargs())


def test_variants_are_declared_once_with_their_properties():
    assert (VARIANTS["Fixup"].residual, VARIANTS["Fixup"].norm, VARIANTS["Fixup"].init) == (True, False, "fixup")
    assert (VARIANTS["SkipInit"].residual, VARIANTS["SkipInit"].norm, VARIANTS["SkipInit"].init) == \
        (True, False, "skipinit")
    assert [canonical_variant(v) for v in ("fixup", "SKIPINIT")] == ["Fixup", "SkipInit"]


@pytest.mark.parametrize("arch", list(NETS))
@pytest.mark.parametrize("variant", NEW)
def test_every_branch_is_exactly_zero_at_init_so_the_net_is_its_shortcut_path(arch, variant):
    model = _build(arch, variant).eval()
    blocks = model.blocks()
    assert len(blocks) == {"resnet20": 9, "resnet56": 27, "resnet18": 8, "resnet50": 16}[arch]
    seen = []

    def check(block, inputs, output):
        x = inputs[0]
        assert torch.equal(block.branch(x), torch.zeros_like(output))
        assert torch.equal(output, F.relu(block.shortcut(x)))  # bias1a is 0: shortcut(x + 0)
        seen.append(block)

    handles = [b.register_forward_hook(check) for _, b in blocks]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = list(model.stage_outputs(x).values())[-1]
        # The shortcut path alone: the stem, then relu(shortcut(.)) through every block.
        h = model.stage0(x)
        for _, block in blocks:
            h = F.relu(block.shortcut(h))
    for handle in handles:
        handle.remove()
    assert len(seen) == len(blocks)
    assert torch.equal(features, h)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "resnet50"])
def test_fixup_scalar_biases_sit_where_the_authors_put_them(arch):
    model = _build(arch, "Fixup").eval()
    for p in model.parameters():
        if p.dim() == 0:  # every scalar bias and scale, set to 0.5 to make them visible
            p.data.fill_(0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.stage0(x), F.relu(model.stage0[0](x) + 0.5))
        blocks = model.blocks()
        first_downsampling = next(i for i, (_, b) in enumerate(blocks) if not isinstance(b.shortcut, nn.Identity))
        for _, block in blocks[:first_downsampling + 1]:
            h = torch.rand(2, block.conv1.in_channels, 8, 8)
            # a bias before every conv and activation, the scale then a bias after the last conv
            *inner, last = block.branch_convs()
            out = h
            for conv in inner:
                out = F.relu(conv(out + 0.5) + 0.5)
            assert torch.allclose(block.branch(h), 0.5 * last(out + 0.5) + 0.5, atol=1e-6)
            # x + bias1a feeds a downsampling shortcut only; the identity path stays x
            skip = h if isinstance(block.shortcut, nn.Identity) else block.shortcut(h + 0.5)
            assert torch.allclose(block(h), F.relu(block.branch(h) + skip), atol=1e-6)
        pooled = torch.randn(2, model.fc.in_features)
        assert torch.allclose(model.fc(pooled), F.linear(pooled + 0.5, model.fc.weight, model.fc.bias))


def _he_std(conv: nn.Conv2d) -> float:
    # He et al. 2015 for ReLU with fan_out, as the Fixup authors' code initialises
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


@pytest.mark.parametrize("arch, n_branches, per_branch", [("resnet20", 9, 2), ("resnet56", 27, 2),
                                                            ("resnet18", 8, 2), ("resnet50", 16, 3)])
def test_fixup_scales_the_branch_layers_by_its_rule(arch, n_branches, per_branch):
    model = _build(arch, "Fixup")
    factor = fixup_factor(n_branches, per_branch)
    assert factor == pytest.approx(n_branches ** (-1 / (2 * per_branch - 2)))
    ratios = []
    for _, block in model.blocks():
        *scaled, last = block.branch_convs()
        assert len(scaled) == per_branch - 1
        assert torch.count_nonzero(last.weight) == 0
        for conv in scaled:
            ratios.append(conv.weight.std().item() / (_he_std(conv) * factor))
            assert abs(conv.weight.mean().item()) < 0.3 * _he_std(conv) * factor  # centred normal
    # Each std within sampling noise of the rule; their mean within 2% (hundreds of thousands of weights).
    assert all(0.8 < r < 1.2 for r in ratios), ratios
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.02)
    # Outside the branches (stem, 1x1 projection shortcuts): He init, unscaled.
    others = [m for m in model.modules() if isinstance(m, nn.Conv2d)
              and not any(m is c for _, b in model.blocks() for c in b.branch_convs())]
    assert others and all(0.8 < c.weight.std().item() / _he_std(c) < 1.2 for c in others)


def test_fixup_rule_separates_depths():
    # resnet56's branch layers start 3x smaller in variance than resnet20's: (27/9)^(1/2) in std.
    std = {a: _build(a, "Fixup").stage1[1].conv1.weight.std().item() for a in ("resnet20", "resnet56")}
    assert std["resnet20"] / std["resnet56"] == pytest.approx(3 ** 0.5, rel=0.1)


@pytest.mark.parametrize("arch", list(NETS))
def test_fixup_classifier_is_zero_and_scalars_are_in_place(arch):
    model = _build(arch, "Fixup", conv_bias=True)  # Fixup's convs have no bias, whatever conv_bias says
    assert isinstance(model.fc, InputBiasedLinear)
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    assert torch.equal(model(torch.randn(2, 3, 32, 32)), torch.zeros(2, 10))
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(model.stage0[1], ScalarBias)  # relu(conv(x) + bias) in the stem
    for _, block in model.blocks():
        biases = [m for m in block.children() if isinstance(m, ScalarBias)]
        assert len(biases) == 2 * len(block.branch_convs())  # one before and one after each conv
        assert all(b.bias.item() == 0 for b in biases)
        assert isinstance(block.scale, ScalarScale) and block.scale.weight.item() == 1.0


@pytest.mark.parametrize("arch", list(NETS))
def test_skipinit_is_nbn_plus_a_zero_alpha_per_branch(arch):
    model, nbn = _build(arch, "SkipInit", conv_bias=True), _build(arch, "Nbn", conv_bias=True)
    alphas = [block.scale for _, block in model.blocks()]
    assert all(isinstance(a, ScalarScale) and a.weight.item() == 0.0 for a in alphas)
    assert not any(isinstance(m, ScalarBias) for m in model.modules())
    # Same seed, same layers: exactly Nbn's parameters plus one alpha per block.
    params = dict(model.named_parameters())
    extra = {name for name in params if name.endswith("scale.weight")}
    assert len(extra) == len(alphas)
    assert set(params) - extra == set(dict(nbn.named_parameters()))
    assert all(torch.equal(params[k], v) for k, v in nbn.named_parameters())
    assert torch.count_nonzero(model.fc.weight) > 0  # PyTorch's default classifier, not zero


@pytest.mark.parametrize("arch", list(NETS))
@pytest.mark.parametrize("variant", NEW)
def test_no_normalisation_anywhere(arch, variant):
    model = _build(arch, variant)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
                   for m in model.modules())


def test_default_variants_keep_their_parameters():
    # Checkpoints of FULL/Nres/Nbn/Nboth runs must keep loading: no new state in default nets.
    for variant in ("FULL", "Nres", "Nbn", "Nboth"):
        keys = build_model("resnet18", stem="cifar", width_mult=0.125, **VARIANTS[variant].model_kwargs()).state_dict()
        assert not any("scale" in k or "bias1a" in k or "input_bias" in k for k in keys)
    assert type(build_model("resnet20").fc) is nn.Linear


def _sgd_steps(model, steps, lr=0.1):
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        losses.append(loss.item())
    return losses, grads


def test_fixup_first_step_moves_only_the_classifier_then_the_branches_learn():
    model = _build("resnet20", "Fixup")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, grads = _sgd_steps(model, 3)
    assert all(math.isfinite(v) for v in losses) and losses[0] == pytest.approx(math.log(10))
    # Step 1: every logit is 0 and the classifier is 0, so only the classifier has a gradient.
    moved_first = {n for n, g in grads[0].items() if torch.count_nonzero(g) > 0}
    assert moved_first == {"fc.weight", "fc.bias"}
    # By step 3 every branch multiplier gets a gradient (the last conv moved at step 2).
    for name, _ in model.blocks():
        assert torch.count_nonzero(grads[2][f"{name}.scale.weight"]) == 1, name
        assert torch.count_nonzero(grads[1][f"{name}.conv2.weight"]) > 0, name
    after = dict(model.named_parameters())
    assert sum(not torch.equal(before[n], after[n]) for n in before) > len(model.blocks())


def test_skipinit_every_alpha_gets_a_gradient_at_the_first_step():
    model = _build("resnet20", "SkipInit")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, grads = _sgd_steps(model, 2)
    assert all(math.isfinite(v) for v in losses)
    for name, block in model.blocks():
        assert torch.count_nonzero(grads[0][f"{name}.scale.weight"]) == 1, name
        assert torch.count_nonzero(grads[0][f"{name}.conv1.weight"]) == 0, name  # alpha = 0 blocks it
        assert block.scale.weight.item() != 0.0
    after = dict(model.named_parameters())
    assert sum(not torch.equal(before[n], after[n]) for n in before) > len(model.blocks())


@pytest.mark.parametrize("variant", NEW)
def test_variants_train_through_config_and_trainer(variant, tmp_path):
    cfg = make_config("depth", {"train_images": 32, "test_images": 16, "eval_train_images": 16,
                                "batch_size": 16, "precision": "fp32"},
                      model="resnet20", variant=variant.lower(), dataset="synthetic")
    assert cfg.variant == variant
    trainer = Engine(cfg, synthetic_dataset(32, 16), torch.device("cpu"))
    assert any(isinstance(m, ScalarScale) for m in trainer.model.modules())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss, logits = trainer.train_step(trainer.train_x[:16], trainer.train_y[:16])
    assert math.isfinite(loss.item()) and logits.shape == (16, 10)
    assert sum(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters(), strict=True)) > 0


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(init="fixup", residual=False, norm=False), "needs a residual net without normalisation"),
    (dict(init="skipinit", residual=True, norm=True), "needs a residual net without normalisation"),
    (dict(init="lsuv"), "unknown initialisation 'lsuv'"),
])
def test_impossible_initialisations_are_one_line_errors(kwargs, fragment):
    with pytest.raises(ResdegError, match=fragment) as err:
        build_model("resnet20", **kwargs)
    assert "\n" not in str(err.value)


def test_branch_scalars_are_zero_dim_so_bf16_activations_stay_bf16():
    block = BasicBlock(8, 8, 1, True, lambda c: nn.Identity(), False, "pad", "fixup")
    assert all(p.dim() == 0 for n, p in block.named_parameters() if not n.startswith("conv"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 activation, as after a bf16 stem
        assert block(torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
