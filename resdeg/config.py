"""One frozen config per run: a named protocol, plus validated `--set key=value` overrides.

The hash of the fields that change results names the run's cache entry, so the same
command finds its finished run and a changed setting starts a new one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields

from .datasets import DATA_SETS, IMAGE_FOLDER
from .errors import ResdegError
from .study import ARCHS, WEIGHT_INITS, canonical_variant

# 2: subsets class-balanced (data.fixed_subset), precision stored resolved (never "auto").
# Runs written under schema 1 keep their hash: the store checks each against its own schema.
CONFIG_SCHEMA = 2
DATASETS = tuple(DATA_SETS)
# A protocol that normalises with its data set's own per-channel statistics (datasets.py) says so:
PER_DATA_SET = "per data set"


# Fields renamed since runs were stored: former name -> name. A stored config reads under either,
# and the hash keeps the former name, so that a renamed field changes no run's hash.
RENAMED = {"clean_train_images": "eval_train_images"}
HASHED_AS = {new: old for old, new in RENAMED.items()}


@dataclass(frozen=True)
class Config:
    # what is trained
    protocol: str = "original"
    model: str = "resnet18"
    variant: str = "FULL"
    seed: int = 42
    dataset: str = "cifar10"
    # architecture (ImageNet-style nets; He et al.'s CIFAR nets bring their own stem)
    stem: str = "imagenet"
    width_mult: float = 1.0
    conv_bias: bool = True
    # base initialisation (study.WEIGHT_INITS). Added after schema 2: hashed only when not the
    # default, so the runs that predate it keep their hash.
    weight_init: str = field(default="pytorch", metadata={"hash_unless_default": True})
    # input pipeline (all on the training device)
    image_size: int = 224
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    augment: bool = False
    train_images: int = 0  # 0 = the whole training set
    test_images: int = 0
    eval_train_images: int = 5000  # fixed training subset scored in eval mode (H1)
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    # numerics and measurement
    precision: str = "fp32"  # fp32 | bf16 (autocast); a protocol's "auto" is resolved by make_config
    deterministic: bool = True
    telemetry: bool = True
    # execution only: not part of the hash (they do not change what is computed)
    channels_last: bool = field(default=True, metadata={"hash": False})
    compile: bool = field(default=False, metadata={"hash": False})

    def to_dict(self) -> dict:
        return {f.name: as_json_value(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return config_from_dict(d)

    @property
    def hash(self) -> str:
        return self.hash_for(CONFIG_SCHEMA)

    def hash_for(self, schema: int) -> str:
        """The hash under a config schema (older runs are checked against their own)."""
        hashed = {f.name: as_json_value(getattr(self, f.name)) for f in fields(self)
                  if f.metadata.get("hash", True)
                  and not (f.metadata.get("hash_unless_default") and getattr(self, f.name) == f.default)}
        hashed["protocol"] = self.store_protocol  # a renamed protocol keeps its runs' hashes
        hashed = {HASHED_AS.get(k, k): v for k, v in hashed.items()}  # and so does a renamed field
        blob = json.dumps({"schema": schema, **hashed}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def store_protocol(self) -> str:
        """The protocol's folder in the result store, and its name in the hash (see STORED_AS)."""
        return STORED_AS.get(self.protocol, self.protocol)

    @property
    def run_name(self) -> str:
        return f"{self.model}-{self.variant}-s{self.seed}-{self.hash}"


def as_json_value(v):
    """A field value as JSON stores it (tuples read back as lists)."""
    return list(v) if isinstance(v, tuple) else v


# He et al.'s recipe (He init, SGD 0.1, momentum 0.9, wd 1e-4, batch 128, pad-4 crop + flip, lr /10 at 50%
# and 75%), shortened from about 164 epochs to what two CPU cores run in a session (README); `depth-long`
# (60) tells degradation from slow convergence on the same CPU; `depth-he` is He's length (a GPU job).
DEPTH_EPOCHS = 15
DEPTH_LONG_EPOCHS = 60
HE_EPOCHS = 164
SMOKE_TRAIN = 4000

PROTOCOLS: dict[str, dict] = {
    # The original note's code, faithfully (STUDY.md §2): fp32 (TF32 convolutions on CUDA).
    "original": dict(),
    # The original with one change: CIFAR's native 32 px instead of upscaling to 224 (49x cheaper).
    "native": dict(image_size=32),
    # The degradation experiment itself (He et al. 2015, Fig. 6) on their CIFAR nets; bf16 where
    # the hardware has it. Per-channel normalisation (He subtracted the per-pixel mean).
    "depth": (DEPTH := dict(model="resnet20", stem="cifar", conv_bias=False, weight_init="he", image_size=32,
                            mean=PER_DATA_SET, std=PER_DATA_SET, augment=True, epochs=DEPTH_EPOCHS, momentum=0.9,
                            weight_decay=1e-4, schedule="multistep", precision="auto", deterministic=False)),
    "depth-long": {**DEPTH, "epochs": DEPTH_LONG_EPOCHS},
    "depth-he": {**DEPTH, "epochs": HE_EPOCHS},
    # The CIFAR-native setup the field uses: cheap (32 px), augmented, momentum + wd, cosine.
    "cifar": dict(stem="cifar", conv_bias=False, weight_init="he", image_size=32, mean=PER_DATA_SET, std=PER_DATA_SET,
                  augment=True, epochs=30, momentum=0.9, weight_decay=5e-4, nesterov=True,
                  schedule="cosine", warmup_epochs=1.0, precision="auto", deterministic=False),
    # A pipeline check for two CPU cores: half-width nets at 32 px, a data subset, two epochs. Not
    # evidence, but it learns (ResNet18 FULL above 25% test accuracy on CIFAR-10).
    "smoke": dict(width_mult=0.5, image_size=32, mean=PER_DATA_SET, std=PER_DATA_SET, train_images=SMOKE_TRAIN,
                  test_images=1000, eval_train_images=1000, epochs=2, batch_size=64, lr=0.05, momentum=0.9,
                  weight_decay=5e-4, schedule="cosine", precision="auto"),
}

# Former names still accepted on the command line and in stored runs: `seed` was the original
# protocol's name, easily read as a random seed (--protocol seed --seeds 42).
PROTOCOL_ALIASES = {"seed": "original"}
# A renamed protocol keeps the name its first runs were stored and hashed under, so that those runs
# keep their folders (results/seed/...) and hashes and a new run of the same settings finds them.
STORED_AS = {"original": "seed"}


def canonical_protocol(name: str) -> str:
    """The declared name of a protocol given by its name or a former one; a one-line error if unknown."""
    name = PROTOCOL_ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise ResdegError(f"unknown protocol {_shown(name)}; choose one of {', '.join(PROTOCOLS)}")
    return name


CHOICES = {
    "stem": ("imagenet", "cifar"),
    "schedule": ("constant", "cosine", "multistep"),
    "precision": ("auto", "bf16", "fp32"),
    "weight_init": WEIGHT_INITS,
    "dataset": DATASETS,
}
# More images than any data set holds (a count above the set's size means all of it); a bound keeps
# index arithmetic far from int64 overflow.
MAX_IMAGES = 1_000_000_000
# Seeds: 0 .. 2**32 - 1, numpy's range. The trainer derives generator seeds such as
# seed * 1_000_003 + epoch, which must stay within the 64 bits torch.manual_seed accepts.
SEED_MAX = 2**32 - 1
# (lower bound, upper bound, lower bound inclusive)
RANGES = {
    "width_mult": (0.0, 16.0, False), "image_size": (8, 1024, True), "train_images": (0, MAX_IMAGES, True),
    "test_images": (0, MAX_IMAGES, True), "eval_train_images": (0, MAX_IMAGES, True), "epochs": (1, 10_000, True),
    "batch_size": (1, 65_536, True), "lr": (0.0, 100.0, False), "momentum": (0.0, 0.9999, True),
    "weight_decay": (0.0, 1.0, True), "warmup_epochs": (0.0, 10_000.0, True),
}
# Chosen with their own flags, so a typo cannot hide in --set.
FLAG_FIELDS = ("protocol", "model", "variant", "seed", "dataset")


def _shown(text, limit: int = 60) -> str:
    """repr() of a user's value, cut short: an error message stays one readable line."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit - 5] + "...'"


def parse_value(key: str, text: str):
    """Turn the text of `--set key=text` into the field's type, or raise a one-line error.
    Floats must be finite (nan, inf and overflowing literals such as 1e999 are refused)."""
    default = _DEFAULTS.get(key, _MISSING)
    if key in RENAMED:
        raise ResdegError(f"--set: {key} is now called {RENAMED[key]}")
    if default is _MISSING:
        raise ResdegError(f"--set: unknown key {_shown(key)}")
    try:
        if isinstance(default, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)  # a literal past Python's 4300-digit limit is a ValueError too
        if isinstance(default, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if isinstance(default, tuple):
            values = tuple(float(t) for t in text.split(","))
            if len(values) != len(default) or not all(math.isfinite(v) for v in values):
                raise ValueError
            return values
        return text.strip()
    except ValueError:
        kind = f"{len(default)} comma-separated numbers, all finite" if isinstance(default, tuple) \
            else {"float": "a finite number"}.get(type(default).__name__, type(default).__name__)
        raise ResdegError(f"--set {key}={_shown(text)}: expected {kind}") from None


_MISSING = object()
_DEFAULTS = {f.name: f.default for f in fields(Config)}


def _type_problem(key: str, v) -> str | None:
    """Why a field's value has the wrong type (or a non-finite number), or None."""
    default = _DEFAULTS[key]
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    if isinstance(default, bool):
        ok, kind = isinstance(v, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(v, int) and not isinstance(v, bool), "an integer"
    elif isinstance(default, float):  # an int is accepted as stored (never converted: the hash would change)
        ok, kind = number(v) and math.isfinite(v), "a finite number"
    elif isinstance(default, tuple):
        ok = isinstance(v, tuple) and len(v) == len(default) and all(number(x) and math.isfinite(x) for x in v)
        kind = f"{len(default)} finite numbers"
    else:
        ok, kind = isinstance(v, str), "a string"
    return None if ok else f"{key}={_shown(v)} must be {kind}"


def validate(cfg: Config) -> Config:
    """Check every field's type, choice and range; return the config with canonical names."""
    for f in fields(cfg):
        problem = _type_problem(f.name, getattr(cfg, f.name))
        if problem:
            raise ResdegError(problem)
    protocol = canonical_protocol(cfg.protocol)  # a run stored under a former name reads as the new one
    model = cfg.model.lower()
    if model not in ARCHS:
        raise ResdegError(f"unknown model {cfg.model!r}; choose one of {', '.join(ARCHS)}")
    cfg = dataclasses.replace(cfg, protocol=protocol, model=model, variant=canonical_variant(cfg.variant))
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ResdegError(f"{key}={_shown(getattr(cfg, key))} is not one of {', '.join(allowed)}")
    for key, (lo, hi, inclusive) in RANGES.items():
        v = getattr(cfg, key)
        if (v < lo if inclusive else v <= lo) or (hi is not None and v > hi):
            bound = f"{'>=' if inclusive else '>'} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ResdegError(f"{key}={_shown(v)} is out of range: must be {bound}")
    if any(s <= 0 for s in cfg.std):
        raise ResdegError(f"std={cfg.std} must be positive")
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ResdegError(f"seed={_shown(cfg.seed)} is out of range: must be between 0 and {SEED_MAX} (2**32 - 1)")
    return cfg


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): only then is autocast faster."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device_type: str) -> str:
    """"auto" -> bf16 on CUDA and on CPUs with native bf16, else fp32. The resolved value is what
    the config (and so its hash) holds: a bf16 run and an fp32 run never share a cache entry."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16()) else "fp32"


def make_config(protocol: str = "original", overrides: dict | None = None, device_type: str = "cpu",
                **flags) -> Config:
    """The protocol's config with flag values (model, variant, ...) and `--set` overrides, its
    precision resolved for `device_type` (cpu or cuda)."""
    protocol = canonical_protocol(protocol)
    values = {**PROTOCOLS[protocol], "protocol": protocol}
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = declared(protocol, values.get("dataset", Config.dataset))
    values.update({k: settings[k] for k, v in values.items() if v == PER_DATA_SET})
    valid = {f.name for f in fields(Config)}
    for key, value in (overrides or {}).items():
        if key not in valid or key in FLAG_FIELDS:
            hint = (f"use --{key}" if key in FLAG_FIELDS
                    else f"valid keys: {', '.join(sorted(valid - set(FLAG_FIELDS)))}")
            raise ResdegError(f"--set: unknown key {_shown(key)} ({hint})")
        values[key] = parse_value(key, value) if isinstance(value, str) else value
    values["precision"] = resolve_precision(values.get("precision", Config.precision), device_type)
    return validate(Config(**values))


def declared(protocol: str, dataset: str) -> dict:
    """The settings `protocol` declares for runs on `dataset`: PER_DATA_SET resolved to the data
    set's statistics."""
    facts = DATA_SETS.get(dataset, IMAGE_FOLDER)
    resolved = {"mean": facts.mean, "std": facts.std}
    return {k: resolved[k] if v == PER_DATA_SET else v for k, v in PROTOCOLS[canonical_protocol(protocol)].items()}


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`("lr=0.05", "epochs=3")` -> `{"lr": "0.05", "epochs": "3"}`; types are checked later.
    A key given twice takes its last value, as with any repeated option."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ResdegError(f"--set {_shown(item)}: expected key=value")
        out[key.strip()] = value
    return out


def config_from_dict(d: dict) -> Config:
    """Rebuild a config stored in run.json (tuples come back from JSON lists); a field stored under
    its former name (RENAMED) reads as the field."""
    d = {RENAMED.get(k, k): v for k, v in d.items()}
    valid = {f.name: f for f in fields(Config)}
    unknown = set(d) - set(valid)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return validate(Config(**values))
