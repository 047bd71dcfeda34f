"""Faults (issue 16): a full disk while writing run.json, telemetry, a checkpoint or a probe file,
results from other data, SIGKILL during a probe or a site build, a truncated checkpoint and files
from a newer resdeg. Each ends in one line and a non-zero exit, leaves the previous file as it was
and no temp file behind, and the same command resumes once the fault is gone. Issue 36: a reader
between a run's two writes, malformed or out-of-range fields, --force stopped before the end, file
modes under the umask, a report stopped by SIGTERM or SIGKILL."""
import errno
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_one_line_error, cli, status_json
from PIL import Image

from resdeg import atomic

FAST = ["--protocol", "smoke", "--device", "cpu", "--quiet", *TINY, "--set", "width_mult=0.125",
        "--set", "image_size=32"]
SYNTH = ["run", *FAST, "--dataset", "synthetic"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest)


class Fault:
    """Makes the atomic writes of files whose name matches `pattern` fail with `code`, at
    `stage`: "write" (after half of the data went out: a partial write), "fsync" or "replace".
    The first `skip` matching writes succeed. Only resdeg.atomic's calls are affected."""

    def __init__(self, monkeypatch, pattern: str, stage: str = "write", code: int = errno.ENOSPC, skip: int = 0):
        self.pattern, self.code, self.skip, self.seen, self.fired = pattern, code, skip, set(), 0
        real = {"write": os.write, "fsync": os.fsync, "replace": os.replace}[stage]

        def matches(name: str) -> bool:
            base = os.path.basename(name)
            if not (base.endswith(".tmp") and fnmatch.fnmatch(base, f".{pattern}.*")):
                return False
            self.seen.add(base)
            return len(self.seen) > self.skip

        def fail():
            self.fired += 1
            raise OSError(self.code, os.strerror(self.code))

        if stage == "replace":
            def fake(src, dst, *a, **k):
                if matches(str(src)):
                    fail()
                return real(src, dst, *a, **k)
        else:
            def fake(fd, *a):
                try:
                    name = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    name = ""
                if matches(name):
                    if stage == "write" and len(a[0]) > 1:
                        real(fd, bytes(a[0][: len(a[0]) // 2]))  # half of it reached the disk
                    fail()
                return real(fd, *a)
        monkeypatch.setattr(atomic.os, stage, fake)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".write-test-")]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


# -- atomic writes, one by one -------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_failed_write_keeps_the_old_file_and_names_the_target(tmp_path, monkeypatch, stage, code):
    target = tmp_path / "run.json"
    target.write_bytes(b"the old file")
    Fault(monkeypatch, "run.json", stage, code)
    with pytest.raises(OSError) as e:
        atomic.atomic_write_json(target, {"new": "x" * 100_000})
    assert e.value.errno == code and e.value.filename == str(target)
    assert target.read_bytes() == b"the old file"
    assert temp_files(tmp_path) == []


def test_no_inode_for_the_temp_file(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic.tempfile, "mkstemp", full)
    with pytest.raises(OSError) as e:
        atomic.atomic_write_bytes(tmp_path / "model.pt", b"x")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "model.pt")


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: real(fd, bytes(data[:7])))  # 7 bytes at a time
    atomic.atomic_write_bytes(tmp_path / "f", bytes(range(256)) * 10)
    assert (tmp_path / "f").read_bytes() == bytes(range(256)) * 10


def test_savez_is_deterministic(tmp_path, monkeypatch):
    # same arrays, same bytes (zipfile dates entries 1980-01-01): rewriting unchanged telemetry on
    # resume keeps the sha256 run.json pins
    import time

    arrays = {"loss": np.arange(5, dtype=np.float32), "stages": np.array(["stage0", "stage1"])}
    atomic.atomic_write_bytes(tmp_path / "a.npz", atomic.npz_bytes(**arrays))
    first = (tmp_path / "a.npz").read_bytes()
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)  # a zip entry's default timestamp is "now"
    atomic.atomic_write_bytes(tmp_path / "a.npz", atomic.npz_bytes(**arrays))
    assert (tmp_path / "a.npz").read_bytes() == first
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert z["loss"].tolist() == [0, 1, 2, 3, 4] and z["stages"].tolist() == ["stage0", "stage1"]


# -- through the CLI: a full disk in the middle of a run -----------------------------------------

def _partial_run(results: Path, monkeypatch) -> Path:
    """A run of 2 epochs interrupted (Ctrl-C) after its first: run.json, telemetry, checkpoint."""
    from resdeg.train import Trainer

    real = Trainer.train_epoch

    def stop_at_second(self, epoch, bar):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, bar)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", stop_at_second)
        r = cli(*SYNTH, "--set", "epochs=2", "--results", results, expect=130)
    assert "interrupted" in r.stderr
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    assert json.loads((folder / "run.json").read_text())["epochs_done"] == 1
    names = set(snapshot(folder))
    assert {"run.json", "checkpoint.pt"} <= names and len([n for n in names if n.startswith("telemetry-")]) == 1
    return folder


@pytest.mark.parametrize("file", ["run.json", "telemetry-*.npz", "checkpoint.pt"])
def test_disk_full_while_resuming(tmp_path, monkeypatch, file):
    results = tmp_path / "r"
    folder = _partial_run(results, monkeypatch)
    before = snapshot(folder)
    with monkeypatch.context() as m:
        fault = Fault(m, file)
        r = cli(*SYNTH, "--set", "epochs=2", "--results", results, expect=None)
    assert fault.fired
    named = str(folder / file).split("*")[0]  # the message names the file (a telemetry file by its hash)
    assert_one_line_error(r, "no space left on device while writing", named, "run the same command again")
    after = snapshot(folder)
    if file == "checkpoint.pt":  # epoch 2 trained, its checkpoint refused: epoch 1's stays, run.json still says 1
        assert after["checkpoint.pt"] == before["checkpoint.pt"]
    assert after == before or file == "checkpoint.pt" and after.keys() == before.keys()
    assert temp_files(tmp_path) == []
    (row,) = status_json(results)
    assert row["status"] == "partial" and row["epochs_done"] == 1
    cli(*SYNTH, "--set", "epochs=2", "--results", results)  # space again: it resumes and finishes
    (row,) = status_json(results)
    assert row["status"] == "done" and row["epochs_done"] == 2


def test_read_only_and_forbidden_disk_are_one_line(tmp_path, monkeypatch):
    results = tmp_path / "r"
    folder = _partial_run(results, monkeypatch)
    before = snapshot(folder)
    for code, fragment in ((errno.EROFS, "is on a read-only file system"), (errno.EACCES, "permission denied")):
        with monkeypatch.context() as m:
            Fault(m, "run.json", "replace", code)
            r = cli(*SYNTH, "--set", "epochs=2", "--results", results, expect=None)
        assert_one_line_error(r, fragment, str(folder / "run.json"))
        assert snapshot(folder) == before and temp_files(tmp_path) == []


def test_disk_full_at_the_end_of_an_epoch_keeps_the_run_resumable(tmp_path, monkeypatch):
    results = tmp_path / "r"
    _partial_run(results, monkeypatch)
    with monkeypatch.context() as m:
        Fault(m, "run.json", skip=1)  # the resume's first run.json goes through; epoch 2's does not
        r = cli(*SYNTH, "--set", "epochs=2", "--results", results, expect=None)
    assert_one_line_error(r, "no space left on device")
    (row,) = status_json(results)
    assert row["status"] == "partial", row["problem"]
    cli(*SYNTH, "--set", "epochs=2", "--results", results)  # space again: it resumes and finishes
    (row,) = status_json(results)
    assert row["status"] == "done" and row["epochs_done"] == 2


def test_disk_full_while_writing_the_weights_keeps_them(tmp_path, monkeypatch):
    results = tmp_path / "r"
    folder = _partial_run(results, monkeypatch)
    with monkeypatch.context() as m:
        Fault(m, "model.pt")
        assert_one_line_error(cli(*SYNTH, "--set", "epochs=2", "--results", results, expect=None),
                              "no space left on device", "model.pt")
    cli(*SYNTH, "--set", "epochs=2", "--results", results)  # space again
    assert (folder / "model.pt").exists()


def test_disk_full_while_writing_a_probe(tmp_path, monkeypatch):
    results = tmp_path / "r"
    cli(*SYNTH, "--set", "epochs=1", "--results", results)
    cli("probe", "--results", results, "--probe-images", "40", "--device", "cpu", "--quiet")
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    (probe,) = folder.glob("probe-*.json")
    before = snapshot(folder)
    fault = Fault(monkeypatch, "probe-*.json")
    r = cli("probe", "--results", results, "--probe-images", "40", "--device", "cpu", "--quiet", "--force",
            expect=None)
    assert fault.fired
    assert r.exit_code != 0 and "Traceback" not in r.output
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("resdeg: error:")]
    assert "no space left on device" in line.lower() and folder.name in line, r.stderr
    assert snapshot(folder) == before and temp_files(tmp_path) == []


# -- stale results: the same command on other data ----------------------------------------------

def _folder(root: Path, seed: int) -> Path:
    for s, split in enumerate(("train", "test")):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                px = np.random.default_rng(seed * 100 + s * 10 + i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(px).save(root / split / c / f"{i}.png")
    return root


def test_cached_run_from_other_data_is_refused(tmp_path, monkeypatch):
    from resdeg.data import load_dataset

    monkeypatch.setenv("RESDEG_CACHE", str(tmp_path / "cache"))
    a, b = _folder(tmp_path / "A", 1), _folder(tmp_path / "B", 2)
    results = tmp_path / "r"
    cmd = ["run-all", *FAST, "--set", "epochs=1", "--dataset", "imagefolder", "--models", "resnet18",
           "--variants", "FULL", "--no-probe", "--no-report", "--results", results]
    cli(*cmd, "--data-dir", a)
    (run_json,) = results.glob("*/*/*/run.json")
    stored = run_json.read_bytes()
    fa, fb = load_dataset("imagefolder", a).fingerprint, load_dataset("imagefolder", b).fingerprint
    assert fa != fb

    r = cli(*cmd, "--data-dir", b, expect=None)
    assert_one_line_error(r, str(run_json.parent), f"fingerprint {fa[:12]}", f"fingerprint {fb[:12]}",
                          "point --data-dir at the data it was trained on", "another --results")
    assert "(cached)" not in r.stderr
    assert run_json.read_bytes() == stored

    # --dry-run loads no data: it plans from the store alone
    with monkeypatch.context() as m:
        m.setattr("resdeg.data._listing_hash", lambda root: pytest.fail("--dry-run loaded data"))
        assert "0 to train" in cli(*cmd, "--data-dir", b, "--dry-run").stdout

    assert "(cached)" in cli(*cmd, "--data-dir", a).stderr  # the original data: cached, as before
    assert run_json.read_bytes() == stored


def test_partial_run_from_other_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RESDEG_CACHE", str(tmp_path / "cache"))
    a, b = _folder(tmp_path / "A", 1), _folder(tmp_path / "B", 3)
    results = tmp_path / "r"
    from resdeg.train import Trainer

    real = Trainer.train_epoch

    def stop_at_second(self, epoch, bar):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, bar)
    base = ["run", *FAST, "--set", "epochs=2", "--dataset", "imagefolder", "--results", results]
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", stop_at_second)
        cli(*base, "--data-dir", a, expect=130)
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    before = snapshot(folder)
    r = cli(*base, "--data-dir", b, expect=None)
    assert_one_line_error(r, "was trained on other data", str(folder))
    assert snapshot(folder) == before  # not resumed on B, checkpoint and run.json untouched


def test_run_without_a_recorded_fingerprint_is_not_refused(tmp_path):
    # runs whose run.json holds no fingerprint (none such is committed, but a hand-made store may)
    from resdeg.data import check_recorded_data
    from resdeg.runner import PlannedRun

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"data": {"name": "synthetic"}}))

    class Cfg:
        dataset = "synthetic"
    loaded = []
    check_recorded_data([PlannedRun(Cfg, folder, "done")], load=lambda name: loaded.append(name))
    assert loaded == []
    (folder / "run.json").write_text(json.dumps({"data": {"fingerprint": "f" * 64}}))

    class Data:
        fingerprint, source = "f" * 64, "here"
    assert check_recorded_data([PlannedRun(Cfg, folder, "done")], load=lambda name: Data)["synthetic"] is Data


# -- SIGKILL in the middle of a probe or a site build; damaged checkpoints and newer files ---------

# `resdeg` whose probe SIGKILLs its own process while scoring the 3rd stage
PROBE_KILLER = """
import os, signal, sys
from resdeg.probes import probe
from resdeg.cli import main
count, score = [0], probe.score_stage
def score_stage(*args, **kwargs):
    count[0] += 1
    if count[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return score(*args, **kwargs)
probe.score_stage = score_stage
main(sys.argv[1:])
"""


def test_a_killed_probe_leaves_no_probe_and_the_next_one_works(tmp_path):
    results = tmp_path / "r"
    cli(*SYNTH, "--set", "epochs=1", "--results", results)
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    before = snapshot(folder)
    args = ["probe", "--results", str(results), "--probe-images", "40", "--device", "cpu", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", PROBE_KILLER, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert snapshot(folder) == before and temp_files(tmp_path) == []  # no probe, no half of one
    (row,) = status_json(results)
    assert row["status"] == "done" and row["probed"] is False
    cli(*args)
    assert len(list(folder.glob("probe-*.json"))) == 1


def test_a_killed_site_build_leaves_docs_untouched_and_the_next_build_works(tmp_path):
    from report_fixture import make_results

    from resdeg.report import build_report

    root = Path(__file__).resolve().parent.parent
    project = tmp_path / "project"
    shutil.copytree(root / "docs" / "assets", project / "docs" / "assets")
    hook = root / "resdeg" / "report" / "mkdocs_hooks.py"
    (project / "mkdocs.yml").write_text((root / "mkdocs.yml").read_text().replace("resdeg/report/mkdocs_hooks.py",
                                                                                  str(hook)))
    build_report(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",)),
                 project / "docs", log=lambda m: None)
    listing = lambda: sorted((p.relative_to(project).as_posix(), p.stat().st_size)  # noqa: E731
                             for p in (project / "docs").rglob("*") if p.is_file())
    before = listing()
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml")]
    proc = subprocess.Popen(build, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (project / "site").exists() and time.time() < deadline:  # killed once it writes the site
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert listing() == before  # mkdocs only reads docs/
    done = subprocess.run(build, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (project / "site" / "index.html").exists() and (project / "site" / "zh" / "index.html").exists()


def test_a_truncated_checkpoint_is_one_line_and_force_starts_over(tmp_path, monkeypatch):
    results = tmp_path / "r"
    folder = _partial_run(results, monkeypatch)
    ckpt = folder / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    damaged = snapshot(folder)
    r = cli(*SYNTH, "--set", "epochs=2", "--results", results, expect=None)
    assert_one_line_error(r, "unusable checkpoint", "--force")
    assert snapshot(folder) == damaged  # reported, not used, not touched
    cli(*SYNTH, "--set", "epochs=2", "--results", results, "--force")
    (row,) = status_json(results)
    assert row["status"] == "done" and row["epochs_done"] == 2


def test_files_from_a_newer_resdeg_are_reported_not_used(tmp_path):
    results = tmp_path / "r"
    cli(*SYNTH, "--set", "epochs=1", "--results", results)
    cli("probe", "--results", results, "--probe-images", "40", "--device", "cpu", "--quiet")
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    (probe_file,) = folder.glob("probe-*.json")
    doc = json.loads(probe_file.read_text())
    doc["schema_version"] += 1
    probe_file.write_text(json.dumps(doc))
    status = cli("status", "--results", results)
    assert "corrupt probe" in status.stderr and "written by a newer resdeg" in status.stderr
    run_json = folder / "run.json"
    doc = json.loads(run_json.read_text())
    doc["schema_version"] += 1
    run_json.write_text(json.dumps(doc))
    (row,) = status_json(results)
    assert row["status"] == "corrupt" and "newer resdeg" in row["problem"]


# -- readers during a write; every field validated; --force; file modes; a stopped report ----------

def _fake_run(root: Path, seed: int = 1) -> Path:
    """A finished run written through the stores' writers, without training (report_fixture)."""
    from report_fixture import write_fake_run

    from resdeg.config import make_config

    cfg = make_config("smoke", {"epochs": 2}, model="resnet18", variant="FULL", seed=seed, dataset="synthetic")
    return write_fake_run(root, cfg, 0.5, 0.6, 0.0, probe=False)


def test_a_reader_between_the_two_writes_of_a_run_sees_the_new_run(tmp_path, monkeypatch):
    """The writer replaces run.json, then deletes the telemetry it no longer pins. A reader (status,
    report) that read run.json just before the replace reads it again: it gets the new run, never
    "telemetry-... is missing"."""
    from dataclasses import replace

    from resdeg import store

    folder = _fake_run(tmp_path)
    old = store.read_run(folder)
    arrays = store.read_telemetry(folder)
    stages = [str(s) for s in arrays.pop("stages")]
    new = replace(old, telemetry=store.write_telemetry(folder, stages, {**arrays, "loss": arrays["loss"] / 2}))
    real, pending = store.read_record, [new]

    def read_then_the_writer_runs(path, cls):
        record = real(path, cls)
        if pending:  # the writer's two steps, right after this reader's read of run.json
            store.write_run(folder, pending.pop())
        return record
    monkeypatch.setattr(store, "read_record", read_then_the_writer_runs)
    assert store.read_run(folder) == new
    # the telemetry itself, switched back by a writer right after the reader read run.json
    pending.append(replace(new, telemetry=store.write_telemetry(folder, stages, arrays)))
    assert store.read_telemetry(folder)["loss"].tolist() == arrays["loss"].tolist()
    assert [p.name for p in folder.glob("telemetry-*.npz")] == [old.telemetry.file]


@pytest.mark.parametrize("where,value,fragment", [
    ("data", "CIFAR", "data: not an object"),
    ("data", {"fingerprint": "f" * 64}, "data: field 'name' missing"),
    ("data.n_train", -10, "data: n_train: -10 is outside its range"),
    ("data.train_used", 4096, "uses more images (4096 / 512) than the data set holds (2048 / 512)"),
    ("data.classes", [1, 2], "data: classes[0]: 1 is not a str"),
    ("environment", ["cpu"], "environment: not an object"),
    ("environment.cpu_threads", -2, "environment: cpu_threads: -2 is outside its range"),
    ("environment.device_type", "gpu", "device_type 'gpu' is not cpu or cuda"),
    ("summary.wall_s", -1.0, "summary: wall_s: -1.0 is outside its range"),
    ("summary.parameters", -1, "summary: parameters: -1 is outside its range"),
    ("epochs.0.wall_s", -3.5, "epochs[0]: wall_s: -3.5 is outside its range"),
    ("epochs.1.lr", -0.1, "epochs[1]: lr: -0.1 is outside its range"),
])
def test_every_field_of_a_run_is_validated_with_its_physical_range(tmp_path, where, value, fragment):
    """A run.json whose `data` or `environment` object is malformed, or that holds a negative time,
    parameter or image count, is corrupt (said in one line by status), never published."""
    from resdeg.report.collect import load_store

    results = tmp_path / "r"
    _fake_run(results, seed=1)
    bad = _fake_run(results, seed=2)
    doc = json.loads((bad / "run.json").read_text())
    *path, last = where.split(".")
    node = doc
    for key in path:
        node = node[int(key) if key.isdigit() else key]
    node[last] = value
    (bad / "run.json").write_text(json.dumps(doc))
    rows = {r["seed"]: r for r in status_json(results)}
    assert rows[1]["status"] == "done" and rows[2]["status"] == "corrupt"
    assert fragment in rows[2]["problem"], rows[2]["problem"]
    store = load_store(results)  # what `resdeg report` publishes: the good run only
    assert [r.seed for r in store.runs] == [1]
    assert any(bad.name in rel and fragment in why for rel, why in store.unused), store.unused


def test_force_keeps_the_finished_run_until_its_replacement_is_done(tmp_path, monkeypatch):
    """--force trains the replacement beside the finished run and swaps it in at the end: Ctrl-C
    (or a time limit, a crash) before that leaves the old run, weights and probe as they were."""
    from resdeg.train import Trainer

    results = tmp_path / "r"
    cmd = [*SYNTH, "--set", "epochs=2", "--results", results]
    cli(*cmd)
    cli("probe", "--results", results, "--probe-images", "40", "--device", "cpu", "--quiet")
    (folder,) = {p.parent for p in results.glob("*/*/*/run.json")}
    before = snapshot(folder)
    assert {"model.pt", "run.json"} <= set(before) and any(n.startswith("probe-") for n in before)
    time.sleep(1.05)  # `created` has whole seconds: the replacement must start in a later one to be told apart
    real = Trainer.train_epoch

    def stop_at_second(self, epoch, bar):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, bar)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", stop_at_second)
        cli(*cmd, "--force", expect=130)
    assert snapshot(folder) == before  # the finished run, untouched
    (row,) = status_json(results)  # the replacement in progress is not a run of the store
    assert row["status"] == "done" and row["probed"] is True
    out = cli(*cmd, "--force")  # resumes the replacement, then swaps it in
    assert "seed 42: done" in out.stderr
    after = snapshot(folder)
    assert not any(n.startswith("probe-") for n in after)  # the old weights' probe went with them
    assert json.loads(after["run.json"])["created"] != json.loads(before["run.json"])["created"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no replacement folder left
    assert not (folder / "run.lock").exists()


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_result_files_are_readable_as_the_umask_allows(tmp_path, mask, mode):
    """Atomic writes give the mode a plain open() would (mkstemp's 0600 hid a group's store from the group)."""
    old = os.umask(mask)
    try:
        atomic.atomic_write_json(tmp_path / "run.json", {"a": 1})
        atomic.atomic_write_bytes(tmp_path / "model.pt", b"x")
    finally:
        os.umask(old)
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("run.json", "model.pt")] == [mode, mode]


def test_a_stopped_report_cleans_up_and_a_killed_ones_lock_is_taken_over_without_a_checkpoint(tmp_path):
    """SIGTERM while a report renders: its hidden render folder goes at once, one line, exit 143.
    SIGKILL: the next report removes the leftovers and takes the lock over, saying nothing of a
    checkpoint (a report has none)."""
    from conftest import cli_subprocess
    from report_fixture import make_results

    from resdeg.report import build_report

    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = cli_subprocess("report", "--results", results, "--docs", docs)
        deadline = time.time() + 240
        while not list(docs.glob(".report-render-*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM, err
            assert err.strip() == "resdeg: stopped by SIGTERM; run the same command again to resume"
            assert not list(docs.glob(".report-render-*")) and not list(docs.glob(".report-lock/*"))  # lock released
    assert list(docs.glob(".report-render-*")) and (docs / ".report-lock" / "run.lock").exists()  # SIGKILL's
    said = []
    build_report(results, docs, log=said.append)
    assert not list(docs.glob(".report-render-*"))
    (takeover,) = [m for m in said if "stale lock" in m]
    assert "taking over a stale lock on .report-lock: process" in takeover and "checkpoint" not in takeover
