"""The probes' numeric core: the centred Gram matrix of wide features and its eigenvalues.

Features are (n, d) with d up to hundreds of thousands of values per image and n a few hundred
to a few thousand images, so no d x d matrix is ever formed: the criteria and the effective rank
work on the n x n Gram matrix, built here in float64 a block of columns at a time, and on its
eigenvalues, of which those at rounding level count as zero by one rule (`nonzero_count`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

_F64 = torch.float64
BLOCK_ELEMENTS = 1 << 22  # float64 elements per temporary block (32 MiB): bounds the extra memory
# Eigenvalues at or below RTOL times the largest are numerical zeros, alike for the PCA's rank cut,
# nc1's pseudo-inverse and the effective rank. A computed Gram's exact zeros come out at up to ~3e-14
# of the largest, more with few images and wide features (past n * eps, the eigensolver's own error,
# at n = 10-40 and d = 1e5), and inverting one is ruinous. Below 1e-10 are singular values under 1e-5
# of the largest, near the float32 features' own rounding; no stage of a net has shown one below 3e-7.
RTOL = 1e-10


class GramTerms(NamedTuple):
    """(x - m)(x - m)^T, (x - m) m and m . m of features x (n, d) with column means m, in float64."""
    centred: torch.Tensor  # (n, n)
    cross: torch.Tensor  # (n,)
    mean_sq: torch.Tensor  # ()


def gram_terms(x: torch.Tensor, rows: torch.Tensor | None = None, standardise: bool = False) -> GramTerms:
    """The centred Gram of x (n, d), with the terms that turn it into the raw one.

    m holds the column means over `rows` (all rows by default); with `standardise` each column is
    also divided by its std over `rows` (1 where constant). Accumulated over column blocks, so no
    float64 copy of the whole of x is ever made.
    """
    n, d = x.shape
    gram = torch.zeros(n, n, dtype=_F64, device=x.device)
    cross = torch.zeros(n, dtype=_F64, device=x.device)
    mean_sq = torch.zeros((), dtype=_F64, device=x.device)
    step = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, d, step):
        block = x[:, start:start + step].to(_F64, copy=True)  # a copy: edited in place below
        ref = block if rows is None else block[rows]
        if standardise:
            var, mean = torch.var_mean(ref, 0, correction=0)
            std = var.sqrt()
            # a std at rounding level of the mean is a constant column: leave it unscaled
            block.sub_(mean).div_(torch.where(std <= 1e-10 * mean.abs(), torch.ones_like(std), std))
        else:
            mean = ref.mean(0)
            block.sub_(mean)
        gram.addmm_(block, block.T)
        cross.addmv_(block, mean)
        mean_sq += mean.dot(mean)
    return GramTerms(gram, cross, mean_sq)


def centred_gram(features: torch.Tensor) -> torch.Tensor:
    """The n x n float64 Gram matrix Xc Xc^T of the (n, ...) features flattened to (n, d) and
    centred over the n samples."""
    return gram_terms(features.detach().flatten(1)).centred


def nonzero_count(vals: torch.Tensor, scale=0.0) -> int:
    """How many of the descending eigenvalues `vals` of a symmetric PSD matrix are not numerical
    zeros: above RTOL times the largest, or times `scale` where that is larger (a matrix derived
    from a Gram of that scale carries that Gram's rounding, however small its own eigenvalues)."""
    if len(vals) == 0:
        return 0
    floor = (RTOL * torch.clamp(vals[0], min=scale)).clamp_min(torch.finfo(_F64).tiny)
    return int((vals > floor).sum())  # a prefix, since vals are sorted


def eigh_desc(sym: torch.Tensor, k: int | None = None, scale=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric PSD matrix, largest first, at most k, without numerical zeros."""
    vals, vecs = torch.linalg.eigh(sym)
    vals, vecs = vals.flip(0), vecs.flip(1)
    m = nonzero_count(vals, scale)
    m = m if k is None else min(m, k)
    return vals[:m], vecs[:, :m]


def nonzero_eigenvalues(sym: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of a symmetric PSD matrix, largest first, without numerical zeros (no
    eigenvectors: cheaper than eigh_desc)."""
    vals = torch.linalg.eigvalsh(sym).flip(0)
    return vals[:nonzero_count(vals)]
