"""MkDocs hook (mkdocs.yml `hooks:`) for the report site, which must work with no network, opened
from disk (file://) and served under any sub-path:

- MathJax is served from the site itself, taken from the installed PyPI package django-static-mathjax,
  so formulas render with no network and nothing is vendored in git; so is plotly.js, from the
  installed `plotly` package, for the interactive figures (docs/assets/javascripts/figures.js).
- Search from disk: Material's `offline` plugin makes the search index a script, but loads its
  Web Worker shim from a CDN; that shim is replaced by the site's own
  (docs/assets/javascripts/iframe-worker.js).
- The navigation comes from `docs/site-nav.json`, written by `resdeg report` (see `nav_from_json`);
  without it, the `nav` of mkdocs.yml (or MkDocs' automatic one) stays.
- Provenance: the repository link (`repo_url` in mkdocs.yml; none when it is not set) and a footer
  with the resdeg version and one date, in each language: the report's (docs/report.json, written
  by `resdeg report`), or without a report the build date.
- Material's repository widget no longer asks the GitHub API for stars, and the language switch of
  404.html leads to the language roots.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

MATHJAX_URI = "assets/vendor/mathjax/tex-svg.js"
PLOTLY_URI = "assets/vendor/plotly/plotly.min.js"  # figures.js loads it from beside itself
NAV_FILE = "site-nav.json"
REPORT_FILE = "report.json"
WORKER_SHIM = "assets/javascripts/iframe-worker.js"
PROVENANCE_CLASS = "resdeg-provenance"
# Footer words per language; a language not listed gets the English ones.
FOOTER = {
    "en": {"built": "built", "report": "report of", "source": "source code"},
    "zh": {"built": "构建于", "report": "报告日期", "source": "源代码"},
}


def mathjax_source() -> Path:
    try:  # here, not at the top: a missing package is one PluginError line, not a hook that fails to load
        import mathjax  # the django-static-mathjax package; needs no Django
    except ImportError:
        raise PluginError("MathJax is missing: pip install django-static-mathjax (a resdeg dependency)") from None
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"


def plotly_source() -> Path:
    try:  # here, not at the top: a missing package is one PluginError line, not a hook that fails to load
        import plotly  # the Python package ships the whole plotly.js, minified
    except ImportError:
        raise PluginError("plotly.js is missing: pip install plotly (a resdeg dependency)") from None
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


# -- configuration ---------------------------------------------------------------------------------

def _i18n(config):
    """The mkdocs-static-i18n plugin instance, or None."""
    for name, plugin in config.plugins.items():
        if name == "i18n" or type(plugin).__module__.startswith("mkdocs_static_i18n"):
            return plugin
    return None


def _languages(config) -> tuple[str, list]:
    """(default locale, [language configs of mkdocs-static-i18n]); ('en', []) without the plugin."""
    i18n = _i18n(config)
    if i18n is None:
        return "en", []
    languages = list(i18n.config.languages)
    default = next((lang.locale for lang in languages if lang.default), languages[0].locale if languages else "en")
    return default, languages


def _title(value, where: str) -> dict:
    if isinstance(value, str) and value.strip():
        return {"": value}
    if isinstance(value, dict) and value and all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                 for k, v in value.items()):
        return value
    raise PluginError(f"{where}: a section title is a non-empty string or an object "
                      f'{{"en": "...", "zh": "..."}}, not {value!r}')


def _page(value, where: str, lang_dir: Path) -> str:
    if not isinstance(value, str) or not value.endswith(".md"):
        raise PluginError(f"{where}: a page is a path ending in .md, not {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise PluginError(f"{where}: {value!r} must be relative to the language folder")
    if not (lang_dir / path).is_file():
        raise PluginError(f"{where}: {value!r} is not in {lang_dir}")
    return value


def read_site_nav(path: Path, lang_dir: Path) -> list[dict]:
    """Parse and check docs/site-nav.json: a list whose items are `{"page": "index.md"}` or
    `{"section": {"en": "...", "zh": "..."} | "title", "pages": ["a.md", ...]}`, page paths relative
    to the language folder (they must exist in `lang_dir`, the default language's folder).
    Returns the items as [{"page": str}] or [{"section": {lang: title}, "pages": [str]}]."""
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PluginError(f"{where}: cannot read it: {e}") from None
    if not isinstance(data, list) or not data:
        raise PluginError(f"{where}: the navigation is a non-empty JSON list")
    items, seen = [], set()
    for i, item in enumerate(data):
        at = f"{where}: item {i}"
        if isinstance(item, dict) and set(item) == {"page"}:
            pages = [_page(item["page"], at, lang_dir)]
            items.append({"page": pages[0]})
        elif isinstance(item, dict) and set(item) == {"section", "pages"}:
            if not isinstance(item["pages"], list) or not item["pages"]:
                raise PluginError(f"{at}: a section's pages are a non-empty list")
            pages = [_page(p, at, lang_dir) for p in item["pages"]]
            items.append({"section": _title(item["section"], at), "pages": pages})
        else:
            raise PluginError(f'{at}: expected {{"page": ...}} or {{"section": ..., "pages": [...]}}, '
                              f"not {item!r}")
        for p in pages:
            if p in seen:
                raise PluginError(f"{at}: {p!r} is listed twice")
            seen.add(p)
    return items


def nav_from_json(config) -> None:
    """Set `config.nav` from docs/site-nav.json and the section titles of the other languages
    (mkdocs-static-i18n `nav_translations`, keyed by the default language's title). Page titles
    are left out, so each page is named by its first heading in its own language."""
    path = Path(config.docs_dir) / NAV_FILE
    if not path.is_file():
        return
    default, languages = _languages(config)
    lang_dir = Path(config.docs_dir) / default if languages else Path(config.docs_dir)
    items = read_site_nav(path, lang_dir)
    nav, translations = [], {lang.locale: {} for lang in languages if lang.locale != default}
    for item in items:
        if "page" in item:
            nav.append(item["page"])
            continue
        titles = item["section"]
        base = titles.get(default) or titles.get("") or next(iter(titles.values()))
        nav.append({base: list(item["pages"])})
        for locale, table in translations.items():
            title = titles.get(locale) or titles.get("") or base
            if title != base:
                table[base] = title
    config["nav"] = nav
    for lang in languages:
        if lang.locale in translations:
            lang["nav_translations"] = {**(lang.nav_translations or {}), **translations[lang.locale]}


def _offline(config) -> bool:
    plugin = config.plugins.get("offline") or config.plugins.get("material/offline")
    return plugin is not None and plugin.config.enabled


def offline_worker(config) -> None:
    """Material's `offline` plugin adds a CDN script (iframe-worker) so that search runs from file://;
    use the site's own copy instead."""
    polyfills = [p for p in config.extra.get("polyfills", []) if "iframe-worker" not in str(p)]
    if _offline(config):
        polyfills.append(WORKER_SHIM)
    config.extra["polyfills"] = polyfills


def _version() -> str:
    try:
        return version("resdeg")
    except Exception:  # not installed: a docs build from a bare checkout
        return "unknown"


def build_date() -> str:
    """Today (UTC), or the date of SOURCE_DATE_EPOCH for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (_dt.datetime.fromtimestamp(int(epoch), _dt.UTC) if epoch and epoch.isdigit()
            else _dt.datetime.now(_dt.UTC))
    return when.date().isoformat()


def report_date(docs_dir) -> str | None:
    """The date of the report in docs/ (docs/report.json), or None without a report."""
    path = Path(docs_dir) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        date = json.loads(path.read_text(encoding="utf-8"))["date"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PluginError(f"{path}: cannot read the report's date ({e}); run `resdeg report` again") from None
    if not (isinstance(date, str) and re.fullmatch(r"\d{4}-\d\d-\d\d|unknown", date)):
        raise PluginError(f"{path}: the report's date {date!r} is not YYYY-MM-DD; run `resdeg report` again")
    return date


def footer(locale: str, version: str, date: str, repo: str | None, dated: str = "built") -> str:
    """`dated`: what the date is, "built" (the site) or "report" (the report's)."""
    words = FOOTER.get(locale, FOOTER["en"])
    parts = [f"resdeg {version}", f"{words[dated]} {date}"]
    if repo:
        parts.append(f'<a href="{html.escape(repo)}">{words["source"]}</a>')
    return f'<span class="{PROVENANCE_CLASS}">' + " · ".join(parts) + "</span>"


def provenance(config) -> None:
    """In every language's footer the resdeg version, one date and the repository link (`repo_url`,
    absent when not configured): the report's date when docs/ holds a report (also in
    `extra.report_date`), else the build date (`extra.build_date`); and `extra.resdeg_version`."""
    if config.repo_url and not config.repo_name:
        config["repo_name"] = urlsplit(config.repo_url).path.strip("/") or config.repo_url
    version = config.extra.setdefault("resdeg_version", _version())
    report = report_date(config.docs_dir)
    dated, key = ("report", "report_date") if report else ("built", "build_date")
    date = config.extra.setdefault(key, report or build_date())
    default, languages = _languages(config)
    if not (config.copyright or "").count(PROVENANCE_CLASS):
        own = config.copyright
        config["copyright"] = (f"{own} · " if own else "") + footer(default, version, date, config.repo_url, dated)
    for lang in languages:
        if lang.locale != default and PROVENANCE_CLASS not in (lang.copyright or ""):
            own = lang.copyright
            lang["copyright"] = (f"{own} · " if own else "") + footer(lang.locale, version, date, config.repo_url,
                                                                        dated)


@event_priority(-50)  # after Material's offline plugin (0), before mkdocs-static-i18n (-100)
def on_config(config):
    offline_worker(config)
    nav_from_json(config)
    provenance(config)
    return config


def on_files(files, config):
    for uri, source in ((MATHJAX_URI, mathjax_source), (PLOTLY_URI, plotly_source)):
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(source())))
    for name in (NAV_FILE, REPORT_FILE):  # read by on_config; not part of the site
        found = files.get_file_from_path(name)
        if found is not None:
            files.remove(found)
    return files


def on_template_context(context, template_name, config):
    """404.html is rendered after the pages, and its language switch kept the links of the last
    page; point them at the language roots (the page uses the site_url's path, as MkDocs does)."""
    # mkdocs-static-i18n sets the attribute `config.extra.alternate` (which templates read first),
    # not the item
    alternates = getattr(config.extra, "alternate", None) or config.extra.get("alternate")
    if template_name == "404.html" and alternates:
        default, languages = _languages(config)
        roots = {lang.locale: ("" if lang.locale == default else lang.link.strip("/") + "/") + "index.html"
                 for lang in languages}
        alternates = [{**alt, "link": roots.get(alt.get("lang"), alt.get("link"))} for alt in alternates]
        config.extra.alternate = config.extra["alternate"] = alternates
    return context


@event_priority(-200)  # after mkdocs-static-i18n (-100) has merged the languages' search indexes
def on_post_build(config):
    """Material's offline plugin copies the search index into search/search_index.js (read from
    file://) at the end of each language's build, before mkdocs-static-i18n merges the languages into
    search_index.json: the script held the last language only. Copy the merged index again."""
    if not _offline(config):
        return
    path = Path(config.site_dir) / "search" / "search_index.json"
    if path.is_file():
        path.with_suffix(".js").write_text("var __index = " + path.read_text(encoding="utf-8"), encoding="utf-8")


# Material's script fetches `sitemap.xml` next to every <link rel="alternate" hreflang> in <head>,
# expecting language *roots*; mkdocs-static-i18n points them at the same page in the other language,
# so each page load logged two 404s. The language switch in the header is separate and stays.
_HEAD_ALTERNATE = re.compile(r'<link rel="alternate" href="[^"]*" hreflang="[^"]*">\s*')
# Material's repository widget asks api.github.com for stars and forks: keep the plain link only.
_SOURCE_WIDGET = re.compile(r'(<a href="[^"]*" title="[^"]*" class="md-source") data-md-component="source"')


def on_post_page(output, page, config):
    head, sep, body = output.partition("</head>")
    return _HEAD_ALTERNATE.sub("", head) + sep + _SOURCE_WIDGET.sub(r"\1", body)


def on_post_template(output_content, template_name, config):
    if template_name == "404.html":
        i18n = _i18n(config)
        if i18n is not None and i18n.current_language not in (None, _languages(config)[0]):
            return ""  # each language's build writes site/404.html: keep the default language's
    return on_post_page(output_content, None, config) if template_name.endswith(".html") else output_content
