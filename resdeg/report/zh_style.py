"""Chinese typography checks for the generated zh pages (a pure function on Markdown text).

`check(markdown)` reports, as `Issue`s with line and column, what a reader of the rendered page sees: it
masks code, math, URLs and the like, looks through markup, and then applies two sets of rules.

From autocorrect (huacnlee/autocorrect, the `autocorrect-py` dev dependency), run on the visible text of
each line; every place where `autocorrect.format` would change that text is an issue:

- `fullwidth`: ASCII , . : ? ! after a CJK character (`模型,数据`, `**注意**:见下`): write ，。：？！.
- `add-space`: no space between CJK and Latin letters or digits (`使用BatchNorm的模型`, `第1版`, `FULL与Nres`).
- `remove-space`: a space next to full-width punctuation or quotes (`结论。 然后`, `**不支持** 。`).
- `halfwidth`: full-width letters and digits (`ＢａｔｃｈＮｏｒｍ`), full-width punctuation in an English line.
- `autocorrect`: any other change the library asks for.

Specific to this project (the library has no such rule, or the project's style differs; see AUTOCORRECT):

- `punct-touching-cjk`: ASCII ( ) ; next to a CJK character (`(评估模式)`, `好;坏`): this project writes
  ；（） in Chinese text, the library leaves ; alone and wants spaced half-width brackets; and ASCII
  punctuation between Latin text and CJK (`H1:过拟合`), which the library leaves alone.
- `punct-between-cjk`: ASCII punctuation between CJK characters with spaces around it (`模型 , 数据`).
- `space-between-cjk`: a space between two CJK characters (`模型 数据`; the library only removes spaces next to
  full-width punctuation), also one made by a line break inside a paragraph (the browser shows a line break in
  the source as a space; the library reads each line apart).
- `emphasis-on-cjk`: italic markup (`*...*`, `_..._`, `***...***`, `<em>`, `<i>`) around CJK text:
  CJK fonts have no italics, so browsers slant the glyphs artificially. Bold (`**...**`) is fine.
- `calque`: a phrase translated word for word from this project's English (CALQUES says what to
  write instead), e.g. `超出噪声地下降` for "falls beyond noise".
- `nested-brackets`: full-width brackets inside full-width brackets (`（+0.00 个百分点（噪声 ±1.00））`):
  Chinese prose does not nest them; split the sentence or use a comma.

Ignored: fenced code blocks, code spans (also `<code>`, `<pre>`, `<kbd>`, `<samp>`), URLs, math (`\\( \\)`,
`\\[ \\]`, `$...$`, `$$...$$`), HTML tags and their attributes, HTML entities, Markdown link targets `](...)`,
image and link brackets, attribute lists `{ ... }` and table separator rows. Markup characters (`*`, `_`, `~`,
`[`, `]`, tags) are looked through, so `**注意**:` still counts as a colon after 意. Indented code blocks are
not recognised (admonition and list bodies are indented too): put code in fences.

autocorrect is imported on the first `check`, not with this module, and only tests and report checks use it.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache

__all__ = ["AUTOCORRECT", "Issue", "check", "is_cjk"]

# autocorrect's default rules, changed only where this project's style differs from the library's
AUTOCORRECT = {
    "rules": {
        # the library spaces half-width brackets off Chinese (`数据 (CIFAR-10)`); this project writes full-width
        # brackets in Chinese text (`数据（CIFAR-10）`), which punct-touching-cjk checks
        "space-bracket": 0,
    },
    "textRules": {
        # the pages name He et al.'s CIFAR nets 残差-20, 普通-56 (residual-20, plain-56, as in ResNet-20); the library
        # reads `-20` after Chinese as a signed number and wants `残差 -20`, which reads as "residual minus 20".
        # Off for the word (up to the next space) that holds one of these names.
        "残差-": 0,
        "普通-": 0,
    },
}

FULL_WIDTH = {",": "，", ".": "。", ":": "：", ";": "；", "?": "？", "!": "！", "(": "（", ")": "）"}
LIBRARY_AFTER_CJK = ",.:?!"  # autocorrect converts these after a CJK character; ( ) ; are this project's rule
# full-width punctuation and quotes autocorrect removes spaces next to (its no-space-fullwidth(-quote) rules)
LIBRARY_NO_SPACE = "，。、！？：；（）「」《》【】“”‘’"
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
    kind: str    # see the module docstring
    excerpt: str
    hint: str

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.kind}: {self.hint}: …{self.excerpt}…"


# -- masking ------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[^\n]*\n.*?(?:^\1?[ \t]*\2[`~]*[ \t]*$|\Z)", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_CODE_TAG = re.compile(r"<(code|pre|kbd|samp)(?:\s[^>]*)?>.*?</\1\s*>", re.S | re.I)
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
    for pattern in (_FENCE, _COMMENT, _CODE_SPAN, _CODE_TAG, _MATH, _URL, _ENTITY, _TABLE_RULE, _REF_DEF):
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


# -- autocorrect -------------------------------------------------------------------------------------

@cache
def _autocorrect():
    """The autocorrect_py module, configured with AUTOCORRECT (its configuration is process-wide)."""
    try:
        import autocorrect_py
    except ImportError as e:  # a dev dependency: the package itself never checks Chinese copy
        raise ImportError("the Chinese typography check needs autocorrect-py: pip install -e '.[dev]'") from e
    autocorrect_py.load_config(json.dumps(AUTOCORRECT, ensure_ascii=False))
    return autocorrect_py


def _change(old: str, new: str) -> tuple[str, str]:
    """The kind and hint of one change autocorrect makes."""
    if not old.strip() and not new.strip() and len(old) != len(new):
        if len(new) > len(old):
            return "add-space", "no space between Chinese and Latin text: add one"
        return "remove-space", "a space next to full-width punctuation: remove it"
    if old.strip() and all(c in FULL_WIDTH for c in old.strip()) and all(is_cjk(c) for c in new):
        return "fullwidth", f"ASCII '{old.strip()}' next to Chinese: write '{new}'"
    if new.isascii():
        return "halfwidth", f"write '{new}' for '{old}'"
    return "autocorrect", f"write '{new}' for '{old}'"


def _library(s: str) -> list[tuple[int, int, str, str]]:
    """(start, end, kind, hint) in `s` of each change autocorrect makes to the text a reader sees, line by line.

    `s` is the masked text (code and the like OPAQUE, markup TRANSPARENT): the library gets each line without
    its TRANSPARENT characters, so it looks through markup (`**注意**:见下` reads `注意:见下`).
    """
    found = []
    start = 0
    for line in s.split("\n"):
        at = [start + k for k, c in enumerate(line) if c != TRANSPARENT]  # visible character -> offset in s
        seen = "".join(s[k] for k in at)
        fixed = _autocorrect().format(seen)
        at.append(start + len(line))  # where an insertion at the end of the line goes
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, seen, fixed, autojunk=False).get_opcodes():
            old, new = seen[i1:i2], fixed[j1:j2]
            # the library reads a full-width colon between digits as a clock time (`12：30` -> `12:30`); the pages
            # put one after an epoch number (`0：0.3333 → 0.22`), a Chinese label colon, so it stays
            time = old == "：" and new == ":" and seen[i1 - 1:i1].isdigit() and seen[i2:i2 + 1].isdigit()
            if op != "equal" and not time:
                found.append((at[i1], at[i2 - 1] + 1 if i2 > i1 else at[i1], *_change(old, new)))
        start += len(line) + 1
    return found


def check(markdown: str) -> list[Issue]:
    """Typography issues of the Chinese text in `markdown`, in the order they appear."""
    text = markdown.replace("\r\n", "\n")
    opaque = _opaque(text)
    s = _transparent(opaque)
    issues: list[Issue] = []

    def add(i: int, kind: str, hint: str, j: int | None = None) -> None:
        issues.append(Issue(*_position(text, i), kind, _excerpt(text, i, j), hint))

    library = _library(s)
    for i, j, kind, hint in library:
        add(i, kind, hint, j)
    flagged = {i for i, *_ in library}

    for pattern in (_EM_STAR, _EM_UNDERSCORE, _EM_TAG):
        for m in pattern.finditer(opaque):
            if any(is_cjk(c) for c in m.group(2)):
                add(m.start(), "emphasis-on-cjk", "no italics on Chinese text (bold, or nothing)", m.end())

    for i, ch in enumerate(s):
        if ch in FULL_WIDTH and i not in flagged:
            before, after = _neighbour(s, i, -1, TRANSPARENT), _neighbour(s, i, 1, TRANSPARENT)
            # after a CJK character, , . : ? ! are the library's (`fullwidth`)
            touching = is_cjk(after) or (is_cjk(before) and ch not in LIBRARY_AFTER_CJK)
            between = (is_cjk(_neighbour(s, i, -1, TRANSPARENT + " \t"))
                       and is_cjk(_neighbour(s, i, 1, TRANSPARENT + " \t")))
            if touching:
                add(i, "punct-touching-cjk", f"ASCII '{ch}' next to Chinese: write '{FULL_WIDTH[ch]}'")
            elif between:
                add(i, "punct-between-cjk",
                    f"'{ch}' between Chinese characters: write '{FULL_WIDTH[ch]}' without spaces")
        elif ch in " \t" and (i == 0 or s[i - 1] not in " \t"):
            j = i
            while j < len(s) and s[j] in " \t" + TRANSPARENT:
                j += 1
            before = _neighbour(s, i, -1, TRANSPARENT)
            # a space next to full-width punctuation is the library's (`remove-space`)
            if (j < len(s) and is_cjk(s[j]) and is_cjk(before)
                    and s[j] not in LIBRARY_NO_SPACE and before not in LIBRARY_NO_SPACE):
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
