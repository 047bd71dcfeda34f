"""What makes a net hard to optimise (hypotheses H4 and H5): pure metric functions, tensors in,
numbers out. How a trained or untrained net is turned into these inputs is `optim_measure.py`.

- Shattered gradients (Balduzzi et al. 2017): how fast the gradient with respect to the input
  decorrelates as the input moves. In a deep plain net it changes almost at random between
  nearby inputs (white noise); in a residual net it stays correlated much longer.
- Curvature (Li et al. 2018): the largest and the most negative eigenvalue of the Hessian of the
  training loss, by Lanczos on Hessian-vector products, and their ratio |lambda_min / lambda_max|
  (large where the surface is far from convex).
- Filter-normalised loss slices (Li et al. 2018): the loss along random directions in weight
  space, each filter of the direction scaled to the norm of the weight filter it moves, so that
  nets whose weights differ in scale (BatchNorm makes a layer's scale irrelevant) are comparable.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tensors = dict[str, torch.Tensor]


# -- shattered gradients --------------------------------------------------------------------------

def row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of a[i] and b[i] (each flattened) for every row i, in float64; nan
    where a row is constant (a correlation is undefined there, and 0 would be a false answer)."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(1) / denom, torch.full_like(denom, math.nan))


def projected_gradients(forward: Callable[[torch.Tensor], tuple[torch.Tensor, Tensors]], x: torch.Tensor,
                        projection: torch.Tensor) -> Tensors:
    """Gradients of <projection, output> with respect to the input ("input") and to every
    intermediate output that `forward` returns beside the net's output (e.g. each stage's).

    The scalar is a fixed random projection of the output rather than the loss: the loss's input
    gradient is J^T (softmax - onehot), whose second factor depends on the labels and on how
    confident the net is, and so changes with training for reasons of its own; a fixed projection
    measures the net's Jacobian alone, as Balduzzi et al. measure a scalar-output net's gradient.
    The outputs are summed over images, which gives each image's own gradient only when images do
    not interact (BatchNorm on fixed statistics, not on the batch's): the caller's duty.
    """
    x = x.detach().requires_grad_(True)
    out, inner = forward(x)
    names = list(inner)
    grads = torch.autograd.grad((out.float() @ projection.to(out.device, torch.float32)).sum(),
                                [x, *(inner[n] for n in names)], allow_unused=True, materialize_grads=True)
    return {"input": grads[0].detach(), **{n: g.detach() for n, g in zip(names, grads[1:], strict=True)}}


def gradient_correlations(gradients: Callable[[torch.Tensor], Tensors], x: torch.Tensor, direction: torch.Tensor,
                          distances: Sequence[float]) -> dict[str, torch.Tensor]:
    """Along the line x + t * direction: for each distance t, the correlation of the gradients at
    x + t * direction with those at x, per image; {name: (len(distances), n images)}.

    With `direction` of unit RMS per input component, t is the RMS change of each input value (in
    the units of the normalised input: data standard deviations)."""
    base = gradients(x)
    out = {name: torch.empty(len(distances), len(x), dtype=torch.float64) for name in base}
    for i, t in enumerate(distances):
        moved = gradients(x + t * direction)
        for name, g in base.items():
            out[name][i] = row_correlation(g, moved[name]).cpu()
    return out


def half_distance(distances: Sequence[float], correlation: Sequence[float]) -> float | None:
    """The distance at which a correlation curve (at increasing distances; 1 at distance 0) first
    falls to 1/2, interpolated linearly in log distance between the grid's points. None when it
    never does on the grid, or already has at its first point (nothing to interpolate from): the
    curve itself says which."""
    previous = None
    for t, c in zip(distances, correlation, strict=True):
        if c is None or not math.isfinite(c):
            return None
        if c <= 0.5:
            if previous is None:
                return None
            (t0, c0) = previous
            w = (c0 - 0.5) / (c0 - c)
            return math.exp(math.log(t0) + w * (math.log(t) - math.log(t0)))
        previous = (t, c)
    return None


# -- curvature ------------------------------------------------------------------------------------

def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vector[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def hessian_vector_product(losses: Sequence[Callable[[], torch.Tensor]],
                           params: Sequence[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> H v, H the Hessian of the mean of the losses with respect to `params` (leaf tensors
    that require grad), by double backward: exact, unlike a finite difference of gradients, which
    is biased wherever a step crosses a ReLU's kink. Each loss is built and differentiated on its
    own (one batch's graph in memory at a time)."""
    params = list(params)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        vs = unflatten(v, params)
        total = torch.zeros_like(v)
        for loss_fn in losses:
            grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True,
                                        materialize_grads=True)
            # a gradient that does not depend on the parameters (a last layer's bias) has no graph
            dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True) if g.requires_grad)
            if isinstance(dot, torch.Tensor) and dot.requires_grad:
                hv = torch.autograd.grad(dot, params, allow_unused=True, materialize_grads=True)
                total += flatten(hv).detach()
        return total / len(losses)

    return matvec


# A Ritz value counts as resolved when its residual is at most this share of its size. An extreme
# eigenvalue far smaller than the other end of the spectrum converges slowly: in a deep plain net at
# initialisation (lambda_max in the millions) 20 steps leave the negative end unresolved.
RESOLVED = 0.05


def resolved(value: float, residual: float, relative: float = RESOLVED) -> bool:
    return residual <= relative * abs(value)


@dataclass(frozen=True)
class Extremes:
    """The extreme Ritz values of a Lanczos run, and the residual norm ||H y - theta y|| of each
    (a true eigenvalue lies within it). Ritz values lie inside the spectrum, so lambda_max is
    never overestimated and lambda_min never more negative than the truth."""
    lambda_max: float
    lambda_min: float
    residual_max: float
    residual_min: float
    steps: int
    ritz: tuple[float, ...]  # every Ritz value, ascending

    @property
    def max_resolved(self) -> bool:
        return resolved(self.lambda_max, self.residual_max)

    @property
    def min_resolved(self) -> bool:
        return resolved(self.lambda_min, self.residual_min)

    @property
    def ratio(self) -> float | None:
        """|lambda_min / lambda_max|: 0 for a convex loss, large far from convexity (Li et al.);
        None unless both ends are resolved and lambda_max is positive."""
        if self.lambda_max <= 0 or not (self.max_resolved and self.min_resolved):
            return None
        return abs(min(self.lambda_min, 0.0)) / self.lambda_max


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, generator: torch.Generator,
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
            progress: Callable[[], None] | None = None) -> Extremes:
    """Both ends of a symmetric operator's spectrum from one Krylov space of `steps` matrix-vector
    products (Lanczos with full reorthogonalisation: few steps, so storing the basis is cheap and
    spares the ghost eigenvalues plain Lanczos makes). Power iteration would need two runs (the
    largest eigenvalue, then the most negative of the shifted operator) and converges slower for
    the same number of products, whose iterates this Krylov space contains.

    Written here rather than taken from hessian-eigenthings (1.0.0a5, read before writing this):
    that package is an alpha, needs scipy, and its `lanczos` returns one end per run; these
    measurements also run where only torch and numpy are installed (a training job on a GPU
    machine), and the algorithm is these thirty lines, checked against exact Hessians in tests.
    """
    steps = max(1, min(steps, n))
    v = torch.randn(n, generator=generator, dtype=torch.float64).to(device, dtype)
    v /= v.norm()
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    beta_last = 0.0
    for j in range(steps):
        w = matvec(basis[j])
        if progress is not None:
            progress()
        alpha = float(torch.dot(w.double(), basis[j].double()))
        alphas.append(alpha)
        # full reorthogonalisation, twice (classical Gram-Schmidt twice is as stable as modified)
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta_last = float(w.double().norm())
        if j == steps - 1 or beta_last <= 1e-10 * max(1.0, abs(alpha)):
            break  # done, or the Krylov space is invariant: its Ritz values are exact eigenvalues
        betas.append(beta_last)
        basis.append(w / beta_last)
    k = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[:k - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(tri)
    residuals = beta_last * s[-1].abs()
    return Extremes(lambda_max=float(theta[-1]), lambda_min=float(theta[0]), residual_max=float(residuals[-1]),
                    residual_min=float(residuals[0]), steps=k, ritz=tuple(float(t) for t in theta))


# -- filter-normalised loss slices ----------------------------------------------------------------

def filter_normalised_direction(params: Tensors, generator: torch.Generator) -> Tensors:
    """A random direction in weight space scaled filter by filter (Li et al. 2018, §4): each filter
    d[i] of a weight with two or more dimensions (a conv's output channel, a linear layer's row)
    gets the norm of the weight's filter w[i]. Parameters with fewer dimensions (biases,
    BatchNorm's scale and shift, Fixup's and SkipInit's scalars) are not moved, as Li et al. do by
    default. A filter whose weights are zero (Fixup's last branch conv at initialisation) is not
    moved either: its norm is zero."""
    out = {}
    for name, w in params.items():
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.device, w.dtype)
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        w_norm = w.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1)
        scale = torch.where(d_norm > 0, w_norm / d_norm, torch.zeros_like(d_norm))
        out[name] = d * scale.view(-1, *([1] * (w.dim() - 1)))
    return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def loss_slice(loss_at: Callable[[Tensors], float], params: Tensors, directions: Sequence[Tensors],
               coordinates: Sequence[Sequence[float]]) -> list[float | None]:
    """The loss at params + sum_k c_k * directions[k] for each coordinate tuple c; None where the
    loss is not finite."""
    out = []
    with torch.no_grad():
        for c in coordinates:
            moved = {name: p + sum(ck * d[name] for ck, d in zip(c, directions, strict=True))
                     for name, p in params.items()}
            out.append(_finite(float(loss_at(moved))))
    return out


def slice_grid(points: int) -> list[float]:
    """`points` evenly spaced coordinates from -1 to 1 (odd counts include 0 exactly)."""
    return [(-1.0 + 2.0 * i / (points - 1)) if points > 1 else 0.0 for i in range(points)]


def slice_shape(alphas: Sequence[float], losses: Sequence[float | None], tolerance: float = 1e-6) -> dict:
    """Summaries of a 1-D slice: the loss at 0, the curvature at 0 by a central second difference,
    the mean rise to the slice's ends, and how bumpy it is: the number of strict local minima
    inside the slice and the share of interior points whose second difference is negative beyond
    `tolerance` x max(1, |loss|) (rounding of a flat slice is no bump)."""
    if any(v is None for v in losses) or len(losses) < 3:
        return {"center_loss": None, "curvature_at_0": None, "rise": None, "local_minima": None,
                "non_convex_fraction": None}
    mid = min(range(len(alphas)), key=lambda i: abs(alphas[i]))
    h = alphas[1] - alphas[0]
    i0 = min(max(mid, 1), len(losses) - 2)
    second = [losses[i - 1] - 2 * losses[i] + losses[i + 1] for i in range(1, len(losses) - 1)]
    bumps = sum(s < -tolerance * max(1.0, abs(losses[i + 1])) for i, s in enumerate(second))
    minima = sum(losses[i] < losses[i - 1] and losses[i] < losses[i + 1] for i in range(1, len(losses) - 1))
    return {"center_loss": losses[mid], "curvature_at_0": second[i0 - 1] / h ** 2,
            "rise": (losses[0] + losses[-1]) / 2 - losses[mid], "local_minima": minima,
            "non_convex_fraction": bumps / len(second)}
