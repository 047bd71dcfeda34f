"""Executors and launchers: `run-all --jobs N` (worker processes), `--launcher submitit-local`
(submitit's LocalExecutor) and `--launcher slurm` on a real single-node Slurm started here (skipped,
with its reason, where one cannot start) train the same numbers as a sequential run-all; the
submissions show in `resdeg status`; every bad input is one line. SIGTERM to `run-all --jobs`
ends its workers too, and a worker's failure of any kind is its run's alone (issue 36)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import TINY, assert_one_line_error, cli, cli_subprocess, status_json

from resdeg.locks import LOCK_FILE
from resdeg.store import read_run

GRID = ["run-all", "--protocol", "smoke", "--dataset", "synthetic", "--quiet", *TINY, "--set", "width_mult=0.125",
        "--set", "epochs=1", "--models", "resnet18", "--no-probe", "--no-report"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, here and in subprocesses


def _numbers(results):
    out = {}
    for p in results.glob("*/*/*/run.json"):
        run = read_run(p.parent)
        out[p.parent.name] = (run.status, [{k: v for k, v in e.to_dict().items() if k != "wall_s"}
                                           for e in run.epochs], run.telemetry.sha256)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid trained by a sequential run-all in this process, per variant list."""
    cache = {}

    def get(variants):
        if variants not in cache:
            import torch

            torch.set_num_threads(1)
            results = tmp_path_factory.mktemp("ref")
            cli(*GRID, "--device", "cpu", "--variants", variants, "--results", results)
            cache[variants] = _numbers(results)
        return cache[variants]
    return get


def _no_leftovers(results):
    for folder in {p.parent for p in results.glob("*/*/*/run.json")}:
        assert not (folder / LOCK_FILE).exists()
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_jobs_2_trains_what_jobs_1_trains(tmp_path, reference):
    t0 = time.time()
    out = cli(*GRID, "--device", "cpu", "--variants", "FULL,Nres", "--jobs", "2", "--results", tmp_path)
    elapsed = time.time() - t0
    assert _numbers(tmp_path) == reference("FULL,Nres")
    assert len(re.findall(r"seed 42: done", out.stderr)) == 2
    _no_leftovers(tmp_path)
    print(f"\n--jobs 2: 2 runs in {elapsed:.1f}s")


def test_submitit_local_wait_trains_what_run_all_trains_and_status_follows(tmp_path, reference):
    t0 = time.time()
    out = cli(*GRID, "--variants", "FULL,Nres", "--launcher", "submitit-local", "--wait", "--time", "10",
              "--results", tmp_path)
    elapsed = time.time() - t0
    assert len(re.findall(r"^submitted resnet18-\w+-s42-\w+: job \d+$", out.stderr, re.M)) == 2
    assert len(re.findall(r"seed 42: done", out.stderr)) == 2
    assert _numbers(tmp_path) == reference("FULL,Nres")
    rows = status_json(tmp_path)
    assert [(r["status"], r["activity"]) for r in rows] == [("done", None)] * 2
    for r in rows:
        sub = json.loads((tmp_path / os.path.relpath(r["path"], tmp_path) / "submitted.json").read_text())
        assert sub["job_id"] == r["job_id"] and sub["outcome"] == "trained" and sub["status"] == "done"
    assert (tmp_path / ".slurm").is_dir()
    _no_leftovers(tmp_path)
    print(f"\nsubmitit-local --wait: 2 runs in {elapsed:.1f}s")


def test_a_failing_run_is_one_line_after_the_others(tmp_path):
    bad = ["--dataset", "imagefolder", "--data-dir", tmp_path / "nope", "--variants", "FULL",
           "--results", tmp_path / "r"]
    for launch in (["--jobs", "2"], ["--launcher", "submitit-local", "--wait"]):
        r = cli(*GRID, *launch, *bad, expect=None)
        assert r.exit_code == 1 and "Traceback" not in r.output
        *lines, last = r.stderr.strip().splitlines()
        assert re.fullmatch(r"resdeg: error: 1 run failed; first: resnet18-FULL-s42-\w+: --data-dir .*nope.*", last)
        assert any(re.match(r"failed +resnet18-FULL-s42-\w+: ", ln) for ln in lines)  # said when it happened
    (row,) = status_json(tmp_path / "r")
    assert row["status"] == "new" and row["activity"].startswith("failed: job")


# -- a real Slurm ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node Slurm started for these tests (tests/slurm_local.py), or a skip with its reason."""
    from slurm_local import LocalSlurm, SlurmUnavailable

    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        env = cluster.start()
    except SlurmUnavailable as e:
        cluster.stop()
        reason = f"no real Slurm here: {e}; the launcher is tested through submitit's local executor"
        warnings.warn(reason, stacklevel=1)  # in pytest's warnings summary too, never silent
        pytest.skip(reason)
    yield env
    cluster.stop()


def test_real_slurm_wait_and_status(tmp_path, reference, slurm, monkeypatch):
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    results = tmp_path / "r"
    # without --wait: the job id on stdout, and `resdeg status` shows the job
    out = cli(*GRID, "--variants", "FULL", "--launcher", "slurm", "--time", "10", "--results", results)
    (job,) = re.findall(r"^(\d+) resnet18-FULL-s42-\w+$", out.stdout, re.M)
    (row,) = status_json(results)
    assert row["job_id"] == job and re.match(r"(submitted: job|running on) ", row["activity"]), row
    # with --wait: the job still queued or running is not submitted twice; the other one is
    t0 = time.time()
    out = cli(*GRID, "--variants", "FULL,Nres", "--launcher", "slurm", "--wait", "--time", "10", "--results",
              results)
    elapsed = time.time() - t0
    assert re.search(rf"(queued +resnet18-FULL-s42-\w+: job {job} is still in the queue; not submitted again"
                     rf"|done +resnet18-FULL-s42-\w+ \(cached\))", out.stderr), out.stderr
    assert re.search(r"^submitted resnet18-Nres-s42-\w+: job \d+$", out.stderr, re.M)
    deadline = time.time() + 180
    while time.time() < deadline and [r["status"] for r in status_json(results)] != ["done", "done"]:
        time.sleep(0.5)  # the first job, if --wait did not wait for it
    rows = status_json(results)
    assert [(r["status"], r["activity"]) for r in rows] == [("done", None)] * 2, rows
    assert _numbers(results) == reference("FULL,Nres")
    _no_leftovers(results)
    # a job cancelled in the queue or while it runs: status says so (lost, or its lock is stale)
    out = cli(*GRID, "--variants", "Nbn", "--launcher", "slurm", "--time", "10", "--results", results)
    (job,) = re.findall(r"^(\d+) resnet18-Nbn-s42-\w+$", out.stdout, re.M)
    subprocess.run(["scancel", job], check=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        row = next(r for r in status_json(results) if r["variant"] == "Nbn")
        if re.match(r"(lost: job|stale lock: process \d+ on this host is gone)", row["activity"] or ""):
            break
        time.sleep(0.5)
    assert re.match(r"(lost: job|stale lock)", row["activity"] or ""), row
    print(f"\nreal Slurm: --wait {elapsed:.1f}s; cancelled job: {row['activity']}")


# -- options and bad input ------------------------------------------------------------------------

def test_dry_run_prints_the_sbatch_parameters_without_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: a dry run needs none
    out = cli(*GRID, "--launcher", "slurm", "--dry-run", "--partition", "gpu", "--gpus-per-run", "1",
              "--time", "1-02:30:00", "--slurm-extra", "account=abc", "--slurm-extra", "cpus-per-task=8",
              "--results", tmp_path / "r").stdout
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=1590",
                 "#SBATCH --account=abc", "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-3%4",
                 "#SBATCH --job-name=resdeg"):
        assert line in out, out
    assert "4 to train" in out and not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--jobs", "0"], "--jobs 0: must be at least 1"),
    (["--launcher", "nosuch"], "--launcher 'nosuch': choose one of local, slurm, submitit-local"),
    (["--partition", "gpu"], "--partition goes with --launcher slurm"),
    (["--wait"], "--wait goes with --launcher slurm"),
    (["--launcher", "slurm", "--jobs", "2"], "--jobs is for the local launcher"),
    (["--launcher", "slurm", "--time-limit", "5"], "--time-limit is for local runs"),
    (["--launcher", "slurm", "--time", "soon"], "--time 'soon': expected"),
    (["--launcher", "slurm", "--slurm-extra", "account"], "--slurm-extra 'account': expected KEY=VALUE"),
    (["--launcher", "slurm", "--gpus-per-run", "-1"], "--gpus-per-run -1"),
])
def test_bad_launcher_input_is_one_line(tmp_path, args, fragment):
    r = cli(*GRID, *args, "--results", tmp_path / "r", expect=None)
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "r").exists()


def test_slurm_or_submitit_missing_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    r = cli(*GRID, "--launcher", "slurm", "--results", tmp_path / "r", expect=None)
    assert_one_line_error(r, "sbatch is not on PATH", "slurm-client")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    r = cli(*GRID, "--launcher", "slurm", "--results", tmp_path / "r", expect=None)
    assert_one_line_error(r, "needs the Python package submitit", "pip install submitit")
    assert not (tmp_path / "r").exists()


@pytest.fixture
def read_only_store(tmp_path):
    """A folder on a read-only file system (a read-only tmpfs where this process may mount one;
    else a folder under /proc, which nobody can create, root included)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    yield (ro / "results") if mounted else "/proc/resdeg-store"
    if mounted:
        subprocess.run(["umount", str(ro)], check=True)


def test_read_only_store_is_one_line(read_only_store):
    for args in (["--jobs", "2"], ["--launcher", "submitit-local"], ["--launcher", "submitit-local", "--wait"]):
        r = cli(*GRID, *args, "--results", read_only_store, expect=None)
        assert_one_line_error(r, str(read_only_store), "not writable")


# -- stopping: every signal a user or a scheduler sends ------------------------------------------

def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def _both_mid_training(epochs: list[int]) -> bool:
    # a list compare ([3] < [1, 1] is False) would stop waiting while the second run has not started
    return len(epochs) == 2 and min(epochs) >= 1


def _epochs_done(results) -> list[int]:
    out = []
    for p in results.glob("*/*/*/run.json"):
        try:
            out.append(json.loads(p.read_text())["epochs_done"])
        except (OSError, ValueError, KeyError):
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_sigterm_to_run_all_jobs_ends_its_workers_and_leaves_the_runs_resumable(tmp_path):
    """`kill PID` of a background `run-all --jobs 2` (what systemd or a scheduler sends): the workers
    stop with it (no orphans training on), every lock is released, the runs are partial and resumable,
    and the command says so in one line."""
    results = tmp_path / "r"
    proc = cli_subprocess(*GRID, "--device", "cpu", "--variants", "FULL,Nres", "--set", "epochs=400", "--jobs", "2",
                          "--results", results)
    workers = set()
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not _both_mid_training(_epochs_done(results)):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # the two workers (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.strip().splitlines()[-1] == "resdeg: stopped by SIGTERM; run the same command again to resume"
        assert "Traceback" not in err
        gone = time.time() + 30
        while any(_alive(w) for w in workers) and time.time() < gone:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers outlived their run-all"
    finally:
        proc.kill()
        for w in workers:  # the old behaviour: orphans that train on; end them here
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    rows = status_json(results)
    assert [r["status"] for r in rows] == ["partial", "partial"] and all(r["activity"] is None for r in rows)
    assert not list(results.glob(f"*/*/*/{LOCK_FILE}"))
    assert all(1 <= r["epochs_done"] < 400 for r in rows)


def test_sighup_stops_a_command_as_ctrl_c_does():
    """A closed terminal sends SIGHUP: inside a command it is a KeyboardInterrupt (Stopped) like
    SIGTERM, so that every run ends cleanly; outside, the previous handlers are back."""
    from resdeg.signals import Stopped, stop_signals

    before = signal.getsignal(signal.SIGHUP)
    for signum in (signal.SIGHUP, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt) as e:
            with stop_signals():
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler runs at the next bytecode
        assert isinstance(e.value, Stopped) and e.value.signum == signum
    assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.parametrize("error", [ValueError("Expected more than 1 value per channel"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_a_pool_workers_failure_of_any_kind_is_its_runs_alone(tmp_path, monkeypatch, error):
    """A worker's run that raises anything (a bug's ValueError, CUDA out of memory) is reported as
    that run's failure, in one line; the worker returns it, so the pool and the other runs go on."""
    from resdeg import runner
    from resdeg.config import make_config

    def boom(task, **kw):
        raise error
    monkeypatch.setattr(runner, "train_one", boom)
    cfg = make_config("smoke", device_type="cpu", dataset="synthetic")
    out = runner._pool_task(runner.TrainingJob(cfg, tmp_path / cfg.run_name))
    assert out.result == "failed" and out.error == f"{cfg.run_name}: {type(error).__name__}: {error}"
    assert re.fullmatch(rf"failed +{cfg.run_name}: {type(error).__name__}: .+", out.line)


# -- several runs on one GPU (run-all --jobs N --device cuda) ------------------------------------------------

def test_runs_sharing_one_gpu_split_its_memory_and_runs_elsewhere_do_not():
    from resdeg.runner import GPU_SHARED_FRACTION, gpu_memory_share

    assert gpu_memory_share(["cuda"] * 4, 2, True, 1) == pytest.approx(GPU_SHARED_FRACTION / 2)
    assert gpu_memory_share(["auto"], 3, True, 1) == pytest.approx(GPU_SHARED_FRACTION / 3)
    assert gpu_memory_share(["cpu"] * 4, 2, True, 1) is None  # CPU runs on a GPU machine
    assert gpu_memory_share(["auto"] * 4, 2, False, 0) is None  # auto on a CPU-only machine
    assert gpu_memory_share(["cuda"], 1, True, 1) is None  # one run has the card to itself
    assert gpu_memory_share(["cuda"] * 2, 2, True, 2) is None  # two GPUs: not one shared card


def test_a_pool_worker_on_a_shared_gpu_caps_its_memory(monkeypatch):
    """The worker initialiser's GPU path, exercised on the CPU: it asks torch for its share."""
    import torch

    from resdeg import runner

    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: calls.append(f))
    monkeypatch.setattr(runner, "die_with_parent", lambda pid: None)  # this is the test process, not a worker
    threads, handlers = (
        torch.get_num_threads(),
        {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
    )
    try:
        runner._init_worker(1, os.getpid(), 0.475)
        runner._init_worker(1, os.getpid(), None)
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    assert calls == [0.475]
