"""Plan and execute a grid of runs against the result store: finished runs are skipped,
partial ones resumed, corrupt ones reported (and redone only with force).

plan() -> PlannedRuns -> a TrainingJob per run to train -> an executor -> outcomes. Every
executor calls the same `train_one`, which trains one run into its folder under the run lock
(resdeg/locks.py): `Sequential` in this process (the default), `ProcessPool` in N worker
processes (`run-all --jobs N`), and the cluster launchers of resdeg/launch.py as submitit jobs
(`run-all --launcher slurm`)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .atomic import exchange_paths
from .config import Config
from .data import check_recorded_data, load_dataset
from .errors import ResdegError
from .locks import LOCK_FILE, Locked, LockLost, acquire
from .probes.optim_measure import epoch_measurer
from .probes.probe import check_probe_images, epoch_prober, probe_folders, probe_init_folders, raise_failures
from .signals import STOP_SIGNALS, die_with_parent
from .store import CHECKPOINT_FILE, RUN_FILE, SUBMISSION_FILE, WEIGHTS_FILE, ensure_writable, entry, run_dir
from .train import Trainer, UnusableCheckpoint, check_batches, resolve_device


@dataclass
class PlannedRun:
    """A run of the grid and its state in the store, before anything trains (a TrainingJob if it needs training)."""
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
class TrainingJob:
    """One run to train and everything a process needs for it (a PlannedRun with work to do, for an executor).
    Picklable, so that a pool worker or a cluster job gets it as it is. `device` is a name (auto /
    cpu / cuda), resolved where the run trains; `deadline` is a time.time() value."""
    cfg: Config
    folder: Path
    device: str = "auto"
    data_dir: str | None = None
    force: bool = False
    deadline: float | None = None
    progress: bool = False
    epoch_probe: object | None = None  # ProbeSettings: record separability while training (None: not)
    epoch_optim: object | None = None  # OptimSettings: measure H4 and H5 while training (None: not)

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


def replacement_dir(folder: Path) -> Path:
    """Where `--force` trains the replacement of a run folder that holds a run: a hidden sibling
    (not a run for `scan`), swapped in only once the replacement is finished."""
    return folder.parent / f".{folder.name}.redo"


def _holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (RUN_FILE, CHECKPOINT_FILE, WEIGHTS_FILE))


def _swap_in(new: Path, folder: Path) -> None:
    """Make the finished replacement `new` the run folder, under the run lock, and delete the old
    run. The lock (and a cluster submission record) go with the run: hard links to the same files,
    so the heartbeat and the release act on them unchanged and the folder is never unlocked."""
    for name in (LOCK_FILE, SUBMISSION_FILE):
        if (folder / name).exists() and not (new / name).exists():
            os.link(folder / name, new / name)
    if not exchange_paths(new, folder):  # no atomic swap: two renames (a crash between leaves the old run at `old`)
        old = new.with_name(new.name + "-old")
        os.rename(folder, old)
        os.rename(new, folder)
        new = old
    shutil.rmtree(new)  # now the old run


def _redo(task: TrainingJob, data, lock, say, notes: list[str]) -> Outcome:
    """--force on a folder holding a run: train the replacement in `replacement_dir` (resuming a
    replacement that was stopped; starting over when its checkpoint is unusable) and swap it in
    once finished, so that a stop, a time limit or a crash before the end leaves the old run as it was."""
    staging = replacement_dir(task.folder)
    staging.mkdir(exist_ok=True)
    try:
        run = _trainer(task, data, staging, lock).run(deadline=task.deadline)
    except UnusableCheckpoint as e:
        say(f"note: {e.args[0].split(';')[0]}; the replacement starts over")
        shutil.rmtree(staging)
        staging.mkdir()
        run = _trainer(task, data, staging, lock).run(deadline=task.deadline)
    if run.status == "partial":
        say(f"--force: the replacement of {task.name} stopped at epoch {run.epochs_done}/{task.cfg.epochs}; the "
            f"previous run is kept until it is finished: run the same command with --force to resume it")
    else:
        lock.verify()  # the swap writes the run folder too
        _swap_in(staging, task.folder)
    return Outcome(task.name, "trained", _result_line(task.cfg, run), run.status, notes)


def _trainer(task: TrainingJob, data, folder: Path, lock):
    device = _device(task.device)
    hooks = []
    if task.epoch_probe is not None:
        hooks.append(epoch_prober(task.cfg, data, task.epoch_probe, device, folder))
    if task.epoch_optim is not None:
        hooks.append(epoch_measurer(task.cfg, data, task.epoch_optim, device, folder))

    def after_epoch(epoch: int, model) -> None:
        for hook in hooks:
            hook(epoch, model)
    return Trainer(task.cfg, data, folder, device, progress=task.progress, lock=lock,
                   after_epoch=after_epoch if hooks else None)


def _device(name: str):
    return resolve_device(name) if name in ("auto", "cpu", "cuda") else torch.device(name)


def _result_line(cfg: Config, run) -> str:
    s = run.summary
    return (f"{cfg.model:>9} {cfg.variant:<5} seed {cfg.seed}: {run.status:<8} "
            f"epochs {run.epochs_done}/{cfg.epochs}  train {_pct(s.train_acc)}  "
            f"test {_pct(s.test_acc)}  {s.wall_s:.1f}s")


def train_one(task: TrainingJob, log=None, datasets: dict | None = None) -> Outcome:
    """Train one run into its folder under the run lock (resuming its checkpoint): the one
    function every executor calls, in this process, a pool worker or a cluster job. A run locked
    by a live process is skipped; one finished by another process meanwhile is not redone; a
    process that loses its lock while training stops (the process that took it over goes on)."""
    notes: list[str] = []
    say = log or notes.append
    name = task.name
    if task.deadline is not None and time.time() >= task.deadline:
        return Outcome(name, "not started", f"time limit reached: {name} not started")
    # the data first: a data error leaves the store untouched (and the lock is held for training only)
    data = _dataset(task.cfg, task.data_dir, _DATASETS if datasets is None else datasets)
    check_batches(task.cfg, _train_used(task.cfg, data))  # before the lock creates the run folder
    try:
        lock = acquire(task.folder, log=say)
    except Locked as e:
        return Outcome(name, "locked", f"{'locked':<9} {name}: {e}; skipped", notes=notes)
    try:
        with lock:
            return _train_locked(task, data, lock, say, notes)
    except LockLost as e:
        return Outcome(name, "lost", f"{'stopped':<9} {name}: {e}; this process stopped training it and wrote "
                                     f"nothing more (the process that took it over goes on)", notes=notes)


def _train_locked(task: TrainingJob, data, lock, say, notes: list[str]) -> Outcome:
    name = task.name
    if task.force and _holds_a_run(task.folder):
        return _redo(task, data, lock, say, notes)
    if (task.folder / RUN_FILE).exists():
        e = entry(task.folder)
        if e.status in ("done", "diverged"):
            return Outcome(name, "cached", f"{e.status:<9} {name} (finished meanwhile by another process)",
                           e.status, notes)
        if e.status == "corrupt":
            return Outcome(name, "corrupt", f"{'corrupt':<9} {name}: {e.problem}; not trained (redo with --force)",
                           "corrupt", notes)
    run = _trainer(task, data, task.folder, lock).run(deadline=task.deadline)
    return Outcome(name, "trained", _result_line(task.cfg, run), run.status, notes)


def _train_used(cfg: Config, data) -> int:
    """How many training images the run trains on (its fixed subset's size)."""
    n = len(data.train_y)
    return n if cfg.train_images <= 0 else min(cfg.train_images, n)


# -- executors: a plan's tasks -> outcomes ----------------------------------------------------

class Executor:
    """Runs tasks somewhere and returns their outcomes. `local`: the runs train on this machine
    (its device is checked before anything starts)."""
    name = "executor"
    local = True

    def task_device(self, device_name: str) -> str:
        return device_name

    def run(self, tasks: list[TrainingJob], log=print, progress: bool = True) -> list[Outcome]:
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


def _on_stop(signum, frame):
    first = not _worker_state["interrupted"]
    _worker_state["interrupted"] = True
    if _worker_state["in_task"] and first:  # once: a second signal must not cut the lock's release short
        raise KeyboardInterrupt


# Of one GPU's memory, what N runs sharing it may take in all: the rest is left for the CUDA contexts
# (each process has its own, a few hundred MB) and for other users of the card.
GPU_SHARED_FRACTION = 0.95


def gpu_memory_share(device_names, jobs: int, cuda_available: bool, device_count: int) -> float | None:
    """The fraction of the GPU's memory each of `jobs` workers may allocate when they share one GPU
    (None when they do not). Without a cap, the first run's caching allocator can hold memory the
    second one needs, and the second fails with an out-of-memory error instead of the first waiting;
    with it, a run that needs more than its share fails at once and says so."""
    on_gpu = cuda_available and any(name in ("cuda", "auto") for name in device_names)
    if not on_gpu or jobs < 2 or device_count != 1:
        return None
    return GPU_SHARED_FRACTION / jobs


def _init_worker(threads: int, parent_pid: int, gpu_share: float | None = None) -> None:
    """A pool worker: its share of the CPU threads (and of the GPU's memory when the runs share one
    GPU); Ctrl-C, SIGTERM or SIGHUP (a closed terminal signals the whole process group) end the run
    it trains (releasing its lock) and start no other; and the death of the parent, even by SIGKILL,
    sends it SIGTERM: never an orphan that trains on."""
    torch.set_num_threads(threads)
    if gpu_share is not None:
        torch.cuda.set_per_process_memory_fraction(gpu_share)
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(signum, _on_stop)
    die_with_parent(parent_pid)


def _cuda_devices() -> tuple[bool, int]:
    """(CUDA available, number of devices), without creating a CUDA context in this process."""
    return torch.cuda.is_available(), torch.cuda.device_count()


def failure_line(e: BaseException) -> str:
    """A run's failure in one line: a ResdegError's message, else the exception's type and first
    line (a bug or the machine's state, such as CUDA out of memory: still this run's alone)."""
    if isinstance(e, ResdegError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _failed(name: str, e: BaseException) -> Outcome:
    why = failure_line(e)
    return Outcome(name, "failed", f"{'failed':<9} {name}: {why}", error=f"{name}: {why}")


def _pool_task(task: TrainingJob) -> Outcome:
    if _worker_state["interrupted"]:
        return Outcome(task.name, "not started", f"interrupted: {task.name} not started")
    _worker_state["in_task"] = True
    try:
        return train_one(task)
    except KeyboardInterrupt:
        return Outcome(task.name, "interrupted", f"interrupted: {task.name} (resumable)")
    except Exception as e:  # whatever it is, it is this run's: reported for it, the other runs go on
        return _failed(task.name, e)
    finally:
        _worker_state["in_task"] = False


class ProcessPool(Executor):
    """`--jobs N`: N runs at once, each in a worker process of its own (spawned, so CUDA works;
    on one GPU the processes share it), each with cores // N torch threads, each loading its
    data itself. A run's failure of any kind (a one-line error, a bug's exception, CUDA out of
    memory, a worker that died) is reported for that run; the others go on, and the grid's error
    comes when they have finished."""
    name = "processes"

    def __init__(self, jobs: int, threads: int | None = None, poll_s: float = 1.0):
        if jobs < 1:
            raise ResdegError(f"--jobs {jobs}: must be at least 1")
        self.jobs, self.poll_s = jobs, poll_s
        share = max(1, cpu_cores() // jobs)
        cap = os.environ.get("OMP_NUM_THREADS", "")  # a cap the user set is kept
        self.threads = threads or (min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share)

    def run(self, tasks, log=print, progress=True):
        if not tasks:
            return []
        if self.jobs > cpu_cores():
            log(f"note: --jobs {self.jobs} on {cpu_cores()} CPU cores: 1 torch thread each, cores shared")
        outcomes = []
        tasks = [replace(t, progress=False) for t in tasks]  # the bars are drawn here, from the store
        workers = min(self.jobs, len(tasks))
        share = gpu_memory_share([t.device for t in tasks], workers, *_cuda_devices())
        if share is not None:  # time-sliced: one run's host work and launches overlap the other's kernels
            log(f"note: {workers} runs share one GPU, each with at most {share:.0%} of its memory")
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads, os.getpid(), share))
        with StoreProgress(tasks, progress, log) as bars:
            try:
                pending = {pool.submit(_pool_task, t): t for t in tasks}
                while pending:
                    done, _ = wait(pending, timeout=self.poll_s, return_when=FIRST_COMPLETED)
                    for f in done:
                        task = pending.pop(f)
                        # a worker that died (killed for memory, say) fails its run, not the grid
                        out = _failed(task.name, f.exception()) if f.exception() else f.result()
                        for note in out.notes:
                            bars.log(note)
                        bars.log(out.line)
                        bars.finish(task)
                        outcomes.append(out)
                    bars.poll()
            except BaseException:
                # Ctrl-C reaches the workers too (one process group); a SIGINT, SIGTERM or SIGHUP sent
                # to this process alone (`kill PID`, a scheduler) is passed on as SIGINT. Each worker
                # ends its run (resumable), releases its lock, starts none; they are waited for.
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
    try:
        return int(json.loads((folder / RUN_FILE).read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class StoreProgress:
    """The grid's bar and one bar per running run (epochs done), read from the store: each run's
    lock says it is running, its run.json how far it got. The same for worker processes and for
    cluster jobs. Quiet unless asked for and stderr is a terminal."""

    def __init__(self, tasks: list[TrainingJob], progress: bool, log):
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

    def finish(self, task: TrainingJob) -> None:
        self.done.add(task.folder)
        bar = self.bars.pop(task.folder, None)
        self.slots.pop(task.folder, None)
        if bar is not None:
            bar.close()
        self.grid.update(1)


def execute(planned: list[PlannedRun], device, data_dir=None, force: bool = False,
            deadline: float | None = None, progress: bool = True, log=print,
            executor: Executor | None = None, epoch_probe=None, epoch_optim=None) -> list[Outcome]:
    """Train every run that needs it through `executor` (Sequential by default); one run's
    divergence never stops the rest."""
    executor = executor or Sequential()
    device_name = device if isinstance(device, str) else str(device)
    tasks = [TrainingJob(p.cfg, p.folder, executor.task_device(device_name), str(data_dir) if data_dir else None,
                         force, deadline, progress, epoch_probe, epoch_optim) for p in planned if p.todo]
    outcomes = executor.run(tasks, log=log, progress=progress)
    locked = [o for o in outcomes if o.result == "locked"]
    if locked:
        log(f"{len(locked)} run{'s' if len(locked) > 1 else ''} skipped: trained by another process right now "
            f"(see `resdeg status`; run this command again later to pick up what it leaves)")
    return outcomes


def train_and_probe(planned: list[PlannedRun], device_name: str, results: str | Path, data_dir=None,
                    force: bool = False, time_limit: float | None = None, probe_settings=None,
                    progress: bool = True, log=print, executor: Executor | None = None, optim_settings=None) -> None:
    """The grid's pipeline: check the inputs, train what is missing (through `executor`), probe
    what finished; then report corrupt entries, failed runs and probe failures as one error
    (after the rest has been done)."""
    executor = executor or Sequential()
    ensure_writable(results)
    for p in planned:
        if p.todo:
            check_batches(p.cfg)  # a config that cannot train fails now, not after the runs before it
    # a local executor trains here: check the device now; a cluster's runs use their node's
    device = resolve_device(device_name) if executor.local or probe_settings is not None else None
    if probe_settings is not None:
        check_probe_images([p.cfg for p in planned], probe_settings)  # before hours of training, not after
    # a cached or partial run trained on other data: refused (issue 16)
    checked = check_recorded_data(planned, data_dir)
    if isinstance(executor, Sequential):
        executor.datasets.update(checked)  # train on the very data that was checked (worker processes load their own)
    deadline = time.time() + 60 * time_limit if time_limit else None
    for p in planned:
        if p.state in ("done", "diverged"):
            log(f"{p.state:<9} {p.cfg.run_name} (cached)")
    outcomes = execute(planned, device_name, data_dir=data_dir, force=force, deadline=deadline, progress=progress,
                       log=log, executor=executor, epoch_probe=probe_settings, epoch_optim=optim_settings)
    failures = []
    if probe_settings is not None:
        finished = [p.folder for p in planned if entry(p.folder).status in ("done", "diverged")]
        failures = probe_folders(finished, probe_settings, device, data_dir, progress=progress, deadline=deadline,
                                 log=log)
        # the untrained net of each run too (seconds each): H3 reads the trained net against it
        failures += probe_init_folders(finished, probe_settings, device, data_dir, progress=progress,
                                       deadline=deadline, log=log)
    check_corrupt(planned)
    failed = [o for o in outcomes if o.result == "failed"]
    if failed:
        raise ResdegError(f"{len(failed)} run{'s' if len(failed) > 1 else ''} failed; first: {failed[0].error}")
    if failures:
        raise_failures(failures)


def _pct(v):
    return "  n/a" if v is None else f"{100 * v:5.1f}%"


def check_corrupt(planned: list[PlannedRun]) -> None:
    bad = [p for p in planned if p.state == "corrupt"]
    if bad:
        raise ResdegError(f"{len(bad)} corrupt cache entr{'y' if len(bad) == 1 else 'ies'} "
                          f"({bad[0].folder}: {bad[0].problem}); inspect with `resdeg status`, redo with --force")
