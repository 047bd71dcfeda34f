"""The CLI end to end, and every bad input: one line, non-zero exit, no traceback, nothing written."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_one_line_error, cli, status_json

from resdeg.store import read_telemetry

SMOKE = ["--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet"]


def test_run_all_smoke_synthetic_end_to_end(tmp_path):
    # the whole chain: train, probe (100 images keep the suite fast), render the report
    docs = tmp_path / "docs"
    small = [*TINY, "--set", "width_mult=0.25"]  # the smoke grid, cut to CI size: every stage still runs
    cli("run-all", "--protocol", "smoke", "--dataset", "synthetic", "--results", tmp_path / "r", *small,
        "--probe-images", "100", "--docs", docs)
    assert (docs / "en").is_dir() and (docs / "zh").is_dir()
    tmp_path = tmp_path / "r"
    rows = status_json(tmp_path)
    assert len(rows) == 8
    assert {(r["model"], r["variant"]) for r in rows} == {
        (m, v) for m in ("resnet18", "resnet50") for v in ("FULL", "Nres", "Nbn", "Nboth")}
    for r in rows:
        assert r["status"] == "done" and r["epochs_done"] == 2 and r["protocol"] == "smoke"
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        tel = read_telemetry(r["path"])
        doc = json.loads((tmp_path / os.path.relpath(r["path"], tmp_path) / "run.json").read_text())
        assert tel["act_grad_mean_abs"].shape == (2 * doc["summary"]["steps_per_epoch"], 5)
        assert np.isfinite(tel["act_grad_mean_abs"]).all()
        # the per-step losses average (batch-weighted) to the epoch's running train loss
        n, bs = doc["data"]["train_used"], doc["config"]["batch_size"]
        sizes = np.diff(np.minimum(np.arange(0, n + bs, bs), n))
        for e in (1, 2):
            mean = np.average(tel["loss"][tel["epoch"] == e], weights=sizes)
            assert mean == pytest.approx(doc["epochs"][e - 1]["train_loss"], rel=1e-4)
        assert r["wall_s"] == pytest.approx(doc["summary"]["wall_s"], abs=0.1)
        assert len(list(Path(r["path"]).glob("probe-*.json"))) == 1
    full = next(r for r in rows if r["model"] == "resnet18" and r["variant"] == "FULL")
    assert full["test_acc"] > 0.3  # the synthetic classes are learnable, even by a narrow net in 2 epochs
    # the table a person reads: both train accuracies, test accuracy and training time of every run
    lines = cli("status", "--results", tmp_path).stdout.splitlines()
    assert lines[0].split()[-5:] == ["running%", "eval-train%", "test%", "time", "probed"]
    by_variant = {line.split()[3]: line for line in lines[1:] if line.split()[2] == "resnet18"}
    assert f"{100 * full['train_acc']:.1f}  " in by_variant["FULL"] and by_variant["FULL"].endswith("yes")
    assert re.search(r"\d+ (s|min)\s+yes$", by_variant["FULL"])
    # a second run-all trains nothing
    again = cli("run-all", "--protocol", "smoke", "--dataset", "synthetic", "--results", tmp_path, *small,
                "--dry-run")
    assert "0 to train, 8 cached" in again.stdout
    table = cli("status", "--results", tmp_path).stdout
    assert table.count("done") == 8


def test_dry_run_trains_nothing(tmp_path):
    out = cli("run-all", *SMOKE, "--results", tmp_path, "--dry-run", "--variants", "full,nres", "--seeds", "1,2")
    assert out.stdout.count("new") == 8 and "8 to train" in out.stdout
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_set_changes_the_config_hash(tmp_path):
    a = cli("run", *SMOKE, "--results", tmp_path, "--dry-run").stdout
    b = cli("run", *SMOKE, "--results", tmp_path, "--dry-run", "--set", "lr=0.01").stdout
    assert a.split()[1] != b.split()[1]


@pytest.mark.parametrize("args,fragment", [
    (["--model", "resnet19"], "unknown model 'resnet19'"),
    (["--variant", "Nfoo"], "unknown variant 'Nfoo'"),
    (["--protocol", "imagenet"], "unknown protocol 'imagenet'"),
    (["--set", "learning_rate=0.1"], "unknown key 'learning_rate'"),
    (["--set", "model=resnet50"], "use --model"),
    (["--set", "epochs=three"], "expected int"),
    (["--set", "lr=-1"], "lr=-1.0 is out of range"),
    (["--set", "batch_size=0"], "batch_size=0 is out of range"),
    (["--set", "schedule=linear"], "schedule='linear' is not one of"),
    (["--set", "mean=0.5,0.5"], "expected 3 comma-separated numbers"),
    (["--set", "augment=maybe"], "expected bool"),
    (["--set", "nokey"], "expected key=value"),
    (["--dataset", "mnist"], "dataset='mnist' is not one of"),
    (["--set", "precision=fp16"], "precision='fp16' is not one of"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, fragment):
    base = ["run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet"]
    if "--protocol" in args:
        base = ["run", "--dataset", "synthetic", "--device", "cpu"]
    assert_one_line_error(cli(*base, *args, "--results", tmp_path / "r", expect=None), fragment)
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("*.json"))


def test_bad_seeds_list(tmp_path):
    assert_one_line_error(cli("run-all", *SMOKE, "--seeds", "1,x", "--results", tmp_path, expect=None),
                           "--seeds")


def test_missing_and_malformed_data_folder(tmp_path):
    r = cli("run", *SMOKE[:2], "--dataset", "imagefolder", "--data-dir", tmp_path / "nope", "--device", "cpu",
            "--results", tmp_path / "r", expect=None)
    assert_one_line_error(r, "train")
    bad = tmp_path / "bad"
    (bad / "train" / "cat").mkdir(parents=True)
    (bad / "train" / "cat" / "1.jpg").write_bytes(b"not a jpeg")
    r = cli("run", *SMOKE[:2], "--dataset", "imagefolder", "--data-dir", bad, "--device", "cpu",
            "--results", tmp_path / "r", expect=None)
    assert_one_line_error(r, "class folders")
    assert not list((tmp_path / "r").rglob("run.json"))


def test_undecodable_image_is_reported(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 200, 30)).save(root / split / c / "0.png")
    (root / "train" / "a" / "1.jpg").write_bytes(b"broken")
    r = cli("run", *SMOKE[:2], "--dataset", "imagefolder", "--data-dir", root, "--device", "cpu",
            "--results", tmp_path / "r", expect=None)
    assert_one_line_error(r, "cannot decode", "1.jpg")


def test_missing_cifar_without_network(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    r = cli("run", "--protocol", "smoke", "--dataset", "cifar10", "--device", "cpu", "--results", tmp_path / "r",
            expect=None)
    assert_one_line_error(r, "could not load cifar10", "--data-dir")


def test_unwritable_results_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("run", *SMOKE, "--results", blocker / "sub", expect=None)
    assert_one_line_error(r, "not writable")


def _one_run(tmp_path):
    cli("run", *SMOKE, *TINY, "--set", "epochs=1", "--results", tmp_path)
    (folder,) = {p.parent for p in tmp_path.glob("*/*/*/run.json")}
    return folder


@pytest.mark.parametrize("damage", ["truncate", "edit_config", "edit_accuracy", "schema", "telemetry"])
def test_corrupt_entry_is_reported_and_only_redone_with_force(tmp_path, damage):
    folder = _one_run(tmp_path)
    run_json = folder / "run.json"
    text = run_json.read_text()
    if damage == "truncate":
        run_json.write_text(text[: len(text) // 2])
    elif damage == "telemetry":
        (telemetry,) = folder.glob("telemetry-*.npz")
        telemetry.write_bytes(b"garbage")
    else:
        doc = json.loads(text)
        if damage == "edit_config":
            doc["config"]["lr"] = 0.5
        elif damage == "edit_accuracy":
            doc["epochs"][0]["test_acc"] = 1.7
        else:
            doc["schema_version"] = 99
        run_json.write_text(json.dumps(doc))
    damaged = run_json.read_bytes()
    (row,) = status_json(tmp_path)
    assert row["status"] == "corrupt" and row["problem"]
    assert row["model"] == "resnet18" and row["variant"] == "FULL"
    r = cli("run", *SMOKE, *TINY, "--set", "epochs=1", "--results", tmp_path, expect=None)
    assert_one_line_error(r, "corrupt", "--force")
    assert run_json.read_bytes() == damaged  # reported, not used, not touched
    cli("run", *SMOKE, *TINY, "--set", "epochs=1", "--results", tmp_path, "--force")
    (row,) = status_json(tmp_path)
    assert row["status"] == "done"


def test_no_temp_files_left_behind(tmp_path):
    folder = _one_run(tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert (names[:2] == ["model.pt", "run.json"] and len(names) == 3
            and re.fullmatch(r"telemetry-[0-9a-f]{12}\.npz", names[2]))


def test_help_explains_every_command_and_option():
    import click

    from resdeg.cli import main

    overview = cli("--help").stdout
    for name, command in main.commands.items():
        assert name in overview and command.help, name
        out = cli(name, "--help").stdout
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help and len(param.help) > 10, f"resdeg {name} {param.opts[0]}: no help text"
                assert param.opts[0] in out


def test_divergence_is_a_result_and_the_grid_goes_on(tmp_path):
    # lr 100 without BatchNorm overflows within the first steps
    cli("run-all", *SMOKE, *TINY, "--set", "epochs=2", "--set", "lr=100", "--models", "resnet18",
        "--variants", "Nbn,FULL", "--results", tmp_path, "--no-probe")
    rows = {r["variant"]: r for r in status_json(tmp_path)}
    assert rows["Nbn"]["status"] == "diverged" and rows["Nbn"]["epochs_done"] == 1
    assert rows["FULL"]["status"] in ("done", "diverged")  # trained after the divergence
    doc = json.loads((tmp_path / os.path.relpath(rows["Nbn"]["path"], tmp_path) / "run.json").read_text())
    tel = read_telemetry(rows["Nbn"]["path"])
    first_bad = int(np.flatnonzero(~np.isfinite(tel["loss"]))[0])
    assert doc["diverged_at_step"] == first_bad
    assert np.isfinite(tel["loss"][:first_bad]).all()


def test_a_run_logged_to_a_file_prints_one_line_per_epoch(tmp_path):
    """No progress bar without a terminal (nohup ... > log): each epoch is one line with its time left."""
    out = cli("run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--results", tmp_path, *TINY)
    lines = [line for line in out.stderr.splitlines() if " epoch " in line]
    assert [line.split(":")[0] for line in lines] == ["resnet18 FULL s42 epoch 1/2", "resnet18 FULL s42 epoch 2/2"]
    assert re.search(r"train \d+\.\d%, test \d+\.\d% in \d+ s; 1 left, about \d+ s$", lines[0]), lines[0]
    assert "left" not in lines[1]
    quiet = cli("run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--results", tmp_path / "q",
                *TINY, "--quiet")
    assert " epoch " not in quiet.stderr


def test_epoch_lines_state_the_time_left_at_the_recent_pace():
    from resdeg.config import make_config
    from resdeg.store import Epoch
    from resdeg.train import epoch_line

    cfg = make_config("native")
    history = [Epoch(epoch=i + 1, train_loss=1.0, train_acc=0.5, eval_train_acc=0.5, test_loss=1.0, test_acc=0.25,
                     lr=0.1, wall_s=s, steps=10) for i, s in enumerate((1000.0, 290.0, 300.0, 310.0))]
    line = epoch_line(cfg, history)
    assert line.endswith("epoch 4/20: loss 1.000, train 50.0%, test 25.0% in 5 min; 16 left, about 1 h 20 min"), line
    assert "loss nan" in epoch_line(cfg, [Epoch(**{**history[0].to_dict(), "train_loss": None})])


def test_a_diverged_run_stops_within_its_check_interval_not_at_the_end_of_the_epoch(tmp_path):
    """A net that overflows in its first steps stops at the next divergence check (every
    DIVERGENCE_CHECK_STEPS steps), and its telemetry holds exactly the steps it trained."""
    from resdeg.train import DIVERGENCE_CHECK_STEPS

    # 4 images a batch: 128 steps an epoch, so a check falls inside it
    cli("run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet", "--model", "resnet18",
        "--variant", "Nbn", "--set", "lr=100", "--set", "epochs=2", "--set", "train_images=512",
        "--set", "test_images=64", "--set", "eval_train_images=64", "--set", "batch_size=4",
        "--set", "width_mult=0.125", "--results", tmp_path)
    (row,) = status_json(tmp_path)
    assert row["status"] == "diverged" and row["epochs_done"] == 1
    tel = read_telemetry(row["path"])
    first_bad = int(np.flatnonzero(~np.isfinite(tel["loss"]))[0])
    assert first_bad < DIVERGENCE_CHECK_STEPS
    assert len(tel["loss"]) == DIVERGENCE_CHECK_STEPS < 128  # stopped at the first check, not after 128 steps
    assert list(tel["step"]) == list(range(DIVERGENCE_CHECK_STEPS))
    assert all(len(tel[k]) == DIVERGENCE_CHECK_STEPS for k in ("act_grad_mean_abs", "epoch"))
