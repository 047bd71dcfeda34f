"""The engine's small pieces: learning-rate schedule, augmentation, the fixed subsets, precision
resolution, the committed results of an older schema, probes on a class-sorted image folder,
and a plain (non-editable) install rendering a report."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, status_json
from PIL import Image

from resdeg.config import cpu_has_bf16, make_config, parse_value
from resdeg.data import fixed_subset, random_crop_flip
from resdeg.errors import ResdegError
from resdeg.train import lr_at

ROOT = Path(__file__).resolve().parent.parent
LEGACY = Path(__file__).parent / "fixtures" / "legacy"  # a run.json of config schema 1 (precision "auto")


# -- learning rate --------------------------------------------------------------------------------------

def test_lr_schedules():
    cfg = make_config("depth", {"epochs": 4})  # multistep: /10 at 50% and 75% of training
    steps = 10
    assert [lr_at(cfg, s, steps) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = make_config("smoke", {"epochs": 2})
    assert lr_at(cosine, 0, 10) == pytest.approx(cosine.lr)
    assert lr_at(cosine, 10, 10) == pytest.approx(cosine.lr / 2)  # halfway
    assert lr_at(cosine, 19, 10) < 0.01 * cosine.lr
    warm = make_config("cifar", {"epochs": 3, "warmup_epochs": 1.0})
    assert [lr_at(warm, s, 4) for s in range(4)] == pytest.approx([warm.lr * k / 4 for k in (1, 2, 3, 4)])
    assert lr_at(make_config("seed"), 12345, 391) == 0.1  # the original: constant


# -- augmentation ---------------------------------------------------------------------------------------

def test_crop_flip_takes_a_window_of_the_padded_image_and_mirrors_half():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).reshape(2, 3, 6, 6).repeat(50, 1, 1, 1)
    out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored, i
        flips += mirrored and not plain
    assert 25 <= flips <= 75  # about half of 100
    again = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the same generator state gives the same batch: resumable


# -- fixed subsets --------------------------------------------------------------------------------------

def test_subsets_are_class_balanced_seeded_and_sorted():
    labels = torch.arange(10).repeat_interleave(100)  # a class-sorted listing, as an image folder gives
    idx = fixed_subset(labels, 500, salt=4)
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [50] * 10
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 500
    assert torch.equal(idx, fixed_subset(labels, 500, salt=4))  # the same for every run
    assert not torch.equal(idx, fixed_subset(labels, 500, salt=5))
    uneven = torch.cat([torch.zeros(3, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    assert torch.bincount(uneven[fixed_subset(uneven, 20, salt=1)]).tolist() == [3, 17]  # a small class gives all
    assert torch.bincount(labels[fixed_subset(labels, 15, salt=1)]).tolist() == [2] * 5 + [1] * 5
    assert torch.equal(fixed_subset(labels, 0, salt=1), torch.arange(1000))  # 0 = all


# -- precision ------------------------------------------------------------------------------------------

def test_precision_is_resolved_into_the_config_and_its_hash():
    for protocol in ("seed", "native"):
        for device in ("cpu", "cuda"):
            assert make_config(protocol, device_type=device).precision == "fp32"
    assert make_config("depth", device_type="cuda").precision == "bf16"
    assert make_config("depth", device_type="cpu").precision == ("bf16" if cpu_has_bf16() else "fp32")
    a = make_config("smoke", {"precision": "bf16"})
    b = make_config("smoke", {"precision": "fp32"})
    assert a.hash != b.hash  # a bf16 run and an fp32 run never share a cache entry
    assert "auto" not in {make_config(p, device_type=d).precision for p in ("seed", "depth", "smoke", "cifar")
                          for d in ("cpu", "cuda")}


def test_results_of_config_schema_1_keep_loading(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(LEGACY, results)
    (row,) = status_json(results)
    assert row["status"] == "done" and row["probed"] is True and row["problem"] is None
    from resdeg.store import read_run

    run = read_run(row["path"])
    assert run.config_schema == 1 and run.config.precision == "auto"  # stored as it was; its hash still checks
    assert run.config.hash_for(1) == run.config_hash != run.config.hash
    cli("report", "--results", results, "--docs", tmp_path / "docs")
    assert "resnet18" in (tmp_path / "docs" / "en" / "smoke" / "h1.md").read_text()


def test_a_run_of_schema_1_reads_its_clean_train_fields_under_their_eval_train_names():
    """run.json version 1 called the eval-mode train accuracy clean_train_acc and the config field
    clean_train_images: both read under the new names, and the config keeps its hash."""
    from resdeg.store import read_run

    (path,) = LEGACY.rglob("run.json")
    stored = json.loads(path.read_text())
    assert stored["schema_version"] == 1 and "clean_train_images" in stored["config"]
    run = read_run(path.parent)
    assert [e.eval_train_acc for e in run.epochs] == [e["clean_train_acc"] for e in stored["epochs"]]
    assert run.summary.eval_train_acc == stored["summary"]["clean_train_acc"]
    assert run.data["eval_train_used"] == stored["data"]["clean_train_used"]
    assert run.config.eval_train_images == stored["config"]["clean_train_images"]
    assert run.config.hash_for(1) == run.config_hash  # the renamed field hashes under its former name
    # the committed run results/depth/imagefolder/resnet20-Nres-s42-aa40b55f0cfa keeps its name
    cfg = make_config("depth", {}, model="resnet20", variant="Nres", seed=42, dataset="imagefolder")
    assert cfg.eval_train_images == 5000 and cfg.hash == "aa40b55f0cfa"
    with pytest.raises(ResdegError, match="now called eval_train_images"):
        parse_value("clean_train_images", "10")


# -- probes on a class-sorted image folder ----------------------------------------------------------------

def _class_sorted_folder(root: Path, classes=("ant", "bee", "cat"), n_train=24, n_test=30) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                px = np.clip(rng.normal(60 + 70 * k, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / split / c / f"{i:03d}.png")
    return root


def test_probe_images_cover_every_class_of_a_class_sorted_folder(tmp_path):
    data = _class_sorted_folder(tmp_path / "data")
    results = tmp_path / "results"
    cli("run-all", "--protocol", "smoke", "--dataset", "imagefolder", "--data-dir", data, "--device", "cpu",
        "--quiet", "--models", "resnet18", "--variants", "FULL", "--set", "epochs=1", "--set", "width_mult=0.125",
        "--set", "image_size=32", "--set", "lr=0.01", "--set", "test_images=0", "--set", "train_images=0",
        "--set", "eval_train_images=30", "--set", "batch_size=16", "--probe-images", "30",
        "--results", results, "--docs", tmp_path / "docs")
    from resdeg.probes.store import ProbeSettings, read_probe
    from resdeg.store import scan

    (entry,) = scan(results)
    probe = read_probe(entry.path, ProbeSettings(probe_images=30))
    assert probe.status == "done" and probe.classes_present == 3
    labels = np.repeat(np.arange(3), 30)[list(probe.image_indices)]  # the test split is listed class by class
    assert np.bincount(labels).tolist() == [10, 10, 10]


# -- a plain install ------------------------------------------------------------------------------------

def test_a_non_editable_install_renders_the_report_from_outside_the_repository(tmp_path):
    """`pip install .` (not -e): the templates travel as package data."""
    target = tmp_path / "site-packages"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    shutil.copytree(LEGACY, tmp_path / "results")
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import resdeg, sys; assert resdeg.__file__.startswith(sys.argv[1]), resdeg.__file__; "
            "from resdeg.cli import main; main(['report', '--results', 'results', '--docs', 'docs'])")
    run = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "docs" / "zh" / "index.md").read_text().startswith("# 为什么")
    nav = json.loads((tmp_path / "docs" / "site-nav.json").read_text())
    # trained under an older definition of smoke, so its settings differ from today's: the title says so
    assert {"section": {"en": "Smoke test (not evidence), changed settings", "zh": "冒烟测试（不是证据），设置有改动"},
            "pages": ["smoke/h1.md", "smoke/h2.md", "smoke/h3.md", "smoke/signal.md"]} in nav


# -- weight initialisation ------------------------------------------------------------------------------

DEPTH_BEFORE_HE = Path(__file__).parent / "fixtures" / "depth-he-less" / "run.json"  # a depth run from before He init


def test_depth_initialises_convs_as_he_and_older_runs_keep_their_hash():
    from types import SimpleNamespace

    from resdeg.config import Config
    from resdeg.report.collect import _as_declared

    old = json.loads(DEPTH_BEFORE_HE.read_text())
    cfg = Config.from_dict(old["config"])
    assert cfg.weight_init == "pytorch" and cfg.hash == old["config_hash"]  # the field is new: default unhashed
    assert not _as_declared(SimpleNamespace(protocol="depth", config=cfg))
    new = make_config("depth", device_type="cpu", model=cfg.model, variant=cfg.variant, dataset=cfg.dataset)
    assert new.weight_init == "he" and new.hash != cfg.hash
    assert _as_declared(SimpleNamespace(protocol="depth", config=new))
    assert make_config("native").weight_init == "pytorch"  # the original study's PyTorch defaults


@pytest.mark.parametrize("weight_init, variance", [("he", lambda fan_in, fan_out: 2 / fan_out),
                                                   ("pytorch", lambda fan_in, fan_out: 1 / (3 * fan_in))])
def test_conv_weights_have_the_variance_of_their_initialisation(weight_init, variance):
    from resdeg.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet56", residual=False, norm=False, conv_bias=False, weight_init=weight_init)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 55
    for conv in convs[1:]:  # the stem has too few weights for a tight estimate
        out_ch, in_ch, kh, kw = conv.weight.shape
        expected = variance(in_ch * kh * kw, out_ch * kh * kw)
        assert conv.weight.var().item() == pytest.approx(expected, rel=0.2)


def test_he_init_keeps_a_plain_net_without_batchnorm_alive_where_pytorch_defaults_do_not():
    from resdeg.models import build_model

    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rms = {}
    for weight_init in ("he", "pytorch"):
        torch.manual_seed(0)
        net = build_model("resnet56", residual=False, norm=False, conv_bias=False, weight_init=weight_init)
        with torch.no_grad():
            rms[weight_init] = net.stage_outputs(x)["stage3"].pow(2).mean().sqrt().item()
    assert rms["he"] > 1e-4 and rms["pytorch"] < 1e-15
