"""Publishing the report: a report folder keeps its name, the same results give the same bytes,
a killed or concurrent report leaves the old report or the new one, never a mix."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import cli, cli_subprocess
from report_fixture import make_results, page

from resdeg.report import build_report
from resdeg.store import scan


def test_adding_runs_regenerates_everything_and_removes_old_reports(tmp_path):
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    first = (docs / "en/native/h1.md").read_text()
    make_results(results, seeds=(2,), epochs=2, models=("resnet18",), protocol="native")
    build_report(results, docs, log=lambda m: None)
    assert (docs / "en/native/h1.md").read_text() != first
    assert _report_folders(docs) == ["_report"]
    new_hashes = {e.run.config_hash for e in scan(results) if e.run.seed == 2}
    assert all(h in page(docs, "zh", "reproducibility") for h in new_hashes)
    assert "| resnet18 | FULL | 2 |" in page(docs, "en", "native/h1")


def _report_folders(docs: Path) -> list[str]:
    """Every folder a report made or left: the published one, half-rendered or replaced ones."""
    return sorted(p.name for p in docs.iterdir()
                  if p.name.startswith(("_report", ".report-")) and p.name != ".report-lock")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_report_folder_keeps_its_name_and_the_same_results_give_the_same_bytes(tmp_path):
    """git sees a regenerated report as the files that changed: the folder's name is fixed and
    rendering the same results again writes the same bytes (figures, zip and pages included)."""
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    first = _tree(docs / "_report")
    assert (docs / "_report").is_dir() and not (docs / "_report").is_symlink()
    assert any(name.endswith(".png") for name in first) and any(name.endswith(".zip") for name in first)
    build_report(results, docs, log=lambda m: None)
    assert _tree(docs / "_report") == first
    assert _report_folders(docs) == ["_report"]


def test_the_previous_layout_is_upgraded_in_place(tmp_path):
    """A docs/ from before: _report a symlink to a folder named by its time."""
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    os.rename(docs / "_report", docs / "_report-20261127-020130-1")
    os.symlink("_report-20261127-020130-1", docs / "_report")
    assert (docs / "en/index.md").exists()
    build_report(results, docs, log=lambda m: None)
    assert _report_folders(docs) == ["_report"] and not (docs / "_report").is_symlink()
    assert (docs / "en/index.md").exists()


def test_without_an_atomic_swap_a_report_killed_between_the_renames_is_restored(tmp_path, monkeypatch):
    from resdeg.report import build

    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    old = _report_state(docs)
    monkeypatch.setattr(build, "exchange_paths", lambda a, b: False)
    make_results(results, seeds=(2,), epochs=2, models=("resnet18",), protocol="native")
    build_report(results, docs, log=lambda m: None)  # the fallback publishes too
    assert _report_state(docs) != old and _report_folders(docs) == ["_report"]
    new = _report_state(docs)
    os.rename(docs / "_report", docs / ".report-old-99")  # killed after the first rename
    (docs / ".report-render-98").mkdir()  # and a half-rendered report of another killed one
    build._recover(docs)
    assert _report_state(docs) == new and _report_folders(docs) == ["_report"]


def test_a_folder_not_made_by_resdeg_is_never_replaced(tmp_path):
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    (docs / "_report").mkdir(parents=True)
    (docs / "_report" / "notes.md").write_text("mine")
    out = cli("report", "--results", results, "--docs", docs, expect=1)
    assert "was not made by `resdeg report`" in out.output and (docs / "_report" / "notes.md").read_text() == "mine"


def _report_state(docs: Path) -> tuple[bytes, bytes, bytes]:
    return tuple((docs / p).read_bytes() for p in ("en/index.md", "zh/native/h1.md", "downloads/native/runs.csv"))


def test_a_killed_report_leaves_the_old_report_or_the_new_one(tmp_path):
    """SIGKILL at several moments of a report: docs/ always shows one whole report, old or new."""
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    old = _report_state(docs)
    make_results(results, seeds=(2,), epochs=2, models=("resnet18",), protocol="native")
    seen = set()
    for delay in (1.0, 3.0, 6.0, 12.0):
        proc = cli_subprocess("report", "--results", results, "--docs", docs)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _report_state(docs)
        seen.add("old" if now == old else "new")
        if now != old:  # the new report, whole: every file differs from the old one
            assert all(a != b for a, b in zip(now, old, strict=False))
    build_report(results, docs, log=lambda m: None)  # the next report cleans up what the killed ones left
    assert _report_folders(docs) == ["_report"]
    assert _report_state(docs) != old


def test_two_reports_at_once_do_not_mix(tmp_path):
    from resdeg.locks import acquire

    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    with acquire(docs / ".report-lock", log=lambda m: None):  # as a running report holds it
        busy = cli("report", "--results", results, "--docs", docs, expect=1)
    assert "another `resdeg report` is writing" in busy.output and "Traceback" not in busy.output
    assert not (docs / "en").exists()
    cli("report", "--results", results, "--docs", docs)


def test_report_cli_errors_are_one_line(tmp_path):
    empty = cli("report", "--results", tmp_path / "none", "--docs", tmp_path / "docs", expect=1)
    assert empty.output.strip().count("\n") == 0 and "no runs" in empty.output
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), probes=False)
    wrong = cli("report", "--results", results, "--docs", tmp_path / "docs", "--protocol", "seed", expect=1)
    assert "no finished runs for protocol=original" in wrong.output and "Traceback" not in wrong.output
    foreign = tmp_path / "docs" / "en"
    foreign.mkdir(parents=True)
    (foreign / "index.md").write_text("hand-written")
    refused = cli("report", "--results", results, "--docs", tmp_path / "docs", expect=1)
    assert "was not made by `resdeg report`" in refused.output
    assert (foreign / "index.md").read_text() == "hand-written"
