"""The landing page answers first: one computed paragraph, within its word budget, each number as
people write it, no sentence twice. Rendered from the committed results (no figures drawn)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from resdeg.report import pages
from resdeg.report.collect import load_store

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="module")
def landing():
    if not any(RESULTS.glob("depth/*/*/run.json")):
        pytest.skip("no committed depth study")
    store = load_store(RESULTS)
    env = pages.environment()
    out = {}
    for lang in pages.LANGS:
        ctx = pages.site_context(store, lang, {"index": ["headline.png"]}, {"index": ["runs.csv"]})
        ctx["anchors"] = None
        out[lang] = pages.render(env, "index", ctx)
    return out


def first_screen(text: str) -> str:
    head = text[:text.index("<figure")]
    head = re.sub(r"\]\([^)]*\)", "]", head)  # link targets are not read
    return re.sub(r"[#*\[\]`]", "", head)


def test_the_answer_comes_first_within_its_budget(landing):
    en, zh = first_screen(landing["en"]), first_screen(landing["zh"])
    assert len(en.split()) <= 300
    assert len(re.findall(r"[\u4e00-\u9fff]", zh)) <= 600
    # the synthesis names what degrades, each hypothesis and both components, with deciding numbers
    for words in ("degrade", "(H1)", "(H2)", "(H3)", "residual connections keep", "BatchNorm keeps",
                  "points (95% interval"):
        assert words in en, words
    for words in ("退化", "（H1）", "（H2）", "（H3）", "残差连接让", "批归一化则"):
        assert words in zh, words


def test_numbers_are_written_as_people_write_them(landing):
    for lang, text in landing.items():
        head = first_screen(text)
        assert not re.search(r"\d\.\d+e[+-]\d", head), lang  # no 5.72e-01
        assert "pp [" not in head and "noise ±" not in head and "噪声 ±" not in head, lang
        assert not re.search(r"\([^()]*\([^()]*\)[^()]*\)", head), lang  # no nested brackets
        assert not re.search(r"（[^（）]*（[^（）]*）[^（）]*）", head), lang


def test_no_sentence_appears_twice_on_the_landing_page(landing):
    for lang, text in landing.items():
        splitter = r"(?<=[.!?])\s+" if lang == "en" else r"(?<=[。！？])"
        body = re.sub(r"<[^>]+>|\|[^\n]*\|", " ", text)  # figures and table rows are not prose
        sentences = [s.strip() for s in re.split(splitter, body) if len(s.strip()) > 40]
        repeated = {s for s in sentences if sentences.count(s) > 1}
        assert not repeated, (lang, repeated)


@pytest.mark.parametrize("x, text", [(0.5806, "0.58"), (2.04, "2.0"), (27.5, "28"), (3616.8, "3,600"),
                                     (1.8e-22, "2 × 10⁻²²"), (1.02e-7, "10⁻⁷"), (0.0319, "0.032")])
def test_ratios_read_as_people_write_them(x, text):
    assert pages.human(x) == text


def test_differences_read_in_points_with_their_interval_in_words():
    from resdeg.report.verdicts import Estimate

    e = Estimate(-0.3236, -0.4066, -0.2406, (3, 3))
    assert pages.points(e) == "32.4 points (95% interval 24.1 to 40.7)"
    assert pages.signed(Estimate(-0.0092, -0.0202, 0.0018, (3, 3))) == "−0.9 points (95% interval −2.0 to +0.2)"
    assert pages.signed(e, "zh") == "−32.4 个百分点（95% 区间 −40.7 至 −24.1）"


def test_the_original_study_stands_beside_its_protocols_runs():
    store = load_store(RESULTS)
    sr = store.study("original")
    if sr is None:
        pytest.skip("no committed run of the original protocol")
    from resdeg.report import anchors

    ctx = pages.study_context(store, sr, "en", {"h1": []}, {"h1": []})
    ctx["anchors"] = anchors
    text = pages.render(pages.environment(), "h1", ctx)
    text = text.split("## Beside the original study's own results")[1].split("\n## ")[0]
    rows = {tuple(line.split(" | ")[:2]): line for line in text.splitlines() if line.startswith("| resnet")}
    assert len(rows) == 8  # every cell of the original grid, trained here or not
    for (model, variant), (test, _train) in anchors.ORIGINAL_FINAL.items():
        line = rows[(f"| {model}", variant)]
        assert f" {test:.2f} " in line
        if not sr.cell(model, variant):
            assert "not yet run (needs a GPU)" in line
    assert "-0.00" not in text and "The test accuracies differ by at most" in text


def test_the_answer_says_which_gap_lasts_through_training():
    """Where the depth pair was measured as it trained, the answer says which difference lasts, with
    the numbers at the end: the ones the mechanism page's table shows."""
    from resdeg.report import answer

    store = load_store(RESULTS)
    tt = answer.synthesis(store)["training"]
    if tt is None:
        pytest.skip("no depth pair measured while training")
    env, end = pages.environment(), tt["steps"][-1]
    text = {lang: first_screen(pages.render(env, "index", {
        **pages.site_context(store, lang, {"index": ["headline.png"]}, {"index": ["runs.csv"]}), "anchors": None}))
        for lang in pages.LANGS}
    if tt["sharper_throughout"] and not tt["shattered_throughout"]:
        numbers = f"{pages.short(end['deep']['corr'])} vs {pages.short(end['shallow']['corr'])}"
        assert f"the correlation gap does not last ({numbers} at the end)" in text["en"]
        assert f"stays sharper (λmax {pages.short(end['lambda_ratio'])}×)" in text["en"]
        assert "相关系数的差距并非始终存在" in text["zh"] and "曲面始终更尖锐" in text["zh"]
    elif tt["shattered_throughout"] and tt["sharper_throughout"]:
        assert "consistent with a cause" in text["en"] and "相容" in text["zh"]
