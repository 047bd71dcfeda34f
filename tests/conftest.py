"""Shared fixtures: every test makes its own small data; nothing reads ../shared/data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

# Small and fast: the smoke protocol cut further (still every code path).
TINY = ["--set", "train_images=256", "--set", "test_images=128", "--set", "eval_train_images=64",
        "--set", "batch_size=64"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Decoded-data caches go to a per-session temp folder, never the user's ~/.cache.
    monkeypatch.setenv("RESDEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    # `run-all` ends by rendering the report: into a temp folder, never the repository's docs/.
    monkeypatch.setenv("RESDEG_DOCS", str(tmp_path_factory.getbasetemp() / "docs"))


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread here and in every process a test starts. Tiny tensors: extra intra-op
    threads only add sync cost, which explodes on a busy machine; and CPU numbers depend on the
    thread count, so processes compared with each other must use the same one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def cli(*args, expect: int | None = 0):
    """Run `resdeg ARGS` in-process; check the exit code when `expect` is given."""
    from resdeg.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, (result.exit_code, result.output)
    return result


def cli_subprocess(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "resdeg.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def status_json(results: Path) -> list[dict]:
    return json.loads(cli("status", "--results", results, "--json").stdout)


def assert_one_line_error(result, *fragments):
    """A user mistake: non-zero exit, no traceback, one line on stderr holding every fragment."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """One made-up store rendered once per test process: the page, figure and download tests read it."""
    import warnings
    from types import SimpleNamespace

    from report_fixture import make_depth_results, make_results

    from resdeg.report import build_report

    base = tmp_path_factory.mktemp("report")
    results = make_results(base / "results", seeds=(1, 2, 3), protocol="native")
    make_depth_results(results, seeds=(1, 2))
    make_results(results, seeds=(1,), epochs=2, models=("resnet18",))  # smoke: hidden beside real studies
    docs = base / "docs"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_report(results, docs, log=lambda m: None)
    return SimpleNamespace(results=results, docs=docs, warnings=caught, summary=summary)
