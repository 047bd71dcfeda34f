"""H4 (shattered gradients) and H5 (curvature) as declared hypotheses: their rules on known inputs,
the residual control of a plain depth pair, and the mechanism page rendered from the committed
measurements at initialisation (no figures drawn)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from resdeg.report import analysis as A
from resdeg.report import pages as P
from resdeg.report import verdicts as V
from resdeg.report.collect import load_store
from resdeg.study import HYPOTHESES, PAGES, STUDY_PAGES

RESULTS = Path(__file__).resolve().parents[1] / "results"


def side(label, test, corr=(), lam=(), train=None):
    return V.Side(label, list(test), list(train or test), test_n=10_000, clean_n=5_000,
                  grad_corr=list(corr), log_lambda_max=[math.log10(x) for x in lam])


SHALLOW = dict(test=(0.80, 0.81, 0.79), train=(0.83, 0.84, 0.82))
DEEP = dict(test=(0.52, 0.46, 0.52), train=(0.52, 0.46, 0.53))


def test_h4_and_h5_are_declared_once_with_their_rules_and_page():
    ids = [h.id for h in HYPOTHESES]
    assert ids == ["H1", "H2", "H3", "H4", "H5"] and list(V.RULE_FUNCTIONS) == ids
    assert all(V.RULES[h][lang] for h in ids for lang in ("en", "zh"))
    assert "mechanism" in STUDY_PAGES["depth"] and "mechanism" in PAGES
    assert {h.page for h in HYPOTHESES if h.id in ("H4", "H5")} == {"mechanism"}


def test_the_worse_net_more_shattered_and_sharper_beyond_noise_is_supported():
    a = side("plain-20", corr=(0.48, 0.46, 0.37), lam=(51, 113, 141), **SHALLOW)
    b = side("plain-56", corr=(0.005, 0.003, 0.011), lam=(4e6, 1.5e7, 1.1e7), **DEEP)
    v4, v5 = V.h4("Nres: 20 vs 56", a, b, depth=True), V.h5("Nres: 20 vs 56", a, b, depth=True)
    assert (v4.outcome, v4.reason, v4.worse) == ("supported", "more_shattered", "plain-56")
    assert (v5.outcome, v5.reason) == ("supported", "sharper")
    assert "0.01 over 3 seeds" in v4.explain("en") and "9 × 10⁶" in v5.explain("en")
    # the other way round: a worse net that is less shattered and flatter is not explained by them
    c = side("plain-56", corr=(0.9, 0.92, 0.91), lam=(1, 2, 1.5), **DEEP)
    assert V.h4("x", a, c, depth=True).reason == "less_shattered" and V.h5("x", a, c, depth=True).reason == "flatter"


def test_one_seed_or_an_interval_across_zero_decides_nothing():
    a = side("a", corr=(0.45,), lam=(90,), test=(0.80,), train=(0.83,))
    b = side("b", corr=(0.01,), lam=(1e7,), test=(0.50,), train=(0.50,))
    assert V.h4("x", a, b, depth=True).reason == "measure_unclear"
    a3 = side("a", corr=(0.40, 0.02, 0.30), lam=(90, 90, 90), **SHALLOW)
    b3 = side("b", corr=(0.30, 0.01, 0.35), lam=(80, 100, 90), **DEEP)
    assert V.h4("x", a3, b3, depth=True).outcome == "inconclusive"
    assert V.h5("x", a3, b3, depth=True).outcome == "inconclusive"
    # not measured on one side: said so, not judged
    assert V.h4("x", side("a", **SHALLOW), b3, depth=True).reason == "not_measured"


def test_the_residual_pair_of_the_same_depths_is_the_control_of_a_plain_depth_pair():
    plain = (side("plain-20", corr=(0.48, 0.46, 0.37), lam=(51, 113, 141), **SHALLOW),
             side("plain-56", corr=(0.005, 0.003, 0.011), lam=(4e6, 1.5e7, 1.1e7), **DEEP))
    keeps = (side("res-20", corr=(0.86, 0.87, 0.83), lam=(52, 117, 87), **SHALLOW),
             side("res-56", corr=(0.65, 0.57, 0.62), lam=(538, 525, 302), **SHALLOW))
    v4 = V.h4("Nres: 20 vs 56", *plain, depth=True, control=keeps)
    v5 = V.h5("Nres: 20 vs 56", *plain, depth=True, control=keeps)
    # the residual nets keep 72% of their correlation and gain under one decade of curvature
    assert (v4.outcome, v4.reason) == ("supported", "more_shattered_control")
    assert (v5.outcome, v5.reason) == ("supported", "sharper_control")
    assert v4.numbers["control_change"] == pytest.approx(0.6133 / 0.8533 - 1, abs=1e-3)
    # residual nets that lose as large a share: the change no longer singles out the plain nets
    loses = (keeps[0], side("res-56", corr=(0.01, 0.02, 0.015), lam=(5e6, 9e6, 1e7), **SHALLOW))
    assert V.h4("x", *plain, depth=True, control=loses).reason == "control_too"
    assert V.h5("x", *plain, depth=True, control=loses).reason == "control_too"


def test_a_net_that_did_not_learn_is_not_explained_by_h4_or_h5():
    a = side("FULL", corr=(0.85, 0.86, 0.84), lam=(80, 90, 70), **SHALLOW)
    stuck = side("Nboth", corr=(0.9, 0.9, 0.9), lam=(1, 1, 1), test=(0.10, 0.10, 0.10), train=(0.10, 0.10, 0.10))
    assert V.h4("x", a, stuck).reason == "did_not_learn" and V.h5("x", a, stuck).reason == "did_not_learn"


@pytest.fixture(scope="module")
def depth_study():
    if not any(RESULTS.glob("depth/*/init/*-optim-*.json")):
        pytest.skip("no committed measurements at initialisation")
    store = load_store(RESULTS)
    return store, store.study("depth")


def test_the_mechanism_page_states_the_committed_measurements(depth_study):
    store, sr = depth_study
    rows = A.at_init_by_depth(sr)
    files = {}
    for path in RESULTS.glob("depth/*/init/*-optim-*.json"):
        doc = json.loads(path.read_text())
        if doc["status"] == "done":
            files.setdefault((doc["net"]["model"], doc["net"]["variant"]), []).append(doc)
    for r in rows:  # every row is exactly what its files hold
        docs = files[(r["model"], r["variant"])]
        assert sorted(r["seeds"]) == sorted(d["net"]["seed"] for d in docs)
        assert sorted(c for c in r["corr"] if c is not None) == \
            sorted(d["gradients"]["at_summary"]["input"] for d in docs if d["gradients"]["at_summary"]["input"] is not None)
    env = P.environment()
    for lang in P.LANGS:
        ctx = P.study_context(store, sr, lang, {"mechanism": []}, {"mechanism": ["optim_init.csv"]})
        text = P.render(env, "mechanism", ctx)
        plain = A.at_init_row(rows, sr.models[-1], "Nres")
        assert f"{plain['corr_mean']:.2f}".rstrip("0") in text
        for h in ("H4", "H5"):
            assert V.RULES[h][lang] in text
        assert ("Beside the literature" if lang == "en" else "与文献对照") in text


# -- H3 against the untrained net ----------------------------------------------------------------------

def _probed(trained: dict, init: dict | None):
    from types import SimpleNamespace

    stages = tuple(next(iter(trained.values())))
    return SimpleNamespace(probe=SimpleNamespace(stages=stages, criteria=trained),
                           init_probe=init and SimpleNamespace(criteria=init))


def test_h3_measures_the_fall_against_the_untrained_net_of_the_same_seed():
    # random features lose separability with depth by themselves: 0.33 -> 0.22 untrained
    init = {"linear_probe_acc": {"stage0": 0.33, "stage3": 0.22}, "nc1": {"stage0": 3.5, "stage3": 2.2}}
    fell_less = _probed({"linear_probe_acc": {"stage0": 0.30, "stage3": 0.25}, "nc1": {"stage0": 3.0, "stage3": 2.5}},
                        init)
    # trained alone the probe accuracy falls; against the untrained net's own fall it rises
    assert A.sep_change(fell_less, "linear_probe_acc") == pytest.approx(-0.05)
    assert A.sep_change(fell_less, "linear_probe_acc", control=True) == pytest.approx(-0.05 + 0.11)
    # nc1 is lower-is-better: its sign flips, control included
    assert A.sep_change(fell_less, "nc1", control=True) == pytest.approx(-((2.5 - 3.0) - (2.2 - 3.5)))
    # no init probe: no controlled value
    assert A.sep_change(_probed({"linear_probe_acc": {"stage0": 0.3, "stage3": 0.25}}, None), "linear_probe_acc",
                        control=True) is None


def test_an_h3_verdict_says_whether_it_was_measured_against_initialisation():
    changes = {"linear_probe_acc": [0.2, 0.25, 0.22], "knn_acc": [0.3, 0.28, 0.31]}
    worse = V.Side("plain-56", [0.50, 0.46, 0.52], [0.52, 0.46, 0.53], test_n=10_000, clean_n=5_000,
                   sep_change=changes, sep_controlled=True)
    better = V.Side("plain-20", [0.80, 0.81, 0.79], [0.83, 0.84, 0.82], test_n=10_000, clean_n=5_000,
                    sep_change=changes, sep_controlled=True)
    v = V.h3("Nres: 20 vs 56", better, worse, depth=True)
    assert v.reason == "no_loss" and "fall more than at initialisation" in v.explain("en")
    assert "比初始化时下降得更多" in v.explain("zh")
