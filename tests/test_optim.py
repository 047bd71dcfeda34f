"""The optimisation measures (H4, H5): each metric against a case with a known answer, their
determinism, the stored record, and `resdeg optim` end to end on a tiny grid (cached, skipped runs)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, cli
from torch import nn

from resdeg.models import build_model
from resdeg.probes import optim
from resdeg.probes.optim_measure import frozen_statistics_net, measure_net
from resdeg.probes.optim_store import CorruptOptim, OptimRecord, OptimSettings, read_optim

SMALL = OptimSettings(gradient_images=4, distances=(0.001, 0.01, 0.1), summary_distance=0.01, curvature_images=8,
                      lanczos_steps=4, slice_points=5)
SMALL_ARGS = ["--gradient-images", "4", "--curvature-images", "8", "--lanczos-steps", "3", "--slice-points", "3"]


def _tiny_net(n_in=3, hidden=4, n_out=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_finds_both_ends_of_an_exact_hessian(seed):
    """A tanh net's Hessian is indefinite: its largest and most negative eigenvalues from Lanczos
    on double-backward products equal those of the exact Hessian (full Krylov space)."""
    net = _tiny_net(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (7,), generator=g)
    # the exact Hessian of the loss, written as a function of the flat parameters
    names = [n for n, _ in net.named_parameters()]
    like = [p.detach() for p in net.parameters()]

    def loss(vector):
        params = dict(zip(names, optim.unflatten(vector, like), strict=True))
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, optim.flatten(like))
    exact = torch.linalg.eigvalsh(hessian)
    assert exact[0] < 0 < exact[-1]  # indefinite: both ends mean something
    matvec = optim.hessian_vector_product([lambda: F.cross_entropy(net(x), y)], list(net.parameters()))
    v = torch.randn(len(hessian), generator=g, dtype=torch.float64)
    assert torch.allclose(matvec(v), hessian @ v, atol=1e-10)
    ext = optim.lanczos(matvec, len(hessian), len(hessian), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ext.lambda_max == pytest.approx(float(exact[-1]), abs=1e-8)
    assert ext.lambda_min == pytest.approx(float(exact[0]), abs=1e-8)
    assert ext.ratio == pytest.approx(abs(float(exact[0] / exact[-1])), rel=1e-6)


def test_lanczos_with_few_steps_brackets_the_spectrum():
    """Fewer steps than the dimension: the Ritz values lie inside the spectrum (never beyond it),
    and the residual bounds the distance to a true eigenvalue."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    h = (a + a.T) / 2
    exact = torch.linalg.eigvalsh(h)
    ext = optim.lanczos(lambda v: h @ v, 40, 8, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert exact[0] - 1e-9 <= ext.lambda_min and ext.lambda_max <= exact[-1] + 1e-9
    assert min(abs(exact - ext.lambda_max)) <= ext.residual_max + 1e-9
    assert ext.steps == 8 and len(ext.ritz) == 8


def test_an_end_hidden_beneath_a_huge_other_end_is_unresolved_and_gives_no_ratio():
    """A deep plain net at initialisation: eigenvalues up to millions above, one small negative one.
    A few Lanczos steps find the top but not the bottom: it is marked so and no ratio is claimed."""
    eigenvalues = torch.cat([torch.tensor([-1.0]), torch.logspace(0, 6, 59)]).double()
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    h = q @ torch.diag(eigenvalues) @ q.T
    few = optim.lanczos(lambda v: h @ v, 60, 6, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert few.max_resolved and not few.min_resolved and few.ratio is None
    full = optim.lanczos(lambda v: h @ v, 60, 60, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert full.min_resolved and full.lambda_min == pytest.approx(-1.0, abs=1e-6)
    assert full.ratio == pytest.approx(1e-6, rel=1e-4)


def test_hessian_of_a_batchnorm_net_with_frozen_statistics_is_exact():
    """As measured: BatchNorm on statistics fixed from the batches, the weights of two or more
    dimensions moved, the loss averaged over batches. The extremes match the exact Hessian's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    halves = [(x[:5], y[:5]), (x[5:], y[5:])]
    frozen = frozen_statistics_net(net, halves)
    assert not frozen.training and not torch.equal(frozen[1].running_mean, net[1].running_mean)
    names = [n for n, p in frozen.named_parameters() if p.dim() > 1]
    like = [frozen.get_parameter(n).detach() for n in names]

    def loss(vector):
        params = dict(zip(names, optim.unflatten(vector, like), strict=True))
        return sum(F.cross_entropy(torch.func.functional_call(frozen, params, (xb,)), yb) for xb, yb in halves) / 2

    hessian = torch.autograd.functional.hessian(loss, optim.flatten(like))
    leaves = [w.clone().requires_grad_(True) for w in like]
    matvec = optim.hessian_vector_product(
        [lambda xb=xb, yb=yb: F.cross_entropy(
            torch.func.functional_call(frozen, dict(zip(names, leaves, strict=True)), (xb,)), yb)
         for xb, yb in halves], leaves)
    ext = optim.lanczos(matvec, len(hessian), len(hessian), torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.eigvalsh(hessian)
    assert ext.lambda_max == pytest.approx(float(exact[-1]), abs=1e-8)
    assert ext.lambda_min == pytest.approx(float(exact[0]), abs=1e-8)


def test_a_linear_models_gradients_are_perfectly_correlated_at_every_distance():
    """A linear model's input gradient is the same everywhere: correlation 1 at every distance."""
    torch.manual_seed(0)
    lin = nn.Linear(12, 5)
    x = torch.randn(6, 12)
    direction = torch.randn(6, 12)
    proj = torch.randn(5)
    gradients = lambda z: optim.projected_gradients(lambda u: (lin(u), {}), z, proj)  # noqa: E731
    corr = optim.gradient_correlations(gradients, x, direction, [1e-3, 0.1, 10.0, 1e3])
    assert torch.allclose(corr["input"], torch.ones(4, 6, dtype=torch.float64), atol=1e-6)


def test_a_relu_nets_gradients_decorrelate_with_distance():
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.ReLU())], nn.Linear(16, 3))
    x, d = torch.randn(32, 16), torch.randn(32, 16)
    proj = torch.randn(3)
    corr = optim.gradient_correlations(lambda z: optim.projected_gradients(lambda u: (net(u), {}), z, proj),
                                       x, d, [1e-6, 10.0])
    near, far = (float(c.nanmean()) for c in corr["input"])
    assert near > 0.99 and far < near


def test_row_correlation_and_half_distance():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 4.0, 6.1], [3.0, 2.0, 1.0]])
    r = optim.row_correlation(a, b)
    assert r[0] == pytest.approx(1.0, abs=1e-3) and math.isnan(r[1])  # a constant row has no correlation
    # halfway between 0.7 at distance 0.01 and 0.3 at 0.1, in log distance: sqrt(0.01 * 0.1)
    assert optim.half_distance([0.001, 0.01, 0.1], [0.9, 0.7, 0.3]) == pytest.approx(math.sqrt(0.001))
    assert optim.half_distance([0.001, 0.01], [0.9, 0.8]) is None  # never falls to 1/2 on the grid
    assert optim.half_distance([0.001, 0.01], [0.4, 0.2]) is None  # already below at the first point


def test_filter_normalised_direction_has_the_weights_filter_norms():
    net = build_model("resnet20", stem="cifar", num_classes=10, width_mult=0.25, conv_bias=False)
    params = {k: p.detach() for k, p in net.named_parameters()}
    d = optim.filter_normalised_direction(params, torch.Generator().manual_seed(0))
    assert set(d) == set(params)
    for name, w in params.items():
        if w.dim() <= 1:  # biases and BatchNorm's scale and shift stay where they are
            assert not d[name].any(), name
        else:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5), name
    again = optim.filter_normalised_direction(params, torch.Generator().manual_seed(0))
    assert all(torch.equal(d[k], again[k]) for k in d)


def test_a_zero_filter_is_not_moved():
    w = {"conv": torch.zeros(2, 3, 3, 3)}
    w["conv"][0] = 1.0
    d = optim.filter_normalised_direction(w, torch.Generator().manual_seed(0))["conv"]
    assert not d[1].any() and d[0].norm() == pytest.approx(w["conv"][0].norm())


def test_loss_slice_and_its_shape():
    alphas = optim.slice_grid(5)
    assert alphas == [-1.0, -0.5, 0.0, 0.5, 1.0]
    params, direction = {"w": torch.tensor([1.0])}, {"w": torch.tensor([1.0])}
    losses = optim.loss_slice(lambda p: float((p["w"] - 1) ** 2), params, [direction], [(a,) for a in alphas])
    assert losses == [1.0, 0.25, 0.0, 0.25, 1.0]
    shape = optim.slice_shape(alphas, losses)
    assert shape["center_loss"] == 0.0 and shape["curvature_at_0"] == pytest.approx(2.0)
    assert shape["rise"] == 1.0 and shape["local_minima"] == 1 and shape["non_convex_fraction"] == 0.0
    bumpy = optim.slice_shape(alphas, [0.0, 1.0, 0.0, 1.0, 0.0])
    assert bumpy["local_minima"] == 1 and bumpy["non_convex_fraction"] == pytest.approx(2 / 3)
    assert optim.loss_slice(lambda p: float("inf"), params, [direction], [(0.0,)]) == [None]


def _tiny_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_grad = torch.randn(4, 3, 8, 8, generator=g)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]
    return x_grad, batches


@pytest.mark.parametrize("variant", [dict(residual=True), dict(residual=False)])
def test_measure_net_is_deterministic_for_a_fixed_seed(variant, one_thread):
    torch.manual_seed(0)
    net = build_model("resnet20", stem="cifar", num_classes=10, width_mult=0.25, conv_bias=False, weight_init="he",
                      **variant)
    x_grad, batches = _tiny_inputs()
    first = measure_net(net, x_grad, batches, SMALL)
    second = measure_net(net, x_grad, batches, SMALL)
    for key in ("gradients", "curvature", "slice_1d"):
        assert first[key] == second[key], key
    assert first["gradients"].mean["input"][0] > 0.9  # gradients barely move at a distance of 0.001
    c = first["curvature"]
    assert c.lambda_min <= c.lambda_max and c.steps == SMALL.lanczos_steps
    # the slice's centre is the loss whose Hessian was taken
    assert first["slice_1d"].center_loss == pytest.approx(c.loss, rel=1e-5)
    other = measure_net(net, x_grad, batches, SMALL.replace(measure_seed=1))
    assert other["curvature"].ritz != c.ritz


def test_frozen_statistics_make_each_images_output_its_own():
    torch.manual_seed(0)
    net = build_model("resnet20", stem="cifar", num_classes=10, width_mult=0.25, conv_bias=False)
    x_grad, batches = _tiny_inputs()
    frozen = frozen_statistics_net(net, batches)
    with torch.no_grad():
        together = frozen(x_grad)
        alone = torch.cat([frozen(x_grad[i:i + 1]) for i in range(len(x_grad))])
    assert torch.allclose(together, alone, atol=1e-5)
    # and the statistics are the batches', not BatchNorm's defaults (an identity at initialisation)
    assert not torch.allclose(frozen.stage0[1].running_var, torch.ones(4))
    assert net.stage0[1].running_var.eq(1).all()  # the net itself is untouched


def test_a_non_finite_loss_is_skipped_with_its_reason():
    net = build_model("resnet20", stem="cifar", num_classes=10, width_mult=0.25, conv_bias=False)
    with torch.no_grad():
        net.fc.bias.fill_(float("inf"))
    x_grad, batches = _tiny_inputs()
    assert "not finite" in measure_net(net, x_grad, batches, SMALL)["skipped"]


def test_settings_are_validated():
    from resdeg.errors import ResdegError

    for bad in (dict(slice_points=4), dict(summary_distance=0.5), dict(distances=(0.1, 0.01), summary_distance=0.1),
                dict(curvature_images=1), dict(lanczos_steps=1), dict(slice_2d_points=2)):
        with pytest.raises(ResdegError):
            OptimSettings(**bad)


INIT = ["--protocol", "depth", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--models", "resnet20",
        "--variants", "FULL,Nres", "--seeds", "42", "--phase", "init", *SMALL_ARGS]


def test_optim_command_measures_at_initialisation_then_caches(tmp_path, one_thread):
    results = tmp_path / "results"
    out = cli("optim", "--results", results, *INIT, "--slice-2d", "3")
    files = sorted((results / "depth" / "synthetic" / "init").glob("*.json"))
    assert [f.name.split("-")[:3] for f in files] == [["resnet20", "FULL", "s42"], ["resnet20", "Nres", "s42"]]
    assert out.stderr.count("measured gradient") == 2
    doc = json.loads(files[0].read_text())
    assert doc["schema"] == "resdeg.optim" and doc["status"] == "done" and doc["net"]["phase"] == "init"
    assert len(doc["slice_2d"]["losses"]) == 3 and set(doc["timings"]) >= {"gradients", "curvature", "slice_1d"}
    assert set(doc["gradients"]["mean"]) == {"input", "stage0", "stage1", "stage2"}
    record = read_optim(files[0])
    assert isinstance(record, OptimRecord) and record.settings.lanczos_steps == 3
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = cli("optim", "--results", results, *INIT, "--slice-2d", "3")
    assert again.stderr.count("cached") == 2 and "measured gradient" not in again.stderr
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # the run store does not take the init folder for a run
    assert json.loads(cli("status", "--results", results, "--json").stdout) == []
    # other settings are another file
    cli("optim", "--results", results, *INIT[:-len(SMALL_ARGS)], *SMALL_ARGS[:-1], "5")
    assert len(list((results / "depth" / "synthetic" / "init").glob("*.json"))) == 4


def test_a_damaged_record_is_reported_and_redone_with_force(tmp_path, one_thread):
    results = tmp_path / "results"
    args = [*INIT[:INIT.index("--variants") + 1], "FULL", *INIT[INIT.index("--variants") + 2:]]
    cli("optim", "--results", results, *args)
    (path,) = (results / "depth" / "synthetic" / "init").glob("*.json")
    doc = json.loads(path.read_text())
    curvature = doc["curvature"]
    flipped = {**doc, "curvature": {**curvature, "lambda_min_resolved": not curvature["lambda_min_resolved"]}}
    path.write_text(json.dumps(flipped))
    with pytest.raises(CorruptOptim, match="resolved"):
        read_optim(path)
    doc["curvature"]["lambda_min"] = doc["curvature"]["lambda_max"] + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(CorruptOptim):
        read_optim(path)
    out = cli("optim", "--results", results, *args, expect=1)
    assert "corrupt record" in out.stderr and "--force" in out.stderr
    # `resdeg status` lists the measurements beside the runs, the damaged one as corrupt
    status = cli("status", "--results", results)
    assert "optim (init): depth/synthetic/init/: 0 measured, 1 corrupt" in status.stdout
    assert f"corrupt optim record: depth/synthetic/init/{path.name}" in status.stderr
    cli("optim", "--results", results, *args, "--force")
    assert read_optim(path).done
    assert "optim (init): depth/synthetic/init/: 1 measured" in cli("status", "--results", results).stdout


def test_trained_runs_with_weights_are_measured_and_diverged_ones_skipped(tmp_path, one_thread):
    results = tmp_path / "results"
    smoke = ["--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--results", results]
    cli("run-all", *smoke, *TINY, "--set", "epochs=1", "--models", "resnet18", "--variants", "FULL,Nres",
        "--no-probe", "--no-report")
    folders = sorted({p.parent for p in results.glob("smoke/*/*/run.json")})
    diverged = folders[1] / "run.json"
    doc = json.loads(diverged.read_text())
    doc.update(status="diverged", diverged_at_step=3)
    diverged.write_text(json.dumps(doc))
    (folders[1] / "model.pt").unlink()
    grid = ["--models", "resnet18", "--variants", "FULL,Nres", "--seeds", "42", *SMALL_ARGS]
    out = cli("optim", *smoke, *grid, "--phase", "trained")
    assert "skipped (run diverged at step 3)" in out.stderr
    measured = read_optim(next(folders[0].glob("optim-*.json")))
    assert measured.done and measured.net.phase == "trained" and measured.net.epoch == 1
    assert read_optim(next(folders[1].glob("optim-*.json"))).reason == "run diverged at step 3"
    # a run that kept no weights is named, not measured
    (folders[0] / "model.pt").unlink()
    for f in folders[0].glob("optim-*.json"):
        f.unlink()
    out = cli("optim", *smoke, *grid, "--phase", "trained")
    assert "without model.pt" in out.stderr and not list(folders[0].glob("optim-*.json"))


def test_a_run_measures_h4_and_h5_while_training_without_moving_the_training(tmp_path, one_thread):
    """With optim settings, a run measures its net after epoch 1, at each learning-rate drop and at
    the end (optim-epoch<k>-*.json; the last is the trained run's record, which `resdeg optim`
    then finds cached), and trains exactly as without: same accuracies, same per-step telemetry."""
    import numpy as np

    from resdeg import runner
    from resdeg.config import make_config
    from resdeg.probes.optim_store import read_training_optims
    from resdeg.study import measures_optimisation

    assert measures_optimisation("depth") and measures_optimisation("depth-he") and not measures_optimisation("native")
    settings = OptimSettings(gradient_images=4, curvature_images=8, lanczos_steps=3, slice_points=3)
    over = {"epochs": 4, "train_images": 256, "test_images": 128, "eval_train_images": 64, "batch_size": 64}
    cfg = make_config("depth", over, model="resnet20", variant="Nres", dataset="synthetic")
    folders = {}
    for name, optim_settings in (("with", settings), ("without", None)):
        runner.train_and_probe(runner.plan([cfg], tmp_path / name), "cpu", tmp_path / name, progress=False,
                               log=lambda m: None, optim_settings=optim_settings)
        (folders[name],) = {p.parent for p in (tmp_path / name).glob("*/*/*/run.json")}
    records, problems = read_training_optims(folders["with"], cfg.hash, settings)
    assert not problems and [r.net.epoch for r in records] == [1, 2, 3, 4]
    assert all(r.done and r.net.phase == "trained" for r in records)
    assert sorted(p.name for p in folders["with"].glob("optim-*.json")) == sorted(
        [f"optim-epoch{k}-{settings.hash}.json" for k in (1, 2, 3)] + [f"optim-{settings.hash}.json"])
    assert not list(folders["without"].glob("optim-*"))
    runs = {name: json.loads((f / "run.json").read_text()) for name, f in folders.items()}
    assert [e["test_acc"] for e in runs["with"]["epochs"]] == [e["test_acc"] for e in runs["without"]["epochs"]]
    telemetry = [sorted(folders[name].glob("telemetry-*.npz")) for name in ("with", "without")]
    assert telemetry[0]
    for a, b in zip(*telemetry, strict=True):
        with np.load(a) as x, np.load(b) as y:
            assert all(np.array_equal(x[k], y[k]) for k in x.files)
    args = ["--protocol", "depth", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--models", "resnet20",
            "--variants", "Nres", "--seeds", "42", "--phase", "trained", "--gradient-images", "4",
            "--curvature-images", "8", "--lanczos-steps", "3", "--slice-points", "3"]
    out = cli("optim", "--results", tmp_path / "with", *args)
    assert "cached" in out.stderr and "measured gradient" not in out.stderr
