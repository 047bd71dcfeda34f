"""Probe files: one per run folder and probe settings, `probe-<settings hash>.json`, written
atomically, schema-versioned and validated on every read, like run.json.

Probes are derived from a run (its weights and its test images), so they live in its folder:
a run redone with --force loses its probes with its weights, and changed settings get a new file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import ResdegError
from ..store import CorruptRun, RunEntry, _check, _is_num, read_run, scan
from .criteria import CRITERIA

PROBE_SCHEMA = "resdeg.probe"
PROBE_SCHEMA_VERSION = 1
PROBE_STATUSES = ("done", "skipped")
# per stage, forward activations and dL/d(stage output); grad_mean_abs is the training telemetry's measure
SIGNAL_KEYS = ("act_mean", "act_std", "grad_mean", "grad_std", "grad_mean_abs")
SIGNAL_PHASES = ("init", "trained")


class CorruptProbe(CorruptRun):
    """A probe file that is unreadable or fails validation: reported, never used."""


@dataclass(frozen=True)
class ProbeSettings:
    """Everything that changes a probe's numbers; its hash names the probe file."""
    probe_images: int = 500
    knn_k: int = 20
    linear_probe_test_fraction: float = 0.3
    lda_components: int = 64
    coding_rate_eps2: float = 0.5
    criteria: tuple = tuple(CRITERIA)

    def __post_init__(self):
        if not isinstance(self.probe_images, int) or self.probe_images < 2:
            raise ResdegError(f"--probe-images {self.probe_images}: need at least 2 images")
        if self.knn_k < 1 or self.lda_components < 1:
            raise ResdegError(f"knn_k={self.knn_k} and lda_components={self.lda_components} must be >= 1")
        if not 0 < self.linear_probe_test_fraction < 1 or self.coding_rate_eps2 <= 0:
            raise ResdegError("linear_probe_test_fraction must lie in (0, 1) and coding_rate_eps2 be > 0")
        if unknown := set(self.criteria) - CRITERIA.keys():
            raise ResdegError(f"unknown criteria {sorted(unknown)}; known: {', '.join(CRITERIA)}")

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeSettings":
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"settings keys {sorted(d)} are not {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def hash(self) -> str:
        blob = json.dumps({"schema_version": PROBE_SCHEMA_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes) -> "ProbeSettings":
        return dataclasses.replace(self, **changes)


def probe_path(folder: str | Path, settings: ProbeSettings | None = None) -> Path:
    return Path(folder) / f"probe-{(settings or ProbeSettings()).hash}.json"


def _per_stage(values, stages: list[str], what: str, allow_none: bool) -> None:
    _check(isinstance(values, dict) and set(values) == set(stages), f"{what}: not one value per stage")
    for stage, v in values.items():
        _check(_is_num(v, allow_none=allow_none), f"{what}.{stage} is not a finite number")


def validate_probe_doc(doc, settings: ProbeSettings | None = None, config_hash: str | None = None) -> dict:
    """Check a probe document's structure and consistency; raise CorruptProbe on the first fault."""
    try:
        _check(isinstance(doc, dict), "not a JSON object")
        _check(doc.get("schema") == PROBE_SCHEMA, f"schema is {doc.get('schema')!r}, expected {PROBE_SCHEMA!r}")
        _check(doc.get("schema_version") == PROBE_SCHEMA_VERSION,
               f"schema_version {doc.get('schema_version')!r} is not {PROBE_SCHEMA_VERSION} (re-probe with --force)")
        for key, typ in (("run", dict), ("settings", dict), ("settings_hash", str), ("status", str),
                         ("images", int), ("classes_present", int), ("stages", list), ("stage_shapes", dict),
                         ("criteria", dict), ("criterion_errors", dict), ("signal", dict),
                         ("environment", dict), ("wall_s", (int, float))):
            _check(isinstance(doc.get(key), typ), f"field {key!r} missing or of the wrong type")
        _check(doc["status"] in PROBE_STATUSES, f"status {doc['status']!r} is not one of {PROBE_STATUSES}")
        _check(isinstance(doc.get("reason"), str) if doc["status"] == "skipped" else doc.get("reason") is None,
               "reason must be a string exactly when status is skipped")
        try:
            stored = ProbeSettings.from_dict(doc["settings"])
        except (ValueError, TypeError, ResdegError) as e:
            raise CorruptProbe(f"settings do not validate: {e}") from None
        _check(stored.hash == doc["settings_hash"], "settings_hash does not match the stored settings")
        if settings is not None:
            _check(stored == settings, "settings differ from the ones asked for")
        _check(config_hash is None or doc["run"].get("config_hash") == config_hash,
               "probe belongs to another run (config_hash differs)")
        stages = doc["stages"]
        _check(all(isinstance(s, str) for s in stages), "stages are not names")
        done = doc["status"] == "done"
        _check(not done or (stages and doc["images"] == stored.probe_images and doc["classes_present"] >= 2),
               "a done probe needs stages, probe_images images and at least 2 classes")
        _check(set(doc["stage_shapes"]) == set(stages), "stage_shapes: not one shape per stage")
        _check(all(isinstance(s, list) and all(isinstance(v, int) and v > 0 for v in s)
                   for s in doc["stage_shapes"].values()), "stage_shapes are not lists of sizes")
        _check(list(doc["criteria"]) == list(stored.criteria), "criteria are not the settings' criteria in order")
        for name, values in doc["criteria"].items():
            _per_stage(values, stages, f"criteria.{name}", allow_none=True)
            for stage, v in values.items():
                reason = doc["criterion_errors"].get(name, {}).get(stage)
                _check((v is None) == isinstance(reason, str), f"criteria.{name}.{stage}: a null value needs a reason")
        _check(set(doc["criterion_errors"]) <= set(stored.criteria), "criterion_errors names an unknown criterion")
        _check(set(doc["signal"]) == set(SIGNAL_PHASES), f"signal needs exactly {SIGNAL_PHASES}")
        for phase, stats in doc["signal"].items():
            _check(isinstance(stats, dict) and set(stats) == set(SIGNAL_KEYS), f"signal.{phase} needs {SIGNAL_KEYS}")
            for key, values in stats.items():
                _per_stage(values, stages, f"signal.{phase}.{key}", allow_none=True)
    except CorruptProbe:
        raise
    except CorruptRun as e:  # from the store's checks, which serve both kinds of file
        raise CorruptProbe(str(e)) from None
    except (KeyError, TypeError, AttributeError) as e:  # a mistyped nested field
        raise CorruptProbe(f"malformed ({type(e).__name__}: {e})") from None
    return doc


def write_probe(folder: str | Path, doc: dict) -> Path:
    validate_probe_doc(doc)  # never write what could not be read back
    path = probe_path(folder, ProbeSettings.from_dict(doc["settings"]))
    atomic_write_json(path, doc)
    return path


def read_probe(folder: str | Path, settings: ProbeSettings | None = None, run_doc: dict | None = None) -> dict | None:
    """The valid probe of a run for these settings (default settings when None); None when there is
    none yet; CorruptProbe when the file is damaged or belongs to another run."""
    settings = settings or ProbeSettings()
    path = probe_path(folder, settings)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptProbe(f"{path} is not valid JSON ({e})") from None
    run_doc = run_doc if run_doc is not None else read_run(folder)
    try:
        return validate_probe_doc(doc, settings, run_doc["config_hash"])
    except CorruptProbe as e:
        raise CorruptProbe(f"{path.name}: {e}") from None


@dataclass
class ProbeEntry:
    """One run of the store with its probe (None when not probed yet) or the problem that hides it."""
    run: RunEntry
    probe: dict | None
    problem: str | None = None


def probe_entries(results: str | Path, settings: ProbeSettings | None = None) -> list[ProbeEntry]:
    """Every run under results/ with its probe for these settings (the report's entry point)."""
    out = []
    for run in scan(results):
        if run.problem:
            out.append(ProbeEntry(run, None, f"run: {run.problem}"))
            continue
        try:
            out.append(ProbeEntry(run, read_probe(run.path, settings, run.doc)))
        except CorruptRun as e:
            out.append(ProbeEntry(run, None, str(e)))
    return out
