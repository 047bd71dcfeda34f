"""Signal propagation through a ResNet, as pure functions: tensors in, plain numbers out.

Per residual block, Brock et al. 2021's signal-propagation plots ("Characterizing signal
propagation to close the performance gap in unnormalized ResNets", §3):
- the average channel squared mean of the block's output: the mean over the N, H, W axes of
  each channel, squared, averaged over channels;
- the average channel variance of the block's output: each channel's variance over N, H, W,
  averaged over channels;
- the same average channel variance of the residual branch's output before the add.
Per stage, the effective rank of its features (rank collapse without normalisation:
Daneshmand et al. 2020): Roy & Vetterli 2007's exp(entropy) of the normalised singular values
of the centred (n, d) feature matrix, found from the n x n Gram matrix (d can be 10^6) of the
probes' numeric core (gram.py), which the criteria share.

Statistics are computed in float64; a non-finite one is None (JSON has no NaN).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..models import ResNet
from .gram import centred_gram, nonzero_eigenvalues


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def channel_statistics(x: torch.Tensor) -> tuple[float | None, float | None]:
    """(average channel squared mean, average channel variance) of (N, C, H, W) activations,
    over the N, H, W axes (population variance), in float64."""
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) activations, got shape {tuple(x.shape)}")
    var, mean = torch.var_mean(x.detach().double(), dim=(0, 2, 3), correction=0)
    return _finite(float(mean.square().mean())), _finite(float(var.mean()))


def effective_rank_from_gram(gram: torch.Tensor) -> float | None:
    """Roy & Vetterli's effective rank exp(-sum p_i log p_i), p_i = s_i / sum_j s_j, of the matrix
    whose Gram matrix this is (s_i = sqrt of the Gram's eigenvalues: its singular values).

    Numerical zeros (gram.nonzero_count) are left out, so an exactly rank-k matrix is not
    credited with rounding noise. A zero matrix has effective rank 0."""
    gram = gram.double()
    if not bool(torch.isfinite(gram).all()):
        return None
    s = nonzero_eigenvalues(gram).sqrt()
    if len(s) == 0:
        return 0.0
    p = s / s.sum()
    return _finite(math.exp(float(-(p * p.log()).sum())))


def effective_rank(features: torch.Tensor) -> float | None:
    """Effective rank of (n, ...) features: their centred (n, d) matrix; at most min(n - 1, d).
    Invariant to scaling the features."""
    return effective_rank_from_gram(centred_gram(features))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def block_signal(model: ResNet, x: torch.Tensor, batch_stats: bool = True,
                 stage_ranks: bool = True) -> dict[str, list[dict]]:
    """One forward pass of the preprocessed batch `x` through `model`, measured at every block.

    Returns {"blocks": [...], "stages": [...]}, plain Python values:
    - blocks, in forward order: {"name": "stage2.3", "stage": "stage2", "index": 3 (within the
      stage), "position": 0.. (across the net), "residual": bool, "avg_channel_squared_mean",
      "avg_channel_variance" (of the block's output), "branch_variance" (average channel variance
      of block.branch(input), the residual branch before the add)};
    - stages, stage0 (the stem) first: {"name", "effective_rank", "max_rank": min(n - 1, d)};
      empty without `stage_ranks` (the probe takes each stage's rank from its criteria's Gram,
      over all probe images, and would throw these away).

    A plain (Nres, Nboth) block adds nothing: its "branch" is its whole pre-activation output,
    relu(branch) being the block's output, and branch_variance is that output's variance.

    batch_stats: BatchNorm uses the batch's statistics, as in a training step (at initialisation
    its running statistics are still 0 and 1, which describe no trained net), on a copy of the
    model, so the model's running statistics are never updated; False: the model's eval mode.
    The whole batch is one BatchNorm batch and one feature matrix: choose n accordingly.
    """
    net = copy.deepcopy(model) if batch_stats and _has_batchnorm(model) else model
    was_training = net.training
    net.train(batch_stats)
    blocks: list[dict] = []
    stages: list[dict] = []

    def block_hook(name: str, stage: str, index: int):
        def hook(block, inputs, output):
            sq_mean, var = channel_statistics(output)
            blocks.append({"name": name, "stage": stage, "index": index, "position": len(blocks),
                           "residual": bool(block.residual), "avg_channel_squared_mean": sq_mean,
                           "avg_channel_variance": var,
                           "branch_variance": channel_statistics(block.branch(inputs[0]))[1]})
        return hook

    def stage_hook(name: str):
        def hook(stage, inputs, output):
            n, d = output.shape[0], output[0].numel()
            stages.append({"name": name, "effective_rank": effective_rank(output), "max_rank": min(n - 1, d)})
        return hook

    handles = [stage.register_forward_hook(stage_hook(name)) for name, stage in net.stages() if stage_ranks]
    for name, block in net.blocks():
        stage, index = name.split(".")
        handles.append(block.register_forward_hook(block_hook(name, stage, int(index))))
    try:
        for _, stage in net.stages():  # the stages only: the classifier is not measured
            x = stage(x)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return {"blocks": blocks, "stages": stages}
