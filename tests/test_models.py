import pytest
import torch
from torch import nn

from resdeg.models import ARCHS, VARIANTS, BasicBlock, Bottleneck, build_model

SMALL = dict(width_mult=0.125, num_classes=10)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_model_and_variant_builds_and_trains_a_step(arch, variant):
    torch.manual_seed(0)
    model = build_model(arch, stem="cifar", **VARIANTS[variant].model_kwargs(), **SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert changed > 0
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == VARIANTS[variant].norm


def test_variant_names_are_case_insensitive():
    from resdeg.study import canonical_variant
    assert [canonical_variant(v) for v in ("full", "NRES", "nbn", "NBoth")] == ["FULL", "Nres", "Nbn", "Nboth"]


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_nres_block_adds_no_shortcut(block):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    plain = block(16, 8, 2, residual=False, norm_layer=nn.BatchNorm2d, bias=True)
    # The original keeps the 1x1 shortcut conv in Nres but never uses it.
    assert isinstance(plain.shortcut, nn.Sequential)
    assert torch.equal(plain(x), torch.relu(plain.branch(x)))
    plain(x).sum().backward()
    assert all(p.grad is None for p in plain.shortcut.parameters())
    full = block(16, 8, 2, residual=True, norm_layer=nn.BatchNorm2d, bias=True)
    full.load_state_dict(plain.state_dict())
    assert torch.allclose(full(x), torch.relu(plain.branch(x) + plain.shortcut(x)))


def test_cifar_plain_net_has_no_shortcut_parameters():
    plain, res = build_model("resnet56", residual=False), build_model("resnet56", residual=True)
    # option A shortcuts carry no parameters: the plain net is the residual net minus the additions
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in res.parameters())
    assert 0.84e6 < sum(p.numel() for p in res.parameters()) < 0.87e6  # He et al.: 0.85M


# STUDY.md §2: stage outputs at 224 px.
EXPECTED_224 = {
    "resnet18": [(64, 56), (64, 56), (128, 28), (256, 14), (512, 7)],
    "resnet50": [(64, 56), (256, 56), (512, 28), (1024, 14), (2048, 7)],
}


@pytest.mark.parametrize("arch", list(EXPECTED_224))
def test_stage_output_shapes_at_224_match_the_study(arch):
    model = build_model(arch).eval()
    with torch.no_grad():
        outs = model.stage_outputs(torch.zeros(1, 3, 224, 224))
    assert list(outs) == [f"stage{i}" for i in range(5)]
    assert [(o.shape[1], o.shape[2]) for o in outs.values()] == EXPECTED_224[arch]
    assert all(o.shape[2] == o.shape[3] for o in outs.values())


def test_seed_architecture_details():
    model = build_model("resnet50")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)  # every conv has a bias
    assert model.stage0[0].kernel_size == (7, 7) and model.stage0[0].stride == (2, 2)
    assert isinstance(model.stage0[3], nn.MaxPool2d)
    first = model.stage2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # stride on the first 1x1
    n18 = sum(p.numel() for p in build_model("resnet18").parameters())
    assert 11.1e6 < n18 < 11.3e6


def test_stage_outputs_end_in_the_logits_input():
    torch.manual_seed(0)
    model = build_model("resnet18", stem="cifar", **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = list(model.stage_outputs(x).values())[-1]
        logits = model.fc(last.mean((2, 3)))
        assert torch.allclose(logits, model(x), atol=1e-6)
