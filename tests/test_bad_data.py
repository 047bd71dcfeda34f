"""Bad data (issue 16): every broken image folder or CIFAR copy ends in a one-line error naming the
file and what to do; data usable after a conversion is used, with the warning stored in run.json.
All data here is generated: a few 8x8 images per class, and fake CIFAR pickles."""
import hashlib
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, assert_one_line_error, cli
from PIL import Image

from resdeg import data as rdata
from resdeg.data import DATA_CACHE_VERSION, fingerprint, load_dataset
from resdeg.errors import ResdegError

FAST = ["--protocol", "smoke", "--device", "cpu", "--quiet", *TINY, "--set", "epochs=1",
        "--set", "width_mult=0.125", "--set", "image_size=32"]


def noise(seed: int, size=(8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def make_folder(root: Path, classes=("a", "b"), n: int = 3, size=(8, 8), seed: int = 0) -> Path:
    """root/{train,test}/<class>/<i>.png: RGB noise, lossless, so pixels can be checked exactly."""
    for s, split in enumerate(("train", "test")):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(noise(seed * 1000 + s * 100 + c * 10 + i, size)).save(root / split / name / f"{i}.png")
    return root


def run_on(root: Path, results: Path, *extra):
    return cli("run", *FAST, "--dataset", "imagefolder", "--data-dir", root, "--results", results, *extra,
               expect=None)


def assert_refused(root: Path, tmp_path: Path, *fragments):
    """Through the CLI: one line, non-zero exit, no traceback, no run written."""
    r = run_on(root, tmp_path / "r")
    assert_one_line_error(r, *fragments)
    assert not list((tmp_path / "r").rglob("run.json"))
    return r


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # every test decodes its own folder: a per-test cache keeps them independent
    monkeypatch.setenv("RESDEG_CACHE", str(tmp_path / "cache"))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny nets train fastest on one thread


def png16(path: Path, rgb: np.ndarray) -> None:
    """A 16-bit RGB PNG (PIL cannot write one), by hand."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# -- images that cannot be used: errors ------------------------------------------------------

def test_truncated_jpeg(tmp_path):
    root = make_folder(tmp_path / "imgs")
    Image.fromarray(noise(7, (32, 32))).save(root / "train" / "a" / "9.jpg", quality=95)
    blob = (root / "train" / "a" / "9.jpg").read_bytes()
    (root / "train" / "a" / "9.jpg").write_bytes(blob[: len(blob) // 2])
    r = assert_refused(root, tmp_path, "cannot decode", "9.jpg", "remove or replace")
    assert "truncated" in r.stderr.lower()


def test_text_file_named_jpg(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "test" / "b" / "notes.jpg").write_text("these are my notes, not an image\n")
    assert_refused(root, tmp_path, "cannot decode", "notes.jpg", "remove or replace")


def test_empty_class_folder_names_the_folder(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("a", "b", "c"))
    for f in (root / "train" / "b").iterdir():
        f.unlink()
    (root / "train" / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden files are not images either
    assert_refused(root, tmp_path, f"class folder {root / 'train' / 'b'} holds no images", "add its images")


@pytest.mark.parametrize("missing_in", ["test", "train"])
def test_class_only_in_one_split_names_the_class(tmp_path, missing_in):
    root = make_folder(tmp_path / "imgs", classes=("a", "b", "zebra"))
    for f in (root / missing_in / "zebra").iterdir():
        f.unlink()
    (root / missing_in / "zebra").rmdir()
    other = "train" if missing_in == "test" else "test"
    assert_refused(root, tmp_path, "class 'zebra'", f"in {root / other} but not in {root / missing_in}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["class_folder", "image", "root", "split"])
def test_symlink_loop_is_an_error_not_a_hang(tmp_path, where):
    root = make_folder(tmp_path / "imgs")
    data_dir = root
    if where == "class_folder":
        os.symlink("c", root / "train" / "c")  # train/c -> train/c
        bad = root / "train" / "c"
    elif where == "image":
        os.symlink("loop.png", root / "train" / "a" / "loop.png")
        bad = root / "train" / "a" / "loop.png"
    elif where == "split":
        (root / "test").rename(tmp_path / "test-moved")
        os.symlink("test", root / "test")
        bad = root / "test"
    else:
        os.symlink("loop", tmp_path / "loop")
        data_dir = bad = tmp_path / "loop"
    r = assert_refused(data_dir, tmp_path, "symlink loop", str(bad))
    assert "remove the link" in r.stderr


def test_cycle_below_a_class_folder_is_not_followed(tmp_path):
    # train/a/up -> .. : a reader that recursed would never end; this one reads one level
    root = make_folder(tmp_path / "imgs")
    os.symlink("..", root / "train" / "a" / "up")
    ds = load_dataset("imagefolder", root)
    assert ds.classes == ["a", "b"] and len(ds.train_y) == 6
    assert any("ignored 1 entry" in w and "train/a/up" in w for w in ds.warnings), ds.warnings


# -- images that can be used: converted, resized or ignored, with a warning -------------------

def test_modes_are_converted_with_one_warning_each(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs")
    a = root / "train" / "a"
    Image.new("L", (8, 8), 77).save(a / "gray.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(a / "rgba.png")
    Image.new("RGB", (8, 8), (200, 100, 50)).convert("P", palette=Image.Palette.ADAPTIVE).save(a / "palette.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(a / "gray16.png")  # mode I;16
    png16(a / "rgb16.png", np.full((8, 8, 3), 40000, np.uint16))
    ds = load_dataset("imagefolder", root)
    assert ds.train_x.dtype == torch.uint8 and tuple(ds.train_x.shape) == (11, 3, 8, 8)
    names = sorted(p.name for p in a.iterdir())  # the class's files in the order they are read
    pixel = {n: ds.train_x[i, :, 0, 0].tolist() for i, n in enumerate(names)}
    assert pixel["gray.png"] == [77, 77, 77]
    assert pixel["rgba.png"] == [10, 20, 30]  # alpha dropped, colour kept
    assert pixel["palette.png"] == [200, 100, 50]
    assert pixel["gray16.png"] == [156] * 3 and pixel["rgb16.png"] == [156] * 3  # 40000 >> 8: not clipped to 255
    text = "\n".join(ds.warnings)
    for fragment in ("are grayscale, converted to 8-bit RGB (e.g. train/a/gray.png)", "RGBA (alpha dropped)",
                     "are palette", "16-bit grayscale (mode I;16)", "16-bit RGB"):
        assert fragment in text, ds.warnings
    assert len(ds.warnings) == 5
    load_dataset("imagefolder", root)  # from the cache: same warnings, not printed again
    err = capsys.readouterr().err
    assert err.count("resdeg: warning:") == 5 and err.count("16-bit RGB") == 1


def test_sizes_differ_most_common_size_wins(tmp_path):
    root = make_folder(tmp_path / "imgs")
    Image.fromarray(noise(99, (10, 12))).save(root / "train" / "a" / "0.png")  # the first image read is the odd one
    ds = load_dataset("imagefolder", root)
    assert tuple(ds.train_x.shape[2:]) == (8, 8) and tuple(ds.test_x.shape[2:]) == (8, 8)
    (w,) = [w for w in ds.warnings if "differ in size" in w]
    assert "1 of 12 resized to the most common size 8x8" in w and "train/a/0.png is 10x12" in w


def test_non_images_and_hidden_files_are_ignored(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "a" / "notes.txt").write_text("a note")
    (root / "train" / "README.md").write_text("about this data")
    (root / "train" / "a" / "pic.bmp").write_bytes(b"BM")
    (root / "train" / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "b" / "._0.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS twin: would not decode
    (root / "train" / ".ipynb_checkpoints").mkdir()  # would become a class
    ds = load_dataset("imagefolder", root)
    assert ds.classes == ["a", "b"] and len(ds.train_y) == 6
    assert ds.warnings == ["ignored 3 entries that are not a .jpg/.jpeg/.png image in a class folder "
                           "(e.g. train/README.md)"]


def test_uniform_rgb_folder_decodes_to_its_exact_pixels(tmp_path):
    # the committed results were trained on a uniform RGB folder: its fingerprint must not move
    root = make_folder(tmp_path / "imgs", classes=("a", "b", "c"))
    ds = load_dataset("imagefolder", root)
    assert ds.warnings == []

    def split(s):
        x = [noise(s * 100 + c * 10 + i) for c in range(3) for i in range(3)]
        return (torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).contiguous(),
                torch.tensor([c for c in range(3) for _ in range(3)]))
    assert ds.fingerprint == fingerprint(["a", "b", "c"], *split(0), *split(1))


def test_warnings_are_stored_in_run_json_and_printed_once(tmp_path):
    root = make_folder(tmp_path / "imgs", n=4)
    Image.new("L", (8, 8), 120).save(root / "train" / "b" / "gray.png")
    (root / "test" / "a" / "notes.txt").write_text("x")
    r = run_on(root, tmp_path / "r")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("resdeg: warning: 1 of 17 images are grayscale") == 1
    assert r.stderr.count("resdeg: warning: ignored 1 entry") == 1
    (run_json,) = (tmp_path / "r").rglob("run.json")
    stored = json.loads(run_json.read_text())["data"]["warnings"]
    assert stored == ["1 of 17 images are grayscale, converted to 8-bit RGB (e.g. train/b/gray.png)",
                      "ignored 1 entry that is not a .jpg/.jpeg/.png image in a class folder (e.g. test/a/notes.txt)"]
    cached = list((tmp_path / "cache" / "data").glob(f"imagefolder-*.v{DATA_CACHE_VERSION}.pt"))
    assert len(cached) == 1 and DATA_CACHE_VERSION >= 2


def test_cache_keeps_working_and_notices_new_files(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    first = load_dataset("imagefolder", root)
    monkeypatch.setattr(rdata, "_imagefolder", lambda r: pytest.fail("decoded again, cache not used"))
    again = load_dataset("imagefolder", root)
    assert again.fingerprint == first.fingerprint and torch.equal(again.train_x, first.train_x)
    (root / "train" / "a" / "notes.txt").write_text("x")  # changes the listing: decoded again
    with pytest.raises(pytest.fail.Exception):
        load_dataset("imagefolder", root)


def test_v1_cache_files_are_not_read(tmp_path):
    # the cached layout changed (warnings): a v1 file must never be loaded as a v2 data set
    root = make_folder(tmp_path / "imgs")
    key = "imagefolder-" + rdata._listing_hash(root.resolve())
    (tmp_path / "cache" / "data").mkdir(parents=True)
    (tmp_path / "cache" / "data" / f"{key}.v1.pt").write_bytes(b"an old cache")
    assert load_dataset("imagefolder", root).warnings == []


# -- CIFAR python files: partial, truncated, another version ------------------------------------

def _pickle(obj, path: Path) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A complete CIFAR-10 python folder of 4 images per batch, which torchvision accepts because
    its checksums are patched to these files' (no network, no real CIFAR)."""
    import torchvision

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = lambda: {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 1]}  # noqa: E731
    train = [[f"data_batch_{i}", _pickle(batch(), folder / f"data_batch_{i}")] for i in range(1, 6)]
    test = [["test_batch", _pickle(batch(), folder / "test_batch")]]
    meta = {"filename": "batches.meta", "key": "label_names",
            "md5": _pickle({"label_names": ["x", "y", "z"]}, folder / "batches.meta")}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", train)
    monkeypatch.setattr(cls, "test_list", test)
    monkeypatch.setattr(cls, "meta", meta)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive",
                        lambda *a, **k: pytest.fail("tried to download"))
    return tmp_path / "cifar"


def test_complete_cifar_folder_loads(fake_cifar):
    ds = load_dataset("cifar10", fake_cifar)
    assert tuple(ds.train_x.shape) == (20, 3, 32, 32) and ds.classes == ["x", "y", "z"] and ds.warnings == []


def _cifar_error(root) -> str:
    with pytest.raises(ResdegError) as e:
        load_dataset("cifar10", root)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_partial_cifar_names_the_missing_file(fake_cifar, tmp_path):
    (fake_cifar / "cifar-10-batches-py" / "data_batch_3").unlink()
    msg = _cifar_error(fake_cifar)
    assert "data_batch_3 is missing" in msg and "partial copy" in msg and "cifar-10-python.tar.gz" in msg
    # and through the CLI: one line, no traceback
    r = cli("run", *FAST, "--dataset", "cifar10", "--data-dir", fake_cifar, "--results", tmp_path / "r",
            expect=None)
    assert_one_line_error(r, "data_batch_3 is missing")


def test_truncated_cifar_pickle(fake_cifar):
    path = fake_cifar / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    msg = _cifar_error(fake_cifar)
    assert f"{path} is truncated (5000 bytes" in msg and "copy the whole cifar-10-batches-py/ folder" in msg


def test_cifar_pickle_from_a_newer_python(fake_cifar):
    path = fake_cifar / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x09" + path.read_bytes()[2:])
    assert "pickled with protocol 9" in _cifar_error(fake_cifar)


def test_cifar_edited_file_is_refused(fake_cifar):
    path = fake_cifar / "cifar-10-batches-py" / "batches.meta"
    _pickle({"label_names": ["x", "y", "w"]}, path)
    assert "batches.meta differs from the official file" in _cifar_error(fake_cifar)


def test_cifar_binary_version(tmp_path):
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(b"\0" * 3073)
    msg = _cifar_error(tmp_path)
    assert "is the binary version of CIFAR" in msg and "python version" in msg


def test_cifar_data_dir_one_level_too_deep(fake_cifar):
    assert "point --data-dir at its parent folder" in _cifar_error(fake_cifar / "cifar-10-batches-py")


# -- data shaped against the batch size ------------------------------------------------------------

def test_a_last_batch_of_one_is_merged_and_a_set_smaller_than_a_batch_trains(tmp_path):
    """65 images at batch 64: the last batch of one image (which BatchNorm cannot normalise in
    training: "Expected more than 1 value per channel") is merged into the one before: one step of
    65. 40 images at batch 64: one step of 40. One image with BatchNorm: one line, before training."""
    from conftest import status_json

    from resdeg.store import read_run

    results = tmp_path / "r"
    for n in (65, 40):
        cli("run", *FAST, "--dataset", "synthetic", "--set", f"train_images={n}", "--results", results)
    runs = {r["path"]: read_run(r["path"]) for r in status_json(results)}
    assert sorted((run.data["train_used"], run.summary.steps_per_epoch, run.status) for run in runs.values()) == \
        [(40, 1, "done"), (65, 1, "done")]
    one = tmp_path / "one"
    r = cli("run", *FAST, "--dataset", "synthetic", "--set", "train_images=1", "--results", one, expect=None)
    assert_one_line_error(r, "the training set holds 1 image and BatchNorm needs at least 2 per batch")
    assert not list(one.glob("*/*/*"))  # refused before a run folder was made
    cli("run", *FAST, "--dataset", "synthetic", "--set", "train_images=1", "--variant", "Nbn", "--results", one)
