"""The report site: the MkDocs hook (navigation from docs/site-nav.json, provenance), the strict build,
and the built site in headless Chromium, opened from disk (file://) and served under a sub-path
(/resdeg/): links, language switch, search (English and Chinese), lightbox, interactive figures
(drawn from their CSV, a hover shows the exact value), and no request that leaves the machine. The
pages are a small hand-made tree, independent of `resdeg report`; the repository's own docs/ is
built and browsed too when it has pages."""
from __future__ import annotations

import functools
import html
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from resdeg.report import interactive
from resdeg.report.downloads import write_figure_data

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "resdeg" / "report" / "mkdocs_hooks.py"
ARTIFACTS = ROOT / "test-artifacts" / "site"
SITE_URL = "https://example.org/resdeg/"   # a site_url with a path; nothing may ever be fetched from it
BUILD_EPOCH = 1700000000                   # SOURCE_DATE_EPOCH of the builds: 2023-11-14
BUILD_DATE = "2023-11-14"
REPO_URL = "https://example.org/resdeg-source"  # the fixture's configured repository (a link, never fetched)


def load_hook():
    """The hook as MkDocs loads it (from its file), without importing resdeg.report."""
    spec = importlib.util.spec_from_file_location("resdeg_site_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- a hand-made docs tree ---------------------------------------------------------------------------

NAV = [{"page": "index.md"},
       {"section": {"en": "Native study", "zh": "原生分辨率研究"}, "pages": ["native/h1.md", "native/h2.md"]},
       {"page": "about.md"}]

PAGES = {
    "en": {
        "index.md": "# Fixture landing\n\nThe answer first: see [the overfitting page](native/h1.md) and "
                    "[about](about.md). A xylophone is the word to search.\n\n"
                    '<figure markdown="span">\n  ![Accuracy per epoch](figures/acc.png){ loading=lazy }\n'
                    "  <figcaption>Accuracy per epoch.</figcaption>\n</figure>\n\n"
                    "The gap is \\(g = a - b\\).\n",
        "native/h1.md": "# Overfitting hypothesis\n\nBack to [the landing page](../index.md).\n\n"
                        "![Accuracy per epoch](../figures/acc.png)\n",
        "native/h2.md": "# Vanishing gradients\n\nText.\n\n{plot}",
        "about.md": "# About this fixture\n\nText.\n",
    },
    "zh": {
        "index.md": "# 夹具首页\n\n先给出答案：见[过拟合页面](native/h1.md)和[关于](about.md)。"
                    "深度网络的退化现象。\n\n"
                    '<figure markdown="span">\n  ![每轮准确率](figures/acc.png){ loading=lazy }\n'
                    "  <figcaption>每轮准确率。</figcaption>\n</figure>\n\n"
                    "差距为 \\(g = a - b\\)。\n",
        "native/h1.md": "# 过拟合假设\n\n返回[首页](../index.md)。\n\n![每轮准确率](../figures/acc.png)\n",
        "native/h2.md": "# 梯度消失\n\n正文。\n\n{plot}",
        "about.md": "# 关于本夹具\n\n正文。\n",
    },
}
TITLES = {"en": ["Fixture landing", "Native study", "Overfitting hypothesis", "Vanishing gradients",
                 "About this fixture"],
          "zh": ["夹具首页", "原生分辨率研究", "过拟合假设", "梯度消失", "关于本夹具"]}


# An interactive figure, as `resdeg report` writes one: its description and the link to its CSV's script
# (downloads/acc.csv.js) before the PNG figure.
PLOT_CSV = "model,variant,seed,epoch,test_acc\n" + "".join(
    f"resnet18,{v},{seed},{e},{0.1 + 0.2 * e - 0.15 * (v == 'Nres') + 0.05 * (seed - 42):.4f}\n"
    for v in ("FULL", "Nres") for seed in (42, 43) for e in range(1, 5))


def plot_markdown(lang: str) -> str:
    t = {"en": ("test accuracy", "epoch", "accuracy (%)", "Accuracy per epoch."),
         "zh": ("测试准确率", "训练轮次", "准确率（%）", "每轮准确率。")}[lang]
    spec = interactive.chart("acc.csv", lang, [interactive.panel(t[0], "epoch", "test_acc", t[1], t[2], scale=100)],
                   styles=interactive.variant_styles(("FULL", "Nres")), hover=("model", "variant", "seed", "epoch"))
    return (f'<div class="resdeg-plot" data-plot="{html.escape(interactive.as_attribute(spec))}" markdown="span">\n'
            f"[](../../downloads/acc.csv.js)\n</div>\n\n"
            f'<figure markdown="span">\n  ![{t[3]}](../figures/acc.png){{ loading=lazy }}\n'
            f"  <figcaption>{t[3]}</figcaption>\n</figure>\n")


def png(path: Path, w: int = 1600, h: int = 800) -> None:
    """A gradient PNG wider than the page's text column, written without any imaging library."""
    rows = (b"\x00" + b"".join(bytes((x * 255 // w, 90, 255 - x * 255 // w)) for x in range(w))) * h

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def project(base: Path, docs: Path | None = None, nav: list | None = NAV, extra_yml: str = "") -> Path:
    """A MkDocs project that inherits the repository's mkdocs.yml (hook path made absolute) around the
    hand-made docs tree, or a copy of `docs`."""
    proj = base
    target = proj / "docs"
    if docs is not None:
        shutil.copytree(docs, target, ignore=shutil.ignore_patterns(".report-*"))
    else:
        shutil.copytree(ROOT / "docs" / "assets", target / "assets")
        for lang, pages in PAGES.items():
            for name, text in pages.items():
                (target / lang / name).parent.mkdir(parents=True, exist_ok=True)
                (target / lang / name).write_text(text.replace("{plot}", plot_markdown(lang)), encoding="utf-8")
            png(target / lang / "figures" / "acc.png")
        (target / "downloads").mkdir()
        (target / "downloads" / "acc.csv").write_text(PLOT_CSV)
        write_figure_data(target / "downloads", "acc.csv")
        if nav is not None:
            (target / "site-nav.json").write_text(json.dumps(nav, ensure_ascii=False), encoding="utf-8")
    (proj / "mkdocs.yml").write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: docs\nsite_dir: site\n"
                                     f"hooks:\n  - {HOOK}\n{extra_yml}", encoding="utf-8")
    return proj


def build(proj: Path) -> SimpleNamespace:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "SOURCE_DATE_EPOCH": str(BUILD_EPOCH)}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(proj / "mkdocs.yml")],
                          capture_output=True, text=True, timeout=300, cwd=proj, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    return SimpleNamespace(dir=proj / "site", log=log, docs=proj / "docs")


@pytest.fixture(scope="module")
def fixture_site(tmp_path_factory):
    return build(project(tmp_path_factory.mktemp("fixture"), extra_yml=f"site_url: {SITE_URL}\nrepo_url: {REPO_URL}\n"))


@pytest.fixture(scope="module")
def repo_site(tmp_path_factory):
    if not (ROOT / "docs" / "en" / "index.md").is_file():
        pytest.skip("the repository's docs/ has no rendered pages (run `resdeg report`)")
    return build(project(tmp_path_factory.mktemp("repo"), docs=ROOT / "docs", extra_yml=f"site_url: {SITE_URL}\n"))


# -- the hook, without a build -------------------------------------------------------------------------

def config_for(proj: Path):
    from mkdocs.config import load_config

    return load_config(str(proj / "mkdocs.yml"))


def test_nav_comes_from_site_nav_json_with_section_titles_per_language(tmp_path):
    cfg = config_for(project(tmp_path))
    load_hook().on_config(cfg)
    assert cfg["nav"] == ["index.md", {"Native study": ["native/h1.md", "native/h2.md"]}, "about.md"]
    zh = next(lang for lang in cfg.plugins["i18n"].config.languages if lang.locale == "zh")
    assert zh.nav_translations == {"Native study": "原生分辨率研究"}
    load_hook().on_config(cfg)  # MkDocs runs on_config again for each language: nothing doubles
    assert zh.nav_translations == {"Native study": "原生分辨率研究"}
    assert cfg.copyright.count("resdeg-provenance") == 1


def test_without_site_nav_json_the_nav_of_mkdocs_yml_or_the_automatic_one_stays(tmp_path):
    cfg = config_for(project(tmp_path / "auto", nav=None))
    load_hook().on_config(cfg)
    assert cfg["nav"] is None  # MkDocs lists the pages itself
    cfg = config_for(project(tmp_path / "yml", nav=None, extra_yml="nav:\n  - about.md\n  - index.md\n"))
    load_hook().on_config(cfg)
    assert cfg["nav"] == ["about.md", "index.md"]


@pytest.mark.parametrize("nav, message", [
    ({"page": "index.md"}, "non-empty JSON list"),
    ([{"page": "missing.md"}], "'missing.md' is not in"),
    ([{"page": "../zh/index.md"}], "relative to the language folder"),
    ([{"page": "/index.md"}], "relative to the language folder"),
    ([{"page": "index.html"}], "ending in .md"),
    ([{"page": "index.md", "title": "x"}], "item 0: expected"),
    ([{"page": "index.md"}, {"section": "S", "pages": []}], "item 1: a section's pages"),
    ([{"page": "index.md"}, {"section": {"en": ""}, "pages": ["about.md"]}], "item 1: a section title"),
    ([{"page": "index.md"}, {"section": "S", "pages": ["index.md"]}], "item 1: 'index.md' is listed twice"),
])
def test_a_malformed_site_nav_json_is_one_clear_error(tmp_path, nav, message):
    from mkdocs.exceptions import PluginError

    cfg = config_for(project(tmp_path, nav=nav))
    with pytest.raises(PluginError, match=re.escape(message)) as err:
        load_hook().on_config(cfg)
    assert "site-nav.json" in str(err.value)


def test_no_repository_link_unless_configured_and_the_reports_date_is_the_only_date(tmp_path):
    proj = project(tmp_path)
    cfg = config_for(proj)
    load_hook().on_config(cfg)
    assert cfg.repo_url is None and "<a href" not in cfg.copyright  # the repository's mkdocs.yml sets none
    assert f"built {load_hook().build_date()}" in cfg.copyright  # no report: the build's date
    (proj / "docs" / "report.json").write_text(json.dumps({"date": "2024-05-06", "resdeg": "0.1.0"}))
    cfg = config_for(proj)
    load_hook().on_config(cfg)
    zh = next(lang for lang in cfg.plugins["i18n"].config.languages if lang.locale == "zh")
    assert "report of 2024-05-06" in cfg.copyright and "built" not in cfg.copyright
    assert "报告日期 2024-05-06" in zh.copyright and "构建于" not in zh.copyright
    (proj / "docs" / "report.json").write_text(json.dumps({"date": "yesterday"}))
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="report.json: the report's date 'yesterday'"):
        load_hook().on_config(config_for(proj))


def test_a_section_title_without_a_translation_keeps_the_default_language_title(tmp_path):
    nav = [{"page": "index.md"}, {"section": "Shared", "pages": ["about.md"]},
           {"section": {"en": "English only"}, "pages": ["native/h1.md"]}]
    cfg = config_for(project(tmp_path, nav=nav))
    load_hook().on_config(cfg)
    assert cfg["nav"] == ["index.md", {"Shared": ["about.md"]}, {"English only": ["native/h1.md"]}]
    zh = next(lang for lang in cfg.plugins["i18n"].config.languages if lang.locale == "zh")
    assert not zh.nav_translations


# -- the built site, as files -------------------------------------------------------------------------

# A resource the browser would load by itself: src=, <link href=> (stylesheets, icons, preconnect;
# not rel=canonical), CSS url() and @import. Plain <a href> links to other sites (the repository) are
# not loads.
EXTERNAL_LOAD = re.compile(r"""\bsrc\s*=\s*["']?(?:https?:)?//"""
                           r"""|<link\b(?![^>]*\brel=["']?canonical\b)[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
                           r"""|url\(\s*["']?(?:https?:)?//|@import\s+["']?(?:https?:)?//""", re.I)


def self_contained(site: Path) -> None:
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css") and path.is_file():
            text = path.read_text(errors="replace")
            found = EXTERNAL_LOAD.search(text)
            assert not found, (path, text[found.start():found.start() + 120])
            assert "fonts.googleapis" not in text and "fonts.gstatic" not in text and "unpkg.com" not in text, path
    assert (site / "assets" / "vendor" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    assert (site / "assets" / "vendor" / "plotly" / "plotly.min.js").stat().st_size > 1_000_000  # from `plotly`
    for asset in ("javascripts/glightbox.min.js", "stylesheets/glightbox.min.css", "javascripts/iframe-worker.js"):
        assert (site / "assets" / asset).stat().st_size > 1000, asset
    assert (site / "search" / "search_index.js").read_text().startswith("var __index = ")  # search from file://
    index = json.loads((site / "search" / "search_index.json").read_text())
    assert any("\u200b" in d["text"] and d["location"].startswith("zh/") for d in index["docs"])  # jieba
    assert not (site / "site-nav.json").exists() and not (site / "report.json").exists()


def nav_titles(html: str) -> list[str]:
    start = html.index("md-nav--primary")
    return [t.strip()
            for t in re.findall(r'<span class="md-ellipsis">\s*([^<]+?)\s*</span>', html[start:start + 20000])]


def test_the_fixture_site_builds_strict_self_contained_with_the_nav_and_provenance(fixture_site):
    site = fixture_site.dir
    assert not re.search(r"^WARNING\b", fixture_site.log, re.M), fixture_site.log
    self_contained(site)
    from importlib.metadata import version

    for lang, prefix, built, source in (("en", "", "built", "source code"), ("zh", "zh/", "构建于", "源代码")):
        for page in ("index.html", "native/h1.html", "about.html"):
            html = (site / prefix / page).read_text()
            assert nav_titles(html)[:5] == TITLES[lang], (lang, page, nav_titles(html))
            footer = re.search(r'<span class="resdeg-provenance">(.*?)</span>', html).group(1)
            assert f"resdeg {version('resdeg')}" in footer and f"{built} {BUILD_DATE}" in footer, footer
            assert f'<a href="{REPO_URL}">{source}</a>' in footer, footer  # repo_url, as configured
            # the repository link stays a plain link: Material's widget would ask api.github.com for stars
            assert 'class="md-source"' in html and 'data-md-component="source"' not in html
            assert '<link rel="alternate"' not in html.partition("</head>")[0]
            if page != "about.html":  # figures open in the lightbox, by relative links
                assert re.search(r'<a class="glightbox"[^>]* href="(?:\.\./)*figures/acc\.png"', html), page
    # 404.html is served for any missing path, so it uses the site_url's path; its language switch
    # leads to the language roots
    assert re.findall(r'<a href="([^"]*)" hreflang="(\w+)"', (site / "404.html").read_text()) == [
        ("/resdeg/index.html", "en"), ("/resdeg/zh/index.html", "zh")]


def test_the_repository_docs_build_strict_and_self_contained(repo_site):
    assert not re.search(r"^WARNING\b", repo_site.log, re.M), repo_site.log
    self_contained(repo_site.dir)
    for lang_dir, prefix in ((repo_site.docs / "en", ""), (repo_site.docs / "zh", "zh/")):
        for md in lang_dir.rglob("*.md"):
            assert (repo_site.dir / prefix / md.relative_to(lang_dir).with_suffix(".html")).is_file(), md


# -- the built site, in Chromium ---------------------------------------------------------------------

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver; CI does)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                # belt and braces: even a request the test would catch cannot leave the machine
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield drv
    finally:
        drv.quit()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(fixture_site, tmp_path_factory):
    """The fixture site served under /resdeg/ by a local http.server: nothing is at /."""
    root = tmp_path_factory.mktemp("www")
    shutil.copytree(fixture_site.dir, root / "resdeg")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/resdeg/"
    finally:
        server.shutdown()
        server.server_close()


def wait(driver, script, timeout=30.0, *args):
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script(script, *args):
            return True
        time.sleep(0.1)
    return False


class Traffic:
    """Every request the browser made since the last check (Chrome's performance log), and failures."""

    def __init__(self, driver):
        self.driver = driver
        driver.get_log("performance")  # drain both logs
        driver.get_log("browser")

    def check(self, base: str) -> list[str]:
        urls, failed, ids = [], [], {}
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            params = msg.get("params", {})
            if msg["method"] == "Network.requestWillBeSent":
                urls.append(params["request"]["url"])
                ids[params["requestId"]] = params["request"]["url"]
            elif msg["method"] == "Network.responseReceived" and params["response"]["status"] >= 400:
                failed.append(f"{params['response']['status']} {params['response']['url']}")
            elif (msg["method"] == "Network.loadingFailed" and not params.get("canceled")
                  and params.get("requestId") in ids):  # not Chromium's own start-up requests
                failed.append(f"{params.get('errorText')} {ids[params['requestId']]}")
        leaving = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss", "ftp")
                   and urlsplit(u).hostname not in LOCAL_HOSTS]
        assert not leaving, f"requests that leave the machine: {leaving}"
        # everything the site loads lies inside the site's folder (from disk) or under its sub-path
        outside = [u for u in urls if urlsplit(u).scheme in ("file", "http", "https") and not u.startswith(base)]
        assert not outside, f"requests outside {base}: {outside}"
        assert not failed, f"failed requests: {failed}"
        errors = [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert any(u.startswith(base + "assets/") for u in urls), \
            "the performance log recorded none of the site's loads"
        return urls


HEADING = ("const h = document.querySelector('.md-content h1').cloneNode(true);"
           "h.querySelectorAll('.headerlink').forEach(a => a.remove()); return h.textContent.trim()")


def open_page(driver, url: str, lang: str, heading: str) -> None:
    driver.get(url)
    assert wait(driver, "return document.readyState === 'complete'"), url
    assert driver.execute_script("return document.documentElement.lang") == lang, url
    assert driver.execute_script(HEADING) == heading, url
    assert driver.execute_script(  # Material's stylesheet applies (it is a relative link that works)
        "return getComputedStyle(document.querySelector('.md-header')).position") == "sticky", url
    images = driver.execute_script("return Array.from(document.querySelectorAll('.md-content img'))"
                                   ".map(i => { i.loading = 'eager'; return i.src; })")
    assert wait(driver, "return Array.from(document.querySelectorAll('.md-content img'))"
                        ".every(i => i.complete && i.naturalWidth > 0)"), (url, images)


def follow(driver, selector: str, url_end: str, lang: str, heading: str) -> None:
    link = driver.find_element("css selector", selector)
    driver.execute_script("arguments[0].click()", link)  # the language menu opens on hover: click by script
    assert wait(driver, "return location.href.split('#')[0].endsWith(arguments[0]) && document.readyState === "
                        "'complete' && document.documentElement.lang === arguments[1]", 30, url_end, lang), \
        (selector, driver.current_url)
    assert driver.execute_script(HEADING) == heading


def search(driver, query: str) -> list[str]:
    driver.execute_script("document.querySelector('label[for=__search]').click()")
    box = driver.find_element("css selector", "input.md-search__input")
    box.clear()
    box.send_keys(query)
    # results for the whole query (each result links with ?h=QUERY), not for the first keystrokes
    assert wait(driver, "const links = Array.from(document.querySelectorAll('.md-search-result__item a'));"
                        "return links.some(a => new URL(a.href).searchParams.get('h') === arguments[0]) || "
                        "(links.length === 0 && /no matching|没有找到/i.test("
                        "document.querySelector('.md-search-result__meta').textContent))", 20, query), query
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('.md-search-result__item a'))"
                                  ".map(a => a.href)")
    driver.execute_script("document.querySelector('label[for=__search]').click()")
    return hrefs


def lightbox(driver, shot: Path) -> None:
    thumb = driver.find_element("css selector", ".md-content a.glightbox")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumb)
    width = driver.execute_script("return arguments[0].querySelector('img').getBoundingClientRect().width", thumb)
    thumb.click()  # a real click on the figure
    # open, and larger than on the page once the zoom animation is over
    assert wait(driver, "const i = document.querySelector('.glightbox-container .gslide.current img');"
                        "return i && i.complete && i.naturalWidth > 0 && "
                        "i.getBoundingClientRect().width > 1.3 * arguments[0]", 20, width), \
        ("the figure did not open enlarged in the lightbox", width)
    time.sleep(0.5)  # let the overlay fade in for the screenshot
    driver.save_screenshot(str(shot))
    assert driver.execute_script("return getComputedStyle(document.querySelector('.glightbox-container')).position") \
        == "fixed"  # glightbox's own stylesheet is loaded
    driver.find_element("css selector", ".glightbox-container .gclose").click()
    assert wait(driver, "return !document.querySelector('.glightbox-container')", 10), "the lightbox did not close"


DRAWN = "return Array.from(document.querySelectorAll('.resdeg-plot')).every(e => e.dataset.state === 'drawn')"
# per interactive figure of the page: its description, and the points it drew (reference lines aside)
PLOTTED = ("return Array.from(document.querySelectorAll('.resdeg-plot')).map(e => [e.getAttribute('data-plot'), "
           "e.nextElementSibling.querySelector('.resdeg-plot-area').data.filter(t => !t.legendgroup.startsWith('line'))"
           ".reduce((n, t) => n + t.x.length, 0)])")


def csv_rows(spec: dict, text: str) -> int:
    """The rows of a CSV an interactive figure draws: one point per row and panel that match."""
    import csv

    def keep(row, where):
        return all(row[k] in ([str(x) for x in v] if isinstance(v, list) else [str(v)]) for k, v in where.items())

    rows = [r for r in csv.DictReader(text.splitlines()) if keep(r, spec["where"])]
    return sum(keep(r, p["where"]) for p in spec["panels"] for r in rows)


def check_plots(driver, downloads: Path, url: str) -> int:
    """Every interactive figure of the open page is drawn with exactly the rows of its CSV."""
    assert wait(driver, DRAWN, 60), (url, driver.execute_script(
        "return Array.from(document.querySelectorAll('.resdeg-plot')).map(e => e.dataset.state)"))
    plotted = driver.execute_script(PLOTTED)
    for attr, points in plotted:
        spec = json.loads(attr)
        assert points == csv_rows(spec, (downloads / spec["data"]).read_text()) > 0, (url, spec["data"], points)
    return len(plotted)


def hover(driver, plot: int = 0, trace: int = 0, point: int = 0) -> str:
    """Move the mouse onto one point of an interactive figure; the hover box's text."""
    from selenium.webdriver.common.action_chains import ActionChains

    area = driver.find_elements("css selector", ".resdeg-plot-area")[plot]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", area)
    x, y, w, h = driver.execute_script(
        "const gd = arguments[0], t = gd._fullData[arguments[1]], i = arguments[2], fl = gd._fullLayout;"
        "const xa = fl[t.xaxis.replace('x', 'xaxis')], ya = fl[t.yaxis.replace('y', 'yaxis')];"
        "const r = gd.getBoundingClientRect();"
        "return [xa._offset + xa.d2p(t.x[i]), ya._offset + ya.d2p(t.y[i]), r.width, r.height];", area, trace, point)
    ActionChains(driver).move_to_element_with_offset(area, round(x - w / 2), round(y - h / 2)).perform()
    assert wait(driver, "const h = document.querySelector('.hoverlayer .hovertext'); return h && h.textContent", 10), \
        "no hover box over the point"
    time.sleep(0.3)
    return driver.execute_script("return document.querySelector('.hoverlayer .hovertext').textContent")


def interactive_figure(driver, page: str, downloads: Path, mode: str) -> None:
    """The fixture's interactive figure: drawn from every row of its CSV, the PNG kept for print and
    linked; a real hover shows one row's run, epoch and exact value; labels in the page's language."""
    check_plots(driver, downloads, page)
    assert driver.execute_script("return getComputedStyle(document.querySelector('.md-content figure a.glightbox'))"
                                 ".display") == "none"  # the chart stands in for the PNG on screen
    assert driver.execute_script("return document.querySelector('figcaption a.resdeg-static-link').href"
                                 ".endsWith('figures/acc.png')")
    text = hover(driver, trace=0, point=2)  # FULL, seed 42, epoch 3: test_acc 0.7000 in the CSV
    driver.save_screenshot(str(ARTIFACTS / f"fixture-{mode}-hover.png"))
    for fragment in ("model: resnet18", "variant: FULL", "seed: 42", "epoch: 3", "accuracy (%): 70 ",
                     "test_acc = 0.7000"):
        assert fragment in text, (fragment, text)


def check_site(driver, base: str, index: str, mode: str, downloads: Path) -> None:
    """Landing page -> inner page by a link -> zh and back, on both; search in both languages;
    the lightbox; then no request left the machine or the site."""
    traffic = Traffic(driver)
    open_page(driver, base + index, "en", "Fixture landing")
    assert wait(driver, "return document.querySelectorAll('.md-content mjx-container svg').length > 0"), \
        "MathJax did not typeset the formula"
    driver.save_screenshot(str(ARTIFACTS / f"fixture-{mode}-en-index.png"))
    follow(driver, ".md-content a[href='native/h1.html']", "/native/h1.html", "en", "Overfitting hypothesis")
    driver.save_screenshot(str(ARTIFACTS / f"fixture-{mode}-en-h1.png"))
    follow(driver, ".md-select a[hreflang=zh]", "/zh/native/h1.html", "zh", "过拟合假设")
    driver.save_screenshot(str(ARTIFACTS / f"fixture-{mode}-zh-h1.png"))
    follow(driver, ".md-select a[hreflang=en]", "/native/h1.html", "en", "Overfitting hypothesis")
    follow(driver, ".md-content a[href='../index.html']", "/index.html", "en", "Fixture landing")
    follow(driver, ".md-select a[hreflang=zh]", "/zh/index.html", "zh", "夹具首页")
    driver.save_screenshot(str(ARTIFACTS / f"fixture-{mode}-zh-index.png"))
    follow(driver, ".md-select a[hreflang=en]", "/index.html", "en", "Fixture landing")
    follow(driver, ".md-nav--primary a[href='about.html']", "/about.html", "en", "About this fixture")
    open_page(driver, base + "native/h2.html", "en", "Vanishing gradients")
    interactive_figure(driver, base + "native/h2.html", downloads, mode)
    open_page(driver, base + "zh/native/h2.html", "zh", "梯度消失")
    check_plots(driver, downloads, base + "zh/native/h2.html")
    assert driver.execute_script(
        "return document.querySelector('.resdeg-plot-area .g-xtitle').textContent"
    ) == "训练轮次"

    found = search(driver, "xylophone")
    assert found and all(re.split("[?#]", h)[0] == base + "index.html" for h in found), found
    assert search(driver, "qqzzxq") == []  # the check above can fail
    open_page(driver, base + "zh/index.html", "zh", "夹具首页")
    assert driver.execute_script("return getComputedStyle(document.querySelector('.md-content figcaption'))"
                                 ".fontStyle") == "normal"  # no slanted Chinese
    found = search(driver, "退化")  # one word inside a Chinese sentence: needs jieba's segmentation
    assert found and all(re.split("[?#]", h)[0] == base + "zh/index.html" for h in found), found

    lightbox(driver, ARTIFACTS / f"fixture-{mode}-zh-lightbox.png")
    traffic.check(base)


def test_site_opened_from_disk(fixture_site, browser):
    check_site(browser, fixture_site.dir.as_uri() + "/", "index.html", "file", fixture_site.docs / "downloads")


def test_site_served_under_a_sub_path(served, fixture_site, browser):
    check_site(browser, served, "", "subpath", fixture_site.docs / "downloads")
    traffic = Traffic(browser)
    browser.get(served + "404.html")  # what a server sends for a missing page
    assert wait(browser, "return getComputedStyle(document.querySelector('.md-header')).position === 'sticky'")
    follow(browser, ".md-select a[hreflang=zh]", "/zh/index.html", "zh", "夹具首页")
    traffic.check(served)


def test_repository_docs_in_the_browser(repo_site, browser):
    """Every page of the repository's docs, opened from disk: images and formulas render, the language
    switch points at the same page in the other language, nothing is fetched from elsewhere.
    Every interactive figure is drawn with exactly its CSV's rows; a hover over one shows the run, the
    epoch and the CSV's value. Screenshots of the landing page and one hypothesis page in both
    languages, and of a hover (repo-hover.png)."""
    import csv

    base = repo_site.dir.as_uri() + "/"
    downloads = repo_site.docs / "downloads"
    traffic = Traffic(browser)
    plots = 0
    for lang, prefix in (("en", ""), ("zh", "zh/")):
        other, other_prefix = ("zh", "zh/") if lang == "en" else ("en", "")
        for md in sorted((repo_site.docs / lang).rglob("*.md")):
            page = md.relative_to(repo_site.docs / lang).with_suffix(".html").as_posix()
            browser.get(base + prefix + page)
            assert wait(browser, "return document.readyState === 'complete'"), page
            assert browser.execute_script("return document.documentElement.lang") == lang, page
            browser.execute_script("document.querySelectorAll('.md-content img').forEach(i => i.loading = 'eager')")
            assert wait(browser, "return Array.from(document.querySelectorAll('.md-content img'))"
                                 ".every(i => i.complete && i.naturalWidth > 0)"), (lang, page)
            assert wait(browser, "return document.querySelectorAll('.md-content mjx-container').length >= "
                                 "document.querySelectorAll('.md-content .arithmatex').length"), (lang, page, "MathJax")
            switch = browser.execute_script(f"return document.querySelector('.md-select a[hreflang={other}]').href")
            assert switch == base + other_prefix + page, (lang, page, switch)
            if page in ("index.html", "h1.html"):
                browser.save_screenshot(str(ARTIFACTS / f"repo-{lang}-{page[:-5]}.png"))
            plots += check_plots(browser, downloads, page)
            if lang == "en" and page.endswith("/h1.html") and not (ARTIFACTS / "repo-hover.png").exists():
                spec = json.loads(browser.execute_script("return document.querySelector('.resdeg-plot').dataset.plot"))
                text = hover(browser, trace=0, point=1)
                browser.save_screenshot(str(ARTIFACTS / "repo-hover.png"))
                seed, epoch = re.search(r"seed: (\d+)", text).group(1), re.search(r"epoch: (\d+)", text).group(1)
                row = next(r for r in csv.DictReader((downloads / spec["data"]).open()) if r["seed"] == seed
                           and r["epoch"] == epoch and r["model"] == spec["where"]["model"] and r["variant"] in text)
                key = spec["panels"][0]["y"]
                assert f"{key} = {row[key]}" in text, (text, row)
    assert plots >= 10  # the curves, depth figures, gradient telemetry and signal propagation of every study
    traffic.check(base)
