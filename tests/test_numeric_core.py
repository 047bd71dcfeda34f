"""The probes' numeric core (resdeg/probes/gram.py): the blocked centred Gram against the direct one,
the one rule for zero eigenvalues, the effective rank of known spectra, and one Gram per probed stage."""
import math
from types import SimpleNamespace

import pytest
import torch

from resdeg.models import build_model
from resdeg.probes import criteria, gram, probe, signal
from resdeg.probes.gram import RTOL, centred_gram, eigh_desc, gram_terms, nonzero_count, nonzero_eigenvalues
from resdeg.probes.signal import block_signal, effective_rank, effective_rank_from_gram
from resdeg.probes.store import ProbeSettings

F64 = torch.float64


def _features(n=12, d=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + 3.0) * torch.linspace(0.1, 2.0, d)  # offset: centring matters


@pytest.mark.parametrize("block", [1, 30, 1 << 22])  # one column per block, uneven blocks, a single block
def test_blocked_centred_gram_equals_the_direct_one(monkeypatch, block):
    monkeypatch.setattr(gram, "BLOCK_ELEMENTS", block)
    x = _features()
    xd = x.double()
    xc = xd - xd.mean(0)
    terms = gram_terms(x)
    assert terms.centred.dtype == F64 and terms.centred.shape == (12, 12)
    assert torch.allclose(terms.centred, xc @ xc.T, rtol=1e-12, atol=1e-12)
    # the cross terms turn it into the raw Gram
    raw = terms.centred + terms.cross[:, None] + terms.cross[None, :] + terms.mean_sq
    assert torch.allclose(raw, xd @ xd.T, rtol=1e-12, atol=1e-9)
    assert torch.allclose(centred_gram(x.reshape(12, 1, 37)), xc @ xc.T, rtol=1e-12, atol=1e-12)


def test_standardised_gram_uses_the_statistics_of_the_given_rows_and_leaves_constant_columns_alone(monkeypatch):
    monkeypatch.setattr(gram, "BLOCK_ELEMENTS", 24)
    x = _features()
    x[:, 5] = 4.0  # a constant column: std 0, left unscaled (so it stays 0 once centred)
    rows = torch.tensor([0, 2, 3, 7, 8, 11])
    ref = x.double()[rows]
    var, mean = torch.var_mean(ref, 0, correction=0)
    std = torch.where(var.sqrt() <= 1e-10 * mean.abs(), torch.ones_like(var), var.sqrt())
    z = (x.double() - mean) / std
    assert torch.allclose(gram_terms(x, rows=rows, standardise=True).centred, z @ z.T, rtol=1e-12, atol=1e-12)


def test_the_criteria_and_the_effective_rank_share_one_gram_routine():
    x = _features(40, 300).reshape(40, 3, 10, 10)
    assert signal.centred_gram is centred_gram
    batch = criteria._Batch(x, torch.arange(40) % 4)
    assert torch.equal(batch.centred_gram, centred_gram(x))
    assert effective_rank(x) == effective_rank_from_gram(batch.centred_gram)


def test_zero_eigenvalue_rule():
    vals = torch.tensor([1.0, 1e-3, 2e-10, 5e-11, 0.0, -1e-17], dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(0)))
    sym = q @ torch.diag(vals) @ q.T
    assert RTOL == 1e-10
    assert nonzero_count(vals) == 3  # 2e-10 is above RTOL * largest, 5e-11 is not
    kept, vecs = eigh_desc(sym)
    assert torch.allclose(kept, vals[:3], rtol=1e-6, atol=0) and vecs.shape == (6, 3)
    assert torch.allclose(vecs.T @ vecs, torch.eye(3, dtype=F64), atol=1e-12)
    assert torch.allclose(nonzero_eigenvalues(sym), kept, rtol=1e-6, atol=0)
    assert len(eigh_desc(sym, k=2)[0]) == 2
    # a scale larger than the largest eigenvalue raises the floor: 1e-3 < RTOL * 1e8
    assert nonzero_count(vals, scale=1e8) == 1
    # the rule is relative: scaling the matrix keeps the same eigenvalues
    assert len(nonzero_eigenvalues(1e-30 * sym)) == 3 and len(nonzero_eigenvalues(1e30 * sym)) == 3
    assert nonzero_count(torch.zeros(4, dtype=F64)) == 0 and nonzero_count(torch.zeros(0, dtype=F64)) == 0
    assert len(eigh_desc(torch.zeros(5, 5, dtype=F64))[0]) == 0


def test_effective_rank_of_known_spectra():
    assert effective_rank_from_gram(torch.eye(7, dtype=F64)) == pytest.approx(7.0, rel=1e-12)
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=F64, generator=torch.Generator().manual_seed(1)))
    for k in (1, 4, 29):
        rank_k = q[:, :k] @ (3.7 * q[:, :k].T)  # k equal eigenvalues, the rest exactly 0 in exact arithmetic
        assert effective_rank_from_gram(rank_k) == pytest.approx(k, rel=1e-9)
    # singular values 2 and 1 (Gram eigenvalues 4 and 1): p = (2/3, 1/3)
    two = torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=F64))
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert effective_rank_from_gram(two) == pytest.approx(math.exp(entropy), rel=1e-12)
    assert effective_rank_from_gram(torch.zeros(6, 6)) == 0.0
    assert effective_rank_from_gram(torch.full((3, 3), math.inf)) is None


@pytest.mark.parametrize("n", [10, 20])
def test_rounding_noise_of_few_wide_images_is_not_rank(n):
    # Every image twice, 100,000 values each: the Gram's zero eigenvalues come out at ~2e-14 of the
    # largest, above n * eps (the eigensolver's error alone); the rank must still be that of the
    # distinct images, which an SVD of them gives exactly.
    g = torch.Generator().manual_seed(n)
    distinct = (torch.randn(n // 2, 100_000, generator=g) + 0.5).relu()
    x = distinct.repeat(2, 1).reshape(n, 100, 1000)
    d = distinct.double()
    s = torch.linalg.svdvals(d - d.mean(0))
    s = s[s > 1e-12 * s[0]]  # centring's exact zero
    p = s / s.sum()
    assert effective_rank(x) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-12)


def test_block_signal_can_leave_stage_ranks_out():
    torch.manual_seed(0)
    model = build_model("resnet20")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    full = block_signal(model, x)
    blocks_only = block_signal(model, x, stage_ranks=False)
    assert blocks_only["stages"] == [] and len(full["stages"]) == len(model.stages())
    assert blocks_only["blocks"] == full["blocks"]


def test_probe_builds_one_centred_gram_per_stage_for_criteria_and_rank(monkeypatch):
    calls = []
    real = gram.gram_terms

    def counted(x, rows=None, standardise=False):
        calls.append(standardise)
        return real(x, rows, standardise)

    monkeypatch.setattr(gram, "gram_terms", counted)
    monkeypatch.setattr(criteria, "gram_terms", counted)
    torch.manual_seed(0)
    model = build_model("resnet20")
    x_u8 = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    y = torch.arange(40) % 4
    cfg = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=32)
    settings = ProbeSettings(probe_images=40, criteria=("lda_score", "nc1", "silhouette", "cka_labels"))
    shapes, values, errors, ranks = probe._score_stages(model, x_u8, y, cfg, torch.device("cpu"), settings,
                                                        False, "test")
    assert calls == [False] * len(model.stages())  # one centred Gram per stage, nothing else
    assert list(ranks) == list(shapes) and not errors
    features = dict(probe.stage_features(model, x_u8, cfg, torch.device("cpu")))
    for stage, rank in ranks.items():
        assert rank == pytest.approx(effective_rank(features[stage]), rel=1e-12)
        assert 1.0 < rank <= 39 + 1e-9
