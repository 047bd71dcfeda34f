"""Data: decode each data set once into uint8 tensors (cached on disk, fingerprinted), keep them
on the training device, and resize / normalise / augment there, batch by batch.

Why: the original resized every image to 224 px on the CPU in a DataLoader; on a GPU that
host-side work, not the network, sets the pace. Here a batch is an index into a resident
uint8 tensor and all per-pixel work is a few device kernels.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import sys
import warnings as pywarnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import atomic_torch_save
from .errors import ResdegError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# 2: Dataset.warnings (what was converted, resized or ignored to use the data), in the cache and in
# run.json's data section; image folders resized to their most common size, not their first image's.
DATA_CACHE_VERSION = 2


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train_x: torch.Tensor  # uint8 (N, 3, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    fingerprint: str  # sha256 of the decoded pixels, labels and class names
    source: str  # where it came from, for the report
    # what had to be converted, resized or ignored to use the data, one line each (stored in
    # run.json through describe(), printed once per process by load_dataset)
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint,
                "classes": self.classes, "n_train": len(self.train_y), "n_test": len(self.test_y),
                "image_shape": list(self.train_x.shape[1:]), "warnings": list(self.warnings)}


def default_cache_dir() -> Path:
    return Path(os.environ.get("RESDEG_CACHE", Path.home() / ".cache" / "resdeg"))


def fingerprint(classes, train_x, train_y, test_x, test_y) -> str:
    h = hashlib.sha256("\n".join(classes).encode())
    for t in (train_x, train_y, test_x, test_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_dataset(name: str, data_dir: str | Path | None = None, cache_dir: Path | None = None,
                 synthetic_size: tuple[int, int] = (2048, 512)) -> Dataset:
    """Decoded, fingerprinted data set; decoded once, then read from the cache."""
    cache_dir = Path(cache_dir or default_cache_dir())
    if name == "synthetic":
        return synthetic_dataset(*synthetic_size)
    if name in ("cifar10", "cifar100"):
        return _announce(_cached(cache_dir, f"{name}", lambda: _torchvision_cifar(name, data_dir, cache_dir)))
    if name == "imagefolder":
        if data_dir is None:
            raise ResdegError("--dataset imagefolder needs --data-dir pointing at a folder with train/ and test/")
        root = _resolved(Path(data_dir).expanduser(), "--data-dir")
        key = "imagefolder-" + _listing_hash(root)
        return _announce(_cached(cache_dir, key, lambda: _imagefolder(root)))
    raise ResdegError(f"unknown dataset {name!r}; choose one of cifar10, cifar100, imagefolder, synthetic")


_ANNOUNCED: set[tuple[str, str]] = set()


def _announce(ds: Dataset) -> Dataset:
    """Print each of a data set's warnings once per process (a command loads a data set for
    training and again for probing; one line each is enough). They are stored in run.json too."""
    for w in ds.warnings:
        if (ds.fingerprint, w) not in _ANNOUNCED:
            _ANNOUNCED.add((ds.fingerprint, w))
            print(f"resdeg: warning: {w}", file=sys.stderr, flush=True)
    return ds


def check_recorded_data(planned, data_dir=None, datasets: dict | None = None, load=None) -> dict:
    """Refuse to reuse a run trained on other data than the data now at hand.

    The config hash names a run, and it does not cover the data (a deliberate choice: the same
    command on the same data must find its run, and the committed results must keep loading).
    So before a cached (done, diverged) or unfinished (partial) run is reported as cached or
    resumed, the fingerprint its run.json recorded is compared with the data set loaded for it
    now; a mismatch is a one-line error naming both. Runs to be (re)done from scratch (new,
    --force) and corrupt ones (reported elsewhere) are not checked; neither is a run whose
    run.json recorded no fingerprint. `datasets` (name -> Dataset) is filled and returned, so a
    caller can train on the very data that was checked. Never called by --dry-run: it loads data.
    """
    datasets = {} if datasets is None else datasets
    load = load or (lambda name: load_dataset(name, data_dir))
    for p in planned:
        if p.state not in ("done", "diverged", "partial"):
            continue
        try:
            recorded = json.loads((Path(p.folder) / "run.json").read_text())["data"]["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no run.json or no fingerprint in it: nothing to compare (corrupt runs are reported)
        if not isinstance(recorded, str):
            continue
        if p.cfg.dataset not in datasets:
            datasets[p.cfg.dataset] = load(p.cfg.dataset)
        data = datasets[p.cfg.dataset]
        if data.fingerprint != recorded:
            raise ResdegError(
                f"{p.folder} was trained on other data (fingerprint {recorded[:12]}) than the {p.cfg.dataset} "
                f"data now loaded from {data.source} (fingerprint {data.fingerprint[:12]}); point --data-dir "
                f"at the data it was trained on, or use another --results folder for this data")
    return datasets


def _cached(cache_dir: Path, key: str, build) -> Dataset:
    path = cache_dir / "data" / f"{key}.v{DATA_CACHE_VERSION}.pt"
    if path.exists():
        try:
            return Dataset(**torch.load(path, weights_only=True))
        except Exception:  # a damaged cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    ds = build()
    try:
        atomic_torch_save(ds.__dict__, path)
    except OSError:
        pass  # an unwritable cache only costs a re-decode next time
    return ds


def _torchvision_cifar(name: str, data_dir, cache_dir: Path) -> Dataset:
    import torchvision  # slow to import, and only a CIFAR not yet cached needs it: off run-all's import path

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = Path(data_dir).expanduser() if data_dir else cache_dir / "download"
    if data_dir:
        # A folder the user points at is read, never repaired: torchvision would download the
        # archive over a partial or damaged copy; name the bad file instead.
        _check_cifar_folder(cls, name, root)
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as e:
        raise ResdegError(
            f"could not load {name} from {root} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}); "
            f"without network, point --data-dir at a folder holding the official python files, "
            f"or use --dataset imagefolder --data-dir ROOT (a folder with train/<class>/ and test/<class>/)") from None

    def arrays(split):
        x = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(split.targets, dtype=torch.int64)

    (trx, try_), (tex, tey) = arrays(train), arrays(test)
    classes = list(train.classes)
    return Dataset(name, classes, trx, try_, tex, tey, fingerprint(classes, trx, try_, tex, tey),
                   f"torchvision {name} ({root})")


# The other layouts CIFAR is published in, which resdeg does not read.
_CIFAR_OTHER_VERSIONS = {"cifar-10-batches-bin": "binary", "cifar-10-batches-mat": "MATLAB",
                         "cifar-100-binary": "binary", "cifar-100-matlab": "MATLAB"}


def _check_cifar_folder(cls, name: str, root: Path) -> None:
    """A one-line error naming the first missing, truncated or foreign file of the CIFAR python
    version under root; nothing when it is complete (or absent: then torchvision downloads it)."""
    folder = root / cls.base_folder
    fix = (f"copy the whole {cls.base_folder}/ folder from the official {cls.filename} "
           f"(or leave out --data-dir to download it)")
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    md5 = {**dict(cls.train_list + cls.test_list), cls.meta["filename"]: cls.meta["md5"]}
    if not folder.exists():
        for other, kind in _CIFAR_OTHER_VERSIONS.items():
            if (root / other).exists():
                raise ResdegError(f"{root / other} is the {kind} version of CIFAR; resdeg reads the python "
                                  f"version: {fix}")
        if any((root / f).exists() for f in files):
            raise ResdegError(f"{root} holds the {name} files themselves; point --data-dir at its parent folder "
                              f"(the one holding {cls.base_folder}/)")
        return
    for f in files:
        path = folder / f
        if not path.is_file():
            raise ResdegError(f"{path} is missing: {root} holds a partial copy of {name}; {fix}")
        problem = _pickle_problem(path) if not _md5_is(path, md5[f]) else None
        if problem:
            raise ResdegError(f"{path} {problem}; {fix}")


def _md5_is(path: Path, expected: str) -> bool:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == expected


def _pickle_problem(path: Path) -> str:
    """Why a CIFAR python file is not the official one, judged from its bytes without unpickling
    it (a foreign pickle can run code)."""
    data = path.read_bytes()
    if not data:
        return "is empty"
    if data[:1] == b"\x80" and len(data) > 1 and data[1] > pickle.HIGHEST_PROTOCOL:
        return f"is pickled with protocol {data[1]}, newer than this Python reads (another version of the file)"
    if data[:1] not in b"\x80(}]":
        return "is not a python pickle (the binary or MATLAB version, or a failed download?)"
    if not data.rstrip(b"\r\n").endswith(b"."):
        return f"is truncated ({len(data)} bytes, no end-of-pickle mark)"
    return "differs from the official file (checksum mismatch: another version, or edited)"


def _resolved(path: Path, what: str) -> Path:
    """path with its symlinks resolved; a one-line error for a symlink loop or a dangling link."""
    try:
        return path.resolve(strict=path.is_symlink())
    except (OSError, RuntimeError) as e:  # Python < 3.13 reports a loop as RuntimeError
        raise ResdegError(f"{what} {path} is a symlink loop or points at nothing ({type(e).__name__}); "
                          f"remove the link or point it at a real folder") from None


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or (str(e).splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:100]}" if text else type(e).__name__


# What an image folder's reader takes, and why:
# - classes: the folders directly in train/ (and test/), symlinks followed; both splits must name
#   the same classes and every class folder must hold at least one image (an empty class would
#   train silently as a class the net can never see);
# - images: the files with IMAGE_SUFFIXES directly in a class folder (no recursion, so a symlink
#   loop below a class folder cannot hang the reader; a looping or dangling link where an image or
#   class folder is expected is an error);
# - hidden entries (names starting with "."): ignored silently. They are system metadata, never
#   data: .DS_Store, the AppleDouble "._x.jpg" twin macOS writes beside every image on a foreign
#   disk (it would fail to decode), .ipynb_checkpoints or .git (they would become classes);
# - anything else (notes.txt, a .bmp or .webp, a nested folder, a file directly in train/):
#   ignored with one warning that counts them and names one, not an error: a README beside the
#   images is common and harmless, but a format resdeg does not read may be data the user meant
#   to include, so it must not vanish unsaid.
def _class_files(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    """(class names, (image, label) pairs, ignored non-hidden entries) of train/ or test/."""
    if split_dir.is_symlink():
        _resolved(split_dir, "folder")
    if not split_dir.is_dir():
        raise ResdegError(f"{split_dir} is missing: an imagefolder root needs train/<class>/ and test/<class>/")
    classes, ignored = [], []
    for d in _listdir(split_dir):
        if d.is_symlink():
            _resolved(d, "class folder")
        (classes if d.is_dir() else ignored).append(d)
    classes = sorted(d.name for d in classes)
    if len(classes) < 2:
        raise ResdegError(f"{split_dir} holds {len(classes)} class folders; need at least 2 class folders "
                          f"with .jpg/.png images")
    files = []
    for i, c in enumerate(classes):
        n = len(files)
        for f in sorted(_listdir(split_dir / c)):
            if f.is_symlink():
                _resolved(f, "file")
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append((f, i))
            else:
                ignored.append(f)
        if len(files) == n:
            raise ResdegError(f"class folder {split_dir / c} holds no images (.jpg/.jpeg/.png); add its images "
                              f"or remove the folder")
    return classes, files, sorted(ignored)


def _listdir(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as e:
        raise ResdegError(f"cannot list {folder} ({_reason(e)})") from None


def _imagefolder_splits(root: Path):
    """train/ and test/ of an image folder: classes, files and ignored entries, checked."""
    if not root.is_dir():
        raise ResdegError(f"--data-dir {root} is not a folder: an imagefolder root needs train/<class>/ and "
                          f"test/<class>/")
    classes, train_files, ignored = _class_files(root / "train")
    test_classes, test_files, test_ignored = _class_files(root / "test")
    for a, b, names in (("train", "test", sorted(set(classes) - set(test_classes))),
                        ("test", "train", sorted(set(test_classes) - set(classes)))):
        if names:
            raise ResdegError(f"class {names[0]!r} is in {root / a} but not in {root / b}"
                              f"{f' (and {len(names) - 1} more)' if len(names) > 1 else ''}; every class needs "
                              f"images in both: add {b}/{names[0]}/ or remove {a}/{names[0]}/")
    return classes, train_files, test_files, ignored + test_ignored


def _listing_hash(root: Path) -> str:
    """Cache key of an image folder: its path, every image's name, size and mtime, and the names
    of the entries it ignores (so their warning stays true)."""
    h = hashlib.sha256(str(root).encode())
    _, train_files, test_files, ignored = _imagefolder_splits(root)
    for f, label in train_files + test_files:
        try:
            st = f.stat()
        except OSError as e:
            raise ResdegError(f"cannot read {f} ({_reason(e)}); remove or replace it") from None
        h.update(f"{f.relative_to(root)}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for f in ignored:
        h.update(f"ignored:{f.relative_to(root)}\n".encode())
    return h.hexdigest()[:16]


# PIL modes and what converting them to 8-bit RGB does (the note a warning carries)
_MODE_NOTES = {"L": "grayscale", "1": "black-and-white", "LA": "grayscale with alpha (alpha dropped)",
               "La": "grayscale with alpha (alpha dropped)", "P": "palette", "PA": "palette with alpha (alpha dropped)",
               "RGBA": "RGBA (alpha dropped)", "RGBa": "RGBA (alpha dropped)", "RGBX": "RGBX"}


def _decode(path: Path) -> tuple[torch.Tensor, str | None]:
    """One image file -> uint8 (3, H, W) at its own size, and a note on what was converted to get
    8-bit RGB (None for an 8-bit RGB image). 16-bit images keep their high byte."""
    from PIL import Image  # only image folders need PIL: off run-all's import path

    try:
        with Image.open(path) as im:
            mode = im.mode
            sixteen = any(";16" in str(getattr(t, "args", t[-1] if isinstance(t, tuple) else ""))
                          for t in (im.tile or []))
            im.load()
            if mode.startswith("I;16") or mode == "I":
                # 16-bit grayscale (I;16) or 32-bit integer: PIL's convert would clip at 255; keep the
                # high byte of the 16-bit range, as PIL itself does for 16-bit RGB
                a = np.asarray(im).astype(np.int64)
                im8 = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), "L")
                rgb, note = im8.convert("RGB"), f"16-bit grayscale (mode {mode})"
            elif mode == "RGB":
                rgb, note = im, ("16-bit RGB" if sixteen else None)
            else:
                rgb, note = im.convert("RGB"), _MODE_NOTES.get(mode, f"mode {mode}")
            return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1), note
    except Exception as e:  # any failure to decode one file (OSError, SyntaxError, DecompressionBombError, ...)
        raise ResdegError(f"cannot decode {path} ({_reason(e)}); remove or replace this file") from None


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> (3, *size), bilinear (PIL, antialiased when shrinking)."""
    from PIL import Image  # only image folders need PIL: off run-all's import path

    im = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _imagefolder(root: Path) -> Dataset:
    classes, train_files, test_files, ignored = _imagefolder_splits(root)
    files = train_files + test_files
    with pywarnings.catch_warnings():  # set here, around the pool: catch_warnings is not thread-safe
        # PIL's "palette images with transparency ..." note: the conversion is reported below
        pywarnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            decoded = list(tqdm(pool.map(lambda f: _decode(f[0]), files), total=len(files),
                                desc=f"decoding {root.name}", unit="img", leave=False, disable=None))
    warnings = []
    rel = lambda f: f.relative_to(root).as_posix()  # noqa: E731
    notes = Counter(note for _, note in decoded if note)
    for note, n in sorted(notes.items()):
        first = next(f for (f, _), (_, nt) in zip(files, decoded, strict=True) if nt == note)
        warnings.append(f"{n} of {len(files)} images are {note}, converted to 8-bit RGB (e.g. {rel(first)})")
    sizes = Counter(tuple(img.shape[1:]) for img, _ in decoded)
    size = sizes.most_common(1)[0][0]  # a tie goes to the size met first (files are in sorted order)
    if len(sizes) > 1:
        odd = next(i for i, (img, _) in enumerate(decoded) if tuple(img.shape[1:]) != size)
        h, w = decoded[odd][0].shape[1:]
        warnings.append(f"images differ in size: {len(files) - sizes[size]} of {len(files)} resized to the most "
                        f"common size {size[0]}x{size[1]} (e.g. {rel(files[odd][0])} is {h}x{w})")
    if ignored:
        one = len(ignored) == 1
        warnings.append(f"ignored {len(ignored)} {'entry that is' if one else 'entries that are'} not a "
                        f".jpg/.jpeg/.png image in a class folder (e.g. {rel(ignored[0])})")
    imgs = [img if tuple(img.shape[1:]) == size else _resize(img, size) for img, _ in decoded]
    del decoded
    n = len(train_files)
    trx, tex = torch.stack(imgs[:n]), torch.stack(imgs[n:])
    del imgs
    try_ = torch.tensor([label for _, label in train_files], dtype=torch.int64)
    tey = torch.tensor([label for _, label in test_files], dtype=torch.int64)
    return Dataset("imagefolder", classes, trx, try_, tex, tey, fingerprint(classes, trx, try_, tex, tey),
                   f"image folder {root}", warnings)


def synthetic_dataset(n_train: int = 2048, n_test: int = 512, num_classes: int = 10,
                      size: int = 32) -> Dataset:
    """Deterministic images whose class is learnable: each class is a smooth colour pattern,
    each image that pattern shifted, rescaled in contrast and covered in noise."""
    g = torch.Generator().manual_seed(1234)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)

    def split(n):
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        contrast = 0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
        shift = torch.randint(-3, 4, (n, 2), generator=g)
        base = torch.stack([templates[c].roll(tuple(s.tolist()), dims=(1, 2)) for c, s in zip(y, shift, strict=True)])
        x = 0.5 + contrast * (base - 0.5) + 0.15 * torch.randn(n, 3, size, size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    (trx, try_), (tex, tey) = split(n_train), split(n_test)
    classes = [f"class{i}" for i in range(num_classes)]
    return Dataset("synthetic", classes, trx, try_, tex, tey, fingerprint(classes, trx, try_, tex, tey),
                   f"synthetic ({n_train} train / {n_test} test, generated)")


def fixed_subset(labels: torch.Tensor, n: int, salt: int) -> torch.Tensor:
    """The same n indices for every run and seed of a data set, class-balanced.

    A folder copy lists its images class by class, so "the first n" would be one class. Each
    class is shuffled by a generator seeded with `salt` (never the run's seed), then classes
    take turns: every class gets n // C images and the first n % C classes one more (fewer
    only where a class runs out). Sorted, so the images keep the data set's order.
    """
    n_total = len(labels)
    if n <= 0 or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(salt)
    per_class = [idx[torch.randperm(len(idx), generator=g)]
                 for idx in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels))]
    # rank of each image inside its class's shuffled list; take the n of lowest rank, class order
    # breaking ties, so that every class contributes as evenly as its size allows
    order = torch.cat(per_class)
    rank = torch.cat([torch.arange(len(idx)) for idx in per_class])
    klass = torch.cat([torch.full((len(idx),), k) for k, idx in enumerate(per_class)])
    pick = torch.from_numpy(np.lexsort((klass.numpy(), rank.numpy()))[:n])
    return order[pick].sort().values


def test_subset(data: Dataset, cfg) -> torch.Tensor:
    """Indices of the protocol's test images: the ones every run is scored on."""
    return fixed_subset(data.test_y, cfg.test_images, salt=2)


PROBE_SALT = 4


def probe_subset(data: Dataset, cfg, n: int) -> torch.Tensor:
    """Indices of the n probe images: a class-balanced, seeded subset of the run's test images,
    the same for every run of a protocol on a data set."""
    te = test_subset(data, cfg)
    return te[fixed_subset(data.test_y[te], n, salt=PROBE_SALT)]


def preprocess(x: torch.Tensor, cfg, generator: torch.Generator | None = None,
               channels_last: bool = False) -> torch.Tensor:
    """uint8 (B,3,H,W) on the device -> normalised float input of cfg.image_size.

    With a generator (training, cfg.augment): random crop with 4 px zero padding and a
    horizontal flip, done at the stored resolution before any upscaling.
    """
    if generator is not None and cfg.augment:
        x = random_crop_flip(x, pad=4, generator=generator)
    # Normalise first, at the stored resolution: bilinear weights sum to one, so normalising
    # and resizing commute, and at 32 -> 224 px the affine map touches 49x fewer pixels.
    scale, shift = _normaliser(tuple(cfg.mean), tuple(cfg.std), x.device)
    x = torch.addcmul(shift, x.float(), scale)  # (x / 255 - mean) / std in one kernel
    if x.shape[-1] != cfg.image_size or x.shape[-2] != cfg.image_size:
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@functools.lru_cache(maxsize=32)
def _normaliser(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x_u8 * scale + shift = (x_u8 / 255 - mean) / std, made once per device:
    a tensor built from Python numbers per batch is a blocking host-to-device copy on a GPU."""
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    as_channels = lambda t: t.float().view(1, 3, 1, 1).to(device)  # noqa: E731
    return as_channels(1 / (255 * s)), as_channels(-m / s)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop (zero padding) and flip, as gathers: no per-image Python loop."""
    b, c, h, w = x.shape
    dev = x.device
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=generator.device).to(dev)
    flip = torch.rand(b, generator=generator, device=generator.device).to(dev) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=dev)  # (b, h)
    cols = offsets[:, 1:] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
