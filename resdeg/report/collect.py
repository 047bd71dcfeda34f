"""Load the cached results of one study (a protocol, a data set and one setting) into plain
Python objects: every run with its probe, grouped by model and variant. Nothing is computed
here that a result file does not hold; the report's numbers all come through this module."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config import make_config
from ..errors import ResdegError
from ..models import ARCHS, VARIANTS
from ..store import CorruptRun, read_telemetry, scan
from . import probes as probe_files

# The study's order: serious protocols first when the store holds several.
PROTOCOL_ORDER = ("seed", "cifar", "smoke")
USABLE = ("done", "diverged")  # partial runs are listed, not used
PER_RUN_KEYS = ("model", "variant", "seed")


@dataclass
class Run:
    folder: Path
    rel: str  # the folder relative to the results root: where the page says a number comes from
    doc: dict
    probe: dict | None = None
    probe_file: str | None = None
    probe_note: str | None = None  # why there is no usable probe

    model = property(lambda self: self.doc["config"]["model"])
    variant = property(lambda self: self.doc["config"]["variant"])
    seed = property(lambda self: self.doc["config"]["seed"])
    status = property(lambda self: self.doc["status"])
    config_hash = property(lambda self: self.doc["config_hash"])
    epochs = property(lambda self: self.doc["epochs"])

    @property
    def final(self) -> dict:
        """The last recorded epoch (a diverged run's is the epoch it diverged in)."""
        return self.epochs[-1] if self.epochs else {}

    @cached_property
    def telemetry(self) -> dict | None:
        try:
            return read_telemetry(self.folder)
        except CorruptRun:
            return None

    @property
    def stages(self) -> list[str]:
        tel = self.telemetry
        return [str(s) for s in tel["stages"]] if tel is not None else []


@dataclass
class Study:
    results: Path
    protocol: str
    dataset: str
    setting: str  # short hash of the config without model, variant and seed
    runs: list[Run]
    unused: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)
    other_studies: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        present = {r.model for r in self.runs}
        return [m for m in ARCHS if m in present]

    @property
    def variants(self) -> list[str]:
        present = {r.variant for r in self.runs}
        return [v for v in VARIANTS if v in present]

    def cell(self, model: str, variant: str) -> list[Run]:
        return sorted((r for r in self.runs if r.model == model and r.variant == variant), key=lambda r: r.seed)

    def cells(self):
        """(model, variant, runs) for every model x variant that has runs, in table order."""
        for model in self.models:
            for variant in self.variants:
                runs = self.cell(model, variant)
                if runs:
                    yield model, variant, runs

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    @property
    def config(self) -> dict:
        """The shared config (model, variant and seed vary across runs)."""
        return {k: v for k, v in self.runs[0].doc["config"].items() if k not in PER_RUN_KEYS}

    @property
    def overrides(self) -> dict:
        """Fields that differ from the named protocol: the `--set` options that reproduce the study."""
        base = make_config(self.protocol, dataset=self.dataset).to_dict()
        return {k: v for k, v in self.config.items() if k not in ("protocol", "dataset") and base.get(k) != v}

    @property
    def data(self) -> dict:
        return self.runs[0].doc["data"]

    @property
    def environments(self) -> list[dict]:
        """Distinct environments the runs were made in."""
        seen = {}
        for r in self.runs:
            seen.setdefault(json.dumps(r.doc["environment"], sort_keys=True), r.doc["environment"])
        return list(seen.values())

    @property
    def is_smoke(self) -> bool:
        return self.protocol == "smoke"


def depth(model: str) -> int:
    return int(re.sub(r"\D", "", model) or 0)


def _setting(cfg: dict) -> str:
    rest = {k: v for k, v in cfg.items() if k not in PER_RUN_KEYS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def load_study(results: str | Path, protocol: str | None = None, dataset: str | None = None) -> Study:
    """The runs of one protocol + data set + setting. Defaults: the most serious protocol in the
    store, its data set with most runs, and among settings the one with most runs."""
    results = Path(results)
    entries = scan(results)
    if not entries:
        raise ResdegError(f"no runs in {results}/ (train some with `resdeg run-all`)")
    good, unused = [], []
    for e in entries:
        rel = e.path.relative_to(results).as_posix()
        if e.doc is None:
            unused.append((rel, f"corrupt: {e.problem}"))
        elif e.doc["status"] not in USABLE:
            unused.append((rel, f"{e.doc['status']}: {e.doc['epochs_done']} of {e.doc['config']['epochs']} epochs"))
        else:
            good.append((rel, e))
    groups: dict[tuple[str, str], list] = {}
    for rel, e in good:
        cfg = e.doc["config"]
        groups.setdefault((cfg["protocol"], cfg["dataset"]), []).append((rel, e))
    if not groups:
        raise ResdegError(f"no finished runs in {results}/ ({len(unused)} unusable; see `resdeg status`)")
    candidates = [k for k in groups if (protocol is None or k[0] == protocol) and (dataset is None or k[1] == dataset)]
    if not candidates:
        have = ", ".join(f"{p}/{d}" for p, d in sorted(groups))
        raise ResdegError(f"no finished runs for protocol={protocol or 'any'} dataset={dataset or 'any'} "
                          f"in {results}/ (present: {have})")
    rank = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    key = min(candidates, key=lambda k: (rank.get(k[0], len(rank)), -len(groups[k]), k))
    by_setting: dict[str, list] = {}
    for rel, e in groups[key]:
        by_setting.setdefault(_setting(e.doc["config"]), []).append((rel, e))
    setting = max(by_setting, key=lambda s: (len(by_setting[s]), max(e.doc.get("updated", "") for _, e in by_setting[s])))
    runs = []
    for s, members in by_setting.items():
        for rel, e in members:
            if s != setting:
                unused.append((rel, "other settings than the study's (see its config)"))
                continue
            runs.append(_with_probe(Run(e.path, rel, e.doc)))
    others = [f"{p}/{d}" for p, d in sorted(groups) if (p, d) != key]
    return Study(results, key[0], key[1], setting, sorted(runs, key=_order), sorted(unused), others)


def _order(r: Run):
    arch = list(ARCHS)
    return (arch.index(r.model) if r.model in arch else len(arch), list(VARIANTS).index(r.variant), r.seed)


def _with_probe(run: Run) -> Run:
    found = probe_files.latest(run.folder, run.config_hash)
    run.probe, run.probe_file, run.probe_note = found.doc, found.file, found.note
    return run


def finite(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]
