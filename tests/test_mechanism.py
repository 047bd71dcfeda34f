"""H4 (shattered gradients) and H5 (curvature) as declared hypotheses: their rules on known inputs,
the residual control of a plain depth pair, and the mechanism page rendered from the committed
measurements at initialisation (no figures drawn)."""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import pytest

from resdeg.report import analysis, pages, verdicts
from resdeg.report.collect import depth as depth_of
from resdeg.report.collect import load_store
from resdeg.study import HYPOTHESES, PAGES, STUDY_PAGES

RESULTS = Path(__file__).resolve().parents[1] / "results"


def side(label, test, corr=(), lam=(), train=None):
    return verdicts.Side(label, list(test), list(train or test), test_n=10_000, eval_train_n=5_000,
                  grad_corr=list(corr), log_lambda_max=[math.log10(x) for x in lam])


SHALLOW = dict(test=(0.80, 0.81, 0.79), train=(0.83, 0.84, 0.82))
DEEP = dict(test=(0.52, 0.46, 0.52), train=(0.52, 0.46, 0.53))


def test_h4_and_h5_are_declared_once_with_their_rules_and_page():
    ids = [h.id for h in HYPOTHESES]
    assert ids == ["H1", "H2", "H3", "H4", "H5"] and list(verdicts.RULE_FUNCTIONS) == ids
    assert all(verdicts.RULES[h][lang] for h in ids for lang in ("en", "zh"))
    assert "mechanism" in STUDY_PAGES["depth"] and "mechanism" in PAGES
    assert {h.page for h in HYPOTHESES if h.id in ("H4", "H5")} == {"mechanism"}


def test_the_worse_net_more_shattered_and_sharper_beyond_noise_is_supported():
    a = side("plain-20", corr=(0.48, 0.46, 0.37), lam=(51, 113, 141), **SHALLOW)
    b = side("plain-56", corr=(0.005, 0.003, 0.011), lam=(4e6, 1.5e7, 1.1e7), **DEEP)
    v4, v5 = verdicts.h4("Nres: 20 vs 56", a, b, depth=True), verdicts.h5("Nres: 20 vs 56", a, b, depth=True)
    assert (v4.outcome, v4.reason, v4.worse) == ("supported", "more_shattered", "plain-56")
    assert (v5.outcome, v5.reason) == ("supported", "sharper")
    assert "0.01 over 3 seeds" in v4.explain("en") and "9 × 10⁶" in v5.explain("en")
    # the other way round: a worse net that is less shattered and flatter is not explained by them
    c = side("plain-56", corr=(0.9, 0.92, 0.91), lam=(1, 2, 1.5), **DEEP)
    assert verdicts.h4("x", a, c, depth=True).reason == "less_shattered"
    assert verdicts.h5("x", a, c, depth=True).reason == "flatter"


def test_one_seed_or_an_interval_across_zero_decides_nothing():
    a = side("a", corr=(0.45,), lam=(90,), test=(0.80,), train=(0.83,))
    b = side("b", corr=(0.01,), lam=(1e7,), test=(0.50,), train=(0.50,))
    assert verdicts.h4("x", a, b, depth=True).reason == "measure_unclear"
    a3 = side("a", corr=(0.40, 0.02, 0.30), lam=(90, 90, 90), **SHALLOW)
    b3 = side("b", corr=(0.30, 0.01, 0.35), lam=(80, 100, 90), **DEEP)
    assert verdicts.h4("x", a3, b3, depth=True).outcome == "inconclusive"
    assert verdicts.h5("x", a3, b3, depth=True).outcome == "inconclusive"
    # not measured on one side: said so, not judged
    assert verdicts.h4("x", side("a", **SHALLOW), b3, depth=True).reason == "not_measured"


def test_the_residual_pair_of_the_same_depths_is_the_control_of_a_plain_depth_pair():
    plain = (side("plain-20", corr=(0.48, 0.46, 0.37), lam=(51, 113, 141), **SHALLOW),
             side("plain-56", corr=(0.005, 0.003, 0.011), lam=(4e6, 1.5e7, 1.1e7), **DEEP))
    keeps = (side("res-20", corr=(0.86, 0.87, 0.83), lam=(52, 117, 87), **SHALLOW),
             side("res-56", corr=(0.65, 0.57, 0.62), lam=(538, 525, 302), **SHALLOW))
    v4 = verdicts.h4("Nres: 20 vs 56", *plain, depth=True, control=keeps)
    v5 = verdicts.h5("Nres: 20 vs 56", *plain, depth=True, control=keeps)
    # the residual nets keep 72% of their correlation and gain under one decade of curvature
    assert (v4.outcome, v4.reason) == ("supported", "more_shattered_control")
    assert (v5.outcome, v5.reason) == ("supported", "sharper_control")
    assert v4.numbers["control_change"] == pytest.approx(0.6133 / 0.8533 - 1, abs=1e-3)
    # residual nets that lose as large a share: the change no longer singles out the plain nets
    loses = (keeps[0], side("res-56", corr=(0.01, 0.02, 0.015), lam=(5e6, 9e6, 1e7), **SHALLOW))
    assert verdicts.h4("x", *plain, depth=True, control=loses).reason == "control_too"
    assert verdicts.h5("x", *plain, depth=True, control=loses).reason == "control_too"


def test_a_net_that_did_not_learn_is_not_explained_by_h4_or_h5():
    a = side("FULL", corr=(0.85, 0.86, 0.84), lam=(80, 90, 70), **SHALLOW)
    stuck = side("Nboth", corr=(0.9, 0.9, 0.9), lam=(1, 1, 1), test=(0.10, 0.10, 0.10), train=(0.10, 0.10, 0.10))
    assert verdicts.h4("x", a, stuck).reason == "did_not_learn" and verdicts.h5("x", a, stuck).reason == "did_not_learn"


@pytest.fixture(scope="module")
def depth_study():
    if not any(RESULTS.glob("depth/*/init/*-optim-*.json")):
        pytest.skip("no committed measurements at initialisation")
    store = load_store(RESULTS)
    return store, store.study("depth")


def test_the_mechanism_page_states_the_committed_measurements(depth_study):
    store, sr = depth_study
    rows = analysis.at_init_by_depth(sr)
    files = {}
    for path in RESULTS.glob("depth/*/init/*-optim-*.json"):
        doc = json.loads(path.read_text())
        if doc["status"] == "done":
            files.setdefault((doc["net"]["model"], doc["net"]["variant"]), []).append(doc)
    for r in rows:  # every row is exactly what its files hold
        docs = files[(r["model"], r["variant"])]
        assert sorted(r["seeds"]) == sorted(d["net"]["seed"] for d in docs)
        assert sorted(c for c in r["corr"] if c is not None) == \
            sorted(d["gradients"]["at_summary"]["input"] for d in docs
                   if d["gradients"]["at_summary"]["input"] is not None)
    env = pages.environment()
    for lang in pages.LANGS:
        ctx = pages.study_context(store, sr, lang, {"mechanism": []}, {"mechanism": ["optim_init.csv"]})
        text = pages.render(env, "mechanism", ctx)
        plain = analysis.at_init_row(rows, sr.models[-1], "Nres")
        assert f"{plain['corr_mean']:.2f}".rstrip("0") in text
        for h in ("H4", "H5"):
            assert verdicts.RULES[h][lang] in text
        assert ("Beside the literature" if lang == "en" else "与文献对照") in text
    # the committed runs read CIFAR-10 (a JPEG copy): its published errors stand beside them
    assert sr.data_set.published_cifar10
    ctx = pages.study_context(store, sr, "en", {"degradation": []}, {"degradation": []})
    ctx["anchors"] = __import__("resdeg.report.anchors", fromlist=["anchors"])
    assert "12.95 ± 0.22" in pages.render(env, "degradation", ctx)
    bn = store.study("batchnorm")
    ctx = pages.study_context(store, bn, "en", {"batchnorm": []}, {"batchnorm": []})
    ctx["anchors"] = ctx_anchors = __import__("resdeg.report.anchors", fromlist=["anchors"])
    assert (f"{ctx_anchors.FIXUP_110['Fixup'][0]} ± {ctx_anchors.FIXUP_110['Fixup'][1]}"
            in pages.render(env, "batchnorm", ctx))


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
    assert analysis.sep_change(fell_less, "linear_probe_acc") == pytest.approx(-0.05)
    assert analysis.sep_change(fell_less, "linear_probe_acc", control=True) == pytest.approx(-0.05 + 0.11)
    # nc1 is lower-is-better: its sign flips, control included
    assert analysis.sep_change(fell_less, "nc1", control=True) == pytest.approx(-((2.5 - 3.0) - (2.2 - 3.5)))
    # no init probe: no controlled value
    assert analysis.sep_change(_probed({"linear_probe_acc": {"stage0": 0.3, "stage3": 0.25}}, None), "linear_probe_acc",
                        control=True) is None


def test_an_h3_verdict_says_whether_it_was_measured_against_initialisation():
    changes = {"linear_probe_acc": [0.2, 0.25, 0.22], "knn_acc": [0.3, 0.28, 0.31]}
    worse = verdicts.Side("plain-56", [0.50, 0.46, 0.52], [0.52, 0.46, 0.53], test_n=10_000, eval_train_n=5_000,
                   sep_change=changes, sep_controlled=True)
    better = verdicts.Side("plain-20", [0.80, 0.81, 0.79], [0.83, 0.84, 0.82], test_n=10_000, eval_train_n=5_000,
                    sep_change=changes, sep_controlled=True)
    v = verdicts.h3("Nres: 20 vs 56", better, worse, depth=True)
    assert v.reason == "no_loss" and "fall more than at initialisation" in v.explain("en")
    assert "比初始化时下降得更多" in v.explain("zh")


def _measured_at(init, epoch: int, corr: float, lam: float, surface: bool = False):
    """A measurement of the same net after `epoch` epochs with the given statistics (page tests);
    with `surface`, as measured with the report's 2-D slice (a bowl around the weights)."""
    from dataclasses import replace

    from resdeg.probes.optim_store import Slice2D, surface_settings

    record = replace(init, net=replace(init.net, phase="trained", epoch=epoch),
                     gradients=replace(init.gradients, at_summary={**init.gradients.at_summary, "input": corr}),
                     curvature=replace(init.curvature, lambda_max=lam, lambda_max_resolved=True))
    if not surface:
        return record
    settings = surface_settings()
    alphas = tuple(-1 + 2 * i / (settings.slice_2d_points - 1) for i in range(settings.slice_2d_points))
    bowl = tuple(tuple(0.5 + lam * 1e-3 * (a * a + b * b) for b in alphas) for a in alphas)
    return replace(record, settings=settings, settings_hash=settings.hash, slice_2d=Slice2D(alphas, bowl))


MADE = {"Nres": ((0.9, 100.0), (0.5, 900.0)), "FULL": ((0.95, 50.0), (0.9, 60.0))}  # (corr, lambda_max) shallow, deep


@contextmanager
def measured_while_training(sr):
    """The seed-42 runs of the shallowest and deepest depth, plain and residual, as if measured at
    epochs 1, 8 and 15 (and with a 2-D slice at the end); restored afterwards."""
    cells = {(model, variant): made for variant, pair in MADE.items()
             for model, made in zip((sr.models[0], sr.models[-1]), pair, strict=True)}
    runs = {cell: next(r for r in sr.cell(*cell) if r.seed == 42) for cell in cells}
    saved = {cell: (run.optim, run.surface) for cell, run in runs.items()}
    try:
        for cell, (corr, lam) in cells.items():
            init = next(o for o in sr.optim_cell(*cell) if o.net.seed == 42)
            runs[cell].optim = [_measured_at(init, e, corr - 0.01 * e, lam * (1 + e / 10)) for e in (1, 8, 15)]
            runs[cell].surface = _measured_at(init, 15, corr, lam, surface=True)
        yield
    finally:
        for cell, run in runs.items():
            run.optim, run.surface = saved[cell]


def test_the_mechanism_page_follows_h4_and_h5_through_training(depth_study):
    """Runs measured as they trained: the rows start at the same seed's net at initialisation, the
    deep-minus-shallow contrast is computed per epoch, and the page's section says whether the
    difference points the same way at every point (here: yes for the plain pair)."""
    store, sr = depth_study
    shallow, deep = sr.models[0], sr.models[-1]
    with measured_while_training(sr):
        rows = analysis.optim_over_training(sr)
        plain = next(r for r in rows if (r["model"], r["variant"]) == (deep, "Nres"))
        assert [p["epoch"] for p in plain["points"]] == [0, 1, 8, 15]
        assert plain["points"][0]["seeds"] == [42] and plain["points"][-1]["corr"] == pytest.approx(0.5 - 0.15)
        contrast = analysis.training_contrast(rows, shallow, deep, "Nres")
        assert contrast["steps"][-1]["corr"] == pytest.approx(0.5 - 0.9)
        assert contrast["steps"][-1]["lambda_ratio"] == pytest.approx(9.0)
        env = pages.environment()
        for lang, title, verdict in (("en", "## Through training: cause or consequence",
                                      "At every point measured the deeper plain net's gradients are more shattered"),
                                     ("zh", "## 训练过程中：原因还是结果",
                                      "在每个测量点上，更深的普通网络梯度都更破碎")):
            ctx = pages.study_context(store, sr, lang, {"mechanism": []}, {"mechanism": ["optim_init.csv"]})
            section = pages.render(env, "mechanism", ctx).split(title)[1].split("\n## ")[0]
            init_plain = analysis.at_init_row(analysis.at_init_by_depth(sr), deep, "Nres")
            assert verdict in section or init_plain["corr"][0] >= MADE["Nres"][0][0]
            rows_md = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
            assert [int(line.split("|")[1]) for line in rows_md] == [0, 1, 8, 15]
            assert "0.35" in rows_md[-1]  # the deep plain net's correlation at the end
        # only the shallow pair measured so far: the page says what the depth contrast still needs
        deep_runs = [r for v in MADE for r in sr.cell(deep, v) if r.optim]
        kept = [r.optim for r in deep_runs]
        for r in deep_runs:
            r.optim = []
        try:
            ctx = pages.study_context(store, sr, "en", {"mechanism": []}, {"mechanism": ["optim_init.csv"]})
            text = pages.render(env, "mechanism", ctx)
            assert f"So far the {depth_of(shallow)}-layer nets (seed 42) were measured as they trained" in text
            assert "consistent with a cause" not in text
            # and of the shallow pair only the plain net: the page still renders, without the pair's sentence
            full = [r for r in sr.cell(shallow, "FULL") if r.optim]
            kept_full = [r.optim for r in full]
            for r in full:
                r.optim = []
            try:
                text = pages.render(env, "mechanism", pages.study_context(
                    store, sr, "en", {"mechanism": []}, {"mechanism": ["optim_init.csv"]}))
                assert "So far the" in text and "against the residual net's" not in text
            finally:
                for r, optim in zip(full, kept_full, strict=True):
                    r.optim = optim
        finally:
            for r, optim in zip(deep_runs, kept, strict=True):
                r.optim = optim


def test_the_figures_through_training_and_of_the_surfaces_are_drawn(depth_study, tmp_path):
    from resdeg.report import figures

    store, sr = depth_study
    with measured_while_training(sr):
        names = [spec.name for _, spec, _ in figures.planned(sr, "mechanism")]
        assert {"mechanism-training", "mechanism-surface"} <= set(names)
        for lang in ("en", "zh"):
            for spec in figures.FIGURES:
                if spec.name in ("mechanism-training", "mechanism-surface", "mechanism-depth"):
                    spec.draw(sr, lang, tmp_path / f"{spec.name}-{lang}.png")
    assert all((tmp_path / f"{n}-{lang}.png").stat().st_size > 10_000
               for n in ("mechanism-training", "mechanism-surface")
               for lang in ("en", "zh"))
