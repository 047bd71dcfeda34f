"""A run killed with SIGKILL in the middle of an epoch resumes to exactly the numbers of an
uninterrupted run (CPU, deterministic). The kill comes at a chosen training step, not after a
sleep, so the test does not depend on how fast the machine is."""
import os
import signal
import subprocess
import sys

import numpy as np

from conftest import TINY, cli
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


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cli(*ARGS, "--results", ref)

    env = {**os.environ, "KILL_AT_STEP": str(STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2)}  # inside epoch 2
    proc = subprocess.run([sys.executable, "-c", KILLER, *ARGS, "--results", str(killed)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = _only_run(killed)
    partial = read_run(folder)
    assert partial.status == "partial" and partial.epochs_done == 1
    assert (folder / CHECKPOINT_FILE).exists()

    cli(*ARGS, "--results", killed)  # resume
    a, b = read_run(_only_run(ref)), read_run(folder)
    assert b.status == "done" and not (folder / CHECKPOINT_FILE).exists()
    strip = lambda run: [{k: v for k, v in e.to_dict().items() if k != "wall_s"} for e in run.epochs]  # noqa: E731
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
