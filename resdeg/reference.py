"""A training loop written like the original study's, kept only as the benchmark's baseline.

Like the note's code: PIL images through torchvision transforms (Resize to the protocol's
size, ToTensor, Normalize) on the CPU in a DataLoader, fp32, the default SGD, and a full
backward hook on the first and last stage that calls `.item()` at every step (a host sync),
plus the usual running loss and accuracy read with `.item()`. Same model builder and config
as the engine, so the two compute the same thing (tests/test_bench.py checks it).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from .models import model_from_config

# The PyTorch CIFAR-10 tutorial's DataLoader setting, which code like the note's follows.
DEFAULT_WORKERS = 2


class PILImages(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images served as PIL images through `transform`, the way
    torchvision.datasets.CIFAR10 serves its in-memory arrays."""

    def __init__(self, x_u8: torch.Tensor, y: torch.Tensor, transform, length: int | None = None):
        self.x = x_u8.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as PIL wants
        self.y = y.tolist()
        self.transform = transform
        self.length = length or len(self.y)  # longer than the data: the images repeat

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        j = i % len(self.y)
        return self.transform(Image.fromarray(self.x[j])), self.y[j]


def reference_transform(cfg, stored_size: int):
    """The original's CPU pipeline (plus the usual crop/flip when the protocol augments)."""
    steps = []
    if cfg.augment:
        steps += [transforms.RandomCrop(stored_size, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.Resize(cfg.image_size), transforms.ToTensor(), transforms.Normalize(cfg.mean, cfg.std)]
    return transforms.Compose(steps)


def reference_loader(x_u8: torch.Tensor, y: torch.Tensor, cfg, workers: int = DEFAULT_WORKERS,
                     length: int | None = None, shuffle: bool = True, seed: int = 0):
    data = PILImages(x_u8, y, reference_transform(cfg, x_u8.shape[-1]), length)
    return torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=torch.Generator().manual_seed(seed))


class ReferenceLoop:
    """The original's model, optimiser and hooks; `step` is one iteration of its training loop."""

    def __init__(self, cfg, num_classes: int, device: torch.device):
        self.device = device
        torch.manual_seed(cfg.seed)
        self.model = model_from_config(cfg, num_classes).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
        stages = self.model.stages()
        self.grad_log: dict[str, list[float]] = {stages[0][0]: [], stages[-1][0]: []}
        self.handles = [module.register_full_backward_hook(self._hook(name))
                        for name, module in (stages[0], stages[-1])]
        # stage0's input (the image) needs no gradient, so torch warns that the hook sees only
        # grad_output; grad_output is all the original logged.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with")
        self.running_loss, self.correct, self.seen = 0.0, 0, 0

    def _hook(self, name: str):
        def hook(module, grad_input, grad_output):
            self.grad_log[name].append(grad_output[0].abs().mean().item())  # a host sync per step
        return hook

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        x, y = x.to(self.device), y.to(self.device)
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        value = loss.item()
        self.running_loss += value * len(y)
        self.correct += (out.argmax(1) == y).sum().item()
        self.seen += len(y)
        return value

    def remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()
