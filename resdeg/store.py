"""Result store: one folder per run, `run.json` (schema-versioned, validated on every read)
and `telemetry.npz` (per-step arrays) beside it; checkpoints and weights stay out of git.

    results/<protocol>/<dataset>/<model>-<variant>-s<seed>-<config hash>/
        run.json  telemetry.npz  [checkpoint.pt while unfinished]  [model.pt when finished]
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .atomic import atomic_savez, atomic_write_json
from .errors import ResdegError

RUN_SCHEMA = "resdeg.run"
RUN_SCHEMA_VERSION = 1
RUN_FILE, TELEMETRY_FILE, CHECKPOINT_FILE, WEIGHTS_FILE = "run.json", "telemetry.npz", "checkpoint.pt", "model.pt"
STATUSES = ("partial", "done", "diverged")
# per-step telemetry: name -> per-stage (2-D) or per-step (1-D)
TELEMETRY_ARRAYS = {"step": 1, "epoch": 1, "loss": 1,
                    "act_grad_mean_abs": 2, "param_grad_mean_abs": 2, "param_grad_l2": 2}
EPOCH_FIELDS = ("epoch", "train_loss", "train_acc", "clean_train_acc", "test_loss", "test_acc",
                "lr", "wall_s", "steps")


class CorruptRun(ResdegError):
    """A run folder whose files are unreadable or fail validation: reported, never used."""


def run_dir(results: str | Path, cfg) -> Path:
    return Path(results) / cfg.protocol / cfg.dataset / cfg.run_name


def ensure_writable(results: str | Path) -> Path:
    """Fail early, in one line, when the results folder cannot take files."""
    results = Path(results)
    try:
        results.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=results, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ResdegError(f"results folder {results} is not writable ({e.strerror or e})") from None
    return results


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- run.json ---------------------------------------------------------------------------------

def _check(cond: bool, what: str):
    if not cond:
        raise CorruptRun(what)


def _is_num(v, allow_none=False) -> bool:
    if v is None:
        return allow_none
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_run_doc(doc) -> dict:
    """Check a run.json document's structure and consistency; raise CorruptRun on the first fault."""
    _check(isinstance(doc, dict), "not a JSON object")
    _check(doc.get("schema") == RUN_SCHEMA, f"schema is {doc.get('schema')!r}, expected {RUN_SCHEMA!r}")
    _check(doc.get("schema_version") == RUN_SCHEMA_VERSION,
           f"schema_version {doc.get('schema_version')!r} is not {RUN_SCHEMA_VERSION} (re-run with --force)")
    for key, typ in (("config", dict), ("config_hash", str), ("environment", dict), ("data", dict),
                     ("status", str), ("epochs_done", int), ("epochs", list), ("summary", dict)):
        _check(isinstance(doc.get(key), typ), f"field {key!r} missing or not {typ.__name__}")
    _check(doc["status"] in STATUSES, f"status {doc['status']!r} is not one of {STATUSES}")
    from .config import CONFIG_SCHEMA, config_from_dict

    try:
        cfg = config_from_dict(doc["config"])
    except (ValueError, TypeError, ResdegError) as e:
        raise CorruptRun(f"config does not validate: {e}") from None
    schema = doc.get("config_schema", 1)  # runs written before the field existed are schema 1
    _check(isinstance(schema, int) and 1 <= schema <= CONFIG_SCHEMA,
           f"config_schema {schema!r} is not one this resdeg knows (1..{CONFIG_SCHEMA})")
    _check(cfg.hash_for(schema) == doc["config_hash"],
           "config_hash does not match the stored config (edited by hand?)")
    _check(doc["epochs_done"] == len(doc["epochs"]), "epochs_done disagrees with the epoch list")
    _check(doc["epochs_done"] <= cfg.epochs, "more epochs recorded than configured")
    for i, e in enumerate(doc["epochs"]):
        _check(isinstance(e, dict) and set(EPOCH_FIELDS) <= set(e), f"epoch entry {i} lacks fields")
        _check(e["epoch"] == i + 1, f"epoch entry {i} is numbered {e['epoch']}")
        for k in EPOCH_FIELDS:
            # a non-finite loss is stored as null: in training only by a diverged run; an
            # evaluation loss can overflow (e.g. BatchNorm running stats) while training goes on
            may_be_null = k == "test_loss" or (k == "train_loss" and doc["status"] == "diverged")
            _check(_is_num(e[k], allow_none=may_be_null), f"epoch {i + 1}: {k} is not a number")
        for k in ("train_acc", "clean_train_acc", "test_acc"):
            _check(e[k] is None or 0.0 <= e[k] <= 1.0, f"epoch {i + 1}: {k}={e[k]} outside [0, 1]")
    if doc["status"] == "done":
        _check(doc["epochs_done"] == cfg.epochs, "status done but not every epoch recorded")
    return doc


def read_run(folder: str | Path) -> dict:
    """The validated run.json of a folder, with its telemetry checked against its hash."""
    folder = Path(folder)
    path = folder / RUN_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptRun(f"{RUN_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRun(f"{RUN_FILE} is not valid JSON ({e})") from None
    validate_run_doc(doc)
    tel = doc.get("telemetry")
    if tel:
        tpath = folder / tel.get("file", TELEMETRY_FILE)
        _check(tpath.exists(), f"{tpath.name} is missing")
        _check(_sha256(tpath) == tel.get("sha256"), f"{tpath.name} does not match its recorded sha256")
    return doc


def write_run(folder: str | Path, doc: dict) -> None:
    validate_run_doc(doc)  # never write what could not be read back
    atomic_write_json(Path(folder) / RUN_FILE, doc)


# -- telemetry.npz ----------------------------------------------------------------------------

def write_telemetry(folder: str | Path, stages: list[str], arrays: dict[str, np.ndarray]) -> dict:
    """Write the per-step arrays; return the run.json entry that pins them (file + sha256)."""
    path = Path(folder) / TELEMETRY_FILE
    atomic_savez(path, stages=np.array(stages), **arrays)
    return {"file": TELEMETRY_FILE, "sha256": _sha256(path), "steps": int(len(arrays["step"])),
            "stages": list(stages), "arrays": sorted(arrays)}


def read_telemetry(folder: str | Path) -> dict[str, np.ndarray]:
    """The per-step telemetry of a finished or partial run, checked for shape consistency."""
    folder = Path(folder)
    doc = read_run(folder)
    if not doc.get("telemetry"):
        raise CorruptRun(f"{folder.name}: this run recorded no telemetry")
    with np.load(folder / TELEMETRY_FILE, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    n, s = len(out.get("step", [])), len(out.get("stages", []))
    for name, ndim in TELEMETRY_ARRAYS.items():
        _check(name in out and out[name].ndim == ndim and len(out[name]) == n,
               f"{TELEMETRY_FILE}: array {name!r} missing or misshapen")
        if ndim == 2:
            _check(out[name].shape[1] == s, f"{TELEMETRY_FILE}: {name} has not one column per stage")
    return out


# -- listing ----------------------------------------------------------------------------------

@dataclass
class RunEntry:
    path: Path
    doc: dict | None
    problem: str | None = None

    @property
    def status(self) -> str:
        return "corrupt" if self.problem else self.doc["status"]

    @cached_property
    def probe_state(self) -> tuple[bool, str | None]:
        """(a valid probe for the default settings exists, the problem of a damaged probe file)."""
        if self.doc is None:
            return False, None
        from .probes.store import read_probe  # probes build on the store, not the other way

        try:
            return read_probe(self.path, run_doc=self.doc) is not None, None
        except CorruptRun as e:
            return False, str(e)

    def row(self) -> dict:
        """One object of `resdeg status --json`."""
        if self.doc is None:
            model, variant, seed = _parse_name(self.path.name)
            return {"model": model, "variant": variant, "seed": seed, "protocol": self.path.parent.parent.name,
                    "dataset": self.path.parent.name, "status": "corrupt", "problem": self.problem,
                    "epochs_done": None, "epochs": None, "train_acc": None, "clean_train_acc": None,
                    "test_acc": None, "config_hash": None, "probed": False, "path": str(self.path)}
        cfg, last = self.doc["config"], (self.doc["epochs"] or [{}])[-1]
        return {"model": cfg["model"], "variant": cfg["variant"], "seed": cfg["seed"],
                "protocol": cfg["protocol"], "dataset": cfg["dataset"], "status": self.status,
                "problem": self.problem, "epochs_done": self.doc["epochs_done"], "epochs": cfg["epochs"],
                "train_acc": last.get("train_acc"), "clean_train_acc": last.get("clean_train_acc"),
                "test_acc": last.get("test_acc"), "config_hash": self.doc["config_hash"],
                "probed": self.probe_state[0], "path": str(self.path)}


def _parse_name(name: str):
    parts = name.split("-")
    if len(parts) == 4 and parts[2].startswith("s") and parts[2][1:].isdigit():
        return parts[0], parts[1], int(parts[2][1:])
    return None, None, None


def entry(folder: str | Path) -> RunEntry:
    folder = Path(folder)
    try:
        return RunEntry(folder, read_run(folder))
    except CorruptRun as e:
        return RunEntry(folder, None, str(e))


def scan(results: str | Path) -> list[RunEntry]:
    """Every run folder under results/ (a folder holding run.json or a checkpoint)."""
    results = Path(results)
    if not results.is_dir():
        return []
    folders = {p.parent for pattern in (RUN_FILE, CHECKPOINT_FILE) for p in results.glob(f"*/*/*/{pattern}")}
    return [entry(f) for f in sorted(folders)]
