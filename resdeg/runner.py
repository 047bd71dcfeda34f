"""Plan and execute a grid of runs against the result store: finished runs are skipped,
partial ones resumed, corrupt ones reported (and redone only with force)."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
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


def execute(planned: list[PlannedRun], device, data_dir=None, force: bool = False,
            deadline: float | None = None, progress: bool = True, log=print) -> list[dict]:
    """Train every run that needs it, in order; one run's divergence never stops the rest."""
    from .train import Trainer

    todo = [p for p in planned if p.todo]
    docs, datasets = [], {}
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=None if progress and todo else True)
    for p in todo:
        if deadline is not None and time.time() >= deadline:
            log(f"time limit reached: {p.cfg.run_name} and later runs not started")
            break
        if force and p.folder.exists():
            shutil.rmtree(p.folder)
        if p.cfg.dataset not in datasets:
            datasets[p.cfg.dataset] = load_dataset(p.cfg.dataset, data_dir)
        trainer = Trainer(p.cfg, datasets[p.cfg.dataset], p.folder, device, progress=progress)
        doc = trainer.run(deadline=deadline)
        docs.append(doc)
        bar.update(1)
        s = doc["summary"]
        log(f"{p.cfg.model:>9} {p.cfg.variant:<5} seed {p.cfg.seed}: {doc['status']:<8} "
            f"epochs {doc['epochs_done']}/{p.cfg.epochs}  train {_pct(s['train_acc'])}  "
            f"test {_pct(s['test_acc'])}  {s['wall_s']:.1f}s")
    bar.close()
    return docs


def train_and_probe(planned: list[PlannedRun], device_name: str, results: str | Path, data_dir=None,
                    force: bool = False, time_limit: float | None = None, probe_settings=None,
                    progress: bool = True, log=print) -> None:
    """The grid's pipeline: check the inputs, train what is missing, probe what finished; then
    report corrupt entries and probe failures as one error (after the rest has been done)."""
    from .store import ensure_writable
    from .train import resolve_device

    device = resolve_device(device_name)
    ensure_writable(results)
    if probe_settings is not None:
        from .probes.probe import check_probe_images

        check_probe_images([p.cfg for p in planned], probe_settings)  # before hours of training, not after
    deadline = time.time() + 60 * time_limit if time_limit else None
    for p in planned:
        if p.state in ("done", "diverged"):
            log(f"{p.state:<9} {p.cfg.run_name} (cached)")
    execute(planned, device, data_dir=data_dir, force=force, deadline=deadline, progress=progress, log=log)
    failures = []
    if probe_settings is not None:
        from .probes.probe import probe_folders

        finished = [p.folder for p in planned if entry(p.folder).status in ("done", "diverged")]
        failures = probe_folders(finished, probe_settings, device, data_dir, progress=progress, deadline=deadline,
                                 log=log)
    check_corrupt(planned)
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
