"""A run killed with SIGKILL in the middle of an epoch resumes to exactly the numbers of an
uninterrupted run (CPU, deterministic)."""
import json
import signal
import time

import numpy as np

from conftest import TINY, cli, cli_subprocess
from resdeg.store import CHECKPOINT_FILE, read_run, read_telemetry

ARGS = ["run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet",
        "--model", "resnet18", "--variant", "Nres", *TINY, "--set", "epochs=3", "--set", "train_images=768",
        "--set", "batch_size=32"]


def _only_run(results):
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    return folder


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cli(*ARGS, "--results", ref)

    proc = cli_subprocess(*ARGS, "--results", killed)
    deadline = time.time() + 120
    folder = None
    while time.time() < deadline:  # wait until epoch 1 is on disk, then kill inside epoch 2
        runs = list(killed.glob("*/*/*/run.json"))
        if runs:
            folder = runs[0].parent
            doc = json.loads(runs[0].read_text())
            if doc["epochs_done"] >= 1:
                time.sleep(doc["epochs"][0]["wall_s"] * 0.4)
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_run(folder)
    assert partial["status"] == "partial" and partial["epochs_done"] == 1
    assert (folder / CHECKPOINT_FILE).exists()

    cli(*ARGS, "--results", killed)  # resume
    a, b = read_run(_only_run(ref)), read_run(folder)
    assert b["status"] == "done" and not (folder / CHECKPOINT_FILE).exists()
    strip = lambda doc: [{k: v for k, v in e.items() if k != "wall_s"} for e in doc["epochs"]]  # noqa: E731
    assert strip(a) == strip(b)
    ta, tb = read_telemetry(_only_run(ref)), read_telemetry(folder)
    for key in ("loss", "act_grad_mean_abs", "param_grad_mean_abs", "param_grad_l2", "step"):
        np.testing.assert_array_equal(ta[key], tb[key])


def test_finished_run_is_skipped(tmp_path):
    cli(*ARGS, "--results", tmp_path)
    folder = _only_run(tmp_path)
    before = (folder / "run.json").read_text()
    out = cli(*ARGS, "--results", tmp_path)
    assert "cached" in out.stderr
    assert (folder / "run.json").read_text() == before
