"""The README's first command, as a new user runs it in a clone of the repository: it must leave the
published report whole (every committed page stays, the landing page still shows the real studies)
and print little: one line about a missing CJK font, no library warnings, a screenful besides the
progress (one line per epoch when the output is not a terminal)."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
ARTIFACT = ROOT / "test-artifacts" / "first-command.txt"
SCREEN = 24  # lines: a terminal's height
# The command as a machine without a CJK font runs it: matplotlib finds none.
NO_CJK = "import resdeg.report.figures as F; F.cjk_font = lambda: None; from resdeg.cli import main; main()"


def readme_first_command() -> list[str]:
    """`resdeg run-all ...` from the README's install-and-run block."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Install and run the main job", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = block.strip().split("&&")[-1].strip()
    assert command.startswith("resdeg run-all "), command
    return shlex.split(command)[1:]


def clone(dst: Path) -> Path:
    """The repository's committed docs/, results/ and mkdocs.yml (symlinks kept), as a clone has them."""
    files = subprocess.run(["git", "ls-files", "-z", "docs", "results", "mkdocs.yml"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src, target = ROOT / rel, dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        elif src.is_file():
            target.write_bytes(src.read_bytes())
    return dst


def docs_files(docs: Path) -> set[str]:
    return {(Path(d) / f).relative_to(docs).as_posix() for d, _, names in os.walk(docs, followlinks=True)
            for f in names if not any(p.startswith(".") for p in Path(d).relative_to(docs).parts)}


def sections(docs: Path) -> list[str]:
    return [item["section"]["en"] for item in json.loads((docs / "site-nav.json").read_text()) if "section" in item]


def test_the_readme_first_command_leaves_the_published_report_whole_and_is_quiet(tmp_path):
    repo = clone(tmp_path / "repo")
    docs = repo / "docs"
    before, studies = docs_files(docs), sections(docs)
    assert "en/index.md" in before and studies
    # the README's command; fewer runs and images keep it fast (the same code path: train, probe, report)
    args = [*readme_first_command(), "--models", "resnet18", "--variants", "FULL", "--probe-images", "100", *TINY,
            "--set", "width_mult=0.25", "--set", "epochs=1"]
    env = {k: v for k, v in os.environ.items() if k != "RESDEG_DOCS"}  # docs/ of the clone, as a user's
    done = subprocess.run([sys.executable, "-c", NO_CJK, *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=900)
    output = done.stdout + done.stderr
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(f"$ resdeg {shlex.join(args)}   # without a CJK font\n{output}")
    assert done.returncode == 0, output

    assert not before - docs_files(docs), sorted(before - docs_files(docs))[:10]
    assert sections(docs) == studies  # the real studies' pages, not a smoke-only report
    index = (docs / "en" / "index.md").read_text()
    assert "Smoke protocol" not in index and all(t.split(",")[0] in index for t in studies)
    setup = (docs / "en" / "setup.md").read_text()
    assert re.search(r"`smoke/synthetic/resnet18-FULL-s42-\w+`: smoke runs are shown only when", setup)

    lines = output.splitlines()
    assert [line for line in lines if "no CJK font" in line] == [
        "resdeg: note: no CJK font found, so the Chinese pages' figures have English labels; for Chinese labels "
        "install one (apt-get install fonts-noto-cjk) and run `resdeg report` again"]
    assert not [line for line in lines if re.search(r"Warning\b|warnings\.warn|Glyph \d+", line)], output
    progress = re.compile(r" epoch \d+/\d+: ")  # a progress bar's line when the output is no terminal
    assert len([line for line in lines if not progress.search(line)]) <= SCREEN, output
