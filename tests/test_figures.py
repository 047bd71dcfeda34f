"""The figures: drawn from analysis.py's numbers (and the downloads hold what they plot), legible
at page width, Chinese glyphs or an English fallback, interactive copies that read their CSVs."""
from __future__ import annotations

import csv
import json
import re
import warnings

import numpy as np
import pytest
from report_fixture import all_pages, build_store, make_depth_results, make_results, page

from resdeg.report.pages import LANGS


def test_chinese_figures_have_no_missing_glyphs_with_a_cjk_font(tmp_path):
    from resdeg.report import figures
    from resdeg.report.collect import load_store

    if figures.cjk_font() is None:
        pytest.skip("no CJK font on this machine (CI installs fonts-noto-cjk)")
    store = load_store(make_depth_results(tmp_path / "results", seeds=(1,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.depth_curves(store.study("depth"), "zh", tmp_path / "curves.png")
        figures.bn_signal(store.study("batchnorm"), "zh", tmp_path / "bn.png", "resnet56")
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
    from resdeg.report import figures
    from resdeg.report.collect import load_store

    monkeypatch.setattr(figures, "cjk_font", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert figures.figure_language("zh") == "en" and figures.figure_language("en") == "en"
        store = load_store(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), probes=False))
        figures.headline(store, "zh", tmp_path / "headline.png")  # its panel titles are the studies' (Chinese) titles
    assert not caught and not figures.MISSING_GLYPHS, [str(w.message) for w in caught]
    assert "apt-get install fonts-noto-cjk" in figures.NO_CJK_FONT


def test_figures_plot_the_analysis_and_the_download_holds_what_they_plot(rendered):
    """One statistics convention (sample sd, ddof=1), computed in analysis.py: the depth figure's
    points and bars are the mean, lowest and highest seed of runs.csv's rows."""
    from resdeg.report import analysis

    s = analysis.spread([1.0, 2.0, 4.0])
    assert (s.mean, s.lo, s.hi, s.n) == (7 / 3, 1.0, 4.0, 3) and s.sd == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert analysis.spread([None, 5.0]).sd is None and analysis.spread([None]) is None
    store = build_store(rendered)
    sr = store.study("depth")
    with open(rendered.docs / "downloads" / sr.name / "runs.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == "Nres" and r["eval_train_acc"]]
    points = analysis.final_by_depth(sr, "Nres", "eval_train_acc")
    assert points
    for d, spread in points:
        errors = [100 * (1 - float(r["eval_train_acc"])) for r in rows if r["model"] == f"resnet{d}"]
        close = {"abs": 1e-3}  # runs.csv keeps 6 significant digits
        assert spread.n == len(errors) and spread.mean == pytest.approx(np.mean(errors), **close)
        assert (spread.lo, spread.hi) == (pytest.approx(min(errors), **close), pytest.approx(max(errors), **close))


def test_the_signal_figure_names_the_series_a_log_plot_cannot_show():
    from resdeg.report.figures import hidden_series

    ones, rising = np.ones(9), np.linspace(1, 3, 9)
    series = {"FULL": ones, "Nres": ones * (1 + 1e-5), "Fixup": np.zeros(9), "SkipInit": np.zeros(9), "Nbn": rising}
    zero, on_top = hidden_series(series)
    assert zero == ["Fixup", "SkipInit"]
    assert on_top == {"Nres": ["FULL"]}  # drawn over FULL; Nbn's own line is visible
    assert hidden_series({"FULL": ones, "Nres": rising}) == ([], {})


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


@pytest.mark.parametrize("n_studies, grid", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (5, (2, 3))])
def test_the_headline_has_one_panel_per_study_and_no_empty_axes(tmp_path, monkeypatch, n_studies, grid):
    from resdeg.report import figures
    from resdeg.report.collect import load_store

    store = load_store(
        make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), protocol="native")
    )
    store.studies = store.studies[:1] * n_studies
    shown = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: shown.append(fig))
    figures.headline(store, "en", tmp_path / "headline.png")
    axes = shown[0].axes
    visible = [ax for ax in axes if ax.get_visible()]
    assert len(axes) == grid[0] * grid[1] and len(visible) == n_studies
    assert all(ax.lines for ax in visible)


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
