"""Sphinx extension: what a reader sees on the book's pages, beyond the theme's defaults.

* **Export labels.** A code cell opening with the exporter's directives (``#| default_exp NAME``,
  ``#| export``; see ``tools/nbexport.py``) shows a small label, "exported to going_modular.NAME",
  in place of those comment lines. Only the rendered page changes: the notebooks, which nbval
  compares and the exporter reads, are untouched.
* **Each script once.** Some extensions add their inline scripts on every page event, so a page
  could declare ``const THEBE_JS_URL`` twice, a JavaScript error in every browser; duplicates of
  the same script are dropped.
* **API reference.** A module constant has no docstring; autodoc would show its type's (dict's)
  instead, so the reference shows none.
* **A valid theme mode.** pydata-sphinx-theme logs an error in the console when its templates get
  no colour mode (sphinx-book-theme passes none); the pages start from "auto", the reader's system
  setting.
"""

from __future__ import annotations

import inspect
import re

from docutils import nodes
from sphinx.application import Sphinx

DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(default_exp|export)\b\s*(\S*)\s*$")


def _split_directives(text: str) -> tuple[list[tuple[str, str]], str]:
    """The leading directive lines of a cell (kind, argument) and the code after them."""
    lines = text.splitlines()
    found: list[tuple[str, str]] = []
    while lines and (lines[0].strip() == "" or DIRECTIVE.match(lines[0])):
        match = DIRECTIVE.match(lines.pop(0))
        if match:
            found.append((match.group(1), match.group(2)))
    return found, "\n".join(lines)


def label_exports(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Replace the directive lines of exported cells by a label naming the module."""
    sources = [
        block
        for block in doctree.findall(nodes.literal_block)
        if isinstance(block.parent, nodes.container)
        and block.parent.get("nb_element") == "cell_code_source"
    ]
    parsed = [(block, *_split_directives(block.astext())) for block in sources]
    module = next(
        (arg for _, found, _ in parsed for kind, arg in found if kind == "default_exp"),
        None,
    )
    for block, found, code in parsed:
        if not found or module is None:
            continue
        target = "going_modular" if module == "__init__" else f"going_modular.{module}"
        kinds = {kind for kind, _ in found}
        text = (
            f"exported to {target}"
            if "export" in kinds
            else f"this chapter's module: {target}"
        )
        label = nodes.paragraph(
            "", "", nodes.literal(text, text), classes=["export-label"]
        )
        block.parent.insert(block.parent.index(block), label)
        if code.strip():
            block.children = [nodes.Text(code)]
            block.rawsource = code
        else:
            block.parent.remove(block)


def unique_scripts(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree
) -> None:
    """Drop repeated copies of the same script (same source and attributes) from a page."""
    seen, kept = set(), []
    for script in context["script_files"]:
        source = (
            getattr(script, "filename", script) or ""
        )  # an inline script's filename is None or ""
        key = (
            str(source),
            tuple(
                sorted(
                    (k, str(v)) for k, v in getattr(script, "attributes", {}).items()
                )
            ),
        )
        if key not in seen:
            seen.add(key)
            kept.append(script)
    # In place: this is the builder's own list, which later handlers (MathJax's) still append to.
    context["script_files"][:] = kept


def default_mode(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree
) -> None:
    """The colour mode the theme's templates start from: the reader's system setting unless one is set."""
    context["default_mode"] = context.get("default_mode") or "auto"


def no_borrowed_docstring(
    app: Sphinx, what: str, name: str, obj, options, lines: list[str]
) -> None:
    """A module constant has no docstring of its own: show none rather than its type's (dict's, int's)."""
    borrowed = inspect.cleandoc(type(obj).__doc__ or "")
    if what == "data" and borrowed and "\n".join(lines).strip() == borrowed.strip():
        lines.clear()


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", default_mode)
    app.connect("autodoc-process-docstring", no_borrowed_docstring)
    app.connect("doctree-resolved", label_exports)
    app.connect(
        "html-page-context", unique_scripts, priority=100
    )  # before any handler that returns a template
    app.add_css_file("book_pages.css")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
