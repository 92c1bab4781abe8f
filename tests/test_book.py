"""The book builds with warnings as errors, and its pages have what a reader needs offline.

One build per test session (a module fixture), from the chapters' stored outputs, into a temporary
folder: the repository's own ``_build`` is never touched. Every expectation is derived from
``_config.yml`` and ``_toc.yml``, the single place where the repository and the chapters are named.
"""

from __future__ import annotations

import ast
import functools
import html
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
import tomllib
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import QuietHandler, http_server

pytestmark = pytest.mark.slow  # a headless browser (left out by `make unit`)

ROOT = Path(__file__).resolve().parents[1]
INTRO = ROOT / "book" / "intro.md"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", re.IGNORECASE)
SCRIPT = re.compile(r"<script\b.*?</script>", re.IGNORECASE | re.DOTALL)
REMOTE_MATHJAX = re.compile(r"(https?:)?//[^\s\"']*mathjax", re.IGNORECASE)


def toc_files(entry: dict | list) -> list[str]:
    """Every ``file`` (and the ``root``) named in a _toc.yml structure, in order."""
    found: list[str] = []
    if isinstance(entry, list):
        for item in entry:
            found += toc_files(item)
    elif isinstance(entry, dict):
        for key, value in entry.items():
            if key in {"root", "file"}:
                found.append(value)
            elif isinstance(value, (list, dict)):
                found += toc_files(value)
    return found


CHAPTERS = toc_files(TOC)
NOTEBOOK_CHAPTERS = [name for name in CHAPTERS if (ROOT / f"{name}.ipynb").is_file()]


def expected_colab_url(notebook: str) -> str:
    """The Colab link for ``notebook`` (e.g. ``notebooks/01_patches.ipynb``), from _config.yml."""
    repo = CONFIG["repository"]
    owner, name = urlparse(repo["url"]).path.strip("/").split("/")
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    prefix = repo.get("path_to_book", "").strip("/")
    path = f"{prefix}/{notebook}" if prefix else notebook
    return f"{colab}/github/{owner}/{name}/blob/{repo['branch']}/{path}"


def jupyter_book() -> str:
    """The jupyter-book command of the environment running the tests."""
    beside = Path(sys.executable).with_name("jupyter-book")
    command = str(beside) if beside.exists() else shutil.which("jupyter-book")
    if command is None:
        pytest.fail(
            "jupyter-book is not installed: run `make test`, which installs the dev extra"
        )
    return command


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the book once; return the folder of its HTML."""
    sphinx = CONFIG["sphinx"]["config"]
    mathjax = ROOT / sphinx["html_extra_path"][0] / "_static" / sphinx["mathjax_path"]
    if not urlparse(sphinx["mathjax_path"]).scheme and not mathjax.is_file():
        pytest.fail(
            f"MathJax is missing ({mathjax.relative_to(ROOT)}): run `make mathjax`"
        )
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [
            jupyter_book(),
            "build",
            str(ROOT),
            "-W",
            "-n",
            "--keep-going",
            "--path-output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (
        f"book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    )
    return out / "_build" / "html"


def page(site: Path, name: str) -> str:
    """The HTML of the page built from ``name`` (a _toc.yml entry)."""
    return (site / f"{name}.html").read_text(encoding="utf-8")


def test_toc_names_every_chapter_once() -> None:
    assert len(CHAPTERS) == len(set(CHAPTERS))
    chapters = sorted(
        p.relative_to(ROOT).with_suffix("").as_posix()
        for p in (ROOT / "notebooks").glob("*.ipynb")
    )
    assert sorted(NOTEBOOK_CHAPTERS) == chapters, (
        "every notebook in notebooks/ must be in _toc.yml"
    )


def test_every_toc_entry_has_a_page(site: Path) -> None:
    missing = [name for name in CHAPTERS if not (site / f"{name}.html").is_file()]
    assert not missing, f"no HTML page for {missing}"


@pytest.mark.parametrize("name", NOTEBOOK_CHAPTERS)
def test_chapter_has_colab_badge(site: Path, name: str) -> None:
    badges = re.findall(r'class="colab-badge"><a href="([^"]+)"', page(site, name))
    assert badges == [expected_colab_url(f"{name}.ipynb")]


def test_prose_pages_have_no_colab_badge(site: Path) -> None:
    prose = [name for name in CHAPTERS if name not in NOTEBOOK_CHAPTERS]
    assert prose, "_toc.yml should list the book's prose pages"
    assert [name for name in prose if "colab-badge" in page(site, name)] == []


def test_mathjax_is_served_locally(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    referenced = 0
    for path in pages:
        text = path.read_text(encoding="utf-8")
        remote = [
            m.group(0)
            for script in SCRIPT.findall(text)
            for m in REMOTE_MATHJAX.finditer(script)
        ]
        assert not remote, f"{path.relative_to(site)} loads MathJax from {remote}"
        for src in SCRIPT_SRC.findall(text):
            src = html.unescape(src)
            if "mathjax" not in src.lower():
                continue
            target = posixpath.normpath(
                posixpath.join(
                    path.parent.relative_to(site).as_posix(), src.split("?")[0]
                )
            )
            assert (site / target).is_file(), (
                f"{path.relative_to(site)} loads {src}, which the build lacks"
            )
            referenced += 1
    # The root page has display maths, so at least it must load MathJax.
    assert referenced and any(
        "mathjax" in s.lower() for s in SCRIPT_SRC.findall(page(site, TOC["root"]))
    )


def test_references_page_lists_the_vit_paper(site: Path) -> None:
    references = [name for name in CHAPTERS if name.endswith("references")]
    assert len(references) == 1
    text = page(site, references[0]).lower()
    assert "an image is worth 16x16 words" in text
    assert "arxiv.org/abs/2010.11929" in text


def colab_badge():
    """The book's Sphinx extension, imported from book/_ext."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import colab_badge
    finally:
        sys.path.pop(0)
    return colab_badge


def test_badge_url_follows_the_configured_repository() -> None:
    options = {
        "repository_url": "https://github.com/someone/fork.git",
        "repository_branch": "dev",
        "path_to_docs": "docs/",
        "launch_buttons": {"colab_url": "https://colab.example/"},
    }
    url = colab_badge().colab_url(options, "notebooks/05_vit.ipynb")
    assert (
        url
        == "https://colab.example/github/someone/fork/blob/dev/docs/notebooks/05_vit.ipynb"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"repository_url": "https://gitlab.com/someone/fork"},
            "github.com/<owner>/<repo>",
        ),
        ({"repository_url": "https://github.com/someone"}, "github.com/<owner>/<repo>"),
        ({"repository_branch": ""}, "repository.branch"),
        ({"launch_buttons": {}}, "colab_url"),
    ],
)
def test_badge_rejects_an_unusable_configuration(change: dict, message: str) -> None:
    options = {
        "repository_url": "https://github.com/someone/fork",
        "repository_branch": "main",
        "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    } | change
    from sphinx.errors import ExtensionError

    with pytest.raises(ExtensionError, match=re.escape(message)):
        colab_badge().colab_url(options, "notebooks/05_vit.ipynb")


def test_landing_page_has_the_roadmap_and_three_ways_in(site: Path) -> None:
    text = page(site, TOC["root"])
    assert (
        "Start here" in text
        and "Reading the book" in text
        and "on Colab" in text
        and "Reusing the package" in text
    )
    roadmap = text[text.index("Roadmap") :]
    main_path = [name for name in NOTEBOOK_CHAPTERS if Path(name).name[0].isdigit()]
    assert [name for name in main_path if f'href="../{name}.html"' not in roadmap] == []


def test_landing_page_times_are_the_measured_ones() -> None:
    """The roadmap's "CPU, N s" per chapter is tests/durations.json's measurement, rounded."""
    measured = json.loads(
        (ROOT / "tests" / "durations.json").read_text(encoding="utf-8")
    )
    rows = re.findall(
        r"^\| \{doc\}`\.\./notebooks/(\w+)` .*\| CPU, (\d+) s", INTRO.read_text(), re.M
    )
    assert len(rows) >= 13, rows
    wrong = {
        name: (int(quoted), measured.get(f"notebooks/{name}.ipynb"))
        for name, quoted in rows
        if measured.get(f"notebooks/{name}.ipynb") != int(quoted)
    }
    assert not wrong, (
        f"book/intro.md quotes other times than tests/durations.json (quoted, measured): {wrong}; "
        "re-measure with `make test PYTEST_ARGS=--record-durations` and copy the numbers"
    )


def public_names(module: Path) -> list[str]:
    """The public names a module of the package defines at its top level (functions, classes, constants)."""
    names = []
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [target.id for target in targets if isinstance(target, ast.Name)]
    return [name for name in names if not name.startswith("_")]


def exported_module(notebook: str) -> str | None:
    """The module a chapter exports (its ``#| default_exp``), or None."""
    found = re.search(
        r"#\s*\|\s*default_exp\s+(\w+)",
        (ROOT / f"{notebook}.ipynb").read_text(encoding="utf-8"),
    )
    return None if found is None else found.group(1)


def test_api_reference_documents_every_public_name(site: Path) -> None:
    anchors = set(re.findall(r'id="(going_modular\.[\w.]+)"', page(site, "book/api")))
    modules = sorted(
        path
        for path in (ROOT / "going_modular").glob("*.py")
        if path.stem != "__init__"
    )
    expected = [
        f"going_modular.{path.stem}.{name}"
        for path in modules
        for name in public_names(path)
    ]
    assert len(expected) > 100
    missing = [name for name in expected if name not in anchors]
    assert not missing, f"book/api.md does not document {missing}"


@pytest.mark.parametrize("name", NOTEBOOK_CHAPTERS)
def test_chapters_and_their_reference_entries_link_to_each_other(
    site: Path, name: str
) -> None:
    module = exported_module(name)
    if module is None:
        pytest.skip(f"{name} exports nothing")
    target = "going_modular" if module == "__init__" else f"going_modular.{module}"
    assert f'href="../book/api.html#module-{target}"' in page(site, name)
    reference = page(site, "book/api")
    section = reference[
        reference.index(f'id="module-{target}"') - 3000 : reference.index(
            f'id="module-{target}"'
        )
    ]
    assert f'href="../{name}.html"' in section


# ---- The book in a real browser: Debian's chromium, driven by Selenium through Debian's chromedriver.
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = ROOT / "_build" / "screenshots"  # for a person to look at
RAW_MATH = re.compile(r"\\\(|\\\[|\$\$|\\begin\{")
# The page's text without code, scripts and typeset maths: what must not show raw LaTeX.
PROSE_TEXT = """
const copy = document.body.cloneNode(true);
copy.querySelectorAll("pre, code, script, style, mjx-container, .highlight").forEach((e) => e.remove());
return copy.textContent;
"""
MATHJAX_DONE = """
const done = arguments[arguments.length - 1];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => done("typeset"), (error) => done("failed: " + error));
} else {
  done(document.querySelector("script[src*='mathjax']") ? "not started" : "no maths");
}
"""
BROKEN_IMAGES = """
const done = arguments[arguments.length - 1];
const images = [...document.images];
images.forEach((image) => { image.loading = "eager"; });
Promise.all(images.map((image) => image.complete ? null : new Promise((r) => { image.onload = image.onerror = r; })))
  .then(() => done(images.filter((image) => image.naturalWidth === 0).map((image) => image.getAttribute("src"))));
"""
# Code cells as the reader sees them: the blocks that scroll sideways, and how many characters the narrowest
# input block shows per line (the notebooks are formatted at CODE_WIDTH).
CODE_WIDTH = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"][
    "line-length"
]
CODE_BLOCKS = """
const blocks = [...document.querySelectorAll("div.cell div.highlight pre")];
const scrolling = blocks.filter((pre) => pre.scrollWidth > pre.clientWidth + 1).map((pre) => pre.textContent.slice(0, 60));
let fits = null;
for (const pre of document.querySelectorAll("div.cell_input div.highlight pre")) {
  const style = getComputedStyle(pre);
  const probe = document.createElement("span");
  probe.textContent = "x".repeat(100);
  pre.appendChild(probe);
  const width = probe.getBoundingClientRect().width / 100;
  probe.remove();
  const chars = Math.floor((pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)) / width);
  fits = fits === null ? chars : Math.min(fits, chars);
}
return [scrolling, fits];
"""
SEARCH_HITS = "return document.querySelectorAll('#search-results ul.search li').length"


class QuietFiles(QuietHandler, SimpleHTTPRequestHandler):
    """Serves a folder's files, without access logs."""


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; skipped when it is missing, except under CI=true, where that fails."""
    if not (CHROMIUM and CHROMEDRIVER):
        reason = (
            "Chromium and ChromeDriver are needed for the browser tests: `make test` installs Debian's "
            "chromium and chromium-driver when it runs as root on Debian"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(site: Path):
    """The built site over HTTP on 127.0.0.1, as a reader's browser gets it."""
    with http_server(functools.partial(QuietFiles, directory=str(site))) as url:
        yield url


def check_page(
    driver, url: str, *, colab: str | None = None, screenshot: Path | None = None
) -> list[str]:
    """What is wrong with the page at ``url`` as a browser shows it; [] when nothing is."""
    from selenium.webdriver.common.by import By

    driver.get_log("browser")  # start from an empty console
    driver.get(url)
    problems = []
    if not driver.title.strip():
        problems.append("the page has no title")
    mathjax = driver.execute_async_script(MATHJAX_DONE)
    if mathjax not in ("typeset", "no maths"):
        problems.append(f"MathJax {mathjax}")
    raw = sorted(set(RAW_MATH.findall(driver.execute_script(PROSE_TEXT))))
    if raw:
        problems.append(f"raw LaTeX in the text: {raw}")
    broken = driver.execute_async_script(BROKEN_IMAGES)
    if broken:
        problems.append(f"images that did not load: {broken}")
    errors = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE"
    ]
    if errors:
        problems.append(f"console errors: {errors}")
    scrolling, fits = driver.execute_script(CODE_BLOCKS)
    if scrolling:
        problems.append(f"code blocks that scroll sideways: {scrolling}")
    if fits is not None and fits < CODE_WIDTH:
        problems.append(
            f"a code cell shows {fits} characters per line, fewer than the notebooks' {CODE_WIDTH}"
        )
    if colab is not None:
        badges = [
            a.get_attribute("href")
            for a in driver.find_elements(By.CSS_SELECTOR, ".colab-badge a")
        ]
        if badges != [colab]:
            problems.append(f"Colab badge links {badges}, expected [{colab}]")
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    return problems


@pytest.mark.parametrize("name", CHAPTERS)
def test_page_in_a_browser(browser, served: str, name: str) -> None:
    colab = expected_colab_url(f"{name}.ipynb") if name in NOTEBOOK_CHAPTERS else None
    shot = SCREENSHOTS / f"{name.replace('/', '__')}.png"
    assert (
        check_page(browser, f"{served}/{name}.html", colab=colab, screenshot=shot) == []
    )


def test_search_finds_position_embedding_offline(browser, served: str) -> None:
    browser.get(f"{served}/search.html?q=position+embedding")
    deadline = time.monotonic() + 30
    while (
        not (hits := browser.execute_script(SEARCH_HITS))
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert hits > 0


BREAKAGES = {
    # In the chapter's text, which MathJax leaves alone unless the build marked it as maths.
    "raw formula": (
        'heading">#</a></h1>',
        r'heading">#</a></h1><p>\(x^2\) and $$y$$</p>',
        "raw LaTeX",
    ),
    "broken image": (
        "</main>",
        '<img src="no-such-figure.png" alt="missing"></main>',
        "images that did not load",
    ),
    "console error": (
        "</main>",
        "<script>console.error('broken on purpose')</script></main>",
        "console errors",
    ),
    "code that scrolls": (
        "</head>",
        "<style>div.cell div.highlight pre { white-space: pre; overflow-x: auto; }</style></head>",
        "code blocks that scroll sideways",
    ),
    "wrong Colab link": (
        'class="colab-badge"><a href="https://colab.research.google.com/github/',
        'class="colab-badge"><a href="https://colab.research.google.com/github/someone-else/',
        "Colab badge links",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_browser_check_catches_a_broken_page(
    browser, served: str, site: Path, breakage: str
) -> None:
    name = NOTEBOOK_CHAPTERS[4]
    original = site / f"{name}.html"
    old, new, expected = BREAKAGES[breakage]
    text = original.read_text(encoding="utf-8")
    assert old in text
    copy = original.with_name(
        f"broken-{breakage.replace(' ', '-')}.html"
    )  # beside it: relative links still work
    copy.write_text(text.replace(old, new, 1), encoding="utf-8")
    url = f"{served}/{copy.relative_to(site).as_posix()}"
    colab = expected_colab_url(f"{name}.ipynb")
    assert (
        check_page(browser, f"{served}/{name}.html", colab=colab) == []
    )  # the page itself is fine
    problems = check_page(browser, url, colab=colab)
    assert any(expected in problem for problem in problems), problems
