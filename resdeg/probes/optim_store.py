"""Optimisation measurements (H4, H5) on disk: one schema-versioned, validated JSON record per net
and measurement settings, written atomically through the shared record code (records.py).

    results/<protocol>/<dataset>/init/<model>-<variant>-s<seed>-<config hash>-optim-<settings hash>.json
        a net at initialisation (no training needed: the net the run of that config starts from)
    results/<protocol>/<dataset>/<run folder>/optim-<settings hash>.json
        a trained run's net (its model.pt, or measured as its last epoch ended), beside its probes
    results/<protocol>/<dataset>/<run folder>/optim-epoch<k>-<settings hash>.json
        the run's net after k epochs, measured while it trained (the epochs probes.probe_epochs names)

The `init` folder sits where run folders do but holds no run.json, so the run store never takes
it for a run. Changed settings get a new file; the same settings find the old one (cached).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from ..config import Config
from ..errors import ResdegError
from ..records import CorruptRecord, Fields, Record, bounded, read_record, require, write_record
from ..store import run_dir
from .optim import resolved
from .store import INIT_FOLDER  # noqa: F401  (one init folder for every measurement of an untrained net)

OPTIM_SCHEMA = "resdeg.optim"
OPTIM_SCHEMA_VERSION = 1
OPTIM_STATUSES = ("done", "skipped")
PHASES = ("init", "trained")
# what the gradient correlation differentiates (projected_gradients says why not the loss)
GRADIENT_TARGET = "a fixed random unit projection of the logits"


class CorruptOptim(CorruptRecord):
    """An optimisation record that is unreadable or fails validation: reported, never used."""


@dataclass(frozen=True)
class OptimSettings:
    """Everything that changes the numbers of a measurement; its hash names the file.

    distances: RMS change of each input value along the line, in data standard deviations
    (the inputs are normalised per channel). summary_distance: the one distance whose mean
    correlation sums a net up (one of `distances`)."""
    measure_seed: int = 0  # seeds the projection, the input directions, Lanczos and the slices
    gradient_images: int = 64
    distances: tuple = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    summary_distance: float = 0.01
    curvature_images: int = 128
    lanczos_steps: int = 20
    slice_points: int = 21
    slice_2d_points: int = 0  # 0: no 2-D slice

    def __post_init__(self):
        if not isinstance(self.gradient_images, int) or self.gradient_images < 1:
            raise ResdegError(f"gradient_images={self.gradient_images}: need at least 1 image")
        if not isinstance(self.curvature_images, int) or self.curvature_images < 2:
            raise ResdegError(f"curvature_images={self.curvature_images}: need at least 2 images (BatchNorm)")
        if not self.distances or min(self.distances) <= 0 or list(self.distances) != sorted(set(self.distances)):
            raise ResdegError(f"distances {self.distances}: need positive distances in increasing order")
        if self.summary_distance not in self.distances:
            raise ResdegError(f"summary_distance {self.summary_distance} is not one of the distances {self.distances}")
        if self.lanczos_steps < 2:
            raise ResdegError(f"--lanczos-steps {self.lanczos_steps}: need at least 2 steps")
        if self.slice_points < 3 or self.slice_points % 2 == 0:
            raise ResdegError(f"--slice-points {self.slice_points}: need an odd number >= 3 (the grid holds 0)")
        if self.slice_2d_points != 0 and (self.slice_2d_points < 3 or self.slice_2d_points % 2 == 0):
            raise ResdegError(f"--slice-2d {self.slice_2d_points}: 0 (none) or an odd number >= 3 per side")

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> OptimSettings:
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"settings keys {sorted(d)} are not {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def hash(self) -> str:
        blob = json.dumps({"schema_version": OPTIM_SCHEMA_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes) -> OptimSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class MeasuredNet(Fields):
    """Which net was measured: a run's net at initialisation or after training."""
    model: str
    variant: str
    seed: int
    protocol: str
    dataset: str
    config_hash: str
    phase: str
    epoch: int = bounded(0)  # epochs trained: 0 at initialisation
    parameters: int = bounded(0)

    def check(self) -> None:
        require(self.phase in PHASES, f"phase {self.phase!r} is not one of {PHASES}")
        require((self.phase == "init") == (self.epoch == 0), "epoch must be 0 exactly at initialisation")


@dataclass(frozen=True)
class GradientCurves(Fields):
    """Shattered gradients: the correlation of the gradient of `target` at x + t * d with the one at
    x, averaged over images (mean, sd), for the input ("input") and every stage's output."""
    target: str
    distances: tuple[float, ...]
    mean: dict[str, tuple[float | None, ...]]
    sd: dict[str, tuple[float | None, ...]]
    half_distance: dict[str, float | None]  # where the mean first falls to 1/2 (None: not on the grid)
    at_summary: dict[str, float | None]  # the mean at the settings' summary_distance

    def check(self) -> None:
        names = set(self.mean)
        require("input" in names, "gradient curves need the input's")
        require(set(self.sd) == names and set(self.half_distance) == names and set(self.at_summary) == names,
                "mean, sd, half_distance and at_summary must name the same gradients")
        for name in names:
            require(len(self.mean[name]) == len(self.distances) and len(self.sd[name]) == len(self.distances),
                    f"gradients.{name}: not one value per distance")
            require(all(v is None or -1.0 - 1e-9 <= v <= 1.0 + 1e-9 for v in self.mean[name]),
                    f"gradients.{name}: a correlation outside [-1, 1]")


@dataclass(frozen=True)
class Curvature(Fields):
    """The extreme Hessian eigenvalues of the training loss on the curvature images (Lanczos). An end
    is resolved when its residual is at most optim.RESOLVED (5%) of it; the ratio |lambda_min /
    lambda_max| is given only when both are (and lambda_max > 0), else None."""
    loss: float
    lambda_max: float
    lambda_min: float
    ratio: float | None = bounded(0.0)
    residual_max: float = bounded(0.0)
    residual_min: float = bounded(0.0)
    lambda_max_resolved: bool
    lambda_min_resolved: bool
    steps: int = bounded(1)
    ritz: tuple[float, ...] = ()

    def check(self) -> None:
        require(self.lambda_min <= self.lambda_max, "lambda_min exceeds lambda_max")
        require(len(self.ritz) == self.steps, "ritz: not one Ritz value per Lanczos step")
        require(self.lambda_max_resolved == resolved(self.lambda_max, self.residual_max)
                and self.lambda_min_resolved == resolved(self.lambda_min, self.residual_min),
                "the resolved flags disagree with the residuals")
        both = self.lambda_max_resolved and self.lambda_min_resolved and self.lambda_max > 0
        require((self.ratio is not None) == both, "ratio: given exactly when both ends are resolved")


@dataclass(frozen=True)
class Slice1D(Fields):
    """The loss along one filter-normalised direction, at `alphas` (its multiples), with summaries
    (optim.slice_shape)."""
    alphas: tuple[float, ...]
    losses: tuple[float | None, ...]
    center_loss: float | None
    curvature_at_0: float | None
    rise: float | None
    local_minima: int | None = bounded(0)
    non_convex_fraction: float | None = bounded(0.0, 1.0)

    def check(self) -> None:
        require(len(self.losses) == len(self.alphas), "slice_1d: not one loss per alpha")


@dataclass(frozen=True)
class Slice2D(Fields):
    """The loss on the plane of two filter-normalised directions: losses[i][j] at (alphas[i], alphas[j])."""
    alphas: tuple[float, ...]
    losses: tuple[tuple[float | None, ...], ...]

    def check(self) -> None:
        require(len(self.losses) == len(self.alphas) and all(len(r) == len(self.alphas) for r in self.losses),
                "slice_2d: not a square grid of one loss per pair of alphas")


MEASURES = ("gradients", "curvature", "slice_1d", "slice_2d")


@dataclass(frozen=True)
class OptimRecord(Record):
    SCHEMA: ClassVar[str] = OPTIM_SCHEMA
    VERSION: ClassVar[int] = OPTIM_SCHEMA_VERSION
    net: MeasuredNet
    config: Config
    settings: OptimSettings
    settings_hash: str
    status: str
    reason: str | None
    data_fingerprint: str | None
    # the images measured on: indices into the test split (gradients) and the train split (curvature, slices)
    gradient_image_indices: tuple[int, ...] = bounded(0)
    curvature_image_indices: tuple[int, ...] = bounded(0)
    gradients: GradientCurves | None = None
    curvature: Curvature | None = None
    slice_1d: Slice1D | None = None
    slice_2d: Slice2D | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per measure (MEASURES, setup)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float = bounded(0.0, default=0.0)
    created: str = ""

    def check(self) -> None:
        s = self.settings
        require(self.status in OPTIM_STATUSES, f"status {self.status!r} is not one of {OPTIM_STATUSES}")
        require((self.reason is not None) == (self.status == "skipped"),
                "reason must be a string exactly when status is skipped")
        require(s.hash == self.settings_hash, "settings_hash does not match the stored settings")
        c, n = self.config, self.net
        require((c.model, c.variant, c.seed, c.dataset) == (n.model, n.variant, n.seed, n.dataset),
                "the net does not match its config")
        require(set(self.timings) <= {"setup", *MEASURES} and all(v >= 0 for v in self.timings.values()),
                "timings: unknown measures or negative times")
        if self.status != "done":
            return
        require(self.gradients is not None and self.curvature is not None and self.slice_1d is not None,
                "a done record needs gradients, curvature and slice_1d")
        require((self.slice_2d is not None) == (s.slice_2d_points > 0), "slice_2d: present exactly when asked for")
        require(len(self.gradient_image_indices) == s.gradient_images
                and len(self.curvature_image_indices) == s.curvature_images,
                "image indices: not the settings' numbers of images")
        require(list(self.gradients.distances) == list(s.distances), "gradients: not the settings' distances")
        require(len(self.slice_1d.alphas) == s.slice_points, "slice_1d: not the settings' number of points")
        require(self.slice_2d is None or len(self.slice_2d.alphas) == s.slice_2d_points,
                "slice_2d: not the settings' number of points")

    @property
    def done(self) -> bool:
        return self.status == "done"


# the 2-D slice the report draws, as Li et al.'s figure of ResNet-56 with and without skips:
# `resdeg optim --phase trained --slice-2d 11` (otherwise the default settings)
SURFACE_POINTS = 11


def surface_settings() -> OptimSettings:
    return OptimSettings(slice_2d_points=SURFACE_POINTS)


def init_path(results: str | Path, cfg: Config, settings: OptimSettings) -> Path:
    """Where the measurement of `cfg`'s net at initialisation goes (beside the runs of its protocol)."""
    return run_dir(results, cfg).parent / INIT_FOLDER / f"{cfg.run_name}-optim-{settings.hash}.json"


def run_path(folder: str | Path, settings: OptimSettings) -> Path:
    """Where the measurement of a trained run's net goes: in its folder."""
    return Path(folder) / f"optim-{settings.hash}.json"


def epoch_path(folder: str | Path, epoch: int, settings: OptimSettings) -> Path:
    """Where the measurement of a run's net after `epoch` epochs (not its last) goes: in its folder."""
    return Path(folder) / f"optim-epoch{epoch}-{settings.hash}.json"


def read_training_optims(folder: str | Path, config_hash: str, settings: OptimSettings) -> tuple[list, list]:
    """(the valid measurements of a run's net while it trained and at its end, by epoch; (file name,
    problem) of each damaged one: reported, never used)."""
    out, problems = [], []
    for path in sorted(Path(folder).glob(f"optim-*{settings.hash}.json")):
        try:
            record = read_optim(path, settings)
        except CorruptOptim as e:
            problems.append((path.name, str(e)))
            continue
        if record.net.phase == "trained" and record.net.config_hash == config_hash:
            out.append(record)
    return sorted(out, key=lambda r: r.net.epoch), problems


def read_optim(path: str | Path, settings: OptimSettings | None = None) -> OptimRecord | None:
    """The valid record at `path`; None when there is none yet; CorruptOptim when it is damaged or
    was measured with other settings than `settings`."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = read_record(path, OptimRecord)
    except CorruptRecord as e:
        raise CorruptOptim(f"{path.name}: {e}") from None
    if settings is not None and record.settings != settings:
        raise CorruptOptim(f"{path.name}: settings differ from the ones asked for")
    return record


def write_optim(path: str | Path, record: OptimRecord) -> Path:
    write_record(path, record)
    return Path(path)


def measurement_summary(results: str | Path) -> list[dict]:
    """Per <protocol>/<dataset>/init folder and per run folder group: how many optimisation records
    are done, skipped and corrupt (`resdeg status` lists them beside the runs)."""
    results = Path(results)
    out = []
    run_groups = sorted({p.parent.parent for p in results.glob("*/*/*/optim-*.json")})
    for folder in sorted(results.glob(f"*/*/{INIT_FOLDER}")) + run_groups:
        trained = folder.name != INIT_FOLDER
        paths = sorted(folder.glob("*/optim-*.json")) if trained else sorted(folder.glob("*-optim-*.json"))
        if not paths:  # an init folder holding other measurements only (init probes)
            continue
        done = skipped = 0
        corrupt = []
        for path in paths:
            try:
                record = read_optim(path)
            except CorruptOptim as e:
                corrupt.append(str(e))
                continue
            done += record.done
            skipped += not record.done
        out.append({"where": folder.relative_to(results).as_posix(), "phase": "trained" if trained else "init",
                    "done": done, "skipped": skipped, "corrupt": corrupt})
    return out
