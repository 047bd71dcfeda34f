"""Per-step gradient telemetry, kept on the device and copied to the host once per epoch.

Per step and stage: the original study's mean |dL/d(stage output)| (a gradient of the
activations), and the mean |grad| and L2 norm of the stage's parameter gradients. Every
value is written into a preallocated device buffer by index, so recording never waits
for the GPU; `take_epoch` is the one sync.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class StageTelemetry:
    def __init__(self, model: nn.Module, capacity: int, device: torch.device):
        self.stage_names = [name for name, _ in model.stages()]
        s = len(self.stage_names)
        self.act_grad = torch.zeros(capacity, s, device=device)
        self.param_mean_abs = torch.zeros(capacity, s, device=device)
        self.param_l2 = torch.zeros(capacity, s, device=device)
        self.index = 0  # row of the current step in this epoch's buffers
        self._params = [(i, p) for i, (_, stage) in enumerate(model.stages()) for p in stage.parameters()]
        self._with_grad = None  # (params, stage index tensor, numel per stage): fixed after step 1
        self._handles = [stage.register_forward_hook(self._forward_hook(i))
                         for i, (_, stage) in enumerate(model.stages())]

    def _forward_hook(self, i: int):
        def hook(module, inputs, output):
            if output.requires_grad:  # training forward only; eval and probes pass untouched
                output.register_hook(lambda grad: self._record_act(i, grad))
        return hook

    def _record_act(self, i: int, grad: torch.Tensor):
        self.act_grad[self.index, i] = grad.abs().mean(dtype=torch.float32)

    def after_backward(self) -> None:
        """Record this step's parameter-gradient statistics, then advance a row."""
        if self._with_grad is None:
            # Nres keeps an unused shortcut conv: its parameters never get a gradient.
            kept = [(i, p) for i, p in self._params if p.grad is not None]
            device = self.param_l2.device
            stage_of = torch.tensor([i for i, _ in kept], device=device)
            numel = torch.zeros(len(self.stage_names), device=device).index_add_(
                0, stage_of, torch.tensor([float(p.numel()) for _, p in kept], device=device))
            self._with_grad = ([p for _, p in kept], stage_of, numel.clamp_min(1))
        params, stage_of, numel = self._with_grad
        grads = [p.grad for p in params]
        l1 = torch.stack(torch._foreach_norm(grads, 1)).float()
        l2sq = torch.stack(torch._foreach_norm(grads, 2)).float().square()
        # In place into this step's rows (reused across epochs, hence the zero_): no allocation.
        self.param_mean_abs[self.index].zero_().index_add_(0, stage_of, l1).div_(numel)
        self.param_l2[self.index].zero_().index_add_(0, stage_of, l2sq).sqrt_()
        self.index += 1

    def take_epoch(self) -> dict[str, np.ndarray]:
        """This epoch's rows as host arrays (the one sync; copies, since the buffers are reused)."""
        n, self.index = self.index, 0
        return {"act_grad_mean_abs": self.act_grad[:n].to("cpu", copy=True).numpy(),
                "param_grad_mean_abs": self.param_mean_abs[:n].to("cpu", copy=True).numpy(),
                "param_grad_l2": self.param_l2[:n].to("cpu", copy=True).numpy()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
