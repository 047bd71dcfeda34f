"""Load the result store into the report's studies: every declared study (resdeg/study.py) that
has finished runs, each with its runs, their probes and what was left out. Nothing is computed
here that a result file does not hold; every number of the report comes through this module."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config import PROTOCOLS, as_json_value, declared, make_config
from ..datasets import DataSet, identify
from ..errors import ResdegError
from ..models import ARCHS
from ..probes.optim_store import (
    INIT_FOLDER,
    CorruptOptim,
    OptimSettings,
    read_optim,
    read_training_optims,
    surface_settings,
)
from ..probes.store import CorruptProbe, ProbeRecord, find_probe, read_epoch_probes, read_init_probe
from ..store import CorruptRun, Epoch, RunRecord, read_telemetry, scan
from ..study import PROTOCOL_RANK, STUDIES, VARIANTS, Study

USABLE = ("done", "diverged")  # partial runs are listed, not used
PER_RUN_KEYS = ("model", "variant", "seed")
# Under a constant learning rate the report reads the mean of the last epochs (RunResults.final).
FINAL_EPOCHS = 3
FINAL_KEYS = ("train_acc", "eval_train_acc", "test_acc")


@dataclass
class RunResults:
    """A run as the report sees it: its RunRecord plus the probes and measurements made on it (see StudyResults)."""
    folder: Path
    rel: str  # the folder relative to the results root: where the page says a number comes from
    record: RunRecord
    probe: ProbeRecord | None = None
    probe_file: str | None = None
    probe_note: str | None = None  # why there is no usable probe
    init_probe: object | None = None  # the untrained net's separability (probes.store.InitProbeRecord): H3's control
    epoch_probes: list = field(default_factory=list)  # its separability recorded while it trained, by epoch
    optim: list = field(default_factory=list)  # H4/H5 measured on its net while it trained and at its end, by epoch
    surface: object | None = None  # its trained net measured with a 2-D loss slice (optim_store.surface_settings)

    model = property(lambda self: self.record.model)
    variant = property(lambda self: self.record.variant)
    seed = property(lambda self: self.record.seed)
    status = property(lambda self: self.record.status)
    config_hash = property(lambda self: self.record.config_hash)
    epochs = property(lambda self: self.record.epochs)

    @property
    def final(self) -> Epoch | None:
        """The final figure every table, figure and verdict reads. Under a constant learning rate one
        epoch is a noisy snapshot (native ResNet18 Nres seed 44 fell 7 points in eval-mode train accuracy
        between its last two epochs), so it is the mean of the last FINAL_EPOCHS epochs; after a decayed
        schedule, or for a diverged run, the last epoch."""
        last, tail = self.record.final, self.record.epochs[-FINAL_EPOCHS:]
        if last is None or self.record.config.schedule != "constant" or self.status == "diverged" \
                or len(tail) < FINAL_EPOCHS:
            return last
        return replace(last, **{key: sum(getattr(e, key) for e in tail) / len(tail) for key in FINAL_KEYS})

    @property
    def test_n(self) -> int:
        return int(self.record.data.get("test_used") or 0)

    @property
    def eval_train_n(self) -> int:
        return int(self.record.data.get("eval_train_used") or 0)

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
class StudyResults:
    """A declared study with the runs the store holds for it (one data set, one setting)."""
    study: Study
    results: Path
    dataset: str
    setting: str  # short hash of the config without model, variant and seed
    runs: list[RunResults]
    # nets measured at initialisation (H4, H5; `resdeg optim`) in this study's setting, any depth
    optim: list = field(default_factory=list)
    primary: bool = True  # the study's main data set; another data set's runs are their own study

    @property
    def name(self) -> str:
        """Its pages' folder: the study's name, with the data set for any but the main one."""
        return self.study.name if self.primary else f"{self.study.name}-{self.dataset}"

    protocol = property(lambda self: self.study.protocol)
    kind = property(lambda self: self.study.kind)

    @property
    def models(self) -> list[str]:
        present = {r.model for r in self.runs}
        return [m for m in ARCHS if m in present]

    @property
    def variants(self) -> list[str]:
        present = {r.variant for r in self.runs}
        return [v for v in VARIANTS if v in present]

    def optim_cell(self, model: str, variant: str) -> list:
        """The done measurements at initialisation of one (model, variant), by seed."""
        return sorted((o for o in self.optim if o.done and (o.net.model, o.net.variant) == (model, variant)),
                      key=lambda o: o.net.seed)

    def cell(self, model: str, variant: str) -> list[RunResults]:
        return sorted((r for r in self.runs if r.model == model and r.variant == variant), key=lambda r: r.seed)

    def cells(self):
        """(model, variant, runs) for every model x variant that has runs, in table order."""
        for model in self.models:
            for variant in self.variants:
                runs = self.cell(model, variant)
                if runs:
                    yield model, variant, runs

    def comparisons(self):
        return self.study.comparisons({(m, v) for m, v, _ in self.cells()})

    @property
    def gpu_runs(self) -> dict[str, list[str]]:
        """Where a study mixes devices: its GPU runs by GPU ("resnet18-FULL s43"); empty when every
        run trained on one kind of device (then there is nothing to tell apart)."""
        kinds = {r.record.environment.get("device_type", "cpu") for r in self.runs}
        if len(kinds) < 2:
            return {}
        out: dict[str, list[str]] = {}
        for model, variant, runs in self.cells():
            for r in runs:
                if r.record.environment.get("device_type") == "cuda":
                    out.setdefault(r.record.environment.get("device", "a GPU"), []).append(
                        f"{model}-{variant} s{r.seed}")
        return out

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    @property
    def config(self) -> dict:
        """The shared config (model, variant and seed vary across runs)."""
        return {k: v for k, v in self.runs[0].record.config.to_dict().items() if k not in PER_RUN_KEYS}

    @cached_property
    def declared(self) -> dict:
        """The named protocol's config for this data set and precision, before any `--set`."""
        return make_config(self.protocol, dataset=self.dataset, precision=self.config["precision"]).to_dict()

    @property
    def overrides(self) -> dict:
        """Fields that differ from the named protocol: the `--set` options that reproduce the study
        (precision has its own option and note)."""
        return {k: v for k, v in self.config.items()
                if k not in ("protocol", "dataset", "precision") and self.declared.get(k) != v}

    @property
    def changed(self) -> list[tuple[str, str, str]]:
        """(field, its value, the protocol's value) for every field in `overrides`, as text."""
        return [(k, set_value(v), set_value(self.declared.get(k))) for k, v in sorted(self.overrides.items())]

    @property
    def title(self) -> dict:
        """The declared title, which describes the protocol's settings; a study trained with `--set`
        changes says so (its pages list them), so that no heading claims settings its runs lacked."""
        title = self.study.title if self.primary else {
            lang: f"{t}{' (' if lang == 'en' else '（'}{self.data_set.title[lang]}{')' if lang == 'en' else '）'}"
            for lang, t in self.study.title.items()}
        if not self.overrides:
            return title
        return {"en": f"{title['en']}, changed settings", "zh": f"{title['zh']}，设置有改动"}

    @property
    def data(self) -> dict:
        return self.runs[0].record.data

    @property
    def data_set(self) -> DataSet:
        """What the study's data is (datasets.py): its name, classes, whether CIFAR-10's published
        results apply."""
        return identify(self.dataset, self.data.get("classes") or ())

    @property
    def num_classes(self) -> int:
        return len(self.data.get("classes") or ()) or self.data_set.classes or 10

    @property
    def environments(self) -> list[dict]:
        """Distinct environments the runs were made in."""
        seen = {}
        for r in self.runs:
            env = {k: v for k, v in r.record.environment.items() if k != "git_commit"}
            seen.setdefault(json.dumps(env, sort_keys=True), r.record.environment)
        return list(seen.values())

    @property
    def is_smoke(self) -> bool:
        return self.protocol == "smoke"

    @property
    def probed(self) -> list[RunResults]:
        return [r for r in self.runs if r.probe]


@dataclass
class Store:
    """Everything the report shows: the studies with results, and the run folders it leaves out."""
    results: Path
    studies: list[StudyResults]
    unused: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)

    @property
    def runs(self) -> list[RunResults]:
        seen, out = set(), []
        for s in self.studies:
            for r in s.runs:
                if r.rel not in seen:
                    seen.add(r.rel)
                    out.append(r)
        return out

    def study(self, name: str) -> StudyResults | None:
        return next((s for s in self.studies if s.name == name), None)

    @property
    def date(self) -> str:
        """The report's date: the day its newest run was last written (so the same results render to
        the same pages, whatever day they are rendered on)."""
        return max((r.record.updated or r.record.created for r in self.runs), default="")[:10] or "unknown"


def set_value(value) -> str:
    """A config value as `--set KEY=VALUE` takes it (lists comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def depth(model: str) -> int:
    return int(re.sub(r"\D", "", model) or 0)


def _setting(run: RunRecord) -> str:
    return _config_setting(run.config)


def _config_setting(config) -> str:
    rest = {k: v for k, v in config.to_dict().items() if k not in PER_RUN_KEYS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]


def _optim_at_init(results: Path, protocol: str, dataset: str, setting: str, unused: list) -> list:
    """The valid measurements at initialisation in <protocol>/<dataset>/init/ made with the default
    settings, in the study's setting; a damaged record is listed as unused, never read."""
    settings = OptimSettings()
    out = []
    for path in sorted((results / protocol / dataset / INIT_FOLDER).glob(f"*-optim-{settings.hash}.json")):
        try:
            record = read_optim(path, settings)
        except CorruptOptim as e:
            unused.append((path.relative_to(results).as_posix(), f"corrupt: {e}"))
            continue
        if record is not None and _config_setting(record.config) == setting:
            out.append(record)
    return out


def _as_declared(run: RunRecord) -> bool:
    """Whether the run has its protocol's settings as declared now (a protocol whose definition
    changed, as `depth` gaining He's initialisation, leaves older runs in another setting)."""
    if run.protocol not in PROTOCOLS:  # nothing declared to differ from
        return True
    got = run.config.to_dict()
    return all(got.get(k) == as_json_value(v)
               for k, v in declared(run.protocol, run.config.dataset).items() if k != "model" and v != "auto")


def load_store(results: str | Path, protocol: str | None = None, dataset: str | None = None) -> Store:
    """Every declared study with finished runs (filtered by protocol / data set when given). Per
    study, one data set and setting: preferably the protocol's settings as declared now, then the
    one with most runs. `smoke`
    is shown only when no other study has results."""
    results = Path(results)
    entries = scan(results)
    if not entries:
        raise ResdegError(f"no runs in {results}/ (train some with `resdeg run-all`)")
    usable, unused = [], []
    for e in entries:
        rel = e.path.relative_to(results).as_posix()
        if e.problem:  # unreadable, or a duplicate of another folder (counted once, there)
            unused.append((rel, f"{e.status}: {e.problem}"))
        elif e.run.status not in USABLE:
            unused.append((rel, f"{e.run.status}: {e.run.epochs_done} of {e.run.config.epochs} epochs"))
        elif (protocol is None or e.run.protocol == protocol) and (dataset is None or e.run.dataset == dataset):
            usable.append((rel, e))
    if not usable:
        wanted = f" for protocol={protocol or 'any'} dataset={dataset or 'any'}" if protocol or dataset else ""
        raise ResdegError(f"no finished runs{wanted} in {results}/ ({len(unused)} unusable; see `resdeg status`)")

    studies, used = [], set()
    for study in sorted(STUDIES, key=lambda s: PROTOCOL_RANK.index(s.protocol)):
        members = [(rel, e) for rel, e in usable if e.run.protocol == study.protocol
                   and e.run.model in study.models and e.run.variant in study.variants]
        if not members:
            continue
        by_key: dict[tuple[str, str], list] = {}
        for rel, e in members:
            by_key.setdefault((e.run.dataset, _setting(e.run)), []).append((rel, e))
        # one study per data set, each in one setting: preferably the protocol's settings as declared
        # now, then the one with most runs; the data set with the best such setting keeps the study's
        # name, the others are named after their data set (depth-cifar100)
        rank = {k: (all(_as_declared(e.run) for _, e in group), len(group), max(e.run.updated for _, e in group), k)
                for k, group in by_key.items()}
        keys = [max((k for k in by_key if k[0] == ds), key=rank.get) for ds in {k[0] for k in by_key}]
        for i, key in enumerate(sorted(keys, key=rank.get, reverse=True)):
            runs = [_with_optim(_with_probe(RunResults(e.path, rel, e.run)), unused)
                    for rel, e in sorted(by_key[key], key=lambda re_: _order(re_[1].run))]
            optim = _optim_at_init(results, study.protocol, key[0], key[1], unused)
            studies.append(StudyResults(study, results, key[0], key[1], runs, optim, primary=i == 0))
            used.update(rel for rel, _ in by_key[key])
    if len(studies) > 1:
        smoke = [s for s in studies if s.is_smoke]
        studies = [s for s in studies if not s.is_smoke]
        used -= {r.rel for s in smoke for r in s.runs} - {r.rel for s in studies for r in s.runs}
    for rel, e in usable:
        if rel not in used:
            why = "smoke runs are shown only when no other study has results" if e.run.protocol == "smoke" \
                else "not in a declared study's grid, or another data set or setting than the study's"
            unused.append((rel, why))
    return Store(results, studies, sorted(set(unused)))  # a study sharing an init folder lists it once


def _order(r: RunRecord):
    arch = list(ARCHS)
    return (arch.index(r.model) if r.model in arch else len(arch), list(VARIANTS).index(r.variant), r.seed)


def _with_probe(run: RunResults) -> RunResults:
    found = find_probe(run.folder, run.record)
    run.probe, run.probe_file, run.probe_note = found.probe, found.file, found.note
    if run.probe is not None:  # the control of the same probe settings; a damaged one is not used
        try:
            run.init_probe = read_init_probe(run.folder, run.record, run.probe.settings)
        except CorruptProbe as e:
            run.probe_note = f"init probe unusable ({e})"
        run.epoch_probes = read_epoch_probes(run.folder, run.record, run.probe.settings)
    return run


def _with_optim(run: RunResults, unused: list) -> RunResults:
    """The run's H4/H5 measurements (default settings); a damaged one is listed as unused."""
    records, problems = read_training_optims(run.folder, run.config_hash, OptimSettings())
    run.optim = [r for r in records if r.done]
    surfaces, more = read_training_optims(run.folder, run.config_hash, surface_settings())
    run.surface = next((r for r in surfaces if r.done and r.net.epoch == run.record.epochs_done), None)
    unused.extend((f"{run.rel}/{name}", f"corrupt: {problem}") for name, problem in problems + more)
    return run


def finite(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]
