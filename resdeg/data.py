"""Data: decode each data set once into uint8 tensors (cached on disk, fingerprinted), keep them
on the training device, and resize / normalise / augment there, batch by batch.

Why: the original resized every image to 224 px on the CPU in a DataLoader; on a GPU that
host-side work, not the network, sets the pace. Here a batch is an index into a resident
uint8 tensor and all per-pixel work is a few device kernels.
"""
from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ResdegError
from .atomic import atomic_torch_save

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DATA_CACHE_VERSION = 1


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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint,
                "classes": self.classes, "n_train": len(self.train_y), "n_test": len(self.test_y),
                "image_shape": list(self.train_x.shape[1:])}


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
        return _cached(cache_dir, f"{name}", lambda: _torchvision_cifar(name, data_dir, cache_dir))
    if name == "imagefolder":
        if data_dir is None:
            raise ResdegError("--dataset imagefolder needs --data-dir pointing at a folder with train/ and test/")
        root = Path(data_dir).expanduser().resolve()
        key = "imagefolder-" + _listing_hash(root)
        return _cached(cache_dir, key, lambda: _imagefolder(root))
    raise ResdegError(f"unknown dataset {name!r}; choose one of cifar10, cifar100, imagefolder, synthetic")


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
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root = Path(data_dir).expanduser() if data_dir else cache_dir / "download"
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as e:
        raise ResdegError(
            f"could not load {name} from {root} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"without network, point --data-dir at a folder holding the official python files, "
            f"or use --dataset imagefolder --data-dir ROOT (a folder with train/<class>/ and test/<class>/)")

    def arrays(split):
        x = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(split.targets, dtype=torch.int64)

    (trx, try_), (tex, tey) = arrays(train), arrays(test)
    classes = list(train.classes)
    return Dataset(name, classes, trx, try_, tex, tey, fingerprint(classes, trx, try_, tex, tey),
                   f"torchvision {name} ({root})")


def _class_files(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not split_dir.is_dir():
        raise ResdegError(f"{split_dir} is missing: an imagefolder root needs train/<class>/ and test/<class>/")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((split_dir / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise ResdegError(f"{split_dir} holds {len(classes)} class folders and {len(files)} images; "
                          f"need at least 2 class folders with .jpg/.png images")
    return classes, files


def _listing_hash(root: Path) -> str:
    """Cache key of an image folder: its path and every file's name, size and mtime."""
    h = hashlib.sha256(str(root).encode())
    for split in ("train", "test"):
        _, files = _class_files(root / split)
        for f, label in files:
            st = f.stat()
            h.update(f"{f.relative_to(root)}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _decode(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """One image file -> uint8 (3, H, W), resized (antialiased) to `size` if it differs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as e:
        raise ResdegError(f"cannot decode {path}: {type(e).__name__}") from None


def _imagefolder(root: Path) -> Dataset:
    if not root.is_dir():
        raise ResdegError(f"--data-dir {root} is not a folder")
    classes, train_files = _class_files(root / "train")
    test_classes, test_files = _class_files(root / "test")
    if test_classes != classes:
        raise ResdegError(f"{root}: train/ and test/ have different class folders")
    size = tuple(_decode(train_files[0][0], None).shape[1:])  # every image resized to the first's size

    def decode_all(files):
        from tqdm import tqdm
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            imgs = list(tqdm(pool.map(lambda f: _decode(f[0], size), files), total=len(files),
                             desc=f"decoding {root.name}", unit="img", leave=False, disable=None))
        return torch.stack(imgs), torch.tensor([label for _, label in files], dtype=torch.int64)

    (trx, try_), (tex, tey) = decode_all(train_files), decode_all(test_files)
    return Dataset("imagefolder", classes, trx, try_, tex, tey, fingerprint(classes, trx, try_, tex, tey),
                   f"image folder {root}")


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
        base = torch.stack([templates[c].roll(tuple(s.tolist()), dims=(1, 2)) for c, s in zip(y, shift)])
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
