"""Result store: one folder per run, `run.json` (schema-versioned, validated on every read)
and the per-step telemetry beside it; checkpoints and weights stay out of git.

    results/<protocol>/<dataset>/<model>-<variant>-s<seed>-<config hash>/
        run.json  telemetry-<sha>.npz  [checkpoint.pt while unfinished]  [model.pt when finished]

The telemetry file is named by its content and pinned by run.json: a new one is written beside
the old, run.json is switched to it, then the old one is removed. A crash or a full disk between
the two writes leaves run.json pointing at a file that is still there; a reader that read the old
run.json just before the switch reads run.json again (`_read_pinned`), so it never sees a run
whose telemetry is missing.

A run's identity is its record (config hash and seed), not its folder's name: `scan` reports a
folder whose name or place disagrees with its record, and of two folders holding the same run
(a `cp -r run run.bak`) uses one and reports the other as a duplicate.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .atomic import atomic_torch_save, atomic_write_bytes, npz_bytes
from .config import CONFIG_SCHEMA, PROTOCOLS, STORED_AS, Config
from .errors import ResdegError
from .records import CorruptRecord, Fields, Record, bounded, read_record, require, write_record

RUN_FILE, CHECKPOINT_FILE, WEIGHTS_FILE = "run.json", "checkpoint.pt", "model.pt"
SUBMISSION_FILE = "submitted.json"  # a run handed to a cluster (launch.py), not yet started
TELEMETRY_GLOB = "telemetry*.npz"  # telemetry-<sha>.npz (runs before it had content names: telemetry.npz)
STATUSES = ("partial", "done", "diverged")
# per-step telemetry: name -> per-stage (2-D) or per-step (1-D)
TELEMETRY_ARRAYS = {"step": 1, "epoch": 1, "loss": 1,
                    "act_grad_mean_abs": 2, "param_grad_mean_abs": 2, "param_grad_l2": 2}
CorruptRun = CorruptRecord  # a run folder whose files are unreadable or fail validation


def run_dir(results: str | Path, cfg) -> Path:
    return Path(results) / cfg.store_protocol / cfg.dataset / cfg.run_name


def ensure_writable(results: str | Path) -> Path:
    """Fail early, in one line, when the results folder is a file, holds something that is not a
    result store, or cannot take files (permissions, a read-only file system: os.access says so
    even for root on a read-only mount; the test file catches the rest)."""
    results = Path(results)
    fix = "choose another --results or fix its permissions"
    if results.exists() and not results.is_dir():
        raise ResdegError(f"results folder {results} is a file, not a folder; choose a folder for --results")
    foreign = _foreign_entries(results)
    if foreign:
        raise ResdegError(f"results folder {results} holds {len(foreign)} "
                          f"{'entry' if len(foreign) == 1 else 'entries'} that no resdeg result store holds "
                          f"(e.g. {foreign[0]!r}); choose an empty or new folder, or a store "
                          f"(<protocol>/<dataset>/<run>/run.json) for --results")
    try:
        results.mkdir(parents=True, exist_ok=True)
        if not os.access(results, os.W_OK | os.X_OK):
            raise ResdegError(f"results folder {results} is not writable (permission denied or a read-only file "
                              f"system); {fix}")
        fd, probe = tempfile.mkstemp(dir=results, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ResdegError(f"results folder {results} is not writable ({e.strerror or e}); {fix}") from None
    return results


def _foreign_entries(results: Path) -> list[str]:
    """The names at the top of an existing folder that make it not look like a result store;
    none when it is missing, empty (hidden files aside), holds a run (<protocol>/<dataset>/<run>/
    run.json or checkpoint.pt: extra files beside a store are its owner's business), or holds only
    protocol folders (a store whose first run was stopped before it wrote anything)."""
    try:
        entries = [p for p in results.iterdir() if not p.name.startswith(".")] if results.is_dir() else []
    except OSError:
        return []  # unreadable: the write test below reports it
    if not entries or any(next(results.glob(f"*/*/*/{name}"), None) for name in (RUN_FILE, CHECKPOINT_FILE)):
        return []
    return sorted(p.name for p in entries if not (p.is_dir() and (p.name in PROTOCOLS or p.name in STORED_AS.values())))


# -- run.json ---------------------------------------------------------------------------------

FRACTION = (0.0, 1.0)


@dataclass(frozen=True)
class Epoch(Fields):
    """One epoch's numbers. Accuracies are fractions; a non-finite loss is stored as null (in
    training only by a diverged run; an evaluation loss can overflow while training goes on)."""
    epoch: int = bounded(1)
    train_loss: float | None = bounded(0.0)  # cross-entropy
    train_acc: float = bounded(*FRACTION)
    eval_train_acc: float = bounded(*FRACTION)
    test_loss: float | None = bounded(0.0)
    test_acc: float = bounded(*FRACTION)
    lr: float = bounded(0.0)
    wall_s: float = bounded(0.0)
    steps: int = bounded(1)


@dataclass(frozen=True)
class Summary(Fields):
    train_acc: float | None = bounded(*FRACTION)
    eval_train_acc: float | None = bounded(*FRACTION)
    test_acc: float | None = bounded(*FRACTION)
    test_loss: float | None = bounded(0.0)
    best_test_acc: float | None = bounded(*FRACTION)
    parameters: int = bounded(1)
    steps_per_epoch: int = bounded(1)
    wall_s: float = bounded(0.0)


@dataclass(frozen=True)
class TelemetryEntry(Fields):
    """Pins telemetry.npz to its run.json: the file is checked against this sha256 on every read."""
    file: str
    sha256: str
    steps: int = bounded(0)
    stages: tuple[str, ...]
    arrays: tuple[str, ...]


@dataclass(frozen=True)
class DataInfo(Fields):
    """run.json's `data`: the data set a run was trained on (Dataset.describe) and how much of it
    it used. Validated on read; readers keep the plain object (run.data["fingerprint"])."""
    name: str
    source: str
    fingerprint: str
    classes: tuple[str, ...]
    n_train: int = bounded(1)
    n_test: int = bounded(1)
    image_shape: tuple[int, ...] = bounded(1)
    train_used: int = bounded(1)
    test_used: int = bounded(1)
    eval_train_used: int = bounded(0)
    warnings: tuple[str, ...] = ()  # absent in runs from before data warnings were recorded

    def check(self) -> None:
        require(len(self.fingerprint) == 64 and all(c in "0123456789abcdef" for c in self.fingerprint),
                f"fingerprint {self.fingerprint[:70]!r} is not a sha256")
        require(len(self.classes) >= 2, f"{len(self.classes)} classes (a data set has at least 2)")
        require(len(self.image_shape) == 3, f"image_shape {list(self.image_shape)} is not channels x height x width")
        require(self.train_used <= self.n_train and self.test_used <= self.n_test,
                f"uses more images ({self.train_used} / {self.test_used}) than the data set holds "
                f"({self.n_train} / {self.n_test})")
        require(self.eval_train_used <= self.train_used,
                f"eval_train_used {self.eval_train_used} exceeds train_used {self.train_used}")


@dataclass(frozen=True)
class RunEnvironment(Fields):
    """run.json's `environment`: where and with what a run trained (train.environment)."""
    OPEN: ClassVar[bool] = True  # descriptive: a later resdeg may record more
    resdeg: str
    python: str
    torch: str
    torchvision: str
    numpy: str
    platform: str
    device_type: str
    device: str
    cpu_threads: int = bounded(1)
    precision: str
    git_commit: str | None

    def check(self) -> None:
        require(self.device_type in ("cpu", "cuda"), f"device_type {self.device_type!r} is not cpu or cuda")
        require(self.precision in ("fp32", "bf16"), f"precision {self.precision!r} is not fp32 or bf16")


V1_NAMES = {"clean_train_acc": "eval_train_acc", "clean_train_used": "eval_train_used"}


def _renamed_v1(obj):
    """A run.json object of version 1 with its fields under their version-2 names."""
    return {V1_NAMES.get(k, k): v for k, v in obj.items()} if isinstance(obj, dict) else obj


@dataclass(frozen=True)
class RunRecord(Record):
    """run.json: what was trained (config, environment, data) and what it measured, per epoch."""
    SCHEMA: ClassVar[str] = "resdeg.run"
    VERSION: ClassVar[int] = 2  # 2: clean_train_* fields renamed eval_train_* (what they measure)
    READS: ClassVar[tuple[int, ...]] = (1,)
    config: Config
    config_hash: str
    environment: dict[str, Any]
    data: dict[str, Any]
    status: str
    epochs_done: int = bounded(0)
    epochs: tuple[Epoch, ...]
    summary: Summary
    diverged_at_step: int | None = bounded(0, default=None)
    telemetry: TelemetryEntry | None = None
    config_schema: int = 1  # absent in runs written before config schema 2
    created: str = ""
    updated: str = ""

    @classmethod
    def upgrade(cls, d: dict, version: int) -> dict:
        """Version 1 called the eval-mode train accuracy clean_train_acc (and its subset's size
        clean_train_used); the config's renamed field is read by config_from_dict."""
        if version == 1:
            if isinstance(d.get("epochs"), list):
                d["epochs"] = [_renamed_v1(e) for e in d["epochs"]]
            for key in ("summary", "data"):
                if key in d:
                    d[key] = _renamed_v1(d[key])
        return d

    def check(self) -> None:
        require(self.status in STATUSES, f"status {self.status!r} is not one of {STATUSES}")
        require(1 <= self.config_schema <= CONFIG_SCHEMA,
                f"config_schema {self.config_schema} is not one this resdeg knows (1..{CONFIG_SCHEMA})")
        require(self.config.hash_for(self.config_schema) == self.config_hash,
                "config_hash does not match the stored config (edited by hand?)")
        require(self.epochs_done == len(self.epochs), "epochs_done disagrees with the epoch list")
        require(self.epochs_done <= self.config.epochs, "more epochs recorded than configured")
        for i, e in enumerate(self.epochs):
            require(e.epoch == i + 1, f"epoch entry {i} is numbered {e.epoch}")
            require(e.train_loss is not None or self.status == "diverged", f"epoch {e.epoch}: train_loss is null")
        if self.status == "done":
            require(self.epochs_done == self.config.epochs, "status done but not every epoch recorded")
        DataInfo.check_object(self.data, "data")
        RunEnvironment.check_object(self.environment, "environment")

    # what every reader asks of a run
    model = property(lambda self: self.config.model)
    variant = property(lambda self: self.config.variant)
    seed = property(lambda self: self.config.seed)
    protocol = property(lambda self: self.config.protocol)
    dataset = property(lambda self: self.config.dataset)

    @property
    def final(self) -> Epoch | None:
        """The last recorded epoch (a diverged run's is the epoch it diverged in)."""
        return self.epochs[-1] if self.epochs else None


READ_ATTEMPTS = 5


def _read_pinned(folder: Path) -> tuple[RunRecord, bytes | None]:
    """run.json and the telemetry bytes it pins, as one consistent pair.

    A writer replaces run.json, then deletes the telemetry file the new one no longer pins, so a
    reader that read run.json just before the replace finds its file gone. run.json has changed
    by then: read it again. A file missing while run.json still pins it is damage."""
    for _ in range(READ_ATTEMPTS):
        run = read_record(folder / RUN_FILE, RunRecord)
        if not run.telemetry:
            return run, None
        try:
            data = (folder / run.telemetry.file).read_bytes()  # an open file stays readable if deleted meanwhile
        except FileNotFoundError:
            if read_record(folder / RUN_FILE, RunRecord).telemetry == run.telemetry:
                break
            continue  # replaced meanwhile: the new run.json pins a newer file
        except OSError as e:
            raise CorruptRun(f"{run.telemetry.file} is unreadable ({e.strerror or e})") from None
        require(hashlib.sha256(data).hexdigest() == run.telemetry.sha256,
                f"{run.telemetry.file} does not match its recorded sha256")
        return run, data
    raise CorruptRun(f"{run.telemetry.file} is missing")


def read_run(folder: str | Path) -> RunRecord:
    """The validated run.json of a folder, with its telemetry checked against its hash."""
    return _read_pinned(Path(folder))[0]


def write_run(folder: str | Path, run: RunRecord) -> None:
    """Write run.json, then remove telemetry files it no longer points at."""
    folder = Path(folder)
    write_record(folder / RUN_FILE, run)
    keep = run.telemetry.file if run.telemetry else None
    for old in folder.glob(TELEMETRY_GLOB):
        if old.name != keep:
            old.unlink(missing_ok=True)


# -- model.pt ---------------------------------------------------------------------------------

def write_weights(folder: str | Path, config_hash: str, state_dict: dict) -> None:
    """A finished run's weights, tagged with its config hash: a model.pt copied into another
    run's folder is refused on load, as a checkpoint of another config is."""
    atomic_torch_save({"config_hash": config_hash, "state_dict": state_dict}, Path(folder) / WEIGHTS_FILE)


def read_weights(folder: str | Path, config_hash: str) -> dict:
    """The state_dict of a run's model.pt, checked to be this run's (a one-line ResdegError
    otherwise). A bare state_dict, as written before weights carried their hash, is taken as is."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.exists():
        raise ResdegError(f"{folder}: no {WEIGHTS_FILE} (weights are not kept in git); "
                          f"retrain this run with `resdeg run ... --force` to probe it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        tagged = isinstance(state, dict) and set(state) == {"config_hash", "state_dict"}
        owner, state = (state["config_hash"], state["state_dict"]) if tagged else (config_hash, state)
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise TypeError("not a state_dict of tensors")
    except Exception as e:  # any unreadable file: the message, on one line
        first = (str(e).splitlines() or [""])[0][:120]
        raise ResdegError(f"{path}: unreadable weights ({type(e).__name__}: {first}); retrain with --force") from None
    if owner != config_hash:
        raise ResdegError(f"{path}: unusable weights: they belong to another run (config hash {owner!s:.12}, "
                          f"this run's is {config_hash}); retrain with --force")
    return state


# -- telemetry.npz ----------------------------------------------------------------------------

def write_telemetry(folder: str | Path, stages: list[str], arrays: dict[str, np.ndarray]) -> TelemetryEntry:
    """Write the per-step arrays under a name made of their hash; return the run.json entry that
    pins them (file + sha256). The previous file stays until run.json no longer needs it."""
    data = npz_bytes(stages=np.array(stages), **arrays)
    sha = hashlib.sha256(data).hexdigest()
    name = f"telemetry-{sha[:12]}.npz"
    atomic_write_bytes(Path(folder) / name, data)
    return TelemetryEntry(name, sha, int(len(arrays["step"])), tuple(stages), tuple(sorted(arrays)))


def read_telemetry(folder: str | Path) -> dict[str, np.ndarray]:
    """The per-step telemetry of a finished or partial run, checked for shape consistency."""
    folder = Path(folder)
    run, data = _read_pinned(folder)
    if not run.telemetry:
        raise CorruptRun(f"{folder.name}: this run recorded no telemetry")
    name = run.telemetry.file
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CorruptRun(f"{name} is unreadable ({type(e).__name__})") from None
    n, s = len(out.get("step", [])), len(out.get("stages", []))
    for name, ndim in TELEMETRY_ARRAYS.items():
        require(name in out and out[name].ndim == ndim and len(out[name]) == n,
                f"{run.telemetry.file}: array {name!r} missing or misshapen")
        if ndim == 2:
            require(out[name].shape[1] == s, f"{run.telemetry.file}: {name} has not one column per stage")
    return out


# -- listing ----------------------------------------------------------------------------------

@dataclass
class RunFolder:
    """One run folder of the store: its RunRecord (run.json), or the problem that makes it unusable.
    `resumable`: no run.json but a checkpoint, which holds everything run.json is made from
    (a copy that kept only git-ignored files, or run.json deleted by hand): unusable until
    `run-all` resumes the run, which rewrites run.json. `duplicate_of`: another folder holds the
    same run (its record is kept, unused, with the problem). `misplaced`: the folder's name or
    place disagrees with its record (said, not a problem: the record is what counts)."""
    path: Path
    run: RunRecord | None
    problem: str | None = None
    resumable: bool = False
    duplicate_of: Path | None = None
    misplaced: str | None = None

    @property
    def status(self) -> str:
        if self.resumable:
            return "partial"
        if self.duplicate_of:
            return "duplicate"
        return "corrupt" if self.problem else self.run.status

    def row(self) -> dict:
        """One object of `resdeg status --json` (without the probe column, joined in probes.store)."""
        if self.run is None:
            model, variant, seed = _parse_name(self.path.name)
            return {"model": model, "variant": variant, "seed": seed, "protocol": self.path.parent.parent.name,
                    "dataset": self.path.parent.name, "status": self.status, "problem": self.problem,
                    "epochs_done": None, "epochs": None, "train_acc": None, "eval_train_acc": None,
                    "test_acc": None, "wall_s": None, "config_hash": None, "path": str(self.path)}
        r, last = self.run, self.run.final
        return {"model": r.model, "variant": r.variant, "seed": r.seed, "protocol": r.protocol,
                "dataset": r.dataset, "status": self.status, "problem": self.problem or self.misplaced,
                "epochs_done": r.epochs_done, "epochs": r.config.epochs, "train_acc": last and last.train_acc,
                "eval_train_acc": last and last.eval_train_acc, "test_acc": last and last.test_acc,
                "wall_s": round(sum(e.wall_s for e in r.epochs), 1),  # training time of the epochs done so far
                "config_hash": r.config_hash, "path": str(self.path)}


def record_place(run: RunRecord) -> tuple[str, str, str]:
    """(protocol, dataset, folder name) where the store keeps this run: what its record says."""
    return run.config.store_protocol, run.dataset, f"{run.model}-{run.variant}-s{run.seed}-{run.config_hash}"


def _place(folder: Path) -> tuple[str, str, str]:
    return folder.parent.parent.name, folder.parent.name, folder.name


def _parse_name(name: str):
    parts = name.split("-")
    if len(parts) == 4 and parts[2].startswith("s") and parts[2][1:].isdigit():
        return parts[0], parts[1], int(parts[2][1:])
    return None, None, None


def entry(folder: str | Path) -> RunFolder:
    folder = Path(folder)
    if not (folder / RUN_FILE).exists() and (folder / CHECKPOINT_FILE).exists():
        return RunFolder(folder, None, f"{RUN_FILE} is missing but its checkpoint is there: `resdeg run-all` with "
                                       f"the same settings resumes the run and rewrites {RUN_FILE}", resumable=True)
    try:
        return RunFolder(folder, read_run(folder))
    except CorruptRun as e:
        return RunFolder(folder, None, str(e))


def scan(results: str | Path) -> list[RunFolder]:
    """Every run folder under results/ (a folder holding run.json or a checkpoint; hidden folders,
    such as a --force replacement being trained, are not runs), each run once (`identify`)."""
    results = Path(results)
    if not results.is_dir():
        return []
    folders = {p.parent for pattern in (RUN_FILE, CHECKPOINT_FILE) for p in results.glob(f"*/*/*/{pattern}")}
    return identify([entry(f) for f in sorted(folders) if not any(part.startswith(".") for part in _place(f))])


def identify(entries: list[RunFolder]) -> list[RunFolder]:
    """Mark folders whose name disagrees with their record, and duplicates: of the folders that
    hold one run (same config hash and seed), the one at its record's place (else the first) is
    the run; every other is a duplicate, reported and never counted."""
    same_run: dict[tuple[str, int], list[RunFolder]] = {}
    for e in entries:
        if e.run is None:
            continue
        if _place(e.path) != record_place(e.run):
            e.misplaced = (f"the folder's name or place disagrees with its record (its run is "
                           f"{'/'.join(record_place(e.run))})")
        same_run.setdefault((e.run.config_hash, e.run.seed), []).append(e)
    for group in same_run.values():
        keep = min(group, key=lambda e: (e.misplaced is not None, str(e.path)))
        for e in group:
            if e is not keep:
                e.duplicate_of = keep.path
                e.problem = (f"a copy of {keep.path} (the same run: config hash {keep.run.config_hash}, seed "
                             f"{keep.run.seed}); not counted: remove one of the two folders")
    return entries
