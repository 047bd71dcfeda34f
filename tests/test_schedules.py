"""The depth studies that differ only in length (depth, depth-long, depth-he) are declared protocols,
and the depth page sets them side by side with computed sentences."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_fixture import make_depth_results

from resdeg.config import PROTOCOLS, make_config
from resdeg.report.build import build_report

# At 60 epochs the plain nets' training gap closes and residual-56 overtakes residual-20 (made up).
LONG = {("resnet20", "FULL"): (0.90, 0.97, 0.0), ("resnet56", "FULL"): (0.93, 0.99, 0.0),
        ("resnet20", "Nres"): (0.89, 0.95, 0.0), ("resnet56", "Nres"): (0.885, 0.948, 0.0)}


def test_depth_long_and_depth_he_are_he_recipe_with_their_own_length():
    for name, epochs in (("depth-long", 60), ("depth-he", 164)):
        assert {**PROTOCOLS["depth"], "epochs": epochs} == PROTOCOLS[name]
        cfg = make_config(name, model="resnet56", variant="Nres")
        assert cfg.epochs == epochs and cfg.schedule == "multistep" and cfg.protocol == name
    assert len({make_config(p).hash for p in ("depth", "depth-long", "depth-he")}) == 3


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("schedules")
    results = make_depth_results(base / "results", seeds=(1, 2, 3))
    make_depth_results(results, seeds=(1, 2, 3), epochs=None, protocol="depth-long", targets=LONG, steps_per_epoch=2)
    build_report(results, base / "docs", log=lambda m: None)
    return base / "docs"


def test_the_depth_page_sets_the_schedules_side_by_side(docs):
    en = (docs / "en" / "depth" / "degradation.md").read_text()
    section = en.split("## Degradation or slow convergence")[1].split("\n## ")[0]
    assert ("| [4 epochs](../depth/degradation.md) |" in section
            and "| [60 epochs](../depth-long/degradation.md) |" in section)
    # 4 epochs: plain-56 trains worse beyond noise; residual-56 is better (fixture DEPTH_TARGETS)
    assert "- **4 epochs:** plain-56's training error is" in section and "beyond noise, a degradation" in section
    # 60 epochs: the gap is about 0.2 points, three seeds each side: not beyond noise
    long_line = next(line for line in section.splitlines() if line.startswith("- **60 epochs:**"))
    assert "a degradation" not in long_line
    assert "From 4 to 60 epochs the plain nets' gap shrinks from" in section
    assert "no longer worse than plain-20 beyond noise" in section
    zh = (docs / "zh" / "depth" / "degradation.md").read_text()
    assert "是退化还是收敛慢" in zh and "- **60 个轮次：**" in zh


def test_the_other_schedule_links_to_the_side_by_side_page_and_keeps_its_declared_title(docs):
    long_page = (docs / "en" / "depth-long" / "degradation.md").read_text()
    assert "## Degradation or slow convergence" not in long_page
    assert "(../depth/degradation.md)" in long_page
    assert long_page.startswith("# Degradation with depth") or "Protocol depth-long" in long_page
    assert "for 60 epochs" not in long_page and "shortened to 60 epochs instead of about 164" in long_page
    nav = json.loads((docs / "site-nav.json").read_text())
    sections = [item["section"]["en"] for item in nav if "section" in item]
    assert "Degradation with depth, 60 epochs" in sections  # declared settings: never "changed settings"


def test_the_depth_page_says_what_its_schedule_does_to_the_residual_order(docs):
    en = (docs / "en" / "depth" / "degradation.md").read_text()
    assert "keep improving" not in en
    assert "Under this study's 4-epoch schedule the 56-layer residual net's test accuracy differs from the " \
           "20-layer one's by " in en
    zh = (docs / "zh" / "depth" / "degradation.md").read_text()
    assert "在本研究 4 个轮次的方案下，56 层残差网络的测试准确率比 20 层" in zh and "低 −" not in zh
