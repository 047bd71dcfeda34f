"""The original study's protocol is called `original`; `seed`, its former name, stays accepted, and the
runs stored under it (results/seed/...) keep their folders and hashes, so a new run of `original`
finds them."""
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, cli

from resdeg.config import make_config
from resdeg.store import run_dir, scan

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "seed"


def test_seed_is_the_original_protocols_former_name():
    old, new = make_config("seed", model="resnet50"), make_config("original", model="resnet50")
    assert old == new and new.protocol == "original"
    # the hash and the folder are those the protocol had as `seed`
    assert new.store_protocol == "seed" and run_dir("results", new).parts[:2] == ("results", "seed")
    assert make_config("native").store_protocol == "native"


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no committed runs of the original protocol")
def test_committed_runs_of_seed_load_as_original_under_their_hashes():
    runs = [e for e in scan(ROOT / "results") if e.path.is_relative_to(COMMITTED)]
    assert runs
    for e in runs:
        assert e.problem is None and e.run.protocol == "original", (e.path, e.problem)
        cfg = e.run.config
        # the same command today makes the same config: same hash, same folder
        again = make_config("original", dataset=cfg.dataset, precision=cfg.precision, model=cfg.model,
                            variant=cfg.variant, seed=cfg.seed)
        assert again.hash == e.run.config_hash and run_dir(ROOT / "results", again) == e.path


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no committed runs of the original protocol")
@pytest.mark.parametrize("name", ["original", "seed"])
def test_run_all_under_either_name_finds_the_committed_runs(tmp_path, name):
    store = tmp_path / "results"
    shutil.copytree(COMMITTED, store / "seed", ignore=shutil.ignore_patterns("*.pt", "run.lock"))
    out = cli("run-all", "--protocol", name, "--dataset", "imagefolder", "--precision", "bf16", "--models", "resnet18",
              "--results", store, "--dry-run").stdout
    assert "0 to train, 4 cached or skipped" in out and "seed/imagefolder/resnet18-FULL-s42-" in out
    rows = cli("status", "--results", store).stdout.splitlines()[1:]
    assert rows and all(r.split()[0] == "original" for r in rows)


def test_the_gpu_plan_keeps_working_with_its_protocol_seed(tmp_path):
    """../shared/gpu/plan.txt names `--protocol seed`: every line must still plan its runs."""
    plan = ROOT.parent / "shared" / "gpu" / "plan.txt"
    lines = [line.split() for line in plan.read_text().splitlines() if line.startswith("--")] if plan.is_file() \
        else [["--protocol", "seed", "--precision", "bf16", "--models", "resnet50", "--variants", "FULL,Nres"]]
    for args in (a for a in lines if "seed" in a):
        args = [a for a in args if a not in ("--jobs", "2")]  # one process is enough to plan
        out = cli("run-all", *args, "--dataset", "synthetic", "--results", tmp_path, "--dry-run").stdout
        assert "to train" in out and "seed/synthetic/" in out, (args, out)


def test_an_unknown_protocol_is_one_line(tmp_path):
    assert_one_line_error(cli("run", "--protocol", "seeds", "--results", tmp_path, expect=None),
                          "unknown protocol 'seeds'", "original")
    assert_one_line_error(cli("report", "--protocol", "bogus", "--results", tmp_path, "--docs", tmp_path / "d",
                              expect=None), "unknown protocol 'bogus'")


def test_help_names_the_protocol_original():
    text = cli("run-all", "--help").stdout
    assert "[default: original]" in " ".join(text.split()) and "former name" in text
