"""The benchmark compares like with like: the reference loop and the engine compute the same
thing; telemetry off really skips the hooks; compile matches eager within a stated tolerance."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli, status_json

from resdeg.bench import peak_bf16_flops, project_study, read_bench, time_engines
from resdeg.config import make_config
from resdeg.data import preprocess, synthetic_dataset
from resdeg.errors import ResdegError
from resdeg.reference import ReferenceLoop, reference_loader, reference_transform
from resdeg.store import read_run
from resdeg.telemetry import StageTelemetry
from resdeg.train import Engine, epoch_generator, evaluate

CPU = torch.device("cpu")
# torch.compile may reorder floating-point sums (convolution weight gradients, BatchNorm
# statistics), so compiled and eager training agree to rounding, not bit for bit. The stated
# tolerance: |compiled - eager| / |eager| <= 1e-4 in the L2 norm, per tensor, and for gradients
# per stage (element-wise tests would fail on entries that are sums cancelling to near zero,
# such as the bias of a conv followed by BatchNorm, whose true gradient is zero).
COMPILE_TOL = 1e-4


def _tiny_cfg(**over):
    return make_config("seed", {"width_mult": 0.125, "image_size": 32, "batch_size": 8, **over},
                       model="resnet18", dataset="synthetic")


def _trainer(cfg, data, tmp_path):
    return Engine(cfg, data, CPU)


def test_reference_and_engine_compute_the_same_losses_and_stage_gradients(tmp_path):
    cfg = _tiny_cfg(channels_last=False)  # the reference's memory layout: the same kernels, the same rounding
    data = synthetic_dataset(16, 8)
    trainer = _trainer(cfg, data, tmp_path)
    ref = ReferenceLoop(cfg, data.num_classes, CPU)
    ref.model.load_state_dict(trainer.model.state_dict())
    batches = reference_loader(data.train_x, data.train_y, cfg, workers=0, shuffle=False)
    engine_losses, ref_losses = [], []
    for i, (x, y) in enumerate(batches):  # two SGD steps, same weights, same batches, fp32
        engine_loss, _ = trainer.train_step(trainer.train_x[8 * i:8 * i + 8], trainer.train_y[8 * i:8 * i + 8])
        engine_losses.append(engine_loss.item())
        ref_losses.append(ref.step(x, y))
    assert len(ref_losses) == 2
    # Equal up to fp32 rounding: the pipelines normalise with different (exact) arithmetic.
    np.testing.assert_allclose(engine_losses, ref_losses, rtol=1e-5)
    # The engine's device-buffered telemetry records what the original's .item() hooks logged.
    act = trainer.telemetry.take_epoch()["act_grad_mean_abs"]
    np.testing.assert_allclose(act[:, 0], ref.grad_log["stage0"], rtol=1e-4)
    np.testing.assert_allclose(act[:, -1], ref.grad_log["stage4"], rtol=1e-4)
    for (name, a), b in zip(trainer.model.state_dict().items(), ref.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_reference_transform_matches_the_device_preprocessing_when_resizing():
    """At 224 px (here 64) the original resizes with PIL, which computes in fixed point and
    returns uint8 again: the two inputs differ by that rounding only, at most one grey level
    (2/255 after std 0.5), and under half a level on average."""
    cfg = _tiny_cfg(image_size=64)
    data = synthetic_dataset(4, 4)
    (x_ref, _), = list(reference_loader(data.train_x, data.train_y, cfg, workers=0, shuffle=False))
    x_engine = preprocess(data.train_x, cfg)
    assert x_ref.shape == x_engine.shape == (4, 3, 64, 64)
    diff = (x_ref - x_engine).abs() * 0.5 * 255  # in grey levels
    assert diff.max().item() <= 1 + 1e-4 and diff.mean().item() <= 0.5
    assert "Resize" in repr(reference_transform(cfg, 32)) and "RandomCrop" not in repr(reference_transform(cfg, 32))


def _count_records(monkeypatch):
    calls = {"act": 0, "param": 0}
    record_act, after_backward = StageTelemetry._record_act, StageTelemetry.after_backward

    def counting_act(self, i, grad):
        calls["act"] += 1
        return record_act(self, i, grad)

    def counting_after(self):
        calls["param"] += 1
        return after_backward(self)

    monkeypatch.setattr(StageTelemetry, "_record_act", counting_act)
    monkeypatch.setattr(StageTelemetry, "after_backward", counting_after)
    return calls


@pytest.mark.parametrize("telemetry", [True, False])
def test_telemetry_off_skips_every_hook(tmp_path, monkeypatch, telemetry):
    calls = _count_records(monkeypatch)
    data = synthetic_dataset(16, 8)
    trainer = _trainer(_tiny_cfg(telemetry=telemetry), data, tmp_path)
    trainer.train_epoch(0, None)
    stages = [m for _, m in trainer.model.stages()]
    if telemetry:
        assert calls == {"act": 2 * 5, "param": 2}  # 2 steps, 5 stages
        assert all(len(m._forward_hooks) == 1 for m in stages)
    else:
        assert calls == {"act": 0, "param": 0}
        assert trainer.telemetry is None and not any(m._forward_hooks for m in stages)


def _compile_works() -> str | None:
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(4))
    except Exception as e:  # no C++ compiler, unsupported platform, ...
        return f"torch.compile does not work on this machine: {type(e).__name__}: {str(e).splitlines()[0][:150]}"
    return None


def test_compile_matches_eager_step_by_step_and_end_to_end(tmp_path, request):
    """Compiled and eager training compute the same step (loss, telemetry, gradients, updated
    weights and BatchNorm statistics) from the same state within COMPILE_TOL. Compared
    step by step, not as whole trajectories: in small nets a last-bit difference (the thread
    count does it too) can flip a max-pool or ReLU tie a few steps later and then grow."""
    reason = _compile_works()
    if reason:
        pytest.skip(reason)
    # One thread: with two, eager and compiled kernels split their sums differently, and on some CPUs
    # (seen on an AMD EPYC, not on Intel Xeons) that last-bit difference flips a max-pool tie in one step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    cfg = make_config("smoke", {"width_mult": 0.125, "image_size": 32, "batch_size": 32, "train_images": 96,
                                "test_images": 64, "eval_train_images": 64, "precision": "fp32"},
                      model="resnet18", dataset="synthetic")  # fp32: bf16 rounding would swamp the comparison
    data = synthetic_dataset(96, 64)
    eager = _trainer(cfg, data, tmp_path)
    compiled = _trainer(dataclasses.replace(cfg, compile=True), data, tmp_path)
    gens = [epoch_generator(cfg.seed, 0, CPU) for _ in range(2)]  # the same augmentation for both
    def close(got, want, what):
        err = ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()
        assert err <= COMPILE_TOL, f"{what}: relative L2 error {err:.2e} > {COMPILE_TOL}"

    for i in range(3):
        compiled.model.load_state_dict(eager.model.state_dict())  # in place: the compiled graphs must see it
        x, y = eager.train_x[32 * i:32 * i + 32], eager.train_y[32 * i:32 * i + 32]
        loss_e, _ = eager.train_step(x, y, gens[0])
        loss_c, _ = compiled.train_step(x, y, gens[1])
        close(loss_c, loss_e, f"step {i} loss")
        # per stage, as telemetry
        for (name, a), (_, b) in zip(eager.model.stages(), compiled.model.stages(), strict=True):
            grads = lambda stage: torch.cat([p.grad.flatten() for p in stage.parameters() if p.grad is not None])  # noqa: E731
            close(grads(b), grads(a), f"step {i} parameter gradients of {name}")
        for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values(), strict=True):
            if a.is_floating_point():  # weights after the update, BatchNorm running statistics
                close(b, a, f"step {i} {name}")
    te, tc = eager.telemetry.take_epoch(), compiled.telemetry.take_epoch()
    for key in te:
        close(torch.from_numpy(tc[key]), torch.from_numpy(te[key]), key)
    compiled.model.load_state_dict(eager.model.state_dict())
    args = (eager.test_x, eager.test_y, cfg, "fp32", False)
    close(torch.tensor(evaluate(compiled.model, *args)), torch.tensor(evaluate(eager.model, *args)), "eval")

    # `--set compile=true` end to end: same cache entry (compile is not hashed), a finished run.
    run = ["run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet",
           *[f"--set={k}={v}" for k, v in cfg.to_dict().items() if k in ("width_mult", "image_size", "batch_size",
                                                                          "train_images", "test_images",
                                                                          "eval_train_images", "precision")],
           "--set", "epochs=1", "--set", "compile=true", "--results", tmp_path / "results"]
    cli(*run)
    (row,) = status_json(tmp_path / "results")
    run = read_run(row["path"])
    assert run.status == "done" and run.config.compile is True
    assert run.config_hash == dataclasses.replace(cfg, epochs=1).hash


def test_bench_cli_writes_a_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--device", "cpu", "--set", "width_mult=0.0625", "--set", "image_size=32",
                 "--batch-size", "4", "--steps", "2", "--warmup", "1", "--repeats", "1", "--projection-steps", "1",
                 "--workers", "0", "--out", out)
    doc = read_bench(out)  # the typed, validated record
    assert set(doc.loops) == {"engine_telemetry", "engine_no_telemetry", "reference"}
    assert all(r.model_flops_utilisation is None for r in doc.loops.values())  # no peak on a CPU
    assert doc.loops["reference"].workers == 0 and doc.loops["engine_telemetry"].eval_images_per_s > 0
    assert doc.train_flops_per_image > 0 and doc.environment["device_type"] == "cpu"
    assert set(doc.projection) == {"original", "cifar"}
    assert set(doc.projection["original"]["models"]) == {"resnet18", "resnet50"}
    # what is printed is what is stored
    assert f"a/c = {doc.ratios.a_over_c:.2f}x" in result.stdout and "projected original study" in result.stdout
    assert f"{doc.loops['reference'].images_per_s:>10.1f}" in result.stdout


def test_more_warmup_steps_than_an_epoch_wrap_the_telemetry_rows():
    # The projection times one step after two warm-up steps: the warm-up wraps an epoch.
    cfg = _tiny_cfg(epochs=3)
    (timed,) = time_engines([cfg], synthetic_dataset(8, 8), CPU, steps=1, warmup=3, repeats=2)
    assert timed["steps"] == 1 and len(timed["repeat_seconds"]) == 2 and timed["images_per_s"] > 0


def test_bench_rejects_bad_settings_in_one_line(tmp_path):
    result = cli("bench", "--device", "cpu", "--steps", "0", "--out", tmp_path / "b.json", expect=1)
    assert result.stderr.strip().count("\n") == 0 and "--steps must be at least 1" in result.stderr
    assert not (tmp_path / "b.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "resdeg.bench", "schema_version": 99}))
    with pytest.raises(ResdegError, match="schema"):
        read_bench(tmp_path / "bad.json")


def test_batch_size_1_with_batchnorm_is_one_line(tmp_path):
    # one image per batch cannot pass BatchNorm in training (32 px: the last stage's maps are 1x1)
    result = cli("bench", "--device", "cpu", "--quick", "--batch-size", "1", "--set", "image_size=32",
                 "--out", tmp_path / "b.json", expect=None)
    assert_one_line_error(result, "batch size 1 with FULL: BatchNorm", "--batch-size")
    assert not (tmp_path / "b.json").exists()


def test_projection_adds_train_and_eval_time_over_the_study():
    rates = {"resnet18": {"images_per_s": 1000.0, "eval_images_per_s": 4000.0, "batch_size": 128},
             "resnet50": {"images_per_s": 250.0, "eval_images_per_s": 1000.0, "batch_size": 128}}
    p = project_study("seed", rates, ("resnet18", "resnet50"), n_variants=4)
    # seed: 20 epochs of 50,000 training images, then 10,000 test + 5,000 eval-mode train images scored
    assert p["models"]["resnet18"]["epoch_s"] == pytest.approx(50 + 15 / 4)
    assert p["models"]["resnet50"]["run_s"] == pytest.approx(20 * (200 + 15))
    assert p["total_s"] == pytest.approx(4 * 20 * (50 + 3.75 + 200 + 15)) and p["runs"] == 8


def test_peak_table_matches_device_names(monkeypatch):
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989.4e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA GeForce RTX 3090", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert peak_bf16_flops(torch.device("cuda")) == peak
    assert peak_bf16_flops(CPU) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: host syncs are a GPU matter")
@pytest.mark.parametrize("protocol", ["seed", "cifar"])
def test_engine_steps_never_wait_for_the_gpu(tmp_path, protocol):
    """After the first step (which sets up buffers), a training step queues work and returns:
    torch's sync debug mode turns any host synchronisation inside it into an error."""
    cfg = make_config(protocol, {"width_mult": 0.125, "image_size": 64, "batch_size": 16}, model="resnet18",
                      dataset="synthetic")
    trainer = Engine(cfg, synthetic_dataset(64, 16), torch.device("cuda"))
    gen = epoch_generator(cfg.seed, 0, trainer.device)
    x, y = trainer.train_x[:16], trainer.train_y[:16]
    trainer.train_step(x, y, gen, lr=cfg.lr)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3):
            trainer.train_step(x, y, gen, lr=cfg.lr * (step + 1) / 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.telemetry.take_epoch()["act_grad_mean_abs"].shape == (4, 5)


def test_compile_without_a_compiler_is_a_one_line_error(tmp_path, monkeypatch):
    import resdeg.train

    monkeypatch.setattr(resdeg.train.shutil, "which", lambda name: None)
    with pytest.raises(ResdegError, match="needs a C\\+\\+ compiler"):
        _trainer(_tiny_cfg(compile=True), synthetic_dataset(16, 8), tmp_path)
