"""Plan and execute a grid of runs against the result store: finished runs are skipped,
partial ones resumed, corrupt ones reported (and redone only with force).

plan() -> tasks -> an executor -> outcomes. Every executor calls the same `train_one`, which
trains one run into its folder under the run lock (resdeg/locks.py): `Sequential` in this
process (the default), `ProcessPool` in N worker processes (`run-all --jobs N`), and the
cluster launchers of resdeg/launch.py as submitit jobs (`run-all --launcher slurm`)."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from .config import Config
from .data import load_dataset
from .errors import ResdegError
from .store import CHECKPOINT_FILE, RUN_FILE, entry, run_dir


@dataclass
class PlannedRun:
    cfg: Config
    folder: Path
    state: str  # new / partial / done / diverged / corrupt
    problem: str | None = None

    @property
    def todo(self) -> bool:
        return self.state in ("new", "partial")


def plan(configs: list[Config], results: str | Path, force: bool = False) -> list[PlannedRun]:
    out = []
    for cfg in configs:
        folder = run_dir(results, cfg)
        if not (folder / RUN_FILE).exists() and not (folder / CHECKPOINT_FILE).exists():
            out.append(PlannedRun(cfg, folder, "new"))
            continue
        e = entry(folder)
        state = e.status
        if force and state != "new":
            state = "new"
        out.append(PlannedRun(cfg, folder, state, e.problem))
    return out


# -- one run, in whichever process trains it --------------------------------------------------

@dataclass(frozen=True)
class RunTask:
    """One run to train and everything a process needs for it: picklable, so that a pool worker
    or a cluster job gets it as it is. `device` is a name (auto / cpu / cuda), resolved where the
    run trains; `deadline` is a time.time() value."""
    cfg: Config
    folder: Path
    device: str = "auto"
    data_dir: str | None = None
    force: bool = False
    deadline: float | None = None
    progress: bool = False

    @property
    def name(self) -> str:
        return self.cfg.run_name


@dataclass
class Outcome:
    """What became of a task: trained | cached (finished by another process meanwhile) | locked
    (another live process trains it: skipped) | not started (time limit) | corrupt | failed."""
    name: str
    result: str
    line: str  # what to tell the user
    status: str | None = None  # the run's status afterwards: done / partial / diverged
    notes: list[str] = field(default_factory=list)  # said while it ran (e.g. a stale lock taken over)
    error: str | None = None  # result failed: the one-line error


_DATASETS: dict = {}  # a worker process's data sets (name -> Dataset), loaded once per process


def _dataset(cfg: Config, data_dir, datasets: dict):
    """The run's data set, loaded once per grid and process (one --data-dir per grid)."""
    if cfg.dataset not in datasets:
        datasets[cfg.dataset] = load_dataset(cfg.dataset, data_dir)
    return datasets[cfg.dataset]


def _clear(folder: Path) -> None:
    """--force: empty a run folder under its lock (the lock and the submission record stay)."""
    from .launch import SUBMISSION_FILE
    from .locks import LOCK_FILE

    for p in folder.iterdir():
        if p.name in (LOCK_FILE, SUBMISSION_FILE) or p.name.startswith(f".{LOCK_FILE}."):
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _device(name: str):
    import torch

    from .train import resolve_device

    return resolve_device(name) if name in ("auto", "cpu", "cuda") else torch.device(name)


def _result_line(cfg: Config, run) -> str:
    s = run.summary
    return (f"{cfg.model:>9} {cfg.variant:<5} seed {cfg.seed}: {run.status:<8} "
            f"epochs {run.epochs_done}/{cfg.epochs}  train {_pct(s.train_acc)}  "
            f"test {_pct(s.test_acc)}  {s.wall_s:.1f}s")


def train_one(task: RunTask, log=None, datasets: dict | None = None) -> Outcome:
    """Train one run into its folder under the run lock (resuming its checkpoint): the one
    function every executor calls, in this process, a pool worker or a cluster job. A run locked
    by a live process is skipped; one finished by another process meanwhile is not redone."""
    from .locks import Locked, acquire
    from .train import Trainer

    notes: list[str] = []
    say = log or notes.append
    name = task.name
    if task.deadline is not None and time.time() >= task.deadline:
        return Outcome(name, "not started", f"time limit reached: {name} not started")
    # the data first: a data error leaves the store untouched (and the lock is held for training only)
    data = _dataset(task.cfg, task.data_dir, _DATASETS if datasets is None else datasets)
    try:
        lock = acquire(task.folder, log=say)
    except Locked as e:
        return Outcome(name, "locked", f"{'locked':<9} {name}: {e}; skipped", notes=notes)
    with lock:
        if task.force:
            _clear(task.folder)
        elif (task.folder / RUN_FILE).exists():
            e = entry(task.folder)
            if e.status in ("done", "diverged"):
                return Outcome(name, "cached", f"{e.status:<9} {name} (finished meanwhile by another process)",
                               e.status, notes)
            if e.status == "corrupt":
                return Outcome(name, "corrupt", f"{'corrupt':<9} {name}: {e.problem}; not trained (redo with --force)",
                               "corrupt", notes)
        trainer = Trainer(task.cfg, data, task.folder, _device(task.device), progress=task.progress)
        run = trainer.run(deadline=task.deadline)
        if lock.lost:
            say(f"warning: {lock.lost}")
    return Outcome(name, "trained", _result_line(task.cfg, run), run.status, notes)


# -- executors: a plan's tasks -> outcomes ----------------------------------------------------

class Executor:
    """Runs tasks somewhere and returns their outcomes. `local`: the runs train on this machine
    (its device is checked before anything starts)."""
    name = "executor"
    local = True

    def task_device(self, device_name: str) -> str:
        return device_name

    def run(self, tasks: list[RunTask], log=print, progress: bool = True) -> list[Outcome]:
        raise NotImplementedError


class Sequential(Executor):
    """One run after another in this process (the default). A one-line error in a run stops the grid.
    `datasets` (name -> Dataset): data sets already loaded (and checked) for this grid."""
    name = "sequential"

    def __init__(self, datasets: dict | None = None):
        self.datasets = {} if datasets is None else datasets

    def run(self, tasks, log=print, progress=True):
        datasets = self.datasets  # each data set is loaded once for the whole grid
        outcomes = []
        bar = tqdm(total=len(tasks), desc="runs", unit="run", disable=None if progress and tasks else True)
        for t in tasks:
            if t.deadline is not None and time.time() >= t.deadline:
                log(f"time limit reached: {t.name} and later runs not started")
                break
            out = train_one(t, log=log, datasets=datasets)
            outcomes.append(out)
            bar.update(1)
            log(out.line)
        bar.close()
        return outcomes


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_worker_state = {"in_task": False, "interrupted": False}


def _on_sigint(signum, frame):
    first = not _worker_state["interrupted"]
    _worker_state["interrupted"] = True
    if _worker_state["in_task"] and first:  # once: a second Ctrl-C must not cut the lock's release short
        raise KeyboardInterrupt


def _init_worker(threads: int) -> None:
    """A pool worker: its share of the CPU threads, and Ctrl-C that ends the run it trains
    (releasing its lock) without starting another one."""
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, _on_sigint)


def _pool_task(task: RunTask) -> Outcome:
    if _worker_state["interrupted"]:
        return Outcome(task.name, "not started", f"interrupted: {task.name} not started")
    _worker_state["in_task"] = True
    try:
        return train_one(task)
    except KeyboardInterrupt:
        return Outcome(task.name, "interrupted", f"interrupted: {task.name} (resumable)")
    except ResdegError as e:
        return Outcome(task.name, "failed", f"{'failed':<9} {task.name}: {e}", error=f"{task.name}: {e}")
    finally:
        _worker_state["in_task"] = False


class ProcessPool(Executor):
    """`--jobs N`: N runs at once, each in a worker process of its own (spawned, so CUDA works;
    on one GPU the processes share it), each with cores // N torch threads, each loading its
    data itself. A one-line error in a run is reported when the others have finished."""
    name = "processes"

    def __init__(self, jobs: int, threads: int | None = None, poll_s: float = 1.0):
        if jobs < 1:
            raise ResdegError(f"--jobs {jobs}: must be at least 1")
        self.jobs, self.poll_s = jobs, poll_s
        share = max(1, cpu_cores() // jobs)
        cap = os.environ.get("OMP_NUM_THREADS", "")  # a cap the user set is kept
        self.threads = threads or (min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share)

    def run(self, tasks, log=print, progress=True):
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if not tasks:
            return []
        if self.jobs > cpu_cores():
            log(f"note: --jobs {self.jobs} on {cpu_cores()} CPU cores: 1 torch thread each, cores shared")
        outcomes = []
        tasks = [replace(t, progress=False) for t in tasks]  # the bars are drawn here, from the store
        pool = ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))
        with StoreProgress(tasks, progress, log) as bars:
            try:
                pending = {pool.submit(_pool_task, t): t for t in tasks}
                while pending:
                    done, _ = wait(pending, timeout=self.poll_s, return_when=FIRST_COMPLETED)
                    for f in done:
                        task = pending.pop(f)
                        out = f.result()
                        for note in out.notes:
                            bars.log(note)
                        bars.log(out.line)
                        bars.finish(task)
                        outcomes.append(out)
                    bars.poll()
            except BaseException:
                # Ctrl-C reaches the workers too (one process group); a SIGINT sent to this process
                # alone is passed on. Each worker ends its run (resumable), releases its lock, starts none.
                for proc in list(getattr(pool, "_processes", {}).values()):
                    try:
                        os.kill(proc.pid, signal.SIGINT)
                    except (OSError, AttributeError):
                        pass
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        if any(o.result == "interrupted" for o in outcomes):
            raise KeyboardInterrupt
        return outcomes


def _short(cfg: Config) -> str:
    return f"{cfg.model} {cfg.variant} s{cfg.seed}"


def _epochs_done(folder: Path) -> int:
    import json

    try:
        return int(json.loads((folder / RUN_FILE).read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class StoreProgress:
    """The grid's bar and one bar per running run (epochs done), read from the store: each run's
    lock says it is running, its run.json how far it got. The same for worker processes and for
    cluster jobs. Quiet unless asked for and stderr is a terminal."""

    def __init__(self, tasks: list[RunTask], progress: bool, log):
        self.enabled = bool(progress and tasks and sys.stderr.isatty())
        self._log = log
        self.tasks = {t.folder: t for t in tasks}
        self.done: set[Path] = set()
        self.bars: dict[Path, tqdm] = {}
        self.slots: dict[Path, int] = {}  # a bar's line under the grid's
        self.grid = tqdm(total=len(tasks), desc="runs", unit="run", position=0, disable=not self.enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()
        self.grid.close()

    def log(self, msg: str) -> None:
        if self.enabled:
            with tqdm.external_write_mode(file=sys.stderr):
                self._log(msg)
        else:
            self._log(msg)

    def poll(self, postfix: str | None = None) -> None:
        if not self.enabled:
            return
        from .locks import LOCK_FILE

        for folder, task in self.tasks.items():
            if folder in self.done:
                continue
            bar = self.bars.get(folder)
            if bar is None and (folder / LOCK_FILE).exists():
                slot = self.slots[folder] = min(set(range(1, len(self.tasks) + 2)) - set(self.slots.values()))
                bar = self.bars[folder] = tqdm(total=task.cfg.epochs, desc=_short(task.cfg), unit="epoch",
                                               position=slot, leave=False)
            if bar is not None:
                bar.n = _epochs_done(folder)
                bar.refresh()
        if postfix is not None:
            self.grid.set_postfix_str(postfix, refresh=False)
        self.grid.refresh()

    def finish(self, task: RunTask) -> None:
        self.done.add(task.folder)
        bar = self.bars.pop(task.folder, None)
        self.slots.pop(task.folder, None)
        if bar is not None:
            bar.close()
        self.grid.update(1)


def execute(planned: list[PlannedRun], device, data_dir=None, force: bool = False,
            deadline: float | None = None, progress: bool = True, log=print,
            executor: Executor | None = None) -> list[Outcome]:
    """Train every run that needs it through `executor` (Sequential by default); one run's
    divergence never stops the rest."""
    executor = executor or Sequential()
    device_name = device if isinstance(device, str) else str(device)
    tasks = [RunTask(p.cfg, p.folder, executor.task_device(device_name), str(data_dir) if data_dir else None,
                     force, deadline, progress) for p in planned if p.todo]
    outcomes = executor.run(tasks, log=log, progress=progress)
    locked = [o for o in outcomes if o.result == "locked"]
    if locked:
        log(f"{len(locked)} run{'s' if len(locked) > 1 else ''} skipped: trained by another process right now "
            f"(see `resdeg status`; run this command again later to pick up what it leaves)")
    return outcomes


def train_and_probe(planned: list[PlannedRun], device_name: str, results: str | Path, data_dir=None,
                    force: bool = False, time_limit: float | None = None, probe_settings=None,
                    progress: bool = True, log=print, executor: Executor | None = None) -> None:
    """The grid's pipeline: check the inputs, train what is missing (through `executor`), probe
    what finished; then report corrupt entries, failed runs and probe failures as one error
    (after the rest has been done)."""
    from .store import ensure_writable
    from .train import resolve_device

    executor = executor or Sequential()
    ensure_writable(results)
    # a local executor trains here: check the device now; a cluster's runs use their node's
    device = resolve_device(device_name) if executor.local or probe_settings is not None else None
    if probe_settings is not None:
        from .probes.probe import check_probe_images

        check_probe_images([p.cfg for p in planned], probe_settings)  # before hours of training, not after
    from .data import check_recorded_data
    # a cached or partial run trained on other data: refused (issue 16)
    checked = check_recorded_data(planned, data_dir)
    if isinstance(executor, Sequential):
        executor.datasets.update(checked)  # train on the very data that was checked (worker processes load their own)
    deadline = time.time() + 60 * time_limit if time_limit else None
    for p in planned:
        if p.state in ("done", "diverged"):
            log(f"{p.state:<9} {p.cfg.run_name} (cached)")
    outcomes = execute(planned, device_name, data_dir=data_dir, force=force, deadline=deadline, progress=progress,
                       log=log, executor=executor)
    failures = []
    if probe_settings is not None:
        from .probes.probe import probe_folders

        finished = [p.folder for p in planned if entry(p.folder).status in ("done", "diverged")]
        failures = probe_folders(finished, probe_settings, device, data_dir, progress=progress, deadline=deadline,
                                 log=log)
    check_corrupt(planned)
    failed = [o for o in outcomes if o.result == "failed"]
    if failed:
        raise ResdegError(f"{len(failed)} run{'s' if len(failed) > 1 else ''} failed; first: {failed[0].error}")
    if failures:
        from .probes.probe import raise_failures

        raise_failures(failures)


def _pct(v):
    return "  n/a" if v is None else f"{100 * v:5.1f}%"


def check_corrupt(planned: list[PlannedRun]) -> None:
    bad = [p for p in planned if p.state == "corrupt"]
    if bad:
        raise ResdegError(f"{len(bad)} corrupt cache entr{'y' if len(bad) == 1 else 'ies'} "
                          f"({bad[0].folder}: {bad[0].problem}); inspect with `resdeg status`, redo with --force")
