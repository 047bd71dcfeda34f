"""Probe files: one per run folder and probe settings, `probe-<settings hash>.json`, written
atomically, schema-versioned and validated on every read, like run.json.

Probes are derived from a run (its weights and its test images), so they live in its folder:
a run redone with --force loses its probes with its weights, and changed settings get a new file.
This module builds on the run store (never the other way round) and holds the one join of runs
to their probes (`find_probe`), used by `status`, `probe` and the report alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ResdegError
from ..records import CorruptRecord, Fields, Record, bounded, read_record, require, write_record
from ..store import RunRecord, read_run, scan
from .criteria import CRITERIA

PROBE_SCHEMA = "resdeg.probe"
# 2: probe images are a class-balanced seeded subset (data.probe_subset), their indices are stored;
#    per-block signal propagation and per-stage effective rank added
# 3: the effective rank at initialisation is taken with BatchNorm on batch statistics (version 2
#    took it in eval mode, where an untrained BatchNorm is the identity)
PROBE_SCHEMA_VERSION = 3
PROBE_STATUSES = ("done", "skipped")
# per stage, forward activations and dL/d(stage output); grad_mean_abs is the training telemetry's measure
SIGNAL_KEYS = ("act_mean", "act_std", "grad_mean", "grad_std", "grad_mean_abs")
SIGNAL_PHASES = ("init", "trained")


class CorruptProbe(CorruptRecord):
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
    def from_dict(cls, d: dict) -> ProbeSettings:
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"settings keys {sorted(d)} are not {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def hash(self) -> str:
        return self.hash_for(PROBE_SCHEMA_VERSION)

    def hash_for(self, version: int) -> str:
        blob = json.dumps({"schema_version": version, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes) -> ProbeSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ProbedRun(Fields):
    """Which run a probe belongs to."""
    config_hash: str
    model: str
    variant: str
    seed: int
    protocol: str
    dataset: str


@dataclass(frozen=True)
class BlockSignal(Fields):
    """Signal propagation at one residual block's output (Brock et al. 2021's plots): average over
    channels of the squared channel mean and of the channel variance, and the residual branch's
    average channel variance before the add (for a plain block: its output before the ReLU)."""
    name: str
    stage: str
    index: int = bounded(0)
    sq_mean: float | None = bounded(0.0)
    variance: float | None = bounded(0.0)
    branch_variance: float | None = bounded(0.0)


@dataclass(frozen=True)
class ProbeEnvironment(Fields):
    """A probe's `environment`: where it was computed (probe._environment)."""
    OPEN: ClassVar[bool] = True  # descriptive: test stores and later versions record more
    device: str
    torch: str
    threads: int | None = bounded(1, default=None)


# signal statistics that are spreads or magnitudes: never negative
NON_NEGATIVE_SIGNALS = ("act_std", "grad_std", "grad_mean_abs")


@dataclass(frozen=True)
class ProbeRecord(Record):
    SCHEMA: ClassVar[str] = PROBE_SCHEMA
    VERSION: ClassVar[int] = PROBE_SCHEMA_VERSION
    READS: ClassVar[tuple[int, ...]] = (1,)
    run: ProbedRun
    settings: ProbeSettings
    settings_hash: str
    status: str
    reason: str | None
    images: int = bounded(0)
    classes_present: int = bounded(0)
    stages: tuple[str, ...]
    stage_shapes: dict[str, tuple[int, ...]]
    criteria: dict[str, dict[str, float | None]]
    criterion_errors: dict[str, dict[str, str]]
    signal: dict[str, dict[str, dict[str, float | None]]]  # phase -> SIGNAL_KEYS -> stage -> value
    environment: dict[str, Any]
    wall_s: float = bounded(0.0)
    created: str = ""
    # the probe images, as indices into the data set's test split
    image_indices: tuple[int, ...] = bounded(0, default=())
    blocks: dict[str, tuple[BlockSignal, ...]] = dataclasses.field(default_factory=dict)  # phase -> blocks
    effective_rank: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)  # phase -> stage
    version: int = PROBE_SCHEMA_VERSION  # the schema version it was written under

    IGNORED_KEYS: ClassVar[set] = {"schema", "schema_version"}

    @classmethod
    def upgrade(cls, d: dict, version: int) -> dict:
        return {**d, "version": version}  # version 1 had no image indices, blocks or ranks

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("version")
        return d

    def check(self) -> None:
        require(self.status in PROBE_STATUSES, f"status {self.status!r} is not one of {PROBE_STATUSES}")
        require((self.reason is not None) == (self.status == "skipped"),
                "reason must be a string exactly when status is skipped")
        require(self.settings.hash_for(self.version) == self.settings_hash,
                "settings_hash does not match the stored settings")
        stages = list(self.stages)
        done = self.status == "done"
        require(not done or (stages and self.images == self.settings.probe_images and self.classes_present >= 2),
                "a done probe needs stages, probe_images images and at least 2 classes")
        require(set(self.stage_shapes) == set(stages), "stage_shapes: not one shape per stage")
        require(all(v > 0 for s in self.stage_shapes.values() for v in s), "stage_shapes are not lists of sizes")
        require(list(self.criteria) == list(self.settings.criteria), "criteria are not the settings' criteria in order")
        for name, values in self.criteria.items():
            require(set(values) == set(stages), f"criteria.{name}: not one value per stage")
            for stage, v in values.items():
                reason = self.criterion_errors.get(name, {}).get(stage)
                require((v is None) == isinstance(reason, str), f"criteria.{name}.{stage}: a null value needs a reason")
        require(set(self.criterion_errors) <= set(self.settings.criteria),
                "criterion_errors names an unknown criterion")
        ProbeEnvironment.check_object(self.environment, "environment")
        require(set(self.signal) == set(SIGNAL_PHASES), f"signal needs exactly {SIGNAL_PHASES}")
        for phase, stats in self.signal.items():
            require(set(stats) == set(SIGNAL_KEYS), f"signal.{phase} needs {SIGNAL_KEYS}")
            for key, values in stats.items():
                require(set(values) == set(stages) if done else not values,
                        f"signal.{phase}.{key}: not one value per stage")
                if key in NON_NEGATIVE_SIGNALS:
                    _non_negative(values, f"signal.{phase}.{key}")
        if done and self.version >= 2:
            require(len(self.image_indices) == self.images, "image_indices: not one index per probe image")
            require(set(self.blocks) == set(SIGNAL_PHASES) and set(self.effective_rank) == set(SIGNAL_PHASES),
                    f"blocks and effective_rank need exactly {SIGNAL_PHASES}")
            for phase, ranks in self.effective_rank.items():
                require(set(ranks) == set(stages), f"effective_rank.{phase}: not one value per stage")
                _non_negative(ranks, f"effective_rank.{phase}")

    @property
    def done(self) -> bool:
        return self.status == "done"


def _non_negative(values: dict, where: str) -> None:
    bad = next(((k, v) for k, v in values.items() if v is not None and v < 0), None)
    require(bad is None, f"{where}.{bad and bad[0]}: {bad and bad[1]!r} is negative (a spread or a magnitude)")


def probe_path(folder: str | Path, settings: ProbeSettings | None = None) -> Path:
    return Path(folder) / f"probe-{(settings or ProbeSettings()).hash}.json"


INIT_FOLDER = "init"  # beside a protocol's run folders: measurements of the nets runs start from (no run.json)
INIT_PROBE_SCHEMA, INIT_PROBE_SCHEMA_VERSION = "resdeg.init_probe", 2  # 2: the epoch (0 = untrained)


@dataclass(frozen=True)
class InitProbeRecord(Record):
    """Separability of a run's net at one point of its training, on the run's probe images: epoch 0 is
    the untrained net it starts from (same config and seed; BatchNorm on batch statistics), the control
    H3 compares the trained net with; epoch k > 0 the net after k epochs (eval mode), recorded while
    the run trains (after epoch 1, at each learning-rate drop, at the end), so that a change can be
    placed before or after training shapes it."""
    SCHEMA: ClassVar[str] = INIT_PROBE_SCHEMA
    VERSION: ClassVar[int] = INIT_PROBE_SCHEMA_VERSION
    READS: ClassVar[tuple[int, ...]] = (1,)
    run: ProbedRun
    settings: ProbeSettings
    settings_hash: str
    images: int = bounded(2)
    stages: tuple[str, ...]
    criteria: dict[str, dict[str, float | None]]
    criterion_errors: dict[str, dict[str, str]]
    effective_rank: dict[str, float | None]
    image_indices: tuple[int, ...] = bounded(0)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float = bounded(0.0, default=0.0)
    created: str = ""
    epoch: int = bounded(0, default=0)  # version 1 probed only the untrained net: epoch 0, the default

    def check(self) -> None:
        require(self.settings.hash == self.settings_hash, "settings_hash does not match the stored settings")
        require(bool(self.stages) and self.images == self.settings.probe_images == len(self.image_indices),
                "an init probe needs stages and one index per probe image")
        require(list(self.criteria) == list(self.settings.criteria), "criteria are not the settings' criteria in order")
        for name, values in self.criteria.items():
            require(set(values) == set(self.stages), f"criteria.{name}: not one value per stage")
            for stage, v in values.items():
                reason = self.criterion_errors.get(name, {}).get(stage)
                require((v is None) == isinstance(reason, str), f"criteria.{name}.{stage}: a null value needs a reason")
        require(set(self.effective_rank) == set(self.stages), "effective_rank: not one value per stage")
        _non_negative(self.effective_rank, "effective_rank")


def init_probe_path(run_folder: str | Path, run_name: str, settings: ProbeSettings | None = None) -> Path:
    """Where the probe of a run's untrained net goes: <protocol>/<dataset>/init/, beside the runs
    (the same folder as `resdeg optim`'s measurements at initialisation)."""
    return Path(run_folder).parent / INIT_FOLDER / f"{run_name}-probe-{(settings or ProbeSettings()).hash}.json"


def read_init_probe(run_folder: str | Path, run: RunRecord, settings: ProbeSettings) -> InitProbeRecord | None:
    """The valid probe of the run's untrained net for these settings; None when there is none yet;
    CorruptProbe when it is damaged, of another run or of other settings."""
    path = init_probe_path(run_folder, run.config.run_name, settings)
    if not path.exists():
        return None
    try:
        probe = read_record(path, InitProbeRecord)
    except CorruptRecord as e:
        raise CorruptProbe(f"{path.name}: {e}") from None
    if probe.run.config_hash != run.config_hash or probe.settings != settings:
        raise CorruptProbe(f"{path.name}: of another run or other settings than the ones asked for")
    return probe


def epoch_probe_path(run_folder: str | Path, epoch: int, settings: ProbeSettings | None = None) -> Path:
    """Where the separability of a run's net after `epoch` epochs goes: in its folder."""
    return Path(run_folder) / f"separability-epoch{epoch}-{(settings or ProbeSettings()).hash}.json"


def read_epoch_probes(run_folder: str | Path, run: RunRecord, settings: ProbeSettings) -> list:
    """The valid probes a run recorded while it trained, by epoch; a damaged one is left out."""
    out = []
    for path in Path(run_folder).glob(f"separability-epoch*-{settings.hash}.json"):
        try:
            probe = read_record(path, InitProbeRecord)
        except CorruptRecord:
            continue
        if probe.run.config_hash == run.config_hash and probe.settings == settings and probe.epoch > 0:
            out.append(probe)
    return sorted(out, key=lambda p: p.epoch)


def write_probe(folder: str | Path, probe: ProbeRecord) -> Path:
    path = probe_path(folder, probe.settings)
    write_record(path, probe)
    return path


def read_probe(folder: str | Path, settings: ProbeSettings | None = None,
               run: RunRecord | None = None) -> ProbeRecord | None:
    """The valid probe of a run for these settings (default settings when None); None when there is
    none yet; CorruptProbe when the file is damaged or belongs to another run."""
    settings = settings or ProbeSettings()
    path = probe_path(folder, settings)
    if not path.exists():
        return None
    probe = _read(path, (run or read_run(folder)).config_hash)
    if probe.settings != settings:
        raise CorruptProbe(f"{path.name}: settings differ from the ones asked for")
    return probe


def _read(path: Path, config_hash: str | None) -> ProbeRecord:
    try:
        probe = read_record(path, ProbeRecord)
    except CorruptRecord as e:
        raise CorruptProbe(f"{path.name}: {e}") from None
    if config_hash is not None and probe.run.config_hash != config_hash:
        raise CorruptProbe(f"{path.name}: probe belongs to another run (config_hash differs)")
    return probe


@dataclass
class FoundProbe:
    """A run's probe as the report and `status` see it: the best valid probe file, or why none."""
    probe: ProbeRecord | None  # a done probe
    file: str | None
    note: str | None  # why there is no done probe
    skipped: ProbeRecord | None = None  # a probe that recorded why the run could not be probed


def find_probe(folder: str | Path, run: RunRecord) -> FoundProbe:
    """The one join of a run to its probes: every probe-*.json of the folder is validated; a done
    probe with the default settings wins, then the done one with most images."""
    valid, problems = [], []
    for path in sorted(Path(folder).glob("probe-*.json")):
        try:
            valid.append((path, _read(path, run.config_hash)))
        except CorruptProbe as e:
            problems.append(str(e))
    done = [(p, d) for p, d in valid if d.done]
    if done:
        default = ProbeSettings().hash
        path, probe = max(done, key=lambda pd: (pd[1].settings_hash == default, pd[1].images, pd[0].name))
        return FoundProbe(probe, path.name, None)
    if valid:
        path, probe = valid[0]
        return FoundProbe(None, path.name, f"probe skipped: {probe.reason}", skipped=probe)
    if problems:
        return FoundProbe(None, None, f"probe unusable ({problems[0]})")
    return FoundProbe(None, None, "not probed")


def status_rows(results: str | Path) -> list[dict]:
    """`resdeg status`: every run's row with its probe joined in (probed, probe_problem)."""
    rows = []
    for entry in scan(results):
        row = entry.row()
        found = find_probe(entry.path, entry.run) if entry.run is not None else None
        row["probed"] = bool(found and (found.probe or found.skipped))  # a skipped probe is a result too
        row["probe_problem"] = found.note if found and found.note and found.note.startswith("probe unusable") else None
        rows.append(row)
    return rows
