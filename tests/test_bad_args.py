"""Bad arguments (issue 16): any `--set` text gives a valid Config or a one-line ResdegError, never
another exception (property-based, hypothesis); run lists with duplicates, empty items, spaces,
huge or negative seeds; --results at a file, a read-only folder, or a folder of other things."""
import errno
import math
import os
from dataclasses import fields

import pytest
import torch
from conftest import assert_one_line_error, cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resdeg.config import FLAG_FIELDS, SEED_MAX, Config, make_config, parse_overrides, parse_value, validate
from resdeg.errors import ResdegError

KEYS = [f.name for f in fields(Config)]
SETTABLE = [k for k in KEYS if k not in FLAG_FIELDS]
DRY = ["--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--dry-run"]
FEW = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)

# values a user might type: numbers of every kind, words, the special floats, nothing at all
special = st.sampled_from(["", " ", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-400",
                           "0", "-0", "-1", "1_000", "0x10", "1.5", "１２", "true", "False", "yes", "0,0,0",
                           "nan,0,0", "1,2", "1,2,3,4", "9" * 30, "9" * 5000, "-" + "9" * 25, "cifar",
                           "imagenet", "cosine", "bf16", "auto", "\n", "\x00", "=", "==", "a=b"])
values = st.one_of(special, st.text(max_size=30), st.integers(-10**30, 10**30).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.lists(st.floats(-10, 10).map(str), min_size=1, max_size=4).map(",".join))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=15), st.sampled_from(KEYS).map(lambda k: f" {k.upper()} "))


def _check_valid(cfg: Config) -> None:
    """What a Config that got through must be: finite numbers, a seed torch can take."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float):
            assert math.isfinite(v), (f.name, v)
        if isinstance(v, tuple):
            assert all(math.isfinite(x) for x in v), (f.name, v)
    assert 0 <= cfg.seed <= SEED_MAX and cfg.image_size >= 8 and cfg.lr > 0 and min(cfg.std) > 0


@FEW
@given(st.lists(st.tuples(keys, st.sampled_from(["=", ""]), values).map("".join), max_size=4))
def test_any_set_text_gives_a_config_or_a_resdeg_error(items):
    try:
        cfg = make_config("smoke", parse_overrides(items))
    except ResdegError as e:
        assert "\n" not in str(e) or "\n" in "".join(items)  # the CLI folds it onto one line anyway
        assert len(str(e)) < 1000
        return
    _check_valid(cfg)


@FEW
@given(st.sampled_from(SETTABLE), values)
def test_parse_value_is_total(key, text):
    try:
        v = parse_value(key, text)
    except ResdegError:
        return
    if isinstance(v, float):
        assert math.isfinite(v)


@FEW
@given(st.text(max_size=10), st.text(max_size=10))
def test_parse_value_unknown_key_is_a_resdeg_error(key, text):
    if key in KEYS:
        return
    with pytest.raises(ResdegError):
        parse_value(key, text)


@FEW
@given(st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                                                        st.floats(), st.text(max_size=8),
                                                        st.tuples(st.floats(), st.floats(), st.floats()))))
def test_validate_never_raises_another_exception(values):
    # the Python API (and config_from_dict for stored run.json) goes through validate too
    try:
        cfg = validate(Config(**values))
    except ResdegError:
        return
    _check_valid(cfg)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(st.tuples(keys, values).map("=".join))
def test_cli_set_never_shows_a_traceback(tmp_path_factory, item):
    r = cli("run", *DRY, "--results", tmp_path_factory.mktemp("r"), "--set", item, expect=None)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in (0, 1, 2) and "Traceback" not in r.output
    if r.exit_code:
        assert_one_line_error(r, "resdeg: error:")


@pytest.mark.parametrize("item,fragment", [
    ("lr=nan", "--set lr='nan': expected a finite number"),
    ("lr=inf", "expected a finite number"),
    ("lr=1e999", "expected a finite number"),
    ("warmup_epochs=-inf", "expected a finite number"),
    ("mean=nan,0.5,0.5", "expected 3 comma-separated numbers, all finite"),
    ("std=0.5,inf,0.5", "expected 3 comma-separated numbers, all finite"),
    ("train_images=" + "9" * 40, "train_images=" + "9" * 40 + " is out of range"),
    ("epochs=" + "9" * 5000, "expected int"),
    ("epochs=", "--set epochs='': expected int"),
    ("lr=", "--set lr='': expected a finite number"),
    ("augment=", "expected bool"),
    ("stem=", "stem='' is not one of"),
    ("=5", "expected key=value"),
    ("seed=1", "use --seed"),
])
def test_bad_set_values(tmp_path, item, fragment):
    r = cli("run", *DRY, "--results", tmp_path, "--set", item, expect=None)
    assert_one_line_error(r, fragment)
    assert len(r.stderr) < 400  # a 5000-digit value is cut short in the message


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5"])
def test_time_limit_must_be_a_positive_finite_number(tmp_path, value):
    # nan compared false with every deadline: it meant "no limit" without a word
    r = cli("run-all", *DRY, "--results", tmp_path, f"--time-limit={value}", expect=None)
    assert_one_line_error(r, "--time-limit", "must be a positive, finite number of minutes")


# -- lists of runs -------------------------------------------------------------------------------

def _dry(tmp_path, *args):
    return cli("run-all", *DRY, "--results", tmp_path, "--models", "resnet18", *args, expect=None)


def test_duplicates_are_used_once_with_a_note(tmp_path):
    r = _dry(tmp_path, "--variants", "FULL, full,Nres", "--seeds", " 1,2 , 01,2")
    assert r.exit_code == 0, r.output
    runs = [line for line in r.stdout.splitlines() if line.startswith("new")]
    assert len(runs) == 4 and len(set(runs)) == 4  # {FULL, Nres} x {1, 2}
    assert "resdeg: note: --variants lists full more than once" in r.stderr
    assert "resdeg: note: --seeds lists 1, 2 more than once" in r.stderr
    r = _dry(tmp_path, "--models", "resnet18,RESNET18", "--variants", "FULL")
    assert r.exit_code == 0 and r.stdout.count("new") == 1 and "--models lists RESNET18" in r.stderr


@pytest.mark.parametrize("option,value,fragment", [
    ("--seeds", "1,,2", "an empty item"),
    ("--seeds", "1,2,", "an empty item"),
    ("--seeds", "", "no items"),
    ("--variants", " ", "no items"),
    ("--models", "resnet18,", "an empty item"),
    ("--seeds", "1,x", "expected comma-separated integers"),
    ("--seeds", "1.5", "expected comma-separated integers"),
    ("--seeds", "-1", "-1 is out of range: seeds must be between 0 and 4294967295"),
    ("--seeds", str(SEED_MAX + 1), "is out of range"),
    ("--seeds", "9" * 100, "is out of range"),
])
def test_bad_lists(tmp_path, option, value, fragment):
    r = _dry(tmp_path, option, value)
    assert_one_line_error(r, option, fragment)


def test_the_largest_seed_is_one_torch_can_take(tmp_path):
    from resdeg.train import epoch_generator

    r = _dry(tmp_path, "--variants", "FULL", "--seeds", f"0,{SEED_MAX}")
    assert r.exit_code == 0 and r.stdout.count("new") == 2
    # every generator seed the trainer derives from it fits in torch.manual_seed's 64 bits
    epoch_generator(SEED_MAX, 10_000, torch.device("cpu"))
    torch.Generator().manual_seed(SEED_MAX * 7919 + 10_000)
    r = cli("run", *DRY, "--results", tmp_path, "--seed", str(2**64), expect=None)
    assert_one_line_error(r, "seed=18446744073709551616 is out of range")


def test_probe_lists_are_checked_too(tmp_path):
    r = cli("probe", "--results", tmp_path, "--seeds", "1,,2", expect=None)
    assert_one_line_error(r, "--seeds", "an empty item")


# -- --results -----------------------------------------------------------------------------------

TRAIN = ["run", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet"]


def test_results_is_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("my notes")
    r = cli(*TRAIN, "--results", f, expect=None)
    assert_one_line_error(r, "--results", "is a file")
    assert f.read_text() == "my notes"
    r = cli(*TRAIN, "--results", f / "sub", expect=None)
    assert_one_line_error(r, "not writable")


def test_results_read_only_folder(tmp_path, monkeypatch):
    # tests run as root, and root writes through permission bits: a read-only folder is simulated
    # by os.access saying so (what a read-only mount or chmod 555 makes it say for a normal user)
    results = tmp_path / "ro"
    results.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: (not mode & os.W_OK) if str(p) == str(results)
                        else real(p, mode, **k))
    r = cli(*TRAIN, "--results", results, expect=None)
    assert_one_line_error(r, f"results folder {results} is not writable", "choose another --results")
    assert list(results.iterdir()) == []


def test_results_read_only_file_system(tmp_path, monkeypatch):
    # os.access can say yes where the write still fails (e.g. some network file systems)
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    r = cli(*TRAIN, "--results", tmp_path, expect=None)
    assert_one_line_error(r, "is not writable (Read-only file system)")


def test_results_folder_holding_something_else(tmp_path):
    results = tmp_path / "photos"
    results.mkdir()
    (results / "holiday.jpg").write_bytes(b"x")
    (results / "smoke").mkdir()
    r = cli(*TRAIN, "--results", results, expect=None)
    assert_one_line_error(r, "holds 1 entry that no resdeg result store holds", "'holiday.jpg'",
                          "choose an empty or new folder")
    assert sorted(p.name for p in results.iterdir()) == ["holiday.jpg", "smoke"]  # nothing written


def test_results_folders_that_are_accepted(tmp_path):
    from resdeg.store import ensure_writable

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"")  # hidden files do not count
    skeleton = tmp_path / "skeleton"
    (skeleton / "smoke" / "synthetic").mkdir(parents=True)  # a store whose first run wrote nothing yet
    store = tmp_path / "store"
    (store / "seed" / "cifar10" / "resnet18-FULL-s42-abc").mkdir(parents=True)
    (store / "seed" / "cifar10" / "resnet18-FULL-s42-abc" / "run.json").write_text("{}")
    (store / "README.md").write_text("our runs")  # extra files beside a store are its owner's business
    for folder in (empty, skeleton, store, tmp_path / "new" / "deeper"):
        assert ensure_writable(folder) == folder and folder.is_dir()
        assert not [p for p in folder.iterdir() if p.name.startswith(".write-test-")]
