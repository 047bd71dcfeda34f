"""The Chinese typography checker (resdeg/report/zh_style.py) on small strings."""
from __future__ import annotations

import pytest

from resdeg.report.zh_style import check, is_cjk


def kinds(text: str) -> list[tuple[str, str]]:
    """(kind, the character at the issue) for each issue."""
    lines = text.replace("\r\n", "\n").split("\n")
    return [(i.kind, lines[i.line - 1][i.column - 1]) for i in check(text)]


@pytest.mark.parametrize("text, expected", [
    ("模型,数据", [("punct-touching-cjk", ",")]),
    ("# H1:过拟合", [("punct-touching-cjk", ":")]),
    ("准确率(评估模式)高", [("punct-touching-cjk", "("), ("punct-touching-cjk", ")")]),
    ("数据(CIFAR-10)", [("punct-touching-cjk", "(")]),
    ("为什么会退化?", [("punct-touching-cjk", "?")]),
    ("结束.", [("punct-touching-cjk", ".")]),
    ("区间。)", [("punct-touching-cjk", ")")]),        # full-width punctuation is CJK too
    ("好;坏!", [("punct-touching-cjk", ";"), ("punct-touching-cjk", "!")]),
    ("**注意**:见下", [("punct-touching-cjk", ":")]),    # markup is looked through
    ("见[方法](method.md):判定", [("punct-touching-cjk", ":")]),
    ("<strong>注意</strong>,下文", [("punct-touching-cjk", ",")]),
    ("模型 , 数据", [("punct-between-cjk", ",")]),
    ("模型 :数据", [("punct-touching-cjk", ":")]),
    ("模型 数据", [("space-between-cjk", " ")]),
    ("结论。 然后", [("space-between-cjk", " ")]),
    ("**不支持** 。", [("space-between-cjk", " ")]),
    ("衡量拟合程度\n应当用干净训练准确率。", [("space-between-cjk", "度")]),
    ("- 列表项的第一行\n  接着写", [("space-between-cjk", "行")]),
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
    "使用 BatchNorm 的模型在 CIFAR-10 上训练 20 个轮次",   # spaces between Chinese and Latin are fine
    "lr = 0.1, momentum 0.9 (plain SGD). Done: yes!",        # English text
    "第 1 版，比值 1.2e-3；23.5% 的图像",
    "`a,b`模型与`f(x):`",                                    # code spans
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
])
def test_clean_text_has_no_issues(text):
    assert check(text) == []


def test_issues_carry_line_column_and_a_hint():
    (issue,) = check("第一行。\n\n模型,数据")
    assert (issue.line, issue.column, issue.kind) == (3, 3, "punct-touching-cjk")
    assert "，" in issue.hint and "模型,数据" in issue.excerpt
    assert str(issue).startswith("3:3: punct-touching-cjk")


def test_issues_come_in_reading_order_and_windows_line_ends_count_once():
    issues = check("*斜体*\r\n\r\n模型,数据 模型")
    assert [(i.line, i.column, i.kind) for i in issues] == [
        (1, 1, "emphasis-on-cjk"), (3, 3, "punct-touching-cjk"), (3, 6, "space-between-cjk")]


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
