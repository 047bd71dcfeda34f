"""The Chinese typography checker (resdeg/report/zh_style.py) on small strings.

Rules from autocorrect (kinds fullwidth, add-space, remove-space, halfwidth) and this project's own rules each
have cases here that fail if the rule stops working; so do the places where the project configures the library.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from resdeg.report.zh_style import check, is_cjk

ROOT = Path(__file__).resolve().parents[1]


def kinds(text: str) -> list[tuple[str, str]]:
    """(kind, the character at the issue) for each issue."""
    lines = text.replace("\r\n", "\n").split("\n")
    return [(i.kind, lines[i.line - 1][i.column - 1]) for i in check(text)]


@pytest.mark.parametrize("text, expected", [
    # autocorrect, rule fullwidth: ASCII , . : ? ! after Chinese; markup is looked through
    ("模型,数据", [("fullwidth", ",")]),
    ("为什么会退化?", [("fullwidth", "?")]),
    ("结束.", [("fullwidth", ".")]),
    ("好!", [("fullwidth", "!")]),
    ("结论:见下", [("fullwidth", ":")]),
    ("模型, 数据", [("fullwidth", ",")]),                     # one issue: the space goes with the comma
    ("H1,过拟合", [("fullwidth", ",")]),                      # the library's, not also punct-touching-cjk
    ("**注意**:见下", [("fullwidth", ":")]),
    ("见[方法](method.md):判定", [("fullwidth", ":")]),
    ("<strong>注意</strong>,下文", [("fullwidth", ",")]),
    # autocorrect, rule space-word: a space between Chinese and Latin letters or digits
    ("使用BatchNorm的模型", [("add-space", "B"), ("add-space", "的")]),
    ("第1版", [("add-space", "1"), ("add-space", "版")]),
    ("23.5%的图像", [("add-space", "的")]),
    ("变化-1.1个百分点", [("add-space", "-"), ("add-space", "个")]),
    ("**FULL**与Nres", [("add-space", "与"), ("add-space", "N")]),  # bold does not separate them
    # autocorrect, rules no-space-fullwidth(-quote): no space next to full-width punctuation and quotes
    ("结论。 然后", [("remove-space", " ")]),
    ("**不支持** 。", [("remove-space", " ")]),
    ("**数据集。** CIFAR-10（Krizhevsky 2009）", [("remove-space", " ")]),
    ("也可能不利。 5 次训练发散", [("remove-space", " ")]),
    ("模型 “引号” 数据", [("remove-space", " "), ("remove-space", " ")]),
    ("模型，  数据", [("remove-space", " ")]),
    # autocorrect, rules halfwidth-word and halfwidth-punctuation
    ("使用ＢａｔｃｈＮｏｒｍ", [("halfwidth", "Ｂ")]),
    ("模型\u3000数据", [("halfwidth", "\u3000")]),
    ("This is English，really。", [("halfwidth", "，"), ("halfwidth", "。")]),
    # this project: ( ) ; next to Chinese (the library leaves ; and wants spaced half-width brackets)
    ("准确率(评估模式)高", [("punct-touching-cjk", "("), ("punct-touching-cjk", ")")]),
    ("数据(CIFAR-10)", [("punct-touching-cjk", "(")]),      # and no add-space: space-bracket is off
    ("区间。)", [("punct-touching-cjk", ")")]),              # full-width punctuation is CJK too
    ("好;坏", [("punct-touching-cjk", ";")]),
    ("**好**;坏", [("punct-touching-cjk", ";")]),
    # this project: ASCII punctuation between Latin text and Chinese, or spaced between Chinese
    ("# H1:过拟合", [("punct-touching-cjk", ":")]),
    ("模型 :数据", [("punct-touching-cjk", ":")]),
    ("模型 , 数据", [("punct-between-cjk", ",")]),
    # this project: a space between Chinese characters, also one made by a line break
    ("模型 数据", [("space-between-cjk", " ")]),
    ("模型 『引』", [("space-between-cjk", " ")]),              # full-width, but not among the library's
    ("衡量拟合程度\n应当用干净训练准确率。", [("space-between-cjk", "度")]),
    ("- 列表项的第一行\n  接着写", [("space-between-cjk", "行")]),
    # this project: italics on Chinese
    ("*更难*区分", [("emphasis-on-cjk", "*")]),
    ("这是 _强调_ 的写法", [("space-between-cjk", " "), ("emphasis-on-cjk", "_"), ("space-between-cjk", " ")]),
    ("***粗斜体***", [("emphasis-on-cjk", "*")]),
    ("<em>强调</em>", [("emphasis-on-cjk", "<")]),
    ("<i class=\"x\">斜体</i>", [("emphasis-on-cjk", "<")]),
])
def test_issues_are_found(text, expected):
    assert kinds(text) == expected


@pytest.mark.parametrize("text", [
    "模型，数据。为什么会退化？（评估模式）",
    "使用 BatchNorm 的模型在 CIFAR-10 上训练 20 个轮次",
    "lr = 0.1, momentum 0.9 (plain SGD). Done: yes!",        # English text
    "第 1 版，比值 1.2e-3；23.5% 的图像",
    "**结论。**He 等人的普通网络会退化",                        # no space after full-width punctuation
    "- **FULL：resnet20 与 resnet56**：H1：无法证明 resnet56-FULL 对训练集拟合得一样好（-1.13 个百分点）。",
    "`a,b`模型与`f(x):`",                                    # code spans
    "数据来源：<code>blocks.csv</code>。见<code>f(x)</code>的值",
    "```python\n模型,数据 = f(x)\n模型 数据\n```\n",          # fenced code
    "~~~\n*斜体* 模型\n~~~",
    "见 https://example.org/a,b:c 页面",                     # URLs
    "见 <https://example.org/(x)> 页面",
    "公式 \\(a,b\\)模型与 \\[x:y\\] 及 $x,y$模型",            # math
    "$$\n模型,数据\n$$",
    '<figure markdown="span">\n  <img alt="图,一" src="a.png">模型\n</figure>',  # HTML attributes
    '<a href="x.html?a=1,2">链接</a>',
    "见[过拟合页面](native/h1.md)和[关于](about.md)。",       # link syntax
    "![准确率图](figures/acc.png){ loading=lazy }",
    "## 泛化差距 {#gap}",
    "| 模型 | 数据 |\n|---|:---:|\n| 甲 | 乙 |",                # table syntax
    "**加粗**没问题，__也可以__",                            # bold is not italic
    "snake_case_name 与 a*b*c",                              # no Chinese inside
    "# 标题\n正文从这里开始。",                                # a heading is its own block
    "- 项目一\n- 项目二\n1. 第一\n2. 第二",
    "第一段。\n\n第二段。",
    "硬换行  \n下一行",                                       # two trailing spaces: a <br>, no space
    "!!! danger \"协议说明\"\n    正文。",
    "&lt;模型&gt;与&amp;",                                   # HTML entities
    "<!-- 注释,不显示 -->正文",
    "[1]: https://example.org/a,b\n",
    # configured: the pages' net names 残差-20 / 普通-56 (textRules), and an epoch label before a colon
    "| 残差-20 | 3 | 17.31 ± 0.03 |\n| 普通-56 | 3 | 49.9 ± 3.52 |",
    "| 轮次 | 残差-20：相关系数 / λmax | 普通-20：相关系数 / λmax |",
    "| resnet20 | FULL | 0：0.3333 → 0.22（1）；12：0.28 → 0.7067（1） |",
])
def test_clean_text_has_no_issues(text):
    assert check(text) == []


def test_the_configuration_is_needed():
    # without the project's configuration autocorrect flags what the pages write on purpose
    import autocorrect_py

    check("")  # loads the configuration
    assert autocorrect_py.format("残差-20") == "残差-20" and autocorrect_py.format("普通-20") == "普通-20"
    assert autocorrect_py.format("变化-20") == "变化 -20"      # the rule itself is on
    assert autocorrect_py.format("数据(CIFAR-10)") == "数据(CIFAR-10)"  # space-bracket off
    assert autocorrect_py.format("0：0.3333") == "0:0.3333"   # the library's clock-time rule, filtered in check


def test_issues_carry_line_column_and_a_hint():
    (issue,) = check("第一行。\n\n模型,数据")
    assert (issue.line, issue.column, issue.kind) == (3, 3, "fullwidth")
    assert "，" in issue.hint and "模型,数据" in issue.excerpt
    assert str(issue).startswith("3:3: fullwidth")
    (issue,) = check("第一行。\n\n**不支持** 。")
    assert (issue.line, issue.column, issue.kind) == (3, 8, "remove-space")


def test_issues_come_in_reading_order_and_windows_line_ends_count_once():
    issues = check("*斜体*\r\n\r\n模型,数据 模型")
    assert [(i.line, i.column, i.kind) for i in issues] == [
        (1, 1, "emphasis-on-cjk"), (3, 3, "fullwidth"), (3, 6, "space-between-cjk")]


def test_is_cjk():
    assert all(is_cjk(c) for c in "汉字，。（）：；「」ア")
    assert not any(is_cjk(c) for c in "a1,.;:()é ")
    assert not is_cjk("")


def test_calques_and_nested_brackets_are_caught():
    # the wordings a reader found in earlier pages (issue: Chinese as a Chinese researcher writes it)
    assert kinds("普通网络超出噪声地下降。") == [("calque", "超")]
    assert kinds("它与之的差异在 95% 区间内无法确定。") == [("calque", "与")]
    assert kinds("差异（+0.00 个百分点（噪声 ±1.00））。") == [("nested-brackets", "（")]
    assert kinds("差异（+0.00 个百分点，噪声 ±1.00）。") == []


def imported(path: Path):
    """The module names a Python file imports (also the names in `from . import x`)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""
            yield from (alias.name for alias in node.names)


def test_autocorrect_is_a_test_dependency_only():
    # the package never imports the checker, and the checker imports autocorrect only when it checks
    for path in (ROOT / "resdeg").rglob("*.py"):
        if path.name != "zh_style.py":
            assert not [n for n in imported(path) if "zh_style" in n or "autocorrect" in n], path
    code = ("import sys, resdeg.cli, resdeg.report, resdeg.report.zh_style; "
            "assert 'autocorrect_py' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
