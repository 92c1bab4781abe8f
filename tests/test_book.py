"""The book builds with warnings as errors, and its pages have what a reader needs offline.

One build per test session (a module fixture), from the chapters' stored outputs, into a temporary
folder: the repository's own ``_build`` is never touched. Every expectation is derived from
``_config.yml`` and ``_toc.yml``, the single place where the repository and the chapters are named.
"""

from __future__ import annotations

import html
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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
        pytest.fail("jupyter-book is not installed: run `make test`, which installs the dev extra")
    return command


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the book once; return the folder of its HTML."""
    sphinx = CONFIG["sphinx"]["config"]
    mathjax = ROOT / sphinx["html_extra_path"][0] / "_static" / sphinx["mathjax_path"]
    if not urlparse(sphinx["mathjax_path"]).scheme and not mathjax.is_file():
        pytest.fail(f"MathJax is missing ({mathjax.relative_to(ROOT)}): run `make mathjax`")
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [jupyter_book(), "build", str(ROOT), "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return out / "_build" / "html"


def page(site: Path, name: str) -> str:
    """The HTML of the page built from ``name`` (a _toc.yml entry)."""
    return (site / f"{name}.html").read_text(encoding="utf-8")


def test_toc_names_every_chapter_once() -> None:
    assert len(CHAPTERS) == len(set(CHAPTERS))
    chapters = sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(NOTEBOOK_CHAPTERS) == chapters, "every notebook in notebooks/ must be in _toc.yml"


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
        remote = [m.group(0) for script in SCRIPT.findall(text) for m in REMOTE_MATHJAX.finditer(script)]
        assert not remote, f"{path.relative_to(site)} loads MathJax from {remote}"
        for src in SCRIPT_SRC.findall(text):
            src = html.unescape(src)
            if "mathjax" not in src.lower():
                continue
            target = posixpath.normpath(posixpath.join(path.parent.relative_to(site).as_posix(), src.split("?")[0]))
            assert (site / target).is_file(), f"{path.relative_to(site)} loads {src}, which the build lacks"
            referenced += 1
    # The root page has display maths, so at least it must load MathJax.
    assert referenced and any("mathjax" in s.lower() for s in SCRIPT_SRC.findall(page(site, TOC["root"])))


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
    assert url == "https://colab.example/github/someone/fork/blob/dev/docs/notebooks/05_vit.ipynb"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"repository_url": "https://gitlab.com/someone/fork"}, "github.com/<owner>/<repo>"),
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
