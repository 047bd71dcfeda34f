"""Chinese typography checks for the generated zh pages (a pure function on Markdown text).

`check(markdown)` reports, as `Issue`s with line and column:

- `punct-touching-cjk`: ASCII punctuation , . : ; ? ! ( ) next to a CJK character (`模型,数据`,
  `H1:过拟合`, `(评估模式)`): Chinese text takes full-width ，。：；？！（）.
- `punct-between-cjk`: ASCII punctuation between CJK characters with spaces around it (`模型 , 数据`).
- `space-between-cjk`: a space between two CJK characters, also one made by a line break inside a
  paragraph (the browser shows a line break in the source as a space).
- `emphasis-on-cjk`: italic markup (`*...*`, `_..._`, `***...***`, `<em>`, `<i>`) around CJK text:
  CJK fonts have no italics, so browsers slant the glyphs artificially. Bold (`**...**`) is fine.
- `calque`: a phrase translated word for word from this project's English (CALQUES says what to
  write instead), e.g. `超出噪声地下降` for "falls beyond noise".
- `nested-brackets`: full-width brackets inside full-width brackets (`（+0.00 个百分点（噪声 ±1.00））`):
  Chinese prose does not nest them; split the sentence or use a comma.

Ignored: fenced code blocks, code spans, URLs, math (`\\( \\)`, `\\[ \\]`, `$...$`, `$$...$$`), HTML tags
and their attributes, HTML entities, Markdown link targets `](...)`, image and link brackets,
attribute lists `{ ... }` and table separator rows. Markup characters (`*`, `_`, `~`, `[`, `]`, tags) are
looked through, so `**注意**:` still counts as a colon touching 意. Indented code blocks are not
recognised (admonition and list bodies are indented too): put code in fences.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Issue", "check", "is_cjk"]

FULL_WIDTH = {",": "，", ".": "。", ":": "：", ";": "；", "?": "？", "!": "！", "(": "（", ")": "）"}
OPAQUE = "\x00"       # masked content that reads like Latin text (code, math, URLs)
TRANSPARENT = "\x01"  # markup that the reader does not see (tags, link targets, * _ ~ [ ])

_CJK = re.compile(r"[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff"
                  r"\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]")


def is_cjk(ch: str) -> bool:
    """A CJK ideograph, kana, or CJK/full-width punctuation."""
    return bool(ch) and bool(_CJK.match(ch))


@dataclass(frozen=True)
class Issue:
    line: int    # 1-based
    column: int  # 1-based
    kind: str    # punct-touching-cjk | punct-between-cjk | space-between-cjk | emphasis-on-cjk
    excerpt: str
    hint: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.kind}: {self.hint}: …{self.excerpt}…"


# -- masking ------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[^\n]*\n.*?(?:^\1?[ \t]*\2[`~]*[ \t]*$|\Z)", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$\w])\$(?=\S)[^$\n]+?(?<=\S)\$(?![\w$])", re.S)
_URL = re.compile(r"<(?:https?|ftp|mailto):[^>\s]*>|\b(?:https?|ftp)://[^\s<>()\[\]]+|\bwww\.[^\s<>()\[\]]+")
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]*|#\d+|#x[0-9A-Fa-f]+);")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.M)
_REF_DEF = re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*\S+.*$", re.M)

_TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s+[^<>]*?)?/?>")
_LINK_TARGET = re.compile(r"(?<=\])\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)|(?<=\])\[[^\]\n]*\]")
_ATTR_LIST = re.compile(r"\{:?[ \t]*(?:[#.][\w-]+|[\w-]+=[^{}\n]*)[^{}\n]*\}")
_IMAGE_OPEN = re.compile(r"!\[")
_MARKUP = re.compile(r"[*_~\[\]]")

_EM_STAR = re.compile(r"(?<![*\\])(\*\*\*|\*)(?![*\s])(.+?)(?<![*\s\\])\1(?!\*)")
_EM_UNDERSCORE = re.compile(r"(?<![\w\\])(___|_)(?![_\s])(.+?)(?<![_\s\\])\1(?!\w)")
_EM_TAG = re.compile(r"<(em|i)(?:\s[^>]*)?>(.*?)</\1\s*>", re.S | re.I)


def _blank(text: str, pattern: re.Pattern, fill: str) -> str:
    """Replace each match by `fill` characters, keeping newlines (offsets and lines are preserved)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", fill, m.group(0)), text)


def _opaque(text: str) -> str:
    for pattern in (_FENCE, _COMMENT, _CODE_SPAN, _MATH, _URL, _ENTITY, _TABLE_RULE, _REF_DEF):
        text = _blank(text, pattern, OPAQUE)
    return text


def _transparent(text: str) -> str:
    for pattern in (_TAG, _LINK_TARGET, _ATTR_LIST, _IMAGE_OPEN, _MARKUP):
        text = _blank(text, pattern, TRANSPARENT)
    return text


# -- checks -------------------------------------------------------------------------------------------

# a line that starts a new block (then the line break before it is no soft break) ...
_BLOCK_START = re.compile(r"[ \t]*(?:#|[-*+][ \t]|>|\||!!!|\?\?\?|<|\d+[.)][ \t]|\$\$|\\\[|:|\[\^|`{3}|~{3})")
# ... and a line that is a whole block (heading, table row, admonition title, HTML, display math)
_ONE_LINE_BLOCK = re.compile(r"[ \t]*(?:#|\||!!!|\?\?\?|<|\$\$|\\\[)")


def _position(text: str, i: int) -> tuple[int, int]:
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def _excerpt(text: str, i: int, j: int | None = None) -> str:
    j = i + 1 if j is None else j
    return text[max(0, i - 6):j + 6].replace("\n", "⏎")


def _neighbour(s: str, i: int, step: int, skip: str) -> str:
    """The first character from i in direction step that is not in `skip` (same line), or ''."""
    i += step
    while 0 <= i < len(s) and s[i] in skip and s[i] != "\n":
        i += step
    return s[i] if 0 <= i < len(s) and s[i] != "\n" else ""


# Calques of this project's English wording, found in earlier generated pages, and what to write.
CALQUES = {
    "超出噪声地": "an adverb calqued from 'beyond noise': write '…，且超出噪声' or '超出噪声的…'",
    "与之的差异": "'its difference from it' word for word: name both sides ('与批归一化网络的差异')",
    "在噪声范围内训练得一样好": "equal fit is not shown by noise: say what the interval shows",
}
_NESTED = re.compile(r"（[^（）\n]*（")


def check(markdown: str) -> list[Issue]:
    """Typography issues of the Chinese text in `markdown`, in the order they appear."""
    text = markdown.replace("\r\n", "\n")
    opaque = _opaque(text)
    issues: list[Issue] = []

    def add(i: int, kind: str, hint: str, j: int | None = None) -> None:
        issues.append(Issue(*_position(text, i), kind, _excerpt(text, i, j), hint))

    for pattern in (_EM_STAR, _EM_UNDERSCORE, _EM_TAG):
        for m in pattern.finditer(opaque):
            if any(is_cjk(c) for c in m.group(2)):
                add(m.start(), "emphasis-on-cjk", "no italics on Chinese text (bold, or nothing)", m.end())

    s = _transparent(opaque)
    for i, ch in enumerate(s):
        if ch in FULL_WIDTH:
            touching = is_cjk(_neighbour(s, i, -1, TRANSPARENT)) or is_cjk(_neighbour(s, i, 1, TRANSPARENT))
            between = (is_cjk(_neighbour(s, i, -1, TRANSPARENT + " \t"))
                       and is_cjk(_neighbour(s, i, 1, TRANSPARENT + " \t")))
            if between and not touching:
                add(i, "punct-between-cjk",
                    f"'{ch}' between Chinese characters: write '{FULL_WIDTH[ch]}' without spaces")
            elif touching:
                add(i, "punct-touching-cjk", f"ASCII '{ch}' next to Chinese: write '{FULL_WIDTH[ch]}'")
        elif ch in " \t" and (i == 0 or s[i - 1] not in " \t"):
            j = i
            while j < len(s) and s[j] in " \t" + TRANSPARENT:
                j += 1
            if j < len(s) and is_cjk(s[j]) and is_cjk(_neighbour(s, i, -1, TRANSPARENT)):
                add(i, "space-between-cjk", "a space between Chinese characters: remove it", j)

    for phrase, hint in CALQUES.items():
        for m in re.finditer(re.escape(phrase), opaque):
            add(m.start(), "calque", hint, m.end())
    for m in _NESTED.finditer(opaque):
        add(m.end() - 1, "nested-brackets", "brackets inside brackets: split the sentence or use a comma", m.end())

    lines = s.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    raw = text.split("\n")
    for n in range(len(lines) - 1):
        this, nxt = lines[n].rstrip(" \t" + TRANSPARENT), lines[n + 1].lstrip(" \t" + TRANSPARENT)
        if (this and nxt and is_cjk(this[-1]) and is_cjk(nxt[0]) and not raw[n].endswith("  ")
                and not _ONE_LINE_BLOCK.match(raw[n]) and not _BLOCK_START.match(raw[n + 1])):
            add(offsets[n] + len(this) - 1, "space-between-cjk",
                "a line break inside a Chinese sentence shows as a space: join the lines", offsets[n] + len(this) + 1)
    return sorted(issues, key=lambda x: (x.line, x.column))
