"""going_modular is exactly what the notebooks export (tools/nbexport.py), and the exporter is strict.

One test per rule of the exporter's syntax (see the docstring of tools/nbexport.py).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import nbexport  # noqa: E402


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    return nbexport.export()


def test_package_is_a_fresh_export_of_the_notebooks(exported):
    diffs = nbexport.stale(exported)
    assert not diffs, (
        "going_modular/ differs from the notebooks; run `make export`:\n"
        + "".join(diffs)
    )


def test_every_module_comes_from_a_notebook(exported):
    on_disk = {path.name for path in (ROOT / "going_modular").glob("*.py")}
    assert on_disk == set(exported)
    assert {"__init__.py", "vit.py"} <= set(exported)


def test_every_exported_module_names_its_notebook(exported):
    for name, text in exported.items():
        source = text.split(" from ", 1)[1].split(":", 1)[0]
        assert (ROOT / source).is_file(), (name, source)
        assert f"# {source}, cell " in text, name


def write(folder: Path, name: str, *cells) -> Path:
    """Write a notebook into folder/notebooks/ (the layout the exporter names in its messages)."""
    (folder / "notebooks").mkdir(exist_ok=True)
    cells = [new_code_cell(cell) if isinstance(cell, str) else cell for cell in cells]
    nbformat.write(new_notebook(cells=cells), folder / "notebooks" / name)
    return folder / "notebooks"


def export_one(tmp_path: Path, *cells, formatted: bool = False) -> str:
    """The one module that a notebook of ``cells`` exports (formatted by ruff only when the test is about that)."""
    [text] = nbexport.export(
        write(tmp_path, "01_a.ipynb", *cells), formatted=formatted
    ).values()
    return text


def body(text: str) -> str:
    """A generated module without its header line."""
    return text.split("\n", 1)[1]


def fails(tmp_path: Path, *cells, name: str = "03_bad.ipynb") -> str:
    """The error message of exporting a notebook of ``cells``."""
    with pytest.raises(nbexport.ExportError) as caught:
        nbexport.export(write(tmp_path, name, *cells))
    return str(caught.value)


# ---- directives are read as nbdev reads them ------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["#| export", "#|export", "# | export", "# |export", "  #| export", "#|  export  "],
)
def test_every_nbdev_spelling_of_export_exports(tmp_path, spelling):
    text = export_one(tmp_path, "#| default_exp mod", f"{spelling}\nx = 1")
    assert "\nx = 1\n" in text


def test_blank_lines_before_and_between_directives_are_skipped(tmp_path):
    text = export_one(
        tmp_path, "\n\n#| default_exp mod", "\n\n#| export\nx = 1", "y = 2"
    )
    assert "\nx = 1\n" in text and "y = 2" not in text
    text = export_one(tmp_path, "#| default_exp mod\n\n#| export\n\nz = 3")
    assert "\nz = 3\n" in text


def test_a_directive_below_the_first_line_of_code_is_an_error(tmp_path):
    message = fails(
        tmp_path, "#| default_exp mod", "# a comment is code\n#| export\nx = 1"
    )
    assert message.startswith(
        "notebooks/03_bad.ipynb cell 1: '#| export' comes after the first line of code"
    )


def test_directive_look_alikes_inside_strings_and_code_are_not_directives(tmp_path):
    text = export_one(
        tmp_path,
        "#| default_exp mod",
        '#| export\nHELP = """\n#| export\n"""\nx = 1  #| export',
    )
    assert 'HELP = """\n#| export\n"""' in text


def test_export_with_a_module_name_is_rejected_naming_notebook_and_cell(tmp_path):
    message = fails(tmp_path, "#| default_exp mod", "x = 0", "#| export other\nx = 1")
    assert message.startswith(
        "notebooks/03_bad.ipynb cell 2: '#| export other' names a module"
    )


@pytest.mark.parametrize(
    "directive", ["exprt", "exporti", "exports", "hide", "echo: false", "default_exp"]
)
def test_unknown_or_malformed_directives_are_errors(tmp_path, directive):
    message = fails(
        tmp_path, "#| default_exp mod\n#| export\nx = 1", f"#| {directive}\ny = 2"
    )
    assert message.startswith("notebooks/03_bad.ipynb cell 1: ")
    assert "unknown directive" in message or "exactly one module name" in message


def test_the_default_exp_may_follow_the_exported_cells(tmp_path):
    """As in nbdev, ``default_exp`` is a property of the notebook, wherever it stands."""
    assert "\nx = 1\n" in export_one(tmp_path, "#| export\nx = 1", "#| default_exp mod")


# ---- module names and the one-notebook-per-module rule ----------------------------------------------


@pytest.mark.parametrize(
    "name", ["../escaped", "a.b", "1x", "a/b", "class", "my-module"]
)
def test_bad_module_names_are_rejected_and_nothing_is_written(tmp_path, name):
    notebooks = write(
        tmp_path, "03_bad.ipynb", f"#| default_exp {name}\n#| export\nx = 1"
    )
    package = tmp_path / "going_modular"
    assert (
        nbexport.main(["--notebooks", str(notebooks), "--package", str(package)]) == 2
    )
    assert not package.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "notebooks"
    ]
    with pytest.raises(
        nbexport.ExportError,
        match=r"^notebooks/03_bad.ipynb cell 0: module name .* Python identifier",
    ):
        nbexport.export(notebooks)


def test_the_package_init_is_a_valid_module_name(tmp_path):
    notebooks = write(
        tmp_path, "00_a.ipynb", "#| default_exp __init__\n#| export\nx = 1"
    )
    assert list(nbexport.export(notebooks, formatted=False)) == ["__init__.py"]


def test_two_default_exp_in_one_notebook_is_an_error(tmp_path):
    message = fails(
        tmp_path,
        "#| default_exp one\n#| export\nx = 1",
        "#| default_exp two\n#| export\ny = 1",
    )
    assert message.startswith(
        "notebooks/03_bad.ipynb: '#| default_exp' appears 2 times"
    )
    assert "cell 0" in message and "cell 1" in message


def test_a_module_exported_from_two_notebooks_is_an_error_naming_both(tmp_path):
    write(tmp_path, "01_a.ipynb", "#| default_exp mod\n#| export\nx = 1")
    notebooks = write(tmp_path, "02_b.ipynb", "#| default_exp mod\n#| export\ny = 1")
    with pytest.raises(
        nbexport.ExportError,
        match="'mod' is exported by both notebooks/01_a.ipynb and notebooks/02_b.ipynb",
    ):
        nbexport.export(notebooks)


@pytest.mark.parametrize(
    "cells, message",
    [
        (
            ["#| export\nx = 1"],
            "cell 0: '#| export' in a notebook without '#| default_exp NAME'",
        ),
        (
            ["#| default_exp m", "x = 1"],
            "cell 0: '#| default_exp m' but no cell is marked '#| export'",
        ),
        (
            ["#| default_exp m\n#| export\nx = ("],
            "cell 0: exported cell is not valid Python",
        ),
        (
            ["#| default_exp m\n#| export\nimport os; x = 1"],
            "cell 0: line 1 shares a line with an import",
        ),
    ],
)
def test_errors_name_the_notebook_and_cell(tmp_path, cells, message):
    assert fails(tmp_path, *cells).startswith(f"notebooks/03_bad.ipynb {message}")


def test_notebooks_without_directives_export_nothing_and_never_empty_the_package(
    tmp_path,
):
    notebooks = write(tmp_path, "01_a.ipynb", "x = 1", new_markdown_cell("#| export"))
    assert nbexport.export(notebooks) == {}
    package = tmp_path / "going_modular"
    package.mkdir()
    (package / "kept.py").write_text("x = 1\n")
    assert (
        nbexport.main(["--notebooks", str(notebooks), "--package", str(package)]) == 2
    )
    assert [p.name for p in package.iterdir()] == ["kept.py"]


# ---- what a generated module holds -----------------------------------------------------------------


def test_imports_are_hoisted_in_cell_order_deduplicated_and_sorted_by_ruff(tmp_path):
    text = export_one(
        tmp_path,
        new_markdown_cell("# prose is ignored"),
        '#| default_exp mod\n#| export\n"""Module docstring."""\nfrom __future__ import annotations\nimport math\n\nA = math.pi',
        "x = 1  # not exported",
        "#| export\nimport math\nimport torch\nfrom os import (\n    path,\n)\nfrom os import path\n"
        "from going_modular.vit import ViT\nimport re\n\ndef f():\n    import json\n    return json, ViT, re, path, torch",
        formatted=True,
    )
    assert text.startswith(
        "# AUTOGENERATED by tools/nbexport.py from notebooks/01_a.ipynb: edit the notebook"
    )
    imports, rest = (
        body(text).split('"""Module docstring."""\n\n', 1)[1].split("\n\n__all__ = ", 1)
    )
    assert imports == (
        "from __future__ import annotations\n\nimport math\nimport re\nfrom os import path\n\nimport torch\n\n"
        "from going_modular.vit import ViT"
    )
    assert rest.startswith(
        '["A", "f"]\n\n\n# notebooks/01_a.ipynb, cell 1\n'
    )  # __all__ between imports and code
    assert text.index("A = math.pi") < text.index("def f():")
    assert "    import json" in text  # nested imports stay where they are
    assert "x = 1" not in text
    compile(text, "mod.py", "exec")


def test_a_star_import_and_a_named_import_from_one_module_stay_valid(tmp_path):
    text = export_one(
        tmp_path,
        "#| default_exp mod",
        "#| export\nfrom os.path import *\n\nA = sep",
        "#| export\nfrom os.path import join\nB = join",
        formatted=True,
    )
    assert "from os.path import *\nfrom os.path import join\n" in text
    namespace: dict = {}
    exec(compile(text, "mod.py", "exec"), namespace)
    assert namespace["B"] is namespace["join"]


def test_each_block_carries_its_provenance(tmp_path):
    text = export_one(
        tmp_path,
        new_markdown_cell("prose"),
        "#| default_exp mod\n#| export\nimport math\n\nA = 1",
        "B = 2",
        "#| export\ndef f():\n    return A",
        "#| export\nimport math",  # only imports: no block, no comment,
        formatted=True,
    )
    assert "# notebooks/01_a.ipynb, cell 1\nA = 1\n" in text
    assert "# notebooks/01_a.ipynb, cell 3\ndef f():\n" in text
    assert text.count("# notebooks/01_a.ipynb, cell") == 2


@pytest.mark.slow
def test_the_output_is_formatted_and_lint_clean_with_the_project_settings(tmp_path):
    text = export_one(
        tmp_path,
        "#| default_exp mod\n#| export\nimport torch\nimport sys\n\nx = {'a':1,   'b':[1,2,3]}\n"
        "def f(a,b = 2):\n  return sys.version, torch.pi, a+b",
        formatted=True,
    )
    assert (
        'x = {"a": 1, "b": [1, 2, 3]}' in text and "def f(a, b=2):\n    return" in text
    )
    for command in (["check", "--quiet"], ["format", "--check", "--quiet"]):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ruff",
                *command,
                "--stdin-filename",
                str(ROOT / "going_modular" / "mod.py"),
                "-",
            ],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# ---- docstrings ----------------------------------------------------------------------------------


def test_the_docstring_opens_the_module_as_written(tmp_path):
    text = export_one(
        tmp_path,
        "#| default_exp mod",
        '#| export\nr"""Paths like C:\\new stay raw."""\nimport os\nx = os.sep',
        formatted=True,
    )
    assert body(text).startswith('\nr"""Paths like C:\\new stay raw."""\n\nimport os\n')
    assert ast.get_docstring(ast.parse(text)) == "Paths like C:\\new stay raw."


@pytest.mark.parametrize(
    "cells",
    [
        ["#| default_exp m\n#| export\nx = 1", '#| export\n"""late docstring"""'],
        [
            "#| default_exp m\n#| export\nimport os",
            '#| export\n"""after an import-only cell"""',
        ],
    ],
)
def test_only_the_first_exported_cell_may_open_with_a_string(tmp_path, cells):
    assert (
        "may open with a string only if it is the module's first exported cell"
        in fails(tmp_path, *cells)
    )


def test_without_a_docstring_the_module_has_none(tmp_path):
    text = export_one(
        tmp_path, "#| default_exp mod\n#| export\nx = 1\n'not a docstring'"
    )
    assert ast.get_docstring(ast.parse(text)) is None


# ---- all or nothing, and --check --------------------------------------------------------------------


def test_a_module_that_does_not_compile_writes_nothing(tmp_path):
    write(tmp_path, "01_good.ipynb", "#| default_exp good\n#| export\nx = 1")
    notebooks = write(
        tmp_path, "02_bad.ipynb", "#| default_exp bad", "y = 0", "#| export\nreturn 1"
    )  # parses, does not compile
    package = tmp_path / "going_modular"
    package.mkdir()
    (package / "good.py").write_text("old\n")
    (package / "gone.py").write_text("a module no notebook exports\n")
    before = {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in package.iterdir()}
    assert (
        nbexport.main(["--notebooks", str(notebooks), "--package", str(package)]) == 2
    )
    assert {
        p.name: (p.read_text(), p.stat().st_mtime_ns) for p in package.iterdir()
    } == before
    with pytest.raises(
        nbexport.ExportError,
        match=r"going_modular/bad.py line \d+ \(notebooks/02_bad.ipynb, cell 2\) does not compile: 'return' outside function",
    ):
        nbexport.export(notebooks)


def test_write_then_check_round_trip(tmp_path, capsys):
    notebooks = write(tmp_path, "01_a.ipynb", "#| default_exp mod\n#| export\nx = 1")
    package = tmp_path / "going_modular"
    package.mkdir()
    (package / "gone.py").write_text("x\n")
    args = ["--notebooks", str(notebooks), "--package", str(package)]
    assert nbexport.main([*args, "--check"]) == 1
    assert "+x = 1" in capsys.readouterr().out
    assert nbexport.main(args) == 0
    assert sorted(p.name for p in package.iterdir()) == ["mod.py"]
    assert nbexport.main([*args, "--check"]) == 0
    assert capsys.readouterr().out.endswith("exported 1 modules (2 changed): mod.py\n")


def test_stale_reports_a_diff_for_changed_extra_and_missing_modules(tmp_path):
    (tmp_path / "a.py").write_text("old\n")
    (tmp_path / "extra.py").write_text("x\n")
    diffs = nbexport.stale({"a.py": "new\n", "b.py": "b\n"}, tmp_path)
    joined = "".join(diffs)
    assert (
        len(diffs) == 3
        and "-old" in joined
        and "+new" in joined
        and "-x" in joined
        and "+b" in joined
    )
    assert nbexport.stale({"a.py": "old\n", "extra.py": "x\n"}, tmp_path) == []


# ---- __all__: the public names of the exported cells ------------------------------------------------


def all_of(text: str) -> list[str]:
    """The ``__all__`` a generated module assigns."""
    [node] = [
        n
        for n in ast.parse(text).body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"
    ]
    return ast.literal_eval(node.value)


def test_all_lists_every_public_top_level_name_sorted_and_nothing_imported(tmp_path):
    text = export_one(
        tmp_path,
        "#| default_exp mod",
        "#| export\nimport json\nfrom os import path as ospath\n\ndef zeta(): pass\nasync def fetch(): pass\n"
        "class Model:\n    inner = 1\n    def method(self): pass",
        "#| export\nA, (b, *rest) = 1, (2, 3)\nLIMIT: int = 3\nDECLARED: int\nx = y = 0\n_hidden = 1\ndef _helper(): pass\n"
        "if True:\n    conditional = 1\nfor loop_var in []:\n    pass\nModel.attribute = 2\nzeta.__doc__ = 'z'",
        "not_exported = 1",
        "#| export\ndef zeta():\n    nested = 1\n    return nested",  # a redefinition is listed once
    )
    assert all_of(text) == [
        "A",
        "LIMIT",
        "Model",
        "b",
        "fetch",
        "rest",
        "x",
        "y",
        "zeta",
    ]
    namespace: dict = {}
    exec(compile(text, "mod.py", "exec"), namespace)
    assert all(name in namespace for name in all_of(text))


def test_a_module_without_public_names_has_an_empty_all(tmp_path):
    text = export_one(
        tmp_path,
        "#| default_exp mod\n#| export\nimport os\n\n_private = os.sep",
        formatted=True,
    )
    assert all_of(text) == [] and "\n__all__ = []\n" in text


@pytest.mark.parametrize(
    "assignment",
    [
        "__all__ = ['x']",
        "__all__ += ['x']",
        "__all__: list[str] = []",
        "x, __all__ = 1, []",
    ],
)
def test_a_cell_that_assigns_all_is_an_error(tmp_path, assignment):
    message = fails(tmp_path, "#| default_exp mod", f"#| export\nx = 1\n{assignment}")
    assert message.startswith(
        "notebooks/03_bad.ipynb cell 1: the cell assigns __all__, which tools/nbexport.py writes"
    )


def test_the_packages_modules_list_what_they_define(exported):
    """On the real chapters: a few known names, and no name that a module imports from another."""
    assert {"ViT"} <= set(all_of(exported["vit.py"])) and "EncoderBlock" not in all_of(
        exported["vit.py"]
    )
    assert {"patchify", "to_pair"} <= set(all_of(exported["patches.py"]))
    assert "torch" not in all_of(exported["patches.py"])


# ---- the package root's lazy re-exports ------------------------------------------------------------


def write_package(tmp_path: Path, reexports: str, root_code: str = "") -> Path:
    """Notebooks of a package root declaring ``_REEXPORTS = reexports`` and two modules, m and n."""
    write(
        tmp_path,
        "01_m.ipynb",
        "#| default_exp m\n#| export\nclass C: pass\ndef f(): return 1\n_h = 0",
    )
    write(
        tmp_path, "02_n.ipynb", "#| default_exp n\n#| export\ndef g(): return 2\nK = 3"
    )
    root = f'#| default_exp __init__\n#| export\n"""The package."""\n{root_code}\n_REEXPORTS = {reexports}'
    return write(tmp_path, "00_root.ipynb", root)


def test_the_root_reexports_lazily_what_reexports_declares(tmp_path, monkeypatch):
    files = nbexport.export(write_package(tmp_path, '("m", "n.g")'))
    init = files["__init__.py"]
    assert all_of(init) == ["C", "f", "g"]
    assert "if TYPE_CHECKING:" in init
    assert (
        "    from going_modular.m import C, f\n    from going_modular.n import g\n"
        in init
    )
    assert '_MODULE_OF = {\n    "C": "m",\n    "f": "m",\n    "g": "n",\n}' in init
    assert all_of(files["m.py"]) == ["C", "f"] and all_of(files["n.py"]) == ["K", "g"]
    # Import the package under another name: the root resolves names through its own __name__.
    package = tmp_path / "lazypkg"
    nbexport.write(files, package)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n == "lazypkg" or n.startswith("lazypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        lazypkg = importlib.import_module("lazypkg")
        assert (
            "lazypkg.m" not in sys.modules and "lazypkg.n" not in sys.modules
        )  # nothing imported yet
        assert (
            lazypkg.g() == 2
            and "lazypkg.n" in sys.modules
            and "lazypkg.m" not in sys.modules
        )
        assert lazypkg.C is importlib.import_module("lazypkg.m").C
        assert {"C", "f", "g"} <= set(dir(lazypkg))
        with pytest.raises(
            AttributeError, match="module 'lazypkg' has no attribute 'K'"
        ):
            lazypkg.K  # noqa: B018  (n defines K, but the root re-exports only n.g)
        from lazypkg import n  # a submodule is still importable by name

        assert n.K == 3
    finally:
        for name in [
            n for n in sys.modules if n == "lazypkg" or n.startswith("lazypkg.")
        ]:
            del sys.modules[name]


def test_a_root_without_reexports_has_no_lazy_table(tmp_path):
    notebooks = write(
        tmp_path, "00_root.ipynb", "#| default_exp __init__\n#| export\nVERSION = '1'"
    )
    init = nbexport.export(notebooks, formatted=False)["__init__.py"]
    assert (
        all_of(init) == ["VERSION"]
        and "_MODULE_OF" not in init
        and "TYPE_CHECKING" not in init
    )


@pytest.mark.parametrize(
    "reexports, root_code, message",
    [
        (
            '("m", "gone")',
            "",
            "_REEXPORTS names 'gone', but no notebook exports 'gone' (known: m, n)",
        ),
        (
            '("n.f",)',
            "",
            "_REEXPORTS names 'n.f', but 'f' is not in the __all__ of n (notebooks/02_n.ipynb): K, g",
        ),
        ('("m._h",)', "", "'_h' is not in the __all__ of m"),
        (
            '("m", "m.f")',
            "",
            "_REEXPORTS re-exports 'f' twice (from m and from m); name it once",
        ),
        ('("__init__",)', "", "no notebook exports '__init__'"),
        ("tuple(['m'])", "", "_REEXPORTS must be a literal tuple or list of strings"),
        ("()", "", "_REEXPORTS must be a literal tuple or list of strings"),
        ('("m", 1)', "", "_REEXPORTS must be a literal tuple or list of strings"),
        (
            '("m",)',
            "def f(): pass",
            "the package root's cells define f, which _REEXPORTS re-exports",
        ),
        (
            '("m",)',
            "def __getattr__(name): pass",
            "the package root's cells define __getattr__, which _REEXPORTS",
        ),
    ],
)
def test_bad_reexports_are_errors_naming_the_cell(
    tmp_path, reexports, root_code, message
):
    with pytest.raises(nbexport.ExportError) as caught:
        nbexport.export(write_package(tmp_path, reexports, root_code), formatted=False)
    assert str(caught.value).startswith(
        "notebooks/00_root.ipynb cell 0: "
    ) and message in str(caught.value)


def test_reexports_outside_the_package_root_is_an_error(tmp_path):
    message = fails(tmp_path, "#| default_exp mod\n#| export\n_REEXPORTS = ('x',)")
    assert message.startswith(
        "notebooks/03_bad.ipynb cell 0: _REEXPORTS declares what the package root re-exports"
    )


def test_the_package_root_reexports_the_model_and_load_pretrained(exported):
    init = exported["__init__.py"]
    assert {"ViT", "create_vit", "patchify", "load_pretrained"} <= set(all_of(init))
    assert "from going_modular.pretrained import load_pretrained" in init
