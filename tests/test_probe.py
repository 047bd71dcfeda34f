"""`resdeg probe` on real (tiny, CPU-trained) runs: every criterion at every stage, signal
propagation, the cache, skipped runs, damaged probe files and every bad input."""
import json
import math
import re
import shutil

import pytest
import torch
from conftest import TINY, assert_one_line_error, cli, status_json

from resdeg.probes.criteria import CRITERIA
from resdeg.probes.store import (
    SIGNAL_KEYS,
    SIGNAL_PHASES,
    CorruptProbe,
    ProbeSettings,
    find_probe,
    probe_path,
    read_probe,
)
from resdeg.store import read_run

SMOKE = ["--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet"]
STAGES = [f"stage{i}" for i in range(5)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run scored on the whole synthetic test split (512 images), so that the
    default 500 probe images fit; probed once with the default settings."""
    results = tmp_path_factory.mktemp("probe") / "results"
    cli("run", *SMOKE, *TINY, "--set", "epochs=1", "--set", "test_images=0", "--results", results)
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    probe = cli("probe", "--results", results, "--device", "cpu", "--quiet")
    return results, folder, probe


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run without its probe files (tests may damage it)."""
    _, folder, _ = trained
    results = tmp_path / "results"
    copy = results / folder.relative_to(trained[0])
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("probe-*.json"))
    return results, copy


def _no_probe_written(folder):
    return not list(folder.glob("probe-*")) and not list(folder.glob(".probe-*"))


def test_probe_writes_every_criterion_for_every_stage(trained):
    results, folder, out = trained
    assert "probed" in out.stderr and "500 images" in out.stderr
    doc = read_probe(folder).to_dict()
    assert doc["status"] == "done" and doc["reason"] is None
    assert doc["images"] == 500 and doc["classes_present"] == 10
    assert doc["stages"] == STAGES and doc["settings"] == ProbeSettings().to_dict()
    assert probe_path(folder).name == f"probe-{doc['settings_hash']}.json"
    assert doc["stage_shapes"]["stage0"] == [32, 8, 8] and doc["stage_shapes"]["stage4"] == [256, 1, 1]
    assert list(doc["criteria"]) == list(CRITERIA) and doc["criterion_errors"] == {}
    for name, per_stage in doc["criteria"].items():
        assert list(per_stage) == STAGES
        for v in per_stage.values():
            assert isinstance(v, float) and math.isfinite(v), (name, per_stage)
    for name in ("linear_probe_acc", "knn_acc", "cka_labels"):
        assert all(0 <= v <= 1 for v in doc["criteria"][name].values())
    # the synthetic classes are learnt: the last stage separates them far above chance
    assert doc["criteria"]["knn_acc"]["stage4"] > 0.5
    for phase in SIGNAL_PHASES:
        for key in SIGNAL_KEYS:
            values = doc["signal"][phase][key]
            assert list(values) == STAGES and all(math.isfinite(v) for v in values.values()), (phase, key)
        assert all(v > 0 for v in doc["signal"][phase]["act_std"].values())
        assert all(v > 0 for v in doc["signal"][phase]["grad_mean_abs"].values())
    # trained weights differ from the initial ones, so the signal does too
    assert doc["signal"]["init"]["act_std"] != doc["signal"]["trained"]["act_std"]
    assert doc["environment"]["device"].startswith("cpu") and doc["wall_s"] > 0
    (row,) = status_json(results)
    assert row["probed"] is True
    assert "yes" in cli("status", "--results", results).stdout.splitlines()[1]


def test_probing_does_not_touch_the_run(trained):
    _, folder, _ = trained
    (telemetry,) = folder.glob("telemetry-*.npz")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.pt", "run.json", telemetry.name, probe_path(folder).name])


def test_cached_probe_is_reused_and_changed_settings_reprobe(trained, run_copy):
    results, folder = run_copy
    shutil.copy(probe_path(trained[1]), folder)
    before = probe_path(folder).read_bytes()
    again = cli("probe", "--results", results, "--device", "cpu", "--quiet")
    assert "cached" in again.stderr
    assert re.search(r"criteria  probed earlier in \d+\.\ds", again.stderr), again.stderr  # not this call's time
    assert probe_path(folder).read_bytes() == before  # not rewritten (wall_s and created would change)
    other = cli("probe", "--results", results, "--device", "cpu", "--quiet", "--probe-images", "60")
    assert "probed" in other.stderr
    small = read_probe(folder, ProbeSettings(probe_images=60)).to_dict()
    assert small["images"] == 60 and small["settings_hash"] != ProbeSettings().hash
    assert len(list(folder.glob("probe-*.json"))) == 2 and probe_path(folder).read_bytes() == before
    (row,) = status_json(results)
    assert row["probed"] is True
    # --force redoes it, to the same numbers (CPU, deterministic)
    cli("probe", "--run", folder, "--device", "cpu", "--quiet", "--force", "--probe-images", "60")
    redone = read_probe(folder, ProbeSettings(probe_images=60)).to_dict()
    assert redone["created"] >= small["created"] and redone["wall_s"] != small["wall_s"]
    assert redone["criteria"] == small["criteria"] and redone["signal"] == small["signal"]


def test_diverged_run_is_skipped_with_its_reason(run_copy):
    results, folder = run_copy
    doc = json.loads((folder / "run.json").read_text())
    doc.update(status="diverged", diverged_at_step=3)
    (folder / "run.json").write_text(json.dumps(doc))
    (folder / "model.pt").unlink()  # a diverged run keeps no weights
    out = cli("probe", "--results", results, "--device", "cpu", "--quiet")
    assert "skipped (run diverged at step 3)" in out.stderr
    probe = read_probe(folder).to_dict()
    assert probe["status"] == "skipped" and probe["reason"] == "run diverged at step 3"
    assert probe["stages"] == [] and probe["images"] == 0
    (row,) = status_json(results)
    assert row["status"] == "diverged" and row["probed"] is True
    assert "cached" in cli("probe", "--results", results, "--device", "cpu", "--quiet").stderr


def test_non_finite_weights_are_skipped(run_copy):
    _, folder = run_copy
    saved = torch.load(folder / "model.pt", weights_only=True)
    saved["state_dict"]["stage1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(saved, folder / "model.pt")
    out = cli("probe", "--run", folder, "--device", "cpu", "--quiet")
    assert "skipped (non-finite weights)" in out.stderr
    assert read_probe(folder).to_dict()["reason"] == "non-finite weights"


def test_weights_copied_from_another_run_are_refused_and_untagged_ones_still_load(run_copy):
    """model.pt carries its run's config hash: another run's weights copied into the folder are
    refused in one line, as another config's checkpoint is, and nothing is probed or overwritten.
    Weights saved before they carried the hash (a bare state_dict) are used as they are."""
    results, folder = run_copy
    cli("run", *SMOKE, *TINY, "--set", "epochs=1", "--set", "test_images=0", "--seed", "7", "--results", results)
    (other,) = {p.parent for p in results.glob("*/*/*/run.json")} - {folder}
    shutil.copy(other / "model.pt", folder / "model.pt")
    result = cli("probe", "--run", folder, "--device", "cpu", "--quiet", expect=None)
    assert_one_line_error(result, f"{folder / 'model.pt'}: unusable weights: they belong to another run",
                          "--force")
    assert _no_probe_written(folder)
    saved = torch.load(other / "model.pt", weights_only=True)
    torch.save(saved["state_dict"], folder / "model.pt")  # as resdeg wrote it before
    cli("probe", "--run", folder, "--device", "cpu", "--quiet", "--probe-images", "20")
    assert read_probe(folder, ProbeSettings(probe_images=20)).status == "done"


@pytest.mark.parametrize("damage,args,fragments", [
    ("none", ["--probe-images", "513"], ["--probe-images 513 exceeds the 512 test images"]),
    ("none", ["--probe-images", "1"], ["need at least 2 images"]),
    ("partial", [], ["is not finished", "1/2 epochs"]),
    ("no_weights", [], ["no model.pt", "--force"]),
    ("bad_weights", [], ["unreadable weights"]),
    ("missing", [], ["is not a run folder"]),
    ("corrupt_run", [], ["run.json is not valid JSON"]),
])
def test_bad_input_is_one_line_and_writes_nothing(run_copy, damage, args, fragments):
    _, folder = run_copy
    target = folder
    if damage == "partial":
        doc = json.loads((folder / "run.json").read_text())
        doc["config"]["epochs"] = 2
        from resdeg.config import config_from_dict
        doc.update(status="partial", config_hash=config_from_dict(doc["config"]).hash)
        (folder / "run.json").write_text(json.dumps(doc))
    elif damage == "no_weights":
        (folder / "model.pt").unlink()
    elif damage == "bad_weights":
        (folder / "model.pt").write_bytes(b"not a checkpoint")
    elif damage == "missing":
        target = folder.parent / "no-such-run"
    elif damage == "corrupt_run":
        (folder / "run.json").write_text("{")
    result = cli("probe", "--run", target, "--device", "cpu", "--quiet", *args, expect=None)
    assert_one_line_error(result, *fragments)
    assert _no_probe_written(folder)


def test_bulk_probe_reports_problems_and_goes_on(run_copy):
    results, folder = run_copy
    broken = folder.parent / (folder.name[:-12] + "0" * 12)
    shutil.copytree(folder, broken)
    (broken / "run.json").write_text("{")
    r = cli("probe", "--results", results, "--device", "cpu", "--quiet", "--probe-images", "30", expect=None)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1].startswith("resdeg: error: 1 run not probed")
    assert read_probe(folder, ProbeSettings(probe_images=30)).to_dict()["status"] == "done"  # the good run was probed
    assert _no_probe_written(broken)
    filtered = cli("probe", "--results", results, "--device", "cpu", "--quiet", "--probe-images", "30",
                   "--variants", "nres")
    assert "no finished runs to probe" in filtered.stderr


def test_probe_images_are_balanced_and_undefined_criteria_are_said(tmp_path):
    """An image folder whose test split lists class a first, and class b has a single test image:
    3 probe images still hold both classes (a class-balanced subset, not "the first 3"), and the
    linear probe, which needs two images of a class to split them, is undefined, with its reason."""
    from PIL import Image

    root = tmp_path / "imgs"
    for split, n_b in (("train", 3), ("test", 1)):
        for c, colour, n in (("a", (200, 30, 30), 3), ("b", (30, 30, 200), n_b)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), tuple(v + 10 * i for v in colour)).save(root / split / c / f"{i}.png")
    results = tmp_path / "results"
    cli("run", "--protocol", "smoke", "--dataset", "imagefolder", "--data-dir", root, "--device", "cpu", "--quiet",
        *TINY, "--set", "epochs=1", "--results", results)
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    probe = ["probe", "--run", folder, "--data-dir", root, "--device", "cpu", "--quiet"]
    out = cli(*probe, "--probe-images", "3")
    assert "undefined" in out.stderr
    doc = read_probe(folder, ProbeSettings(probe_images=3)).to_dict()
    assert doc["classes_present"] == 2 and sorted(doc["image_indices"]) in ([0, 1, 3], [0, 2, 3], [1, 2, 3])
    assert doc["criteria"]["linear_probe_acc"] == {s: None for s in STAGES}
    assert all("single sample" in doc["criterion_errors"]["linear_probe_acc"][s] for s in STAGES)
    assert all(v is not None for v in doc["criteria"]["fisher_trace_ratio"].values())
    assert_one_line_error(cli(*probe, "--probe-images", "5", expect=None), "exceeds the 4 test images")
    # another image folder is not the data this run was trained on
    (root / "test" / "a" / "2.png").unlink()
    assert_one_line_error(cli(*probe, "--probe-images", "3", "--force", expect=None), "not the data")


@pytest.mark.parametrize("damage", ["truncate", "schema_version", "settings", "null_without_reason",
                                    "other_run", "missing_stage"])
def test_damaged_probe_file_is_reported_not_used(trained, run_copy, damage):
    results, folder = run_copy
    path = probe_path(folder)
    text = probe_path(trained[1]).read_text()
    doc = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    else:
        if damage == "schema_version":
            doc["schema_version"] = 99
        elif damage == "settings":
            doc["settings"]["knn_k"] = 5  # the hash no longer matches
        elif damage == "null_without_reason":
            doc["criteria"]["nc1"]["stage2"] = None
        elif damage == "other_run":
            doc["run"]["config_hash"] = "0" * 12
        else:
            del doc["signal"]["init"]["act_mean"]["stage3"]
        path.write_text(json.dumps(doc))
    with pytest.raises(CorruptProbe):
        read_probe(folder)
    found = find_probe(folder, read_run(folder))
    assert found.probe is None and found.note.startswith("probe unusable")
    status = cli("status", "--results", results)
    assert "corrupt probe" in status.stderr
    (row,) = status_json(results)
    assert row["probed"] is False
    assert_one_line_error(cli("probe", "--run", folder, "--device", "cpu", "--quiet", expect=None),
                          "corrupt probe", "--force")
    if damage == "truncate":  # --force redoes a damaged probe (with few images: it is the same path)
        few = ProbeSettings(probe_images=30)
        probe_path(folder, few).write_text(text[:100])
        cli("probe", "--run", folder, "--device", "cpu", "--quiet", "--force", "--probe-images", "30")
        assert read_probe(folder, few).to_dict()["status"] == "done"


def test_run_all_trains_then_probes(tmp_path):
    grid = ["run-all", *SMOKE, *TINY, "--set", "epochs=1", "--models", "resnet18", "--variants", "FULL",
            "--results", tmp_path]
    # TINY keeps 128 test images: the default 500 probe images fail before any training
    assert_one_line_error(cli(*grid, expect=None), "--probe-images 500 exceeds test_images=128", "--no-probe")
    assert not list(tmp_path.rglob("run.json"))
    cli(*grid, "--no-probe")
    (folder,) = {p.parent for p in tmp_path.glob("*/*/*/run.json")}
    assert _no_probe_written(folder)
    out = cli(*grid, "--probe-images", "40")
    assert "cached" in out.stderr and "probed" in out.stderr
    assert read_probe(folder, ProbeSettings(probe_images=40)).to_dict()["status"] == "done"
    again = cli(*grid, "--probe-images", "40").stderr.splitlines()
    assert any("seed 42: cached" in line and "40 images" in line for line in again), again


def test_the_untrained_net_of_a_run_is_probed_without_its_weights_and_cached(run_copy):
    """`probe --phase init`: the net the run starts from (its config and seed), beside the runs in
    init/; no weights needed; the same numbers when redone; a damaged record is reported, never used."""
    from resdeg.probes.store import init_probe_path, read_init_probe
    from resdeg.store import read_run

    results, folder = run_copy
    (folder / "model.pt").unlink()  # a committed run without its weights
    out = cli("probe", "--results", results, "--device", "cpu", "--quiet", "--phase", "init", "--probe-images", "60")
    assert "at initialisation probed" in out.stderr
    run = read_run(folder)
    settings = ProbeSettings(probe_images=60)
    path = init_probe_path(folder, run.config.run_name, settings)
    assert path.parent.name == "init" and path.parent.parent == folder.parent
    first = read_init_probe(folder, run, settings)
    assert set(first.criteria) == set(settings.criteria) and list(first.stages) == list(first.effective_rank)
    again = cli("probe", "--results", results, "--device", "cpu", "--quiet", "--phase", "init", "--probe-images", "60")
    assert "at initialisation cached" in again.stderr
    cli("probe", "--run", folder, "--device", "cpu", "--quiet", "--phase", "init", "--probe-images", "60", "--force")
    assert read_init_probe(folder, run, settings).criteria == first.criteria  # the same untrained net: same numbers
    path.write_text(path.read_text()[:-40])
    bad = cli("probe", "--results", results, "--device", "cpu", "--quiet", "--phase", "init", "--probe-images", "60",
              expect=1)
    assert "corrupt probe" in bad.stderr and "--force" in bad.stderr and "Traceback" not in bad.stderr
    assert not list(folder.parent.glob("init/*.tmp*"))


def test_run_all_records_separability_during_training_without_moving_the_training(tmp_path):
    """With probing on, a run records its separability after epoch 1, at each learning-rate drop
    and at the end (separability-epoch<k>-*.json); the last one equals the finished run's probe; and the
    training is exactly the one without these measurements (their random draws are forked)."""
    from resdeg.probes.probe import probe_epochs
    from resdeg.probes.store import read_epoch_probes
    from resdeg.store import read_run

    grid = ["run-all", *SMOKE, *TINY, "--set", "epochs=4", "--set", "schedule=multistep", "--models", "resnet18",
            "--variants", "FULL", "--no-report"]
    cli(*grid, "--results", tmp_path / "with", "--probe-images", "40")
    cli(*grid, "--results", tmp_path / "without", "--no-probe")
    (folder,) = {p.parent for p in (tmp_path / "with").glob("*/*/*/run.json")}
    (plain,) = {p.parent for p in (tmp_path / "without").glob("*/*/*/run.json")}
    run = read_run(folder)
    settings = ProbeSettings(probe_images=40)
    probes = read_epoch_probes(folder, run, settings)
    assert [p.epoch for p in probes] == sorted(probe_epochs(run.config)) == [1, 2, 3, 4]
    final = read_probe(folder, settings)
    for name, per_stage in final.criteria.items():  # the same net, the same images, eval mode (the training
        for stage, value in per_stage.items():  # copy is channels_last: the last digits of its convolutions differ)
            assert probes[-1].criteria[name][stage] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, stage)
    assert [e.to_dict()["test_acc"] for e in run.epochs] == [e.to_dict()["test_acc"] for e in read_run(plain).epochs]
    assert not list(plain.glob("separability-epoch*"))
    # the H3 page follows the separability through training, from the untrained net (epoch 0) on
    cli("probe", "--results", tmp_path / "with", "--phase", "init", "--probe-images", "40", "--device", "cpu",
        "--quiet")
    cli("report", "--results", tmp_path / "with", "--docs", tmp_path / "docs")
    (page,) = (tmp_path / "docs" / "en").glob("*/h3.md")
    section = page.read_text().split("## Separability while training")[1]
    row = next(line for line in section.splitlines() if line.startswith("| resnet18 | FULL |"))
    assert [int(x.split(":")[0]) for x in row.split("|")[3].split(";")] == [0, 1, 2, 3, 4]
