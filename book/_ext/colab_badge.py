"""Sphinx extension: an "Open in Colab" badge at the top of every chapter built from a notebook.

The link is derived from the book's configuration, where the repository is named once
(``_config.yml``: ``repository.url``, ``repository.branch``, ``repository.path_to_book``,
``launch_buttons.colab_url``); Jupyter Book passes those on as ``html_theme_options``. A page gets
the badge when its source is an ``.ipynb`` file under one of ``colab_badge_folders`` (default:
``notebooks``). The badge is an inline SVG, so it shows without network access.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

BADGE_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img" '
    'aria-hidden="true" focusable="false">'
    '<rect width="117" height="20" rx="3" fill="#555"/>'
    '<rect x="20" width="97" height="20" rx="3" fill="#e8710a"/>'
    '<rect x="20" width="6" height="20" fill="#e8710a"/>'
    '<circle cx="7.5" cy="10" r="4" fill="none" stroke="#f9ab00" stroke-width="2.4"/>'
    '<circle cx="12.5" cy="10" r="4" fill="none" stroke="#e8710a" stroke-width="2.4"/>'
    '<text x="68" y="14" fill="#fff" text-anchor="middle" '
    'font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">Open in Colab</text>'
    "</svg>"
)


def repository_parts(theme_options: dict) -> tuple[str, str, str, str]:
    """Return (owner, repo, branch, path_to_book) of the GitHub repository the book names."""
    url = theme_options.get("repository_url") or ""
    parsed = urlparse(url)
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.netloc not in {"github.com", "www.github.com"} or len(parts) != 2:
        raise ExtensionError(
            f"colab_badge: repository.url in _config.yml must look like https://github.com/<owner>/<repo>, got {url!r}"
        )
    owner, repo = parts[0], parts[1].removesuffix(".git")
    branch = theme_options.get("repository_branch") or ""
    if not branch:
        raise ExtensionError("colab_badge: repository.branch in _config.yml is empty")
    path_to_book = (theme_options.get("path_to_docs") or "").strip("/")
    return owner, repo, branch, path_to_book


def colab_url(theme_options: dict, notebook: str) -> str:
    """Colab's URL for ``notebook`` (a path relative to the book's root, POSIX separators)."""
    base = ((theme_options.get("launch_buttons") or {}).get("colab_url") or "").rstrip(
        "/"
    )
    if not base:
        raise ExtensionError(
            "colab_badge: launch_buttons.colab_url in _config.yml is empty"
        )
    owner, repo, branch, path_to_book = repository_parts(theme_options)
    path = str(PurePosixPath(path_to_book, notebook)) if path_to_book else notebook
    return f"{base}/github/{owner}/{repo}/blob/{branch}/{path}"


def _check_config(app: Sphinx) -> None:
    """Fail at the start of the build, not page by page, when the repository is misconfigured."""
    if app.builder.format == "html":
        colab_url(app.config.html_theme_options, "notebooks/check.ipynb")


def add_badge(app: Sphinx, doctree: nodes.document) -> None:
    """Insert the badge as the first node of a chapter that comes from a notebook."""
    if app.builder.format != "html":
        return
    docname = app.env.docname
    source = PurePosixPath(*Path(app.env.doc2path(docname, base=False)).parts)
    if (
        source.suffix != ".ipynb"
        or source.parent.as_posix() not in app.config.colab_badge_folders
    ):
        return
    url = colab_url(app.config.html_theme_options, source.as_posix())
    html = (
        f'<p class="colab-badge"><a href="{url}" target="_blank" rel="noopener" '
        f'title="Open this chapter in Google Colab" aria-label="Open in Colab">{BADGE_SVG}</a></p>'
    )
    doctree.insert(0, nodes.raw("", html, format="html"))


def setup(app: Sphinx) -> dict:
    """Register the extension; ``colab_badge_folders`` lists the folders whose notebooks get a badge."""
    app.add_config_value("colab_badge_folders", ["notebooks"], "env", [list])
    app.connect("builder-inited", _check_config)
    app.connect("doctree-read", add_badge)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
