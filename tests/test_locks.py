"""Run locks: exclusive, released on success / error / Ctrl-C, heartbeat, stale rules, one winner
among racing processes; and through the CLI: a locked run is skipped, a stale or garbage lock is
taken over and the run resumes, and two concurrent run-alls over one store train every run once,
with the numbers of one sequential run-all; a process paused past the stale timeout and taken over
stops writing (issue 36)."""
import itertools
import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import TINY, cli, cli_subprocess

from resdeg.locks import LOCK_FILE, Locked, LockSettings, acquire, read_lock, stale_reason
from resdeg.store import read_run

GRID = ["run-all", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet", *TINY,
        "--set", "width_mult=0.125", "--models", "resnet18", "--no-probe", "--no-report"]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def _write_lock(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema": "resdeg.lock", "host": socket.gethostname(), "pid": _dead_pid(), "started": "then",
           "token": "t0", **fields}
    (folder / LOCK_FILE).write_text(json.dumps(doc))
    return folder / LOCK_FILE


def _holder(folder):
    """A live process holding the lock of `folder` until its stdin closes."""
    code = ("import sys; from resdeg.locks import acquire\n"
            f"with acquire({str(folder)!r}):\n    print('locked', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# -- the lock itself ------------------------------------------------------------------------------

def test_lock_is_exclusive_and_released_on_success_error_and_ctrl_c(tmp_path):
    folder = tmp_path / "run"
    with acquire(folder) as lock:
        info = read_lock(folder / LOCK_FILE)
        assert (info.host, info.pid, info.token) == (socket.gethostname(), os.getpid(), lock.token)
        assert info.started and info.problem is None
        with pytest.raises(Locked, match="locked by"):
            acquire(folder)
    assert not (folder / LOCK_FILE).exists()
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with acquire(folder):
                raise exc()
        assert not (folder / LOCK_FILE).exists()
    assert sorted(p.name for p in folder.iterdir()) == []  # no temporary files left


def test_heartbeat_refreshes_the_lock_and_notices_a_takeover(tmp_path):
    folder = tmp_path / "run"
    notes = []
    with acquire(folder, LockSettings(heartbeat_s=0.05, stale_after_s=60), log=notes.append) as lock:
        path = folder / LOCK_FILE
        os.utime(path, (1, 1))
        deadline = time.time() + 20
        while path.stat().st_mtime < 1000 and time.time() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > time.time() - 60, "the heartbeat never touched the lock"
        _write_lock(folder, host="elsewhere", token="other")  # someone took it over
        while lock.lost is None and time.time() < deadline:
            time.sleep(0.02)
        assert lock.lost and "taken over" in lock.lost
    assert read_lock(path).token == "other"  # release leaves the new owner's lock alone
    assert any("taken over" in n for n in notes)


def test_stale_rules(tmp_path):
    settings = LockSettings(heartbeat_s=30, stale_after_s=300)
    path = _write_lock(tmp_path / "a")
    assert "is gone" in stale_reason(read_lock(path), settings)  # this host, dead pid
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        path = _write_lock(tmp_path / "b", pid=live.pid)
        assert stale_reason(read_lock(path), settings) is None  # this host, live pid, fresh heartbeat
        path = _write_lock(tmp_path / "c", pid=live.pid, pid_start=1)
        assert "another process" in stale_reason(read_lock(path), settings)  # the pid was reused
        path = _write_lock(tmp_path / "d", pid=live.pid, boot_id="another-boot")
        assert "rebooted" in stale_reason(read_lock(path), settings)
    finally:
        live.stdin.close()
        live.wait()
    path = _write_lock(tmp_path / "e", host="another-host", pid=1)
    assert stale_reason(read_lock(path), settings) is None  # another host: only the heartbeat tells
    os.utime(path, (time.time() - 301, time.time() - 301))
    assert "no heartbeat for" in stale_reason(read_lock(path), settings)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / LOCK_FILE).write_bytes(b"\x00\xffgarbage")
    assert "garbage" in stale_reason(read_lock(tmp_path / "f" / LOCK_FILE), settings)


def _race(folder, start, done, results):
    start.wait()
    try:
        lock = acquire(folder, log=lambda m: None)
    except Locked:
        results.put("locked")
        done.wait()
        return
    results.put("won")
    done.wait()  # hold the lock until every contender has tried
    lock.release()


@pytest.mark.parametrize("initial", ["none", "stale", "garbage"])
def test_one_winner_among_racing_processes(tmp_path, initial):
    folder = tmp_path / "run"
    if initial == "stale":
        _write_lock(folder)
    elif initial == "garbage":
        folder.mkdir()
        (folder / LOCK_FILE).write_text("{not json")
    ctx = mp.get_context("fork")
    n = 8
    start, done, results = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(folder, start, done, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert outcomes.count("won") == 1, outcomes
    assert not (folder / LOCK_FILE).exists()
    assert [p.name for p in folder.iterdir()] == []


def test_lock_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("RESDEG_LOCK_HEARTBEAT_S", "2")
    monkeypatch.setenv("RESDEG_LOCK_STALE_S", "60")
    assert LockSettings.from_env() == LockSettings(2.0, 60.0)
    from resdeg.errors import ResdegError

    monkeypatch.setenv("RESDEG_LOCK_STALE_S", "3")
    with pytest.raises(ResdegError, match="at least twice"):
        LockSettings.from_env()
    monkeypatch.setenv("RESDEG_LOCK_STALE_S", "soon")
    with pytest.raises(ResdegError, match="expected a number"):
        LockSettings.from_env()


# -- through the command line ---------------------------------------------------------------------

def _folders(results):
    return {p.parent.name: p.parent for p in results.glob("*/*/*/run.json")}


def _numbers(folder):
    run = read_run(folder)
    epochs = [{k: v for k, v in e.to_dict().items() if k != "wall_s"} for e in run.epochs]
    return run.status, epochs, run.telemetry.sha256


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, here and in subprocesses


def test_run_all_skips_a_run_locked_by_a_live_process_and_says_so(tmp_path):
    results = tmp_path / "r"
    args = [*GRID, "--variants", "FULL,Nres", "--set", "epochs=1", "--results", results]
    dry = cli(*args, "--dry-run").stdout
    (name,) = re.findall(r"(resnet18-FULL-s42-\w+)", dry)
    holder = _holder(results / "smoke" / "synthetic" / name)
    try:
        out = cli(*args)
        assert re.search(rf"locked +{name}: locked by {socket.gethostname()} pid {holder.pid}.*skipped", out.stderr)
        assert set(_folders(results)) == {n for n in re.findall(r"(resnet18-\w+-s42-\w+)", dry) if n != name}
        assert "Traceback" not in out.output
    finally:
        holder.stdin.close()
        holder.wait()
    cli(*args)  # released: trained now
    assert name in _folders(results)


def test_stale_lock_is_taken_over_and_the_run_resumes_from_its_checkpoint(tmp_path):
    import torch

    from resdeg.config import make_config, parse_overrides
    from resdeg.data import load_dataset
    from resdeg.store import CHECKPOINT_FILE, run_dir
    from resdeg.train import Trainer

    args = [*GRID, "--variants", "Nres", "--set", "epochs=2"]
    cli(*args, "--results", tmp_path / "ref")
    over = parse_overrides([*TINY[1::2], "width_mult=0.125", "epochs=2"])
    cfg = make_config("smoke", over, device_type="cpu", model="resnet18", variant="Nres", seed=None,
                      dataset="synthetic")
    folder = run_dir(tmp_path / "r", cfg)
    Trainer(cfg, load_dataset("synthetic"), folder, torch.device("cpu"), progress=False).run(deadline=time.time())
    assert read_run(folder).epochs_done == 1 and (folder / CHECKPOINT_FILE).exists()  # killed after epoch 1
    _write_lock(folder)  # by a process of this host that is gone
    out = cli(*args, "--results", tmp_path / "r")
    assert re.search(r"taking over a stale lock on .*process \d+ on this host is gone.*resumes", out.stderr)
    assert _numbers(folder) == _numbers(_folders(tmp_path / "ref")[folder.name])
    assert not (folder / LOCK_FILE).exists()


def test_garbage_lock_is_stale_with_a_one_line_message(tmp_path):
    results = tmp_path / "r"
    args = [*GRID, "--variants", "FULL", "--set", "epochs=1", "--results", results]
    (name,) = re.findall(r"(resnet18-FULL-s42-\w+)", cli(*args, "--dry-run").stdout)
    folder = results / "smoke" / "synthetic" / name
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_bytes(b"\x89PNG garbage \x00\x01")
    out = cli(*args)
    (line,) = [ln for ln in out.stderr.splitlines() if "lock" in ln]
    assert "taking over a stale lock" in line and "garbage" in line
    assert "Traceback" not in out.output
    assert read_run(folder).status == "done" and not (folder / LOCK_FILE).exists()


def test_two_concurrent_run_alls_train_every_run_exactly_once(tmp_path):
    args = [*GRID, "--set", "epochs=2", "--set", "train_images=512"]
    t0 = time.time()
    cli(*args, "--results", tmp_path / "ref")  # one sequential run-all (in this process)
    t_ref = time.time() - t0
    ref = _folders(tmp_path / "ref")
    assert len(ref) == 4
    results = tmp_path / "shared"
    t0 = time.time()
    procs = [cli_subprocess(*args, "--results", results) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    t_pair = time.time() - t0
    assert [p.returncode for p in procs] == [0, 0], outs
    trained = {}
    for i, (_, err) in enumerate(outs):
        assert "Traceback" not in err
        for m in re.finditer(r"^ *resnet18 (\w+) +seed 42: done", err, re.M):
            trained.setdefault(m.group(1), []).append(i)
    assert set(trained) == {"FULL", "Nres", "Nbn", "Nboth"} and all(len(v) == 1 for v in trained.values()), \
        (trained, outs)
    got = _folders(results)
    assert set(got) == set(ref)
    for name in ref:
        assert _numbers(got[name]) == _numbers(ref[name]), name
        assert not (got[name] / LOCK_FILE).exists()
        assert not [p.name for p in got[name].iterdir() if p.name.startswith(".")]
    skips = [len(re.findall(r"^(locked +\S+:.*skipped|\w+ +\S+ \(finished meanwhile)", err, re.M)) for _, err in outs]
    per = [sum(i == k for v in trained.values() for i in v) for k in (0, 1)]
    print(f"\nconcurrent run-alls: runs trained per process {per}, skipped {skips}; "
          f"sequential {t_ref:.1f}s in-process, the pair {t_pair:.1f}s")


# `resdeg` whose epochs take at least 0.4 s (tiny nets train too fast to pause one mid-run)
SLOW = """
import sys, time
from resdeg.train import Trainer
from resdeg.cli import main
real = Trainer.train_epoch
def train_epoch(self, epoch, bar):
    time.sleep(0.4)
    return real(self, epoch, bar)
Trainer.train_epoch = train_epoch
main(sys.argv[1:])
"""


def test_a_process_paused_past_the_stale_timeout_stops_writing_once_taken_over(tmp_path, monkeypatch):
    """Ctrl-Z (or a suspended laptop, a Slurm suspend) past the stale timeout: another process rightly
    takes the run over and goes on; the paused one, resumed, notices within a heartbeat that it lost
    the lock and writes nothing more. The record never goes backwards, and the run ends done."""
    import signal

    monkeypatch.setenv("RESDEG_LOCK_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("RESDEG_LOCK_STALE_S", "1.5")
    results = tmp_path / "r"
    args = [*GRID, "--variants", "FULL", "--set", "epochs=12", "--results", results]
    slow = lambda: subprocess.Popen([sys.executable, "-c", SLOW, *map(str, args)], text=True,  # noqa: E731
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []

    def watch(until, limit=240):
        deadline = time.time() + limit
        while not until():
            assert time.time() < deadline, f"timed out; the record so far: {sorted(set(seen))}"
            try:
                seen.append(json.loads(next(results.glob("*/*/*/run.json")).read_text())["epochs_done"])
            except (StopIteration, OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)

    first = slow()
    second = None
    try:
        watch(lambda: (seen and seen[-1] >= 2) or first.poll() is not None)
        first.send_signal(signal.SIGSTOP)
        paused_at = seen[-1]
        time.sleep(2.0)  # past the stale timeout: no heartbeat
        second = slow()
        watch(lambda: (seen and seen[-1] >= paused_at + 3) or second.poll() is not None)  # it took over, goes on
        first.send_signal(signal.SIGCONT)
        watch(lambda: first.poll() is not None and second.poll() is not None)
        outs = [p.communicate(timeout=60) for p in (first, second)]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
    changes = [k for k, _ in itertools.groupby(seen)]  # epochs_done as each write left it
    assert changes == sorted(changes), f"the record went backwards: {changes}"
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert "taking over a stale lock" in outs[1][1] and "resumes from its checkpoint" in outs[1][1]
    assert re.search(r"^stopped +resnet18-FULL-s42-\w+: lock on .* was taken over", outs[0][1], re.M), outs[0][1]
    run = read_run(next(results.glob("*/*/*/run.json")).parent)
    assert run.status == "done" and run.epochs_done == 12 and [e.epoch for e in run.epochs] == list(range(1, 13))
