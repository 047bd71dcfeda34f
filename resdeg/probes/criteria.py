"""Class-separability criteria: features (n, ...) and integer labels (n,) in, one float out.

Everything runs in float64 on the features' device and no d x d matrix is ever formed
(d reaches ~200,000 values per image): the Fisher ratios are sums of squared norms, O(n d)
for any n, and the rest go through n x n Gram matrices (n is a few hundred to a few thousand
images), built and decomposed by the probes' numeric core (gram.py). `all_criteria` shares one
validated batch, and so its Gram matrices, across criteria.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ResdegError
from .gram import BLOCK_ELEMENTS, eigh_desc, gram_terms

__all__ = [
    "CRITERIA",
    "Criterion",
    "ProbeInputError",
    "all_criteria",
    "coding_rate_reduction",
    "fisher_trace_ratio",
    "fisher_trace_ratio_channel_maps",
    "knn_accuracy",
    "lda_score",
    "linear_cka_labels",
    "linear_probe_accuracy",
    "nc1",
    "silhouette",
]

_F64 = torch.float64


class ProbeInputError(ResdegError, ValueError):
    """Features or labels that a criterion cannot score; the message is one line (a ResdegError,
    so the CLI prints it as a one-line error)."""


class _Batch:
    """Validated features and labels, with the Gram matrices computed once and cached."""

    def __init__(self, features, labels):
        features = torch.as_tensor(features).detach()
        labels = torch.as_tensor(labels, device=features.device)
        if features.ndim == 0 or features.is_complex():
            raise ProbeInputError(f"features must be a real tensor of shape (n, ...), "
                                  f"got shape {tuple(features.shape)}")
        n = features.shape[0]
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ProbeInputError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} "
                                  f"and dtype {labels.dtype}")
        if labels.shape[0] != n:
            raise ProbeInputError(f"features have {n} rows but there are {labels.shape[0]} labels")
        if n < 2:
            raise ProbeInputError(f"need at least 2 samples, got {n}")
        if features[0].numel() == 0:
            raise ProbeInputError(f"features have no values per sample (shape {tuple(features.shape)})")
        if features.is_floating_point() and not bool(torch.isfinite(features).all()):
            raise ProbeInputError("features contain NaN or infinite values")
        classes, y, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ProbeInputError(f"need at least 2 classes, but every label is {int(classes[0])}")
        self.features = features
        self.x = features.reshape(n, -1)
        self.n, self.d = self.x.shape
        self.classes = classes  # original label values; y indexes into them
        self.n_classes = len(classes)
        self.y = y
        self.counts = counts.to(_F64)
        self.onehot = F.one_hot(y, self.n_classes).to(_F64)

    def class_means(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-class means (C, m) of float64 rows (n, m)."""
        return (self.onehot.T @ rows) / self.counts[:, None]

    @cached_property
    def members(self) -> list[torch.Tensor]:
        """Sample indices of each class."""
        return [torch.nonzero(self.y == c).squeeze(1) for c in range(self.n_classes)]

    @cached_property
    def _grams(self) -> tuple[torch.Tensor, torch.Tensor]:
        centred, cross, mean_sq = gram_terms(self.x)
        # x_i . x_j = xc_i . xc_j + xc_i . m + xc_j . m + m . m, so the raw Gram is free.
        return centred, centred + cross[:, None] + cross[None, :] + mean_sq

    @property
    def centred_gram(self) -> torch.Tensor:
        """(x_i - mu) . (x_j - mu), the Gram matrix of the globally centred features."""
        return self._grams[0]

    @cached_property
    def cosine_gram(self) -> torch.Tensor:
        """Cosine similarity of the raw (uncentred) features; 0 for an all-zero sample."""
        raw = self._grams[1]
        norm = raw.diagonal().clamp_min(0).sqrt().clamp_min(torch.finfo(_F64).tiny)
        return raw / norm[:, None] / norm[None, :]


def _as_batch(features, labels) -> _Batch:
    # all_criteria passes its shared _Batch in place of the features.
    return features if isinstance(features, _Batch) else _Batch(features, labels)


def _scatter_traces(x3: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """tr(S_B) and tr(S_W) where image i contributes the g rows of x3[i] (g, p), all labelled y_i.

    Two passes over row blocks (class means first, then residuals), so no cancellation.
    """
    n, g, p = x3.shape
    rows = max(1, BLOCK_ELEMENTS // (g * p))
    blocks = [slice(i, i + rows) for i in range(0, n, rows)]
    sums = torch.zeros(batch.n_classes, p, dtype=_F64, device=x3.device)
    for s in blocks:
        sums += batch.onehot[s].T @ x3[s].to(_F64).sum(1)
    per_class = batch.counts * g
    means = sums / per_class[:, None]
    tr_b = (per_class * (means - sums.sum(0) / (n * g)).pow(2).sum(1)).sum()
    residual = (x3[s].to(_F64, copy=True).sub_(means[batch.y[s], None, :]) for s in blocks)  # copy: never edit x3
    tr_w = sum(torch.linalg.vector_norm(r) ** 2 for r in residual)
    return tr_b, tr_w


def _require_within_scatter(tr_w: torch.Tensor, tr_total: torch.Tensor, criterion: str) -> None:
    if tr_w <= 1e-12 * tr_total:  # zero up to rounding
        raise ProbeInputError(f"within-class scatter is zero (all samples of each class are identical), "
                              f"so {criterion} is undefined")


def _fisher_ratio(tr_b: torch.Tensor, tr_w: torch.Tensor) -> float:
    _require_within_scatter(tr_w, tr_b + tr_w, "the Fisher ratio")
    return float(tr_b / tr_w)


def _scatter_matrices(z: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """S_W and S_B (k, k) of small float64 features z (n, k)."""
    means = batch.class_means(z)
    between = means - z.mean(0)
    within = z - means[batch.y]
    return within.T @ within, between.T @ (batch.counts[:, None] * between)


def _pca_scores(gram: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Coordinates (n, k) of the centred samples behind `gram` on its top principal axes."""
    vals, vecs = eigh_desc(gram, k)
    if len(vals) == 0:
        raise ProbeInputError("features are constant across samples")
    return vecs * vals.sqrt()  # Xc = U S V^T and gram = U S^2 U^T, so Xc V = U S


def fisher_trace_ratio(features, labels) -> float:
    """Per-image Fisher trace ratio tr(S_B)/tr(S_W), each image's flattened features one sample.

    S_B = sum_c n_c (mu_c - mu)(mu_c - mu)^T, S_W = sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T.
    """
    b = _as_batch(features, labels)
    return _fisher_ratio(*_scatter_traces(b.x.unsqueeze(1), b))


def fisher_trace_ratio_channel_maps(features, labels) -> float:
    """The original study's tr(S_B)/tr(S_W) with every (image, channel) map one sample.

    Features (n, C, *spatial) give n*C samples of dimension prod(spatial), labelled with their
    image's label; 2-D features (n, d) give n*d one-dimensional samples.
    """
    b = _as_batch(features, labels)
    f = b.features
    x3 = f.reshape(b.n, f.shape[1], -1) if f.ndim >= 3 else b.x.unsqueeze(-1)
    return _fisher_ratio(*_scatter_traces(x3, b))


def lda_score(features, labels, n_components: int = 64, shrinkage: float = 1e-3) -> float:
    """Mean generalised eigenvalue of (S_B, S_W + shrinkage * tr(S_W)/k * I) after PCA to k dims.

    k = min(n_components, n - 1, d, rank); the score is tr((S_W + reg)^{-1} S_B) / min(C - 1, k),
    the average between/within variance ratio along the discriminant directions.
    """
    b = _as_batch(features, labels)
    if n_components < 1 or shrinkage < 0:
        raise ProbeInputError(f"lda_score needs n_components >= 1 and shrinkage >= 0, "
                              f"got {n_components} and {shrinkage}")
    z = _pca_scores(b.centred_gram, min(n_components, b.n - 1, b.d))
    k = z.shape[1]
    s_w, s_b = _scatter_matrices(z, b)
    tr_w = s_w.trace()
    _require_within_scatter(tr_w, z.pow(2).sum(), "the LDA score")
    s_w = s_w + shrinkage * tr_w / k * torch.eye(k, dtype=_F64, device=z.device)
    chol, info = torch.linalg.cholesky_ex(s_w)
    if info != 0:
        raise ProbeInputError("within-class scatter is singular in the PCA space; use shrinkage > 0")
    return float(torch.cholesky_solve(s_b, chol).trace() / min(b.n_classes - 1, k))


def _stratified_split(b: _Batch, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices, round(test_fraction * n_c) (at least 1, at most n_c - 1) test per class."""
    # One permutation of all samples (a CPU generator: the same split on every device), read per
    # class, so the split depends on the partition and the seed, not on the label values.
    order = torch.randperm(b.n, generator=torch.Generator().manual_seed(seed)).to(b.y.device)
    train, test = [], []
    for c, count in enumerate(b.counts.tolist()):
        if count < 2:
            raise ProbeInputError(f"class {int(b.classes[c])} has a single sample; "
                                  "the linear probe's stratified split needs at least 2 per class")
        idx = order[b.y[order] == c]
        n_test = min(max(round(test_fraction * len(idx)), 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def linear_probe_accuracy(features, labels, test_fraction: float = 0.3, seed: int = 0,
                          l2: float = 1e-3, steps: int = 500) -> float:
    """Held-out accuracy of multinomial logistic regression on features standardised with train stats.

    Fits mean cross-entropy + l2/2 * ||W||_F^2 (bias unpenalised) on a stratified split by full-batch
    L-BFGS (at most `steps` iterations); deterministic given `seed`.
    """
    b = _as_batch(features, labels)
    if not 0 < test_fraction < 1 or l2 < 0 or steps < 1:
        raise ProbeInputError(f"linear probe needs 0 < test_fraction < 1, l2 >= 0 and steps >= 1, "
                              f"got {test_fraction}, {l2}, {steps}")
    train, test = _stratified_split(b, test_fraction, seed)
    gram = gram_terms(b.x, rows=train, standardise=True).centred
    # The optimal W lies in the span of the training features (representer theorem), so their
    # principal axes v_j = X_tr^T u_j / sqrt(l_j) lose nothing and give k <= n_train inputs.
    x_tr = _pca_scores(gram[train][:, train])
    x_te = gram[test][:, train] @ (x_tr / x_tr.pow(2).sum(0))  # X_te v_j = G_te u_j / sqrt(l_j)
    # One global rescale for conditioning; l2 is rescaled with it, so the optimum is the same.
    scale = x_tr.pow(2).sum(1).mean().sqrt()
    x_tr, x_te, penalty = x_tr / scale, x_te / scale, 0.5 * l2 / scale**2
    y_tr = b.y[train]
    w = torch.zeros(x_tr.shape[1], b.n_classes, dtype=_F64, device=x_tr.device, requires_grad=True)
    bias = torch.zeros(b.n_classes, dtype=_F64, device=x_tr.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=steps, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_tr @ w + bias, y_tr) + penalty * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (x_te @ w + bias).argmax(1)
    return float((pred == b.y[test]).to(_F64).mean())


def knn_accuracy(features, labels, k: int = 20) -> float:
    """Leave-one-out k-NN accuracy under cosine similarity, with k = min(k, n - 1).

    Majority vote; a tie goes to the class with the larger summed similarity, then the smaller label.
    """
    b = _as_batch(features, labels)
    if k < 1:
        raise ProbeInputError(f"knn needs k >= 1, got {k}")
    k = min(k, b.n - 1)
    sim = b.cosine_gram.clone().fill_diagonal_(-float("inf"))  # never your own neighbour
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = b.onehot[top_idx]  # (n, k, C)
    count, weight = votes.sum(1), (votes * top_sim[..., None]).sum(1)
    # counts are integers and (weight + k) / (2k + 1) lies in [0, 1): count first, then weight
    score = count + (weight + k) / (2 * k + 1)
    return float((score.argmax(1) == b.y).to(_F64).mean())  # argmax: first (smallest) label on ties


def nc1(features, labels) -> float:
    """Within-class variability collapse NC1 = tr(S_W S_B^+) / C (Papyan et al. 2020); lower is more collapsed.

    S_W = (1/n) sum_i (x_i - mu_{c_i})(x_i - mu_{c_i})^T, S_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T.
    """
    b = _as_batch(features, labels)
    # With M = [mu_c - mu_G] / sqrt(C) (d, C), S_B = M M^T and S_B^+ = M (M^T M)^{+2} M^T,
    # so only inner products with the centred means are needed, and those come from the Gram.
    x_dot_mean = b.class_means(b.centred_gram).T  # (n, C): (x_i - mu_G) . (mu_c - mu_G)
    mean_dot_mean = b.class_means(x_dot_mean)  # (C, C): (mu_a - mu_G) . (mu_c - mu_G)
    # S_B has rank <= C - 1, and its zero eigenvalue comes out at the Gram's rounding: judge it on the Gram's scale
    vals, vecs = eigh_desc(mean_dot_mean, scale=b.centred_gram.trace() / b.n)
    if len(vals) == 0:
        raise ProbeInputError("all class means coincide, so S_B = 0 and NC1 is undefined")
    residual_dot_mean = x_dot_mean - mean_dot_mean[b.y]  # (x_i - mu_{c_i}) . (mu_c - mu_G)
    # the factors of C from M's scaling and from the final / C cancel
    return float((residual_dot_mean @ vecs / vals).pow(2).sum() / b.n)


def silhouette(features, labels) -> float:
    """Mean silhouette (b_i - a_i) / max(a_i, b_i), Euclidean distance, as scikit-learn's silhouette_score.

    a_i: mean distance to the rest of its class, b_i: smallest mean distance to another class;
    a sample alone in its class scores 0.
    """
    b = _as_batch(features, labels)
    gram = b.centred_gram  # distances ignore translation; centring keeps the subtraction accurate
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0).sqrt().fill_diagonal_(0)
    to_class = dist @ b.onehot  # (n, C) summed distance to each class
    own = b.onehot.bool()
    n_own = b.counts[b.y]
    intra = to_class[own] / (n_own - 1).clamp_min(1)
    inter = (to_class / b.counts).masked_fill(own, float("inf")).amin(1)
    largest = torch.maximum(intra, inter)
    s = torch.where((n_own > 1) & (largest > 0), (inter - intra) / largest, torch.zeros_like(largest))
    return float(s.mean())


def coding_rate_reduction(features, labels, eps2: float = 0.5) -> float:
    """MCR^2 rate reduction dR = R(Z) - sum_j (n_j / n) R(Z_j) (Yu et al. 2020),
    R(Z) = 1/2 logdet(I + d/(m eps2) Z Z^T).

    Z holds the features normalised to unit norm per sample, not centred (as in the paper); m = columns of Z.
    """
    b = _as_batch(features, labels)
    if eps2 <= 0:
        raise ProbeInputError(f"coding rate needs eps2 > 0, got {eps2}")
    gram = b.cosine_gram

    def rate(g: torch.Tensor) -> torch.Tensor:
        # logdet(I_d + a Z Z^T) = logdet(I_m + a Z^T Z), positive definite: via Cholesky
        m = g.shape[0]
        eye = torch.eye(m, dtype=_F64, device=g.device)
        chol = torch.linalg.cholesky(eye + b.d / (m * eps2) * g)
        return chol.diagonal().log().sum()  # 1/2 logdet = sum log diag(L)

    within = sum(len(idx) / b.n * rate(gram[idx][:, idx]) for idx in b.members)
    return float(rate(gram) - within)


def linear_cka_labels(features, labels) -> float:
    """Linear CKA of centred features X and centred one-hot labels Y: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)."""
    b = _as_batch(features, labels)
    gram = b.centred_gram
    y = b.onehot - b.onehot.mean(0)
    norm_x = torch.linalg.matrix_norm(gram)  # ||X^T X||_F = ||X X^T||_F
    if norm_x <= 0:
        raise ProbeInputError("features are constant across samples, so CKA is undefined")
    cross = (y.T @ gram @ y).trace()  # ||Y^T X||_F^2 = tr(Y^T X X^T Y)
    return float(cross / (norm_x * torch.linalg.matrix_norm(y.T @ y)))


class Criterion(NamedTuple):
    fn: Callable[..., float]  # fn(features, labels) -> float
    title: dict  # {"en": ..., "zh": ...}: its name on the pages and figures
    higher_is_better: bool  # True when a larger value means more separable classes
    # Why the value cannot be compared between stages of different width (None: it can). Only
    # comparable criteria vote on H3, which compares the shallowest stage with the deepest.
    width_dependent: str | None = None


CRITERIA: dict[str, Criterion] = {
    "fisher_trace_ratio": Criterion(fisher_trace_ratio, {"en": "Fisher tr(S_B)/tr(S_W), per image",
                                                         "zh": "Fisher 判据（逐图像）"}, True),
    "fisher_channel_maps": Criterion(fisher_trace_ratio_channel_maps,
                                     {"en": "Fisher, per channel map", "zh": "Fisher 判据（逐通道特征图）"}, True,
                                     "its chance level, about (C-1)/(n·channels), falls as channels grow"),
    "lda_score": Criterion(lda_score, {"en": "LDA score (after PCA)", "zh": "LDA 得分（PCA 降维后）"}, True),
    "linear_probe_acc": Criterion(linear_probe_accuracy, {"en": "linear probe accuracy", "zh": "线性探针准确率"}, True),
    "knn_acc": Criterion(knn_accuracy, {"en": "kNN accuracy", "zh": "kNN 准确率"}, True),
    "nc1": Criterion(nc1, {"en": "NC1", "zh": "NC1"}, False),
    "silhouette": Criterion(silhouette, {"en": "silhouette", "zh": "轮廓系数"}, True,
                            "Euclidean distances concentrate as the dimension grows, pulling silhouettes toward 0"),
    "coding_rate_reduction": Criterion(coding_rate_reduction, {"en": "coding rate reduction ΔR", "zh": "编码率缩减 ΔR"},
                                       True, "the rate log det(I + d/(n·eps^2) ZZ^T) grows with the dimension d"),
    "cka_labels": Criterion(linear_cka_labels, {"en": "CKA with labels", "zh": "与标签的 CKA"}, True),
}


def all_criteria(features, labels, skip=()) -> dict[str, float]:
    """Every criterion in CRITERIA not named in `skip`, in table order, sharing one batch and its Gram matrices."""
    skip = {skip} if isinstance(skip, str) else set(skip)
    if unknown := skip - CRITERIA.keys():
        raise ProbeInputError(f"unknown criteria {sorted(unknown)}; known: {', '.join(CRITERIA)}")
    batch = _Batch(features, labels)
    return {name: c.fn(batch, labels) for name, c in CRITERIA.items() if name not in skip}
