"""A run killed with SIGKILL in the middle of an epoch resumes to exactly the numbers of an
uninterrupted run (CPU, deterministic). The kill comes at a chosen training step, not after a
sleep, so the test does not depend on how fast the machine is."""
import os
import signal
import subprocess
import sys

import numpy as np
from conftest import TINY, cli, status_json

from resdeg.store import CHECKPOINT_FILE, read_run, read_telemetry

ARGS = ["run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet",
        "--model", "resnet18", "--variant", "Nres", *TINY, "--set", "epochs=3", "--set", "train_images=768",
        "--set", "batch_size=32"]
STEPS_PER_EPOCH = 768 // 32

# `resdeg` with a training step that SIGKILLs its own process at step $KILL_AT_STEP
KILLER = """
import os, signal, sys
from resdeg import train
from resdeg.cli import main
count, kill_at, step = [0], int(os.environ["KILL_AT_STEP"]), train.Engine.train_step
def train_step(self, *args, **kwargs):
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
train.Engine.train_step = train_step
main(sys.argv[1:])
"""


def _only_run(results):
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    return folder


def _killed_in_epoch_2(results):
    """The run folder of ARGS, SIGKILLed in the middle of its second epoch."""
    env = {**os.environ, "KILL_AT_STEP": str(STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2)}
    proc = subprocess.run([sys.executable, "-c", KILLER, *ARGS, "--results", str(results)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = _only_run(results)
    partial = read_run(folder)
    assert partial.status == "partial" and partial.epochs_done == 1
    assert (folder / CHECKPOINT_FILE).exists()
    return folder


def _assert_same_run(ref, folder):
    a, b = read_run(_only_run(ref)), read_run(folder)
    assert b.status == "done" and not (folder / CHECKPOINT_FILE).exists()
    strip = lambda run: [{k: v for k, v in e.to_dict().items() if k != "wall_s"} for e in run.epochs]  # noqa: E731
    assert strip(a) == strip(b)
    ta, tb = read_telemetry(_only_run(ref)), read_telemetry(folder)
    for key in ("loss", "act_grad_mean_abs", "param_grad_mean_abs", "param_grad_l2", "step"):
        np.testing.assert_array_equal(ta[key], tb[key])


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cli(*ARGS, "--results", ref)
    folder = _killed_in_epoch_2(killed)
    cli(*ARGS, "--results", killed)  # resume
    _assert_same_run(ref, folder)


def test_checkpoint_without_run_json_is_resumed_not_lost(tmp_path):
    """A copy of the store that kept only git-ignored files (a device's second call, which
    removes untracked files not in the working tree) leaves a checkpoint without its run.json:
    status says partial, probe passes it by, and run-all resumes it to the uninterrupted numbers."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cli(*ARGS, "--results", ref)
    folder = _killed_in_epoch_2(killed)
    for f in folder.iterdir():
        if f.name != CHECKPOINT_FILE:
            f.unlink()
    (row,) = status_json(killed)
    assert row["status"] == "partial" and "run-all" in row["problem"], row
    assert "partial: " in cli("status", "--results", killed).stderr
    probe = cli("probe", "--results", killed, "--device", "cpu")
    assert "unfinished" in probe.stderr + probe.stdout
    cli(*ARGS, "--results", killed)  # resume
    _assert_same_run(ref, folder)


def test_finished_run_is_skipped(tmp_path):
    cli(*ARGS, "--results", tmp_path)
    folder = _only_run(tmp_path)
    before = (folder / "run.json").read_text()
    out = cli(*ARGS, "--results", tmp_path)
    assert "cached" in out.stderr
    assert (folder / "run.json").read_text() == before
