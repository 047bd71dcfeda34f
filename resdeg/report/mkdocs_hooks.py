"""MkDocs hook (mkdocs.yml `hooks:`): serve MathJax from the site itself, taken from the installed
PyPI package django-static-mathjax, so formulas render with no network and nothing is vendored in git."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

MATHJAX_URI = "assets/vendor/mathjax/tex-svg.js"


def mathjax_source() -> Path:
    try:
        import mathjax  # the django-static-mathjax package; needs no Django
    except ImportError:
        raise PluginError("MathJax is missing: pip install django-static-mathjax (a resdeg dependency)") from None
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"


def on_files(files, config):
    if files.get_file_from_path(MATHJAX_URI) is None:
        files.append(File.generated(config, MATHJAX_URI, abs_src_path=str(mathjax_source())))
    return files


# Material's script fetches `sitemap.xml` next to every <link rel="alternate" hreflang> in <head>,
# expecting language *roots*; mkdocs-static-i18n points them at the same page in the other language,
# so each page load logged two 404s. The language switch in the header is separate and stays.
_HEAD_ALTERNATE = re.compile(r'<link rel="alternate" href="[^"]*" hreflang="[^"]*">\s*')


def on_post_page(output, page, config):
    head, sep, body = output.partition("</head>")
    return _HEAD_ALTERNATE.sub("", head) + sep + body
