"""What the probes look at: a run's probe images, the output of every stage, and the forward and
backward signal of every stage at initialisation and after training.

Stage outputs are produced one stage at a time, each from the previous stage's outputs for all
images, so one forward pass over the net suffices and at most two stages are held at once
(ResNet50 at 224 px: stage1 alone is 1.6 GB for 500 images).
"""
from __future__ import annotations

import copy
import ctypes
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..data import Dataset, preprocess, probe_subset, test_subset
from ..errors import ResdegError
from ..models import ResNet, model_from_config
from .signal import block_signal
from .store import SIGNAL_KEYS, BlockSignal

PROBE_BATCH = 100  # images per forward pass: bounds the memory inside a stage at 224 px
# Signal propagation per block is measured on one batch (BatchNorm on its statistics, as in a
# training step): every k-th probe image, at most this many (ResNet50 at 224 px: 0.8 GB a stage).
SPP_IMAGES = 250


def prepare_cpu(reuse_memory: bool = True) -> None:
    """Process-wide CPU settings for probing.

    Subnormal floats flush to zero, as in training (Nbn nets' activations drift there, and x86
    handles them in microcode). With `reuse_memory`, glibc keeps freed large blocks for reuse:
    stage outputs and the criteria's 32 MiB float64 blocks all exceed its mmap threshold, so
    each would otherwise be fresh pages from the kernel; those page faults took a quarter of
    the CPU time of a ResNet50 probe (scripts/bench_probe.py).
    """
    torch.set_flush_denormal(True)
    if reuse_memory:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap
        except (OSError, AttributeError):
            pass  # not glibc: its allocator keeps its own ways


def probe_images(data: Dataset, cfg, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices into the test split, uint8 images, labels) of the n probe images: a fixed,
    class-balanced subset of the run's test images."""
    available = len(test_subset(data, cfg))
    if n > available:
        raise ResdegError(f"--probe-images {n} exceeds the {available} test images of protocol "
                          f"{cfg.protocol!r} on {cfg.dataset}; use --probe-images {available} or fewer")
    idx = probe_subset(data, cfg, n)
    return idx, data.test_x[idx], data.test_y[idx]


def initial_model(cfg, num_classes: int) -> ResNet:
    """The run's untrained net: seeded exactly as Trainer seeds it, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return model_from_config(cfg, num_classes)


@torch.no_grad()
def stage_features(model: ResNet, x_u8: torch.Tensor, cfg, device: torch.device,
                   batch: int = PROBE_BATCH, batch_stats: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (stage name, float32 outputs (n, C, H, W) on `device`) for every stage, in eval mode,
    or with BatchNorm on batch statistics (`batch_stats`, on a copy): an untrained net's running
    statistics are still 0 and 1, so in eval mode its BatchNorm would be the identity.

    The yielded tensor is the next stage's input, so a caller must not modify it.
    """
    model = copy.deepcopy(model).train() if batch_stats else model.eval()
    previous = None
    for name, stage in model.stages():
        out = None
        for start in range(0, len(x_u8), batch):
            if previous is None:
                inp = preprocess(x_u8[start:start + batch].to(device), cfg)
            else:
                inp = previous[start:start + batch]
            part = stage(inp).float()
            if out is None:  # filled in place: no concatenation copy of a whole stage
                out = torch.empty((len(x_u8), *part.shape[1:]), dtype=torch.float32, device=device)
            out[start:start + len(part)] = part
        previous = None  # free the input stage before the caller works on this one
        yield name, out
        previous = out


class _Moments:
    """Mean and population std of many tensors' elements, merged batch by batch (Chan et al.),
    in float64; also the mean absolute value."""

    def __init__(self):
        self.count, self.mean, self.m2, self.abs_sum = 0, 0.0, 0.0, 0.0

    def add(self, t: torch.Tensor) -> None:
        n = t.numel()
        var, mean = (float(v) for v in torch.var_mean(t.float(), correction=0))
        delta = mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += var * n + delta * delta * self.count * n / total
        self.abs_sum += float(torch.linalg.vector_norm(t.float(), 1))  # no |t| copy
        self.count = total

    def values(self) -> tuple[float | None, float | None, float | None]:
        std = math.sqrt(self.m2 / self.count) if self.m2 >= 0 else math.nan
        return tuple(v if math.isfinite(v) else None for v in (self.mean, std, self.abs_sum / self.count))


def signal_propagation(model: ResNet, x_u8: torch.Tensor, y: torch.Tensor, cfg,
                       device: torch.device) -> dict[str, dict[str, float | None]]:
    """Per stage: mean and std of the forward activations, and mean, std and mean |.| of
    dL/d(stage output), over every element of every probe image.

    BatchNorm runs in train mode (batch statistics), as in a training step: at initialisation
    its running statistics are still the defaults (0 and 1), so eval mode would describe a net
    that never trains. The work is done on a copy, so the model's running statistics are never
    updated. L is the mean cross-entropy of a batch of cfg.batch_size images (the n images split
    into near-equal batches), the training step's loss, so the gradients are on the scale of the
    run's per-step telemetry (act_grad_mean_abs).
    """
    net = copy.deepcopy(model).to(device).train()
    net.requires_grad_(False)  # only activation gradients are needed: skips every weight gradient
    names = [name for name, _ in net.stages()]
    acts = {name: _Moments() for name in names}
    grads = {name: _Moments() for name in names}
    outputs: list[torch.Tensor] = []
    hooks = [stage.register_forward_hook(lambda m, i, out: outputs.append(out)) for _, stage in net.stages()]
    try:
        for idx in torch.tensor_split(torch.arange(len(y)), math.ceil(len(y) / cfg.batch_size)):
            outputs.clear()
            x = preprocess(x_u8[idx].to(device), cfg).requires_grad_(True)
            loss = F.cross_entropy(net(x).float(), y[idx].to(device))
            for name, out, grad in zip(names, outputs, torch.autograd.grad(loss, outputs), strict=True):
                acts[name].add(out.detach())
                grads[name].add(grad)
    finally:
        for h in hooks:
            h.remove()
    stats: dict[str, dict] = {key: {} for key in SIGNAL_KEYS}
    for name in names:
        stats["act_mean"][name], stats["act_std"][name], _ = acts[name].values()
        stats["grad_mean"][name], stats["grad_std"][name], stats["grad_mean_abs"][name] = grads[name].values()
    return stats


def block_signals(model: ResNet, x_u8: torch.Tensor, cfg, device: torch.device) -> tuple[BlockSignal, ...]:
    """Brock et al.'s signal propagation at every residual block, on one batch of probe images
    spread over the whole probe set (BatchNorm on batch statistics, on a copy of the model).
    No stage ranks: the probe has them from every stage's criteria batch, over all its images."""
    step = max(1, math.ceil(len(x_u8) / SPP_IMAGES))
    x = preprocess(x_u8[::step].to(device), cfg)
    blocks = block_signal(model.to(device), x, batch_stats=True, stage_ranks=False)["blocks"]
    return tuple(BlockSignal(b["name"], b["stage"], b["index"], b["avg_channel_squared_mean"],
                             b["avg_channel_variance"], b["branch_variance"]) for b in blocks)
