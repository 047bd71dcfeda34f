"""The report: verdict rules on constructed numbers, pages from a made-up result store (several
seeds, one diverged run, one missing probe), the MkDocs build and the site in a real browser."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import cli
from report_fixture import make_results

from resdeg.report import build_report
from resdeg.report import verdicts as V
from resdeg.report.build import MARKER
from resdeg.report.pages import LANGS, PAGES, pct
from resdeg.store import read_run, scan

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "report"


def _project(base: Path) -> Path:
    """A copy of the repo's MkDocs setup (mkdocs.yml, hand-written assets) around a fresh docs/."""
    project = base / "project"
    shutil.copytree(ROOT / "docs" / "assets", project / "docs" / "assets")
    hook = ROOT / "resdeg" / "report" / "mkdocs_hooks.py"
    (project / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text().replace("resdeg/report/mkdocs_hooks.py", str(hook)))
    return project


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    results = make_results(base / "results", seeds=(1, 2, 3))
    project = _project(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_report(results, project / "docs", log=lambda m: None)
    return SimpleNamespace(results=results, project=project, docs=project / "docs", warnings=caught, summary=summary)


@pytest.fixture(scope="module")
def site(rendered):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(rendered.project / "mkdocs.yml")],
                          capture_output=True, text=True, timeout=300, cwd=rendered.project,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return SimpleNamespace(dir=rendered.project / "site", log=proc.stdout + proc.stderr)


def page(docs: Path, lang: str, name: str) -> str:
    return (docs / lang / f"{name}.md").read_text()


# -- statistics ----------------------------------------------------------------------------------------

def test_t_quantiles_match_scipy_and_round_df_down():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 29, 30, 40, 60, 120):
        assert V.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    for df in (2.5, 7.9, 33.3, 75.0, 500.0):
        assert V.t975(df) >= stats.t.ppf(0.975, df) - 1e-4  # never narrower than the exact interval


def test_welch_interval_matches_scipy_when_df_is_whole():
    stats = pytest.importorskip("scipy.stats")
    a, b = np.array([0.70, 0.72, 0.74]), np.array([0.80, 0.82, 0.84])  # equal variances: df = 4 exactly
    e = V.difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert e.sign == -1
    one = V.difference([0.7], [0.8])
    assert not one.has_interval and one.sign == -1  # a single seed: decided on the point values


# -- verdict rules on constructed numbers ------------------------------------------------------------

def side(label, test, clean, **kw):
    return V.Side(label, list(test), list(clean), **kw)


HEALTHY = dict(test=[0.80, 0.81, 0.79], clean=[0.95, 0.96, 0.95])


def test_h1_supported_when_the_degraded_model_fits_as_well_but_generalises_worse():
    v = V.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.96, 0.95, 0.96]))
    assert (v.outcome, v.reason, v.degraded) == ("supported", "overfits", "deg")
    assert v.numbers["gap_diff"]["low"] > 0 and not v.single_seed


def test_h1_not_supported_when_the_degraded_model_is_worse_on_train_too():
    v = V.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.80, 0.81, 0.79]))
    assert (v.outcome, v.reason) == ("not_supported", "worse_on_train")
    assert "worse on the training set" in v.explain("en") and "训练集" in v.explain("zh")


def test_h1_inconclusive_without_a_significant_test_difference():
    v = V.h1("c", side("a", [0.80, 0.70, 0.90], [0.9] * 3), side("b", [0.78, 0.88, 0.69], [0.9] * 3))
    assert (v.outcome, v.reason, v.degraded) == ("inconclusive", "no_degradation", None)


def test_h1_inconclusive_when_the_gap_is_not_clearly_larger():
    # the degraded model's clean train accuracy is noisy: neither lower nor is its gap clearly larger
    v = V.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.70, 0.99, 0.85]))
    assert (v.outcome, v.reason) == ("inconclusive", "gap_not_larger")


def test_h1_single_seed_decides_on_point_values_and_says_so():
    v = V.h1("c", side("ok", [0.8], [0.95]), side("deg", [0.7], [0.96]))
    assert v.outcome == "supported" and v.single_seed


def ratios(x, n=3):
    return [math.log10(x) + d for d in (-0.05, 0.0, 0.05)][:n]


def test_h2_supported_when_only_the_degraded_model_vanishes():
    v = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(0.5)), side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e-5)))
    assert (v.outcome, v.numbers["degraded_symptom"], v.numbers["healthy_symptom"]) == ("supported", "vanishing", "none")


def test_h2_supported_when_the_degraded_model_diverged():
    v = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(2.0)), side("deg", [0.1] * 3, [0.1] * 3, diverged=1,
                                                                   log_ratio=ratios(1.0, 2)))
    assert (v.outcome, v.numbers["degraded_symptom"]) == ("supported", "exploding")


def test_h2_not_supported_when_both_or_neither_show_a_symptom():
    both = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1e-4)), side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e-5)))
    assert (both.outcome, both.reason) == ("not_supported", "symptom_both")
    neither = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1.0)), side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(0.1)))
    assert (neither.outcome, neither.reason) == ("not_supported", "no_symptom")
    exploding = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1.0)), side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e5)))
    assert exploding.outcome == "supported" and exploding.numbers["degraded_symptom"] == "exploding"


def test_h2_inconclusive_when_the_interval_straddles_the_threshold():
    straddle = [math.log10(1e-3) + d for d in (-1.0, 0.0, 1.0)]
    v = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1.0)), side("deg", [0.5] * 3, [0.5] * 3, log_ratio=straddle))
    assert (v.outcome, v.numbers["degraded_symptom"]) == ("inconclusive", "unclear")


def changes(sign, m=5, k=None):
    """m criteria, the first k (default all) changing by `sign` over three seeds, the rest by -sign."""
    k = m if k is None else k
    return {f"c{i}": [s * x for x in (0.10, 0.12, 0.11)] for i, s in
            enumerate([sign] * k + [-sign] * (m - k))}


def test_h3_supported_when_only_the_degraded_model_loses_separability():
    v = V.h3("c", side("ok", **HEALTHY, sep_change=changes(+1)), side("deg", [0.5] * 3, [0.5] * 3, sep_change=changes(-1, k=4)))
    assert (v.outcome, v.reason) == ("supported", "loss_only_degraded")
    assert (v.numbers["degraded"]["k"], v.numbers["degraded"]["m"]) == (4, 5)


def test_h3_not_supported_when_separability_rises_or_falls_in_both():
    rises = V.h3("c", side("ok", **HEALTHY, sep_change=changes(+1)), side("deg", [0.5] * 3, [0.5] * 3, sep_change=changes(+1)))
    assert (rises.outcome, rises.reason) == ("not_supported", "no_loss")
    both = V.h3("c", side("ok", **HEALTHY, sep_change=changes(-1)), side("deg", [0.5] * 3, [0.5] * 3, sep_change=changes(-1)))
    assert (both.outcome, both.reason) == ("not_supported", "loss_both")


def test_h3_inconclusive_when_criteria_disagree_or_are_noisy():
    split = {**changes(-1, m=2), **{f"n{i}": [-0.1, 0.1, 0.0] for i in range(3)}}  # 2 fall, 3 unclear
    v = V.h3("c", side("ok", **HEALTHY, sep_change=changes(+1)), side("deg", [0.5] * 3, [0.5] * 3, sep_change=split))
    assert (v.outcome, v.reason) == ("inconclusive", "loss_unclear")
    assert V.information_loss(side("x", [0.5], [0.5], sep_change={"a": [-1.0], "b": [1.0]}))["outcome"] == "inconclusive"


# -- pages from a result store -------------------------------------------------------------------------

def test_every_page_and_figure_exists_in_both_languages_with_the_smoke_banner(rendered):
    banner = {"en": "Smoke protocol: a pipeline check, not evidence", "zh": "smoke 协议:只是流程检查,不是证据"}
    figures = {lang: sorted(p.name for p in (rendered.docs / lang / "figures").iterdir()) for lang in LANGS}
    assert figures["en"] == figures["zh"] and len(figures["en"]) == 6  # h1, h2 x2, h3 x2 depths, signal
    for lang in LANGS:
        assert (rendered.docs / lang / MARKER).exists()
        for name in PAGES:
            text = page(rendered.docs, lang, name)
            assert banner[lang] in text, (lang, name)
            for fig in re.findall(r"\]\(figures/([^)]+)\)", text):
                assert (rendered.docs / lang / "figures" / fig).stat().st_size > 10_000
    assert not [w for w in rendered.warnings if "Glyph" in str(w.message)]


def test_numbers_on_the_pages_equal_the_result_files(rendered):
    docs = rendered.docs
    runs = [read_run(e.path) for e in scan(rendered.results)]
    assert len(runs) == 24
    for lang in LANGS:
        h1, repro, setup = (page(docs, lang, n) for n in ("h1", "reproducibility", "setup"))
        for doc in runs:
            last = doc["epochs"][-1]
            row = [pct(last["train_acc"]), pct(last["clean_train_acc"]), pct(last["test_acc"])]
            assert " | ".join(row) in h1, (lang, doc["config_hash"])
            assert doc["config_hash"] in repro
        assert runs[0]["data"]["fingerprint"] in setup
        # mean ± std over seeds, recomputed here from the files
        tests = [d["epochs"][-1]["test_acc"] for d in runs
                 if d["config"]["model"] == "resnet18" and d["config"]["variant"] == "FULL"]
        assert f"{100 * np.mean(tests):.2f} ± {100 * np.std(tests, ddof=1):.2f}" in h1
    # a probe value, read straight from its file
    folder = next(e.path for e in scan(rendered.results) if e.path.name.startswith("resnet50-Nres-s2"))
    probe = json.loads(next(folder.glob("probe-*.json")).read_text())
    assert f"{probe['criteria']['knn_acc']['stage4']:.4g}" in page(docs, "en", "h3")
    # the downloads hold the same numbers
    rows = list(csv.DictReader((docs / "downloads" / "h1_epochs.csv").open()))
    assert len(rows) == sum(len(d["epochs"]) for d in runs)
    by_key = {(r["model"], r["variant"], int(r["seed"]), int(r["epoch"])): r for r in rows}
    for d in runs:
        for e in d["epochs"]:
            r = by_key[(d["config"]["model"], d["config"]["variant"], d["config"]["seed"], e["epoch"])]
            assert float(r["test_acc"]) == pytest.approx(e["test_acc"], rel=1e-5)


def test_verdicts_are_on_the_pages_with_their_rule_and_numbers(rendered):
    doc = json.loads((rendered.docs / "downloads" / "verdicts.json").read_text())
    assert (doc["schema"], doc["schema_version"], doc["rules_version"]) == ("resdeg.verdicts", 1, V.RULES_VERSION)
    assert len(doc["comparisons"]) == 12  # 4 variant pairs x 2 depths + 4 variants across depths
    for lang in LANGS:
        index = page(rendered.docs, lang, "index")
        for comp in doc["comparisons"]:
            assert comp["subject"] in index
            for h, v in comp["verdicts"].items():
                assert v["explanation"][lang] in page(rendered.docs, lang, h.lower())
        assert V.RULES["H2"][lang] in page(rendered.docs, lang, "h2")
    by = {c["subject"]: c["verdicts"] for c in doc["comparisons"]}
    # the fixture's resnet50-Nboth diverged once: H2 counts it as exploding
    assert by["resnet50: Nbn vs Nboth"]["H2"]["numbers"]["degraded_symptom"] == "exploding"
    assert by["resnet50: FULL vs Nres"]["H3"]["outcome"] == "supported"


def test_missing_probe_divergence_and_failed_criterion_are_said(rendered):
    docs = rendered.docs
    unprobed = next(e for e in scan(rendered.results) if e.path.name.startswith("resnet18-Nbn-s1-"))
    diverged = next(e for e in scan(rendered.results) if e.doc["status"] == "diverged")
    rel_unprobed = unprobed.path.relative_to(rendered.results).as_posix()
    rel_diverged = diverged.path.relative_to(rendered.results).as_posix()
    for lang in LANGS:
        assert f"`{rel_unprobed}`" in page(docs, lang, "h3") and "not probed" in page(docs, lang, "h3")
        reflection = page(docs, lang, "reflection")
        assert f"`{rel_diverged}`" in reflection and str(diverged.doc["diverged_at_step"]) in reflection
        assert "singular within-class scatter" in page(docs, lang, "h3")


def test_pages_adapt_to_missing_probes_and_telemetry(tmp_path):
    results = make_results(tmp_path / "results", seeds=(7,), epochs=2, probes=False, models=("resnet18",))
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    assert not list((docs / "en" / "figures").glob("h3-*"))
    assert "No run has been probed yet" in page(docs, "en", "h3")
    assert "还没有任何训练结果经过探测" in page(docs, "zh", "signal")
    assert "(single seed)" in page(docs, "en", "index") and "单一种子" in page(docs, "zh", "index")


def test_adding_runs_regenerates_everything_and_removes_stale_files(tmp_path):
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",))
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    stale = docs / "en" / "figures" / "old-figure.png"
    stale.write_bytes(b"stale")
    assert "1 seeds" not in page(docs, "en", "index") and "with 1 seed (1)" in page(docs, "en", "index")
    make_results(results, seeds=(2,), epochs=2, models=("resnet18",))
    build_report(results, docs, log=lambda m: None)
    assert not stale.exists()
    assert "with 2 seeds (1, 2)" in page(docs, "en", "index")
    new_hashes = {e.doc["config_hash"] for e in scan(results) if e.doc["config"]["seed"] == 2}
    assert all(h in page(docs, "zh", "reproducibility") for h in new_hashes)
    assert not [p for p in docs.iterdir() if p.name.startswith(".report-")]


def test_report_cli_errors_are_one_line(tmp_path):
    empty = cli("report", "--results", tmp_path / "none", "--docs", tmp_path / "docs", expect=1)
    assert empty.output.strip().count("\n") == 0 and "no runs" in empty.output
    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), probes=False)
    wrong = cli("report", "--results", results, "--docs", tmp_path / "docs", "--protocol", "seed", expect=1)
    assert "present: smoke/synthetic" in wrong.output and "Traceback" not in wrong.output
    foreign = tmp_path / "docs" / "en"
    foreign.mkdir(parents=True)
    (foreign / "index.md").write_text("hand-written")
    refused = cli("report", "--results", results, "--docs", tmp_path / "docs", expect=1)
    assert "was not made by `resdeg report`" in refused.output
    assert (foreign / "index.md").read_text() == "hand-written"


def test_chinese_figures_have_no_missing_glyphs_with_a_cjk_font(tmp_path):
    from resdeg.report import figures as F
    from resdeg.report.collect import load_study

    if F.cjk_font() is None:
        pytest.skip("no CJK font on this machine (CI installs fonts-noto-cjk)")
    study = load_study(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.h3_separability(study, "zh", tmp_path / "h3.png", "resnet18")
        F.h1_accuracy(study, "zh", tmp_path / "h1.png")
    assert not [w for w in caught if "missing from font" in str(w.message) or "CJK" in str(w.message)]
    assert (tmp_path / "h3.png").stat().st_size > 10_000


def test_chinese_figures_fall_back_to_english_without_a_cjk_font(monkeypatch):
    from resdeg.report import figures as F

    monkeypatch.setattr(F, "cjk_font", lambda: None)
    with pytest.warns(UserWarning, match="no CJK font"):
        assert F.figure_language("zh") == "en"
    assert F.figure_language("en") == "en"


# -- the built site -----------------------------------------------------------------------------------

def test_mkdocs_build_strict_offline_site(site):
    assert not re.search(r"^WARNING\b", site.log, re.M), site.log
    for name in PAGES:
        sub = "" if name == "index" else f"{name}/"
        assert (site.dir / sub / "index.html").exists() and (site.dir / "zh" / sub / "index.html").exists()
    assert (site.dir / "assets" / "vendor" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    external = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//(?!127\.0\.0\.1|localhost)""", re.I)
    for path in site.dir.rglob("*"):
        if path.suffix in (".html", ".css") and path.is_file():
            text = path.read_text(errors="replace")
            assert not external.search(text), (path, external.search(text).group(0))
            assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, path
    index = json.loads((site.dir / "search" / "search_index.json").read_text())
    assert any("\u200b" in d["text"] and d["location"].startswith("zh/") for d in index["docs"])  # segmented Chinese


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (CI installs Debian's chromium and chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def served(site):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=site.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(10)


def _wait(driver, script, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script(script):
            return True
        time.sleep(0.1)
    return False


def test_site_in_a_real_browser(served):
    driver = _browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        for lang in LANGS:
            other = "zh" if lang == "en" else "en"
            for name in PAGES:
                path = ("" if lang == "en" else "zh/") + ("" if name == "index" else f"{name}/")
                driver.get(served + path)
                assert _wait(driver, "return document.readyState === 'complete' && "
                                     "Array.from(document.images).every(i => i.complete)"), path
                assert driver.execute_script("return document.documentElement.lang") == lang
                widths = driver.execute_script("return Array.from(document.images).map(i => [i.src, i.naturalWidth])")
                assert all(w > 0 for _, w in widths), (path, widths)
                if name == "method":  # formulas typeset by the site's own MathJax
                    assert _wait(driver, "return document.querySelectorAll('mjx-container svg').length > 10"), path
                driver.save_screenshot(str(ARTIFACTS / f"{lang}-{name}.png"))
                switch = driver.execute_script(
                    f"return document.querySelector('.md-select a[hreflang=\"{other}\"]').href")
                expected = served + ("" if other == "en" else "zh/") + ("" if name == "index" else f"{name}/")
                assert switch == expected, (path, switch)
                driver.get(switch)
                assert _wait(driver, f"return document.documentElement.lang === '{other}'"), switch
                errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
                assert not errors, (path, errors)
        # Chinese search: type a word into the zh site's search box and wait for results
        driver.get(served + "zh/h1/")
        driver.execute_script("document.querySelector('label[for=__search]').click()")
        box = driver.find_element("css selector", "input.md-search__input")
        box.send_keys("过拟合")
        assert _wait(driver, "return document.querySelectorAll('.md-search-result__item').length > 0"), \
            "Chinese search found nothing"
        driver.save_screenshot(str(ARTIFACTS / "zh-search.png"))
    finally:
        driver.quit()


def test_run_all_trains_probes_then_renders_the_report(tmp_path):
    from conftest import TINY

    grid = ["run-all", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet", *TINY,
            "--set", "epochs=1", "--models", "resnet18", "--variants", "FULL,Nres", "--probe-images", "40",
            "--results", tmp_path / "results"]
    cli(*grid, "--no-report", "--docs", tmp_path / "none")
    assert not (tmp_path / "none").exists()
    out = cli(*grid, "--docs", tmp_path / "docs")
    assert "report: smoke/synthetic, 2 runs" in out.stderr
    h3 = page(tmp_path / "docs", "en", "h3")
    for e in scan(tmp_path / "results"):
        assert e.doc["config_hash"] in page(tmp_path / "docs", "zh", "reproducibility")
        probe = json.loads(next(e.path.glob("probe-*.json")).read_text())  # written by `resdeg probe`
        assert f"{probe['criteria']['fisher_trace_ratio']['stage0']:.4g}" in h3
