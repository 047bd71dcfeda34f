"""The verdict rules and their statistics on constructed numbers: Welch intervals against scipy,
H1-H3 on made-up sides (the rules the method page states)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from report_fixture import build_store

from resdeg.report import verdicts


def test_t_quantiles_match_scipy_for_whole_and_fractional_df():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 1.41, 2, 2.5, 3, 5, 7.9, 10, 29, 33.3, 75.0, 120, 500.0, 1e6):
        assert verdicts.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


def test_welch_interval_matches_scipy_with_a_fractional_df():
    stats = pytest.importorskip("scipy.stats")
    a, b = np.array([0.733, 0.736, 0.678]), np.array([0.337, 0.253])  # unequal n and spread: df ~ 1.4
    e = verdicts.difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-4)
    assert e.sign == 1  # every run of a beats every run of b by 34+ points: decided


def test_welch_interval_matches_scipy_when_df_is_whole():
    stats = pytest.importorskip("scipy.stats")
    a, b = np.array([0.70, 0.72, 0.74]), np.array([0.80, 0.82, 0.84])  # equal variances: df = 4 exactly
    e = verdicts.difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), abs=1e-3)
    assert e.sign == -1
    one = verdicts.difference([0.7], [0.8])
    assert not one.has_interval and one.sign == -1  # a single seed: decided on the point values


def test_the_largest_effect_named_on_the_landing_page_is_one_beyond_noise():
    from resdeg.report.answer import ComponentAnswer

    def effect(label, low, value, high):
        return {"label": label, "stuck": False, "dtest": verdicts.Estimate(value, low, high, (2, 2))}

    undecided = effect("wide", -0.87, -0.34, 0.19)  # bigger, but its interval includes zero
    decided = effect("clear", -0.12, -0.08, -0.04)
    a = ComponentAnswer("residual", [undecided, decided, {**decided, "label": "stuck", "stuck": True}])
    assert a.largest()["label"] == "clear"
    assert ComponentAnswer("residual", [undecided]).largest() is None


def side(label, test, clean, **kw):
    return verdicts.Side(label, list(test), list(clean), **kw)


HEALTHY = dict(test=[0.80, 0.81, 0.79], clean=[0.95, 0.96, 0.95])


def test_h1_supported_when_the_worse_model_is_shown_to_fit_as_well_but_generalises_worse():
    ok = side("ok", [0.80, 0.81, 0.79], [0.955, 0.956, 0.955])
    v = verdicts.h1("c", ok, side("deg", [0.70, 0.71, 0.69], [0.961, 0.960, 0.962]))  # fits better, beyond noise
    assert (v.outcome, v.reason, v.worse, v.numbers["equal_fit"]) == ("supported", "overfits", "deg", "better")
    assert v.numbers["gap_diff"]["low"] > 0 and not v.single_seed
    # both at the training-set ceiling: equal fit, though the train difference is not significant
    v = verdicts.h1("c", side("ok", [0.80, 0.81, 0.79], [1.0, 0.995, 0.999]),
             side("deg", [0.70, 0.71, 0.69], [0.992, 1.0, 0.996]))
    assert (v.outcome, v.numbers["equal_fit"]) == ("supported", "ceiling")
    assert "both at the ceiling of 99%" in v.explain("en") and "上限" in v.explain("zh")
    # below the ceiling, a train interval inside +-1 point is equivalence
    v = verdicts.h1("c", side("ok", [0.80, 0.81, 0.79], [0.900, 0.901, 0.902]),
             side("deg", [0.70, 0.71, 0.69], [0.901, 0.900, 0.902]))
    assert (v.outcome, v.numbers["equal_fit"]) == ("supported", "equivalent")


def test_h1_failing_to_reject_a_train_difference_is_not_equal_fit():
    # the interval of the train difference includes zero but reaches far beyond +-1 point: undecided
    v = verdicts.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.96, 0.95, 0.96]))
    assert (v.outcome, v.reason) == ("inconclusive", "fit_undecided")
    d = v.numbers["eval_train_diff"]
    assert d["low"] < 0 < d["high"] and d["high"] > verdicts.EQUIVALENCE_MARGIN
    assert (v.explain("en").startswith("Whether deg fits the training set as well is not shown")
            and "无法证明" in v.explain("zh"))


def test_h1_not_supported_when_the_worse_model_is_worse_on_train_too():
    v = verdicts.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.80, 0.81, 0.79]))
    assert (v.outcome, v.reason) == ("not_supported", "worse_on_train")
    assert "worse on the training set" in v.explain("en") and "训练集" in v.explain("zh")


def test_h1_inconclusive_without_a_significant_test_difference():
    v = verdicts.h1("c", side("a", [0.80, 0.70, 0.90], [0.9] * 3), side("b", [0.78, 0.88, 0.69], [0.9] * 3))
    assert (v.outcome, v.reason, v.worse) == ("inconclusive", "undecided", None)  # seeds: an interval across zero


def test_h1_inconclusive_when_the_train_accuracy_is_too_noisy_to_show_equal_fit():
    # the worse model's clean train accuracy is noisy: neither lower nor shown to be as high
    v = verdicts.h1("c", side("ok", **HEALTHY), side("deg", [0.70, 0.71, 0.69], [0.70, 0.99, 0.85]))
    assert (v.outcome, v.reason) == ("inconclusive", "fit_undecided")


def test_h1_single_seed_decides_on_point_values_beyond_noise_and_says_so():
    v = verdicts.h1("c", side("ok", [0.8], [0.95], test_n=10_000, eval_train_n=5_000),
             side("deg", [0.7], [0.97], test_n=10_000, eval_train_n=5_000))
    assert v.outcome == "supported" and v.single_seed and v.numbers["equal_fit"] == "better"


def test_one_seed_against_several_gets_the_seed_spread_of_the_several():
    several, one = [0.80, 0.86, 0.92], [0.83]  # seeds scatter by 6 points; the single run sits inside
    e = verdicts.difference(several, one, variance=0.8 * 0.2 / 10_000 * 2)
    half = verdicts.t975(2) * np.std(several, ddof=1) * math.sqrt(1 / 3 + 1)  # a prediction interval, df = k - 1
    assert (e.low, e.high) == pytest.approx((0.03 - half, 0.03 + half))
    assert e.sign == 0  # the binomial noise of one run (about 1.1 points) would have called +3 points decided
    assert verdicts.difference(one, several).high == pytest.approx(-e.low)  # the same interval either way round
    # a spread below the noise of one run never narrows the interval beneath that noise
    tight = verdicts.difference([0.800, 0.801, 0.802], [0.83], variance=0.8 * 0.2 / 10_000 * 2)
    assert tight.high - tight.value == pytest.approx(tight.noise) and tight.noise >= verdicts.MIN_DIFFERENCE


def test_h1_one_seed_against_seeds_that_scatter_is_not_decided_by_binomial_noise():
    # ResNet50 FULL at 32 px: three seeds, one fitting the training set 10 points better than the others
    full = side("FULL", [0.637, 0.638, 0.654], [0.818, 0.820, 0.925], test_n=10_000, eval_train_n=5_000)
    nbn = side("Nbn", [0.702], [0.854], test_n=10_000, eval_train_n=5_000)
    v = verdicts.h1("c", full, nbn)
    assert v.single_seed and v.worse == "FULL" and v.numbers["test_diff"]["high"] < 0  # 5-6 points: decided
    assert (v.outcome, v.reason) == ("inconclusive", "fit_undecided")
    assert v.numbers["gap_diff"]["low"] < 0 < v.numbers["gap_diff"]["high"]


def test_single_seed_difference_within_the_noise_of_one_run_is_inconclusive():
    # 0.2 points on 512 test images: far below twice the binomial standard error (about 5 points)
    a = side("a", [0.800], [0.95], test_n=512, eval_train_n=256)
    b = side("b", [0.798], [0.99], test_n=512, eval_train_n=256)
    for rule in (verdicts.h1, verdicts.h2, verdicts.h3):
        v = rule("c", a, b)
        assert (v.outcome, v.reason) == ("inconclusive", "no_degradation"), rule
        assert v.numbers["test_diff"]["value"] == pytest.approx(-0.002)  # second minus first, as the pages say
        assert v.explain("en").startswith("Test accuracies do not differ beyond noise (-0.20 pp")
    d = verdicts.compare(b, a, "test_acc")
    assert d.sign == 0 and d.noise == pytest.approx(2 * math.sqrt(0.8 * 0.2 / 512 + 0.798 * 0.202 / 512), rel=0.01)
    # never less than 1 point, however many images
    big = verdicts.compare(side("x", [0.905], [0.9], test_n=10**7), side("y", [0.900], [0.9], test_n=10**7), "test_acc")
    assert big.noise == verdicts.MIN_DIFFERENCE and big.sign == 0


def test_a_model_at_chance_did_not_learn_and_nothing_explains_it():
    stuck = side("stuck", [0.104], [0.101], test_n=10_000, eval_train_n=5_000, log_ratio=[-5.0])
    ok = side("ok", [0.80], [0.95], test_n=10_000, eval_train_n=5_000, log_ratio=[0.0])
    assert stuck.did_not_learn and not ok.did_not_learn
    for rule in (verdicts.h1, verdicts.h2, verdicts.h3):
        v = rule("c", ok, stuck)
        assert (v.outcome, v.reason) == ("inconclusive", "did_not_learn")
        assert "stuck did not learn" in v.explain("en") and "没有学会" in v.explain("zh")
    both = verdicts.h1("c", side("lost", [0.1], [0.1], test_n=10_000), stuck)
    assert both.explain("en").startswith("lost and stuck did not learn")
    assert both.explain("zh").startswith("lost 和 stuck 没有学会")  # spaces between Latin and Chinese
    assert not side("learnt", [0.13], [0.13], test_n=10_000).did_not_learn  # 3 points above chance


def test_a_depth_pair_explains_only_the_deeper_nets_degradation():
    # the shallower net is the worse one: as an ablation the rules judge it, as a depth pair they do not
    shallow = side("resnet20", [0.70, 0.71, 0.69], [0.80, 0.81, 0.79], log_ratio=[0.0] * 3)
    deep = side("resnet32", [0.80, 0.81, 0.79], [0.95, 0.96, 0.95], log_ratio=[0.0] * 3)
    for rule in (verdicts.h1, verdicts.h2, verdicts.h3):
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


def test_h2_supported_when_only_the_worse_model_vanishes():
    v = verdicts.h2("c", side("ok", **HEALTHY, log_ratio=ratios(0.5)),
             side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e-5)))
    assert (v.outcome, v.numbers["worse_symptom"], v.numbers["better_symptom"]) == (
        "supported", "vanishing", "none")


def test_h2_supported_when_the_worse_model_diverged():
    v = verdicts.h2("c", side("ok", **HEALTHY, log_ratio=ratios(2.0)), side("deg", [0.3] * 3, [0.3] * 3, diverged=1,
                                                                   log_ratio=ratios(1.0, 2)))
    assert (v.outcome, v.numbers["worse_symptom"]) == ("supported", "exploding")


def test_h2_not_supported_when_both_or_neither_show_a_symptom():
    both = verdicts.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1e-4)),
                side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e-5)))
    assert (both.outcome, both.reason) == ("not_supported", "symptom_both")
    neither = verdicts.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1.0)),
                   side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(0.1)))
    assert (neither.outcome, neither.reason) == ("not_supported", "no_symptom")
    exploding = verdicts.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1.0)),
                     side("deg", [0.5] * 3, [0.5] * 3, log_ratio=ratios(1e5)))
    assert exploding.outcome == "supported" and exploding.numbers["worse_symptom"] == "exploding"


def test_h2_inconclusive_when_the_interval_straddles_the_threshold():
    straddle = [math.log10(1e-3) + d for d in (-1.0, 0.0, 1.0)]
    v = verdicts.h2("c", side("ok", **HEALTHY, log_ratio=ratios(1.0)),
                    side("deg", [0.5] * 3, [0.5] * 3, log_ratio=straddle))
    assert (v.outcome, v.numbers["worse_symptom"]) == ("inconclusive", "unclear")


def changes(sign, m=5, k=None):
    """m criteria, the first k (default all) changing by `sign` over three seeds, the rest by -sign."""
    k = m if k is None else k
    return {f"c{i}": [s * x for x in (0.10, 0.12, 0.11)] for i, s in
            enumerate([sign] * k + [-sign] * (m - k))}


def test_h3_supported_when_only_the_worse_model_loses_separability():
    v = verdicts.h3("c", side("ok", **HEALTHY, sep_change=changes(+1)),
             side("deg", [0.5] * 3, [0.5] * 3, sep_change=changes(-1, k=4)))
    assert (v.outcome, v.reason) == ("supported", "loss_only_worse")
    assert (v.numbers["worse"]["k"], v.numbers["worse"]["m"]) == (4, 5)


def test_h3_not_supported_when_separability_rises_or_falls_in_both():
    rises = verdicts.h3("c", side("ok", **HEALTHY, sep_change=changes(+1)),
                 side("deg", [0.5] * 3, [0.5] * 3, sep_change=changes(+1)))
    assert (rises.outcome, rises.reason) == ("not_supported", "no_loss")
    both = verdicts.h3("c", side("ok", **HEALTHY, sep_change=changes(-1)),
                side("deg", [0.5] * 3, [0.5] * 3, sep_change=changes(-1)))
    assert (both.outcome, both.reason) == ("not_supported", "loss_both")


def test_h3_inconclusive_when_criteria_disagree_or_are_noisy():
    split = {**changes(-1, m=2), **{f"n{i}": [-0.1, 0.1, 0.0] for i in range(3)}}  # 2 fall, 3 unclear
    v = verdicts.h3("c", side("ok", **HEALTHY, sep_change=changes(+1)),
                    side("deg", [0.5] * 3, [0.5] * 3, sep_change=split))
    assert (v.outcome, v.reason) == ("inconclusive", "loss_unclear")
    assert verdicts.information_loss(
        side("x", [0.5], [0.5], sep_change={"a": [-1.0], "b": [1.0]}))["outcome"] == "inconclusive"


def test_h3_one_seed_decides_nothing_and_width_dependent_criteria_do_not_vote(rendered):
    # a single seed's change has no measured spread: however large, it counts neither way
    loss = verdicts.information_loss(side("x", [0.5], [0.5], sep_change={f"c{i}": [-0.5] for i in range(5)}))
    assert (loss["k"], loss["m"], loss["outcome"]) == (0, 5, "inconclusive")
    from resdeg.probes.criteria import CRITERIA
    from resdeg.report import analysis
    sr = build_store(rendered).study("native")
    votes = analysis.side(sr, "resnet18", "FULL").sep_change
    assert votes and not {c for c in votes if CRITERIA[c].width_dependent}
    assert "fisher_channel_maps" in analysis.criteria_present(sr.runs)  # shown, not counted
