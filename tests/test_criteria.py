"""Separability criteria: known answers, agreement with references, invariances, input errors.

All data is small, random and seeded; references are direct NumPy/SciPy/scikit-learn
computations (d x d where that is the plain definition) on the same numbers.
"""
import math

import numpy as np
import pytest
import torch

from resdeg.probes import criteria as cr
from resdeg.probes.criteria import CRITERIA, ProbeInputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest)


def gaussian_classes(n_per_class, means, sigma=1.0, seed=0):
    """Isotropic Gaussian classes around the rows of `means`, as float64 tensors."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.as_tensor(means, dtype=torch.float64)
    counts = [n_per_class] * len(means) if isinstance(n_per_class, int) else n_per_class
    labels = torch.cat([torch.full((m,), c) for c, m in enumerate(counts)])
    x = means[labels] + sigma * torch.randn(len(labels), means.shape[1], generator=gen, dtype=torch.float64)
    return x, labels


def clusters(n_per_class=30, n_classes=4, d=20, spread=20.0, seed=0):
    """Well-separated clusters: centres `spread` apart on random directions, unit noise."""
    gen = torch.Generator().manual_seed(seed + 1)
    centres = spread * torch.randn(n_classes, d, generator=gen, dtype=torch.float64)
    return gaussian_classes(n_per_class, centres, seed=seed)


def scatter_np(x, y):
    """Textbook S_W, S_B (d x d) in NumPy, sums over samples."""
    mu = x.mean(0)
    s_w, s_b = 0, 0
    for c in np.unique(y):
        xc = x[y == c]
        mc = xc.mean(0)
        s_b = s_b + len(xc) * np.outer(mc - mu, mc - mu)
        s_w = s_w + (xc - mc).T @ (xc - mc)
    return s_w, s_b


# --- known answers -----------------------------------------------------------------------


def test_fisher_two_gaussians_matches_closed_form():
    # Means +-delta/2 along one axis, isotropic sigma^2 in d dims: tr(S_B) -> n delta^2/4 (n samples
    # in all) and tr(S_W) -> n d sigma^2, so J -> delta^2 / (4 d sigma^2) = 0.4. Sampling noise: the
    # relative std of tr(S_B) is about 2 sqrt(2) sigma / (sqrt(N) delta) = 0.5% for N = 20000 per class
    # (tr(S_W): ~0.2%), and the finite-N bias is d sigma^2 / (N delta^2 / 2) = 0.006%; 3% is > 5 sigma.
    d, delta, sigma = 10, 4.0, 1.0
    means = torch.zeros(2, d, dtype=torch.float64)
    means[0, 0], means[1, 0] = delta / 2, -delta / 2
    x, y = gaussian_classes(20000, means, sigma)
    expected = delta**2 / (4 * d * sigma**2)
    assert cr.fisher_trace_ratio(x, y) == pytest.approx(expected, rel=0.03)


def test_fisher_identical_classes_near_zero_and_far_classes_high():
    # Same distribution: E tr(S_B) ~ (C - 1) d sigma^2, tr(S_W) ~ n d sigma^2, so J ~ (C - 1)/n.
    x, y = gaussian_classes(500, torch.zeros(4, 8))
    assert cr.fisher_trace_ratio(x, y) < 5 * 3 / len(y)
    far, y_far = clusters(n_per_class=50, spread=100.0)
    assert cr.fisher_trace_ratio(far, y_far) > 100


def test_per_image_fisher_equals_channel_maps_with_one_channel():
    # (n, 1, H, W): one map per image is the whole image, so the two forms agree.
    x, y = gaussian_classes([7, 12, 9], torch.randn(3, 30, generator=torch.Generator().manual_seed(3)))
    assert cr.fisher_trace_ratio(x, y) == pytest.approx(
        cr.fisher_trace_ratio_channel_maps(x.reshape(-1, 1, 5, 6), y), rel=1e-10)


def test_linear_probe_and_knn_perfect_on_separable_clusters():
    x, y = clusters(n_per_class=30, n_classes=4, d=20)
    assert cr.linear_probe_accuracy(x, y) == 1.0
    assert cr.knn_accuracy(x, y, k=10) == 1.0
    # d >> n goes through the Gram/PCA path of the probe
    wide, y_wide = clusters(n_per_class=25, n_classes=3, d=3000)
    assert cr.linear_probe_accuracy(wide.float(), y_wide) == 1.0


def test_linear_probe_and_knn_near_chance_on_shuffled_labels():
    x, y = clusters(n_per_class=100, n_classes=4, d=20)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(7))]
    # chance is 0.25; the held-out set has 120 samples (std ~0.04), the LOO set 400 (std ~0.02)
    assert abs(cr.linear_probe_accuracy(x, shuffled) - 0.25) < 0.12
    assert abs(cr.knn_accuracy(x, shuffled) - 0.25) < 0.08


def test_linear_probe_is_deterministic_and_split_is_stratified():
    x, y = clusters(n_per_class=[10, 20, 3], n_classes=3, d=5, spread=1.0)
    assert cr.linear_probe_accuracy(x, y, seed=3) == cr.linear_probe_accuracy(x, y, seed=3)
    train, test = cr._stratified_split(cr._Batch(x, y), 0.3, seed=0)
    assert torch.bincount(y[test]).tolist() == [3, 6, 1]
    assert sorted(torch.cat([train, test]).tolist()) == list(range(len(y)))


def test_knn_tie_goes_to_the_more_similar_class_then_the_smaller_label():
    # k=2, and four of the five samples see two neighbours with different labels: a tied vote.
    # Samples 0 and 1 (label 2) see each other (cos .95) and sample 2 (label 1, cos .75 and .51):
    # the more similar class 2 wins, so both are right; a smallest-label rule would say 1.
    # Sample 2 (label 1) sees 0 and 1 -> 2, wrong; sample 3 (label 0) sees 1 and 0 -> 2 (no tie), wrong;
    # sample 4 (label 1) sees 3 (cos -.10) and 2 (cos -.75) -> 0, wrong. Accuracy 2/5.
    x = torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.8, -0.7], [0.1, 1.0], [-1.0, 0.0]])
    y = torch.tensor([2, 2, 1, 0, 1])
    assert cr.knn_accuracy(x, y, k=2) == pytest.approx(0.4)
    assert brute_knn(x.numpy(), y.numpy(), 2) == pytest.approx(0.4)


def brute_knn(x, y, k):
    """Reference LOO cosine k-NN with the documented tie rule, one sample at a time."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    hits = 0
    for i in range(len(x)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if j != i][:k]
        votes = {}
        for j in order:
            count, weight = votes.get(y[j], (0, 0.0))
            votes[y[j]] = (count + 1, weight + sim[i, j])
        pred = max(sorted(votes), key=lambda c: votes[c])  # max keeps the first (smallest) on exact ties
        hits += pred == y[i]
    return hits / len(x)


def test_knn_matches_brute_force_and_caps_k():
    x, y = clusters(n_per_class=15, n_classes=3, d=6, spread=1.5, seed=4)
    assert cr.knn_accuracy(x, y, k=5) == pytest.approx(brute_knn(x.numpy(), y.numpy(), 5))
    # k >= n uses k = n - 1: every other sample votes
    assert cr.knn_accuracy(x, y, k=1000) == pytest.approx(brute_knn(x.numpy(), y.numpy(), len(y) - 1))


# --- agreement with references -----------------------------------------------------------


def test_silhouette_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    x, y = clusters(n_per_class=[20, 35, 12, 1], n_classes=4, d=7, spread=2.0)  # incl. a singleton class
    assert cr.silhouette(x, y) == pytest.approx(metrics.silhouette_score(x.numpy(), y.numpy()), abs=1e-10)
    far, y_far = clusters(spread=50.0)
    assert cr.silhouette(far, y_far) == pytest.approx(metrics.silhouette_score(far.numpy(), y_far.numpy()), abs=1e-10)


def test_lda_matches_sklearn_eigen_solver():
    # sklearn's eigen solver takes the generalised eigenvectors of (S_B, S_W) (its covariances are
    # S_B/n and S_W/n) as `scalings_`; along each discriminant direction the between/within scatter
    # ratio of the transformed data is that eigenvalue, so their sum over the C - 1 directions is
    # tr(S_W^{-1} S_B). With d < n and n_components >= d our PCA is a mere rotation, which leaves
    # tr(S_W^{-1} S_B) unchanged, and shrinkage=0 matches sklearn's unshrunk S_W.
    lda_mod = pytest.importorskip("sklearn.discriminant_analysis")
    x, y = clusters(n_per_class=[60, 80, 50, 70], n_classes=4, d=6, spread=0.8)
    lda = lda_mod.LinearDiscriminantAnalysis(solver="eigen").fit(x.numpy(), y.numpy())
    z = lda.transform(x.numpy())
    assert z.shape[1] == 3
    s_w, s_b = scatter_np(z, y.numpy())
    reference = np.sum(np.diag(s_b) / np.diag(s_w)) / 3
    assert cr.lda_score(x, y, shrinkage=0.0) == pytest.approx(reference, rel=1e-8)


def test_lda_matches_scipy_generalised_eigenvalues_with_pca_and_shrinkage():
    linalg = pytest.importorskip("scipy.linalg")
    x, y = clusters(n_per_class=30, n_classes=5, d=40, spread=0.5, seed=2)
    k, shrinkage = 10, 0.1
    xn = x.numpy() - x.numpy().mean(0)
    z = xn @ np.linalg.svd(xn, full_matrices=False)[2][:k].T  # top-k principal components
    s_w, s_b = scatter_np(z, y.numpy())
    s_w = s_w + shrinkage * np.trace(s_w) / k * np.eye(k)
    reference = linalg.eigh(s_b, s_w, eigvals_only=True).sum() / 4
    assert cr.lda_score(x, y, n_components=k, shrinkage=shrinkage) == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("shape", [(12, 3, 4, 5), (10, 6)])
def test_channel_map_fisher_matches_numpy_transcription(shape):
    labels = torch.arange(shape[0]) % 3
    shift = 0.5 * labels.reshape(-1, *[1] * (len(shape) - 1))  # classes differ a little
    feats = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) + shift
    # the original NumPy code, verbatim in substance
    f, lab = feats.double().numpy(), labels.numpy()
    n, C = f.shape[0], f.shape[1]
    X = f.reshape(n * C, -1)
    y = np.repeat(lab, C)
    mu = X.mean(0)
    Sb, Sw = 0, 0
    for c in np.unique(y):
        Xc = X[y == c]
        mc = Xc.mean(0)
        Sb = Sb + len(Xc) * np.outer(mc - mu, mc - mu)
        Sw = Sw + (Xc - mc).T @ (Xc - mc)
    J = np.trace(Sb) / np.trace(Sw)
    assert cr.fisher_trace_ratio_channel_maps(feats, labels) == pytest.approx(J, rel=1e-10)


def test_per_image_fisher_matches_numpy():
    x, y = clusters(n_per_class=[9, 14, 11], n_classes=3, d=12, spread=1.0)
    s_w, s_b = scatter_np(x.numpy(), y.numpy())
    assert cr.fisher_trace_ratio(x, y) == pytest.approx(np.trace(s_b) / np.trace(s_w), rel=1e-10)


def test_nc1_matches_dense_numpy():
    x, y = clusters(n_per_class=[15, 25, 20, 20], n_classes=4, d=15, spread=1.0, seed=6)
    xn, yn = x.numpy(), y.numpy()
    mu_g = xn.mean(0)
    means = np.stack([xn[yn == c].mean(0) for c in range(4)])
    s_w = (xn - means[yn]).T @ (xn - means[yn]) / len(xn)
    s_b = (means - mu_g).T @ (means - mu_g) / 4
    reference = np.trace(s_w @ np.linalg.pinv(s_b, hermitian=True)) / 4
    assert cr.nc1(x, y) == pytest.approx(reference, rel=1e-8)
    tight, y_tight = clusters(n_per_class=[15, 25, 20, 20], n_classes=4, d=15, spread=10.0, seed=6)
    assert cr.nc1(tight, y_tight) < cr.nc1(x, y)  # lower is more collapsed


def test_coding_rate_reduction_matches_dense_numpy():
    x, y = clusters(n_per_class=[20, 25, 15], n_classes=3, d=12, spread=1.0, seed=8)
    eps2 = 0.5
    z = (x / x.norm(dim=1, keepdim=True)).numpy().T  # (d, n), unit columns

    def rate(zz):
        d, m = zz.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + d / (m * eps2) * zz @ zz.T)[1]

    yn = y.numpy()
    reference = rate(z) - sum((yn == c).sum() / len(yn) * rate(z[:, yn == c]) for c in range(3))
    assert cr.coding_rate_reduction(x, y, eps2=eps2) == pytest.approx(reference, rel=1e-10)


def test_cka_matches_dense_numpy():
    x, y = clusters(n_per_class=[10, 14, 12], n_classes=3, d=9, spread=1.0)
    xc = x.numpy() - x.numpy().mean(0)
    yc = np.eye(3)[y.numpy()] - np.eye(3)[y.numpy()].mean(0)
    reference = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert cr.linear_cka_labels(x, y) == pytest.approx(reference, rel=1e-10)


# --- invariances ---------------------------------------------------------------------------


def test_cka_invariant_to_rotation_and_isotropic_scaling():
    x, y = clusters(n_per_class=20, n_classes=3, d=16, spread=1.0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    assert cr.linear_cka_labels(7.3 * x @ q, y) == pytest.approx(cr.linear_cka_labels(x, y), rel=1e-10)


def test_per_image_fisher_invariant_to_global_scaling():
    x, y = clusters(n_per_class=20, n_classes=3, d=16, spread=1.0)
    assert cr.fisher_trace_ratio(0.013 * x, y) == pytest.approx(cr.fisher_trace_ratio(x, y), rel=1e-10)


def test_label_values_and_input_types_do_not_matter():
    x, y = clusters(n_per_class=12, n_classes=3, d=8, spread=1.0)
    relabelled = torch.tensor([10, -4, 7])[y]  # same partition, other label values
    reference = cr.all_criteria(x, y)
    assert cr.all_criteria(x.numpy(), relabelled.numpy()) == pytest.approx(reference, rel=1e-9)
    assert cr.all_criteria(x.float(), relabelled) == pytest.approx(reference, rel=1e-4)  # float32 input


# --- the table -------------------------------------------------------------------------------


def test_all_criteria_matches_the_individual_functions():
    x, y = clusters(n_per_class=[12, 15, 10], n_classes=3, d=4 * 3 * 3, spread=1.0)
    x = x.float().reshape(-1, 4, 3, 3)
    results = cr.all_criteria(x, y)
    assert list(results) == list(CRITERIA) == [
        "fisher_trace_ratio", "fisher_channel_maps", "lda_score", "linear_probe_acc", "knn_acc",
        "nc1", "silhouette", "coding_rate_reduction", "cka_labels"]
    for name, (fn, description, higher_is_better, _width_dependent) in CRITERIA.items():
        assert results[name] == pytest.approx(fn(x, y), rel=1e-12), name
        assert isinstance(results[name], float) and math.isfinite(results[name])
        assert description and higher_is_better == (name != "nc1")
    # H3 counts only criteria comparable across stage widths; the others say why not
    assert [n for n, c in CRITERIA.items() if c.width_dependent] == \
        ["fisher_channel_maps", "silhouette", "coding_rate_reduction"]
    assert set(cr.all_criteria(x, y, skip=("linear_probe_acc", "nc1"))) == set(CRITERIA) - {"linear_probe_acc", "nc1"}


def test_inputs_are_left_untouched():
    x, y = clusters(n_per_class=10, n_classes=3, d=6, spread=1.0)
    x = x.reshape(-1, 2, 3)
    before = x.clone()
    cr.all_criteria(x, y)
    assert torch.equal(x, before)


# --- input errors ------------------------------------------------------------------------------

GOOD_X, GOOD_Y = clusters(n_per_class=5, n_classes=2, d=4, spread=1.0)
WITH_NAN = GOOD_X.clone()
WITH_NAN[3, 1] = float("nan")
WITH_INF = GOOD_X.clone()
WITH_INF[0, 0] = float("inf")

BAD_INPUTS = {
    "one sample": (GOOD_X[:1], GOOD_Y[:1], "at least 2 samples"),
    "one class": (GOOD_X, torch.zeros(10, dtype=torch.long), "at least 2 classes"),
    "length mismatch": (GOOD_X, GOOD_Y[:9], "10 rows but there are 9 labels"),
    "nan": (WITH_NAN, GOOD_Y, "NaN or infinite"),
    "inf": (WITH_INF, GOOD_Y, "NaN or infinite"),
    "float labels": (GOOD_X, GOOD_Y.float(), "integer"),
    "2-D labels": (GOOD_X, GOOD_Y[:, None], "1-D"),
    "empty samples": (torch.zeros(10, 0), GOOD_Y, "no values per sample"),
}


@pytest.mark.parametrize("name", list(CRITERIA))
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_probe_input_error(name, case):
    features, labels, message = BAD_INPUTS[case]
    with pytest.raises(ProbeInputError, match=message) as err:
        CRITERIA[name].fn(features, labels)
    assert "\n" not in str(err.value)


def test_criterion_specific_errors():
    singleton_y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    with pytest.raises(ProbeInputError, match="class 2 has a single sample"):
        cr.linear_probe_accuracy(GOOD_X, singleton_y)
    constant_per_class = GOOD_Y[:, None].double().expand(10, 4)
    for fn in (cr.fisher_trace_ratio, cr.fisher_trace_ratio_channel_maps, cr.lda_score):
        with pytest.raises(ProbeInputError, match="within-class scatter is zero"):
            fn(constant_per_class, GOOD_Y)
    constant = torch.ones(10, 4)
    for fn in (cr.linear_cka_labels, cr.lda_score, cr.linear_probe_accuracy):
        with pytest.raises(ProbeInputError, match="constant"):
            fn(constant, GOOD_Y)
    with pytest.raises(ProbeInputError, match="class means coincide"):
        cr.nc1(torch.cat([GOOD_X[:5], GOOD_X[:5]]), GOOD_Y)
    with pytest.raises(ProbeInputError, match="k >= 1"):
        cr.knn_accuracy(GOOD_X, GOOD_Y, k=0)
    with pytest.raises(ProbeInputError, match="test_fraction"):
        cr.linear_probe_accuracy(GOOD_X, GOOD_Y, test_fraction=1.0)
    with pytest.raises(ProbeInputError, match="shrinkage"):
        cr.lda_score(GOOD_X, GOOD_Y, shrinkage=-1.0)
    with pytest.raises(ProbeInputError, match="eps2"):
        cr.coding_rate_reduction(GOOD_X, GOOD_Y, eps2=0.0)
    with pytest.raises(ProbeInputError, match="unknown criteria"):
        cr.all_criteria(GOOD_X, GOOD_Y, skip=("fisher",))
