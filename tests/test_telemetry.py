"""The recorded telemetry equals a direct computation with torch.autograd.grad."""
import pytest
import torch
import torch.nn.functional as F

from resdeg.models import VARIANTS, build_model
from resdeg.telemetry import StageTelemetry


@pytest.mark.parametrize("variant", ["FULL", "Nres", "Nboth"])
def test_recorded_telemetry_equals_direct_computation(variant):
    torch.manual_seed(0)
    model = build_model("resnet18", stem="cifar", width_mult=0.125, **VARIANTS[variant].model_kwargs())
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    tel = StageTelemetry(model, capacity=2, device=torch.device("cpu"))
    for _ in range(2):  # two steps, to check rows advance
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        tel.after_backward()
    got = tel.take_epoch()
    tel.remove()

    # Direct: the gradient of the loss with respect to every stage output.
    model.zero_grad(set_to_none=True)
    h, outputs = x, []
    for _, stage in model.stages():
        h = stage(h)
        outputs.append(h)
    loss = F.cross_entropy(model.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)), y)
    stage_grads = torch.autograd.grad(loss, outputs, retain_graph=True)
    loss.backward()
    act = torch.stack([g.abs().mean() for g in stage_grads])
    mean_abs, l2 = [], []
    for _, stage in model.stages():
        grads = [p.grad.flatten() for p in stage.parameters() if p.grad is not None]
        flat = torch.cat(grads)
        mean_abs.append(flat.abs().mean())
        l2.append(flat.norm())
    for row in range(2):
        assert torch.allclose(torch.from_numpy(got["act_grad_mean_abs"][row]), act, rtol=1e-5)
        assert torch.allclose(torch.from_numpy(got["param_grad_mean_abs"][row]), torch.stack(mean_abs), rtol=1e-5)
        assert torch.allclose(torch.from_numpy(got["param_grad_l2"][row]), torch.stack(l2), rtol=1e-5)
    assert got["act_grad_mean_abs"].shape == (2, 5)


def test_hooks_are_silent_outside_training_and_removable():
    model = build_model("resnet20", width_mult=0.25)
    tel = StageTelemetry(model, capacity=1, device=torch.device("cpu"))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert tel.index == 0 and not tel.act_grad.any()
    tel.remove()
    assert not any(s._forward_hooks for _, s in model.stages())
