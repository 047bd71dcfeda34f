"""Signal propagation (resdeg/probes/signal.py): closed forms, effective rank, and what BatchNorm,
Fixup and SkipInit predict for a deep ResNet at initialisation."""
import copy
import math

import pytest
import torch
from torch import nn

from resdeg.models import VARIANTS, BasicBlock, ResNet, build_model
from resdeg.probes.signal import block_signal, centred_gram, channel_statistics, effective_rank

IDENTITY_NORM = lambda channels: nn.Identity()  # noqa: E731


def _known_moments(mean, var, n=4, hw=4):
    """(n, C, hw, hw) activations whose channel c has mean mean[c] and variance var[c] exactly:
    mean + sqrt(var) * a +-1 pattern with zero mean and unit variance."""
    sign = torch.tensor([1.0, -1.0]).repeat(n * hw * hw // 2).reshape(n, 1, hw, hw).double()
    mean, var = torch.tensor(mean).double(), torch.tensor(var).double()
    return mean.view(1, -1, 1, 1) + var.sqrt().view(1, -1, 1, 1) * sign


def test_channel_statistics_closed_form():
    x = _known_moments([1.0, -2.0, 3.0], [0.25, 4.0, 1.0])
    sq_mean, var = channel_statistics(x)
    assert sq_mean == pytest.approx((1 + 4 + 9) / 3, rel=1e-12)
    assert var == pytest.approx((0.25 + 4 + 1) / 3, rel=1e-12)
    # float64 inside: a large mean does not swamp a small variance (float32 input, exact values;
    # in float32, E[x^2] - E[x]^2 would lose the 2^-12 against 2^20 entirely)
    sq_mean, var = channel_statistics(_known_moments([1024.0], [2.0 ** -12]).float())
    assert var == pytest.approx(2.0 ** -12, rel=1e-9) and sq_mean == pytest.approx(2.0 ** 20, rel=1e-12)
    assert channel_statistics(torch.full((2, 1, 2, 2), math.inf))[1] is None


def _toy_resnet(alphas, channels=3):
    """A ResNet of one stage of SkipInit blocks whose branch is relu(x) for positive x (dirac
    convs, no bias): block i outputs relu(x + alpha_i * relu(x))."""
    blocks = []
    for alpha in alphas:
        block = BasicBlock(channels, channels, 1, True, IDENTITY_NORM, False, "pad", "skipinit")
        nn.init.dirac_(block.conv1.weight)
        nn.init.dirac_(block.conv2.weight)
        block.scale.weight.data.fill_(alpha)
        blocks.append(block)
    return ResNet([nn.Identity(), nn.Sequential(*blocks)], channels, 2)


def test_identity_like_blocks_propagate_known_moments_exactly():
    mean, var = [5.0, 6.0, 7.0], [1.0, 4.0, 0.25]  # positive everywhere: relu is the identity
    x = _known_moments(mean, var).float()
    alphas = [0.0, 1.0, 0.5]
    out = block_signal(_toy_resnet(alphas), x)
    blocks = out["blocks"]
    assert [(b["name"], b["stage"], b["index"], b["position"]) for b in blocks] == \
        [("stage1.0", "stage1", 0, 0), ("stage1.1", "stage1", 1, 1), ("stage1.2", "stage1", 2, 2)]
    gain = 1.0  # each block multiplies its input by (1 + alpha); its branch is alpha * input
    for b, alpha in zip(blocks, alphas, strict=True):
        branch_gain, gain = gain * alpha, gain * (1 + alpha)
        assert b["avg_channel_squared_mean"] == pytest.approx(gain ** 2 * sum(m * m for m in mean) / 3, rel=1e-6)
        assert b["avg_channel_variance"] == pytest.approx(gain ** 2 * sum(var) / 3, rel=1e-6)
        assert b["branch_variance"] == pytest.approx(branch_gain ** 2 * sum(var) / 3, rel=1e-6, abs=0)
        assert b["residual"] is True
    assert [s["name"] for s in out["stages"]] == ["stage0", "stage1"]


def test_a_plain_blocks_branch_variance_is_its_pre_activation_variance():
    block = BasicBlock(2, 2, 1, False, IDENTITY_NORM, False, "pad")
    nn.init.dirac_(block.conv1.weight)
    nn.init.dirac_(block.conv2.weight)
    with torch.no_grad():
        block.conv2.weight.mul_(-1.0)  # branch = -relu(x): negative, so the block outputs 0
    x = _known_moments([3.0, 4.0], [1.0, 1.0]).float()
    (b,) = block_signal(ResNet([nn.Identity(), nn.Sequential(block)], 2, 2), x)["blocks"]
    assert b["residual"] is False
    assert b["avg_channel_variance"] == 0.0 and b["avg_channel_squared_mean"] == 0.0
    assert b["branch_variance"] == pytest.approx(1.0, rel=1e-6)


def test_effective_rank_of_equal_singular_values_is_the_rank():
    torch.manual_seed(0)
    n, d, k = 40, 300, 7
    u, _ = torch.linalg.qr(torch.randn(n, k, dtype=torch.float64))
    u = u - u.mean(0)  # centred columns, re-orthonormalised: centring leaves them alone
    u, _ = torch.linalg.qr(u)
    v, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64))
    assert effective_rank(u @ v.T) == pytest.approx(k, rel=1e-9)


def test_effective_rank_bounds_of_a_rank_k_matrix_and_of_isotropic_noise():
    torch.manual_seed(0)
    n, d, k = 60, 400, 5
    low = torch.randn(n, k) @ torch.randn(k, d)
    assert 1.0 < effective_rank(low) <= k + 1e-9
    noise = torch.randn(n, 50 * n)
    assert 0.95 * (n - 1) < effective_rank(noise) <= n - 1 + 1e-9  # centring removes one dimension
    one_direction = torch.randn(n, 1) * torch.randn(1, d)
    assert effective_rank(one_direction) == pytest.approx(1.0, rel=1e-9)
    assert effective_rank(torch.zeros(n, d)) == 0.0
    assert effective_rank(torch.full((n, d), math.nan)) is None


def test_effective_rank_is_scale_invariant_and_matches_the_svd():
    torch.manual_seed(1)
    x = torch.randn(30, 4, 5, 5) * torch.linspace(0.1, 3, 100).view(1, 4, 5, 5)
    ref = effective_rank(x)
    for c in (1e-3, 7.0, -2.0):
        assert effective_rank(c * x) == pytest.approx(ref, rel=1e-9)
    flat = x.flatten(1).double()
    s = torch.linalg.svdvals(flat - flat.mean(0))
    s = s[s > s.max() * 1e-12]
    p = s / s.sum()
    assert ref == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-9)


def test_gram_is_n_by_n_even_for_very_wide_features():
    # d = 3,000,000: a d x d matrix could never be formed (72 TB); the Gram is 4 x 4.
    x = torch.zeros(4, 3_000_000)
    x[0, 0], x[1, 0], x[2, 7], x[3, 7] = 1.0, -1.0, 2.0, -2.0  # centred already
    gram = centred_gram(x)
    assert gram.shape == (4, 4) and gram.dtype == torch.float64
    assert torch.equal(gram.diagonal(), torch.tensor([1.0, 1.0, 4.0, 4.0], dtype=torch.float64))
    # singular values sqrt(2) and 2 sqrt(2): p = (1/3, 2/3)
    assert effective_rank(x) == pytest.approx(math.exp(-(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3)), rel=1e-9)
    assert effective_rank(x * torch.tensor([1.0, 1.0, 0.5, 0.5]).view(4, 1)) == pytest.approx(2.0, rel=1e-9)


def _resnet56_signal(variant):
    torch.manual_seed(0)
    model = build_model("resnet56", **VARIANTS[variant].model_kwargs())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = block_signal(model, x)
    # Measuring never changes the model (BatchNorm's running statistics included) or its mode.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    return out


def _stage_runs(blocks):
    by_stage = {}
    for b in blocks:
        by_stage.setdefault(b["stage"], []).append(b)
    return list(by_stage.values())


def test_batchnorm_resnet56_at_init_grows_variance_linearly_within_each_stage():
    blocks = _resnet56_signal("FULL")["blocks"]
    assert len(blocks) == 27
    # BatchNorm ends every branch, on batch statistics: each channel has variance ~1.
    assert all(b["branch_variance"] == pytest.approx(1.0, abs=1e-3) for b in blocks)
    for run in _stage_runs(blocks):
        var = torch.tensor([b["avg_channel_variance"] for b in run], dtype=torch.float64)
        sq_mean = torch.tensor([b["avg_channel_squared_mean"] for b in run], dtype=torch.float64)
        # Each block adds a unit-variance branch to the skip path: the variance grows by a
        # near-constant step (below 1: the relu after the add clips), i.e. linearly in depth.
        index = torch.arange(len(var), dtype=torch.float64)
        slope, intercept = _line(index, var)
        residual = var - (slope * index + intercept)
        r2 = 1 - float(residual.square().sum() / (var - var.mean()).square().sum())
        assert 0.15 < slope < 1.0 and r2 > 0.98, (var, slope, r2)
        assert bool((sq_mean.diff() > 0).all()), sq_mean  # and the mean drifts up with it


def _line(x, y):
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum())
    return slope, float(y.mean() - slope * x.mean())


@pytest.mark.parametrize("variant", ["Fixup", "SkipInit"])
def test_zero_branch_nets_keep_variance_flat_at_init(variant):
    out = _resnet56_signal(variant)
    blocks = out["blocks"]
    assert all(b["branch_variance"] == 0.0 for b in blocks)
    for run in _stage_runs(blocks):
        # Past a stage's first block (which pads channels), every block is the identity.
        flat = [(b["avg_channel_variance"], b["avg_channel_squared_mean"]) for b in run[1:]]
        assert all(v == flat[0] for v in flat), flat
    assert [s["name"] for s in out["stages"]] == ["stage0", "stage1", "stage2", "stage3"]
    assert all(s["max_rank"] == 23 and 0.9 * 23 < s["effective_rank"] <= 23 + 1e-9 for s in out["stages"])


def test_eval_mode_measurement_uses_running_statistics():
    torch.manual_seed(0)
    model = build_model("resnet20")
    x = torch.randn(8, 3, 32, 32)
    batch = block_signal(model, x)["blocks"]
    running = block_signal(model, x, batch_stats=False)["blocks"]
    # Fresh running statistics (0, 1) leave the branch unnormalised: far from the batch's unit variance.
    assert batch[0]["branch_variance"] == pytest.approx(1.0, abs=1e-3)
    assert abs(running[0]["branch_variance"] - 1.0) > 0.1
    assert model.training  # the mode is restored


def test_features_at_initialisation_use_batch_statistics_without_touching_the_model():
    from resdeg.config import make_config
    from resdeg.models import build_model
    from resdeg.probes.features import stage_features

    cfg = make_config("depth", device_type="cpu")
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    last = {}
    for norm in (True, False):
        torch.manual_seed(0)
        net = build_model("resnet20", norm=norm, stem="cifar", conv_bias=False, weight_init="he")
        before = copy.deepcopy(net.state_dict())
        eval_mode = dict(stage_features(net, x, cfg, torch.device("cpu")))["stage3"].clone()
        batch = dict(stage_features(net, x, cfg, torch.device("cpu"), batch_stats=True))["stage3"]
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # running stats untouched
        last[norm] = (eval_mode, batch)
    assert not torch.allclose(*last[True])  # an untrained BatchNorm in eval mode is the identity: not what trains
    assert torch.equal(*last[False])  # without BatchNorm the mode changes nothing
