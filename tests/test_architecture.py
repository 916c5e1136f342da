"""The layers import one way: model <- core <- io <- library <- pipeline <- service <- cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "astrod"

# Rank of each layer; a module may import only layers of lower or equal rank.
RANKS = {"model": 0, "errors": 0, "config": 1, "core": 1, "io": 2, "library": 3, "pipeline": 4,
         "service": 5, "demo": 6, "cli": 6, "__main__": 6, "__init__": 0}
# Third-party modules that a layer must never import, by layer.
FORBIDDEN = {
    "core": ("astropy.io", "rawpy", "exifread", "watchdog", "apscheduler", "PyIndi", "structlog", "sqlite3",
             "threading", "logging", "tomli"),
    "model": ("astropy", "rawpy", "watchdog", "apscheduler", "PyIndi", "structlog", "cv2", "numba"),
    "config": ("astropy", "rawpy", "watchdog", "apscheduler", "PyIndi", "structlog", "cv2", "numba"),
    "io": ("watchdog", "apscheduler", "PyIndi"),
    "library": ("watchdog", "apscheduler", "PyIndi"),
    "pipeline": ("watchdog", "apscheduler", "PyIndi"),
}
ALLOWED_FOR_CONFIG = {"model", "errors"}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


def layer_problems(path: Path, layer: str) -> list[str]:
    """Every import of ``path`` that breaks the rules for ``layer``."""
    problems = []
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "astrod" and len(parts) > 1:
            target = parts[1]
            if target not in RANKS:
                continue  # `from astrod import __version__` style names
            if RANKS[target] > RANKS[layer]:
                problems.append(f"imports {name} (layer {target} is above {layer})")
            if layer == "config" and target not in ALLOWED_FOR_CONFIG | {"config"}:
                problems.append(f"config may import only model and errors, not {name}")
            if layer == "core" and target not in ("core", "model", "errors"):
                problems.append(f"core may import only core, model and errors, not {name}")
        for bad in FORBIDDEN.get(layer, ()):
            if name == bad or name.startswith(bad + "."):
                problems.append(f"{layer} must not import {name}")
    return problems


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layer_imports_only_downwards(path: Path) -> None:
    """No module imports a layer above its own, or a library its layer must not touch."""
    layer = _layer(path)
    assert layer in RANKS, f"{path}: unknown layer {layer!r}: add it to RANKS"
    problems = layer_problems(path, layer)
    assert not problems, f"{path.relative_to(PACKAGE)}: " + "; ".join(problems)


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker flags a core module importing io and structlog, and passes a clean one."""
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy\nfrom astrod.io.fits import read_fits\nimport structlog\n", encoding="utf-8")
    problems = layer_problems(bad, "core")
    assert any("astrod.io.fits" in p for p in problems)
    assert any("structlog" in p for p in problems)
    good = tmp_path / "good.py"
    good.write_text("import numpy\nfrom astrod.model import Transform\n", encoding="utf-8")
    assert layer_problems(good, "core") == []


# Files are read and written only in io/: no other layer touches the file system itself, nor imports astropy.io
# (`astrod.io.fits` re-exports astropy's Header, which is data). The one exception is the CLI's own printing:
# after a broken pipe it points stdout at /dev/null (the Python docs' recipe).
FILE_FREE_LAYERS = tuple(layer for layer in RANKS if layer != "io")
ALLOWED_FILE_ACCESS = {"cli.py": {"os.open()"}}
# (Path.replace is left out: str.replace and dataclasses' replace share its name)
FILE_METHODS = frozenset({"mkdir", "unlink", "rmdir", "rglob", "glob", "iterdir", "read_text", "write_text",
                          "read_bytes", "write_bytes", "rename", "touch", "symlink_to", "open"})
FILE_FUNCTIONS = frozenset({"os.walk", "os.replace", "os.remove", "os.rename", "os.makedirs", "os.listdir",
                            "os.scandir", "os.open", "np.save", "np.savez", "np.load", "np.fromfile",
                            "shutil.rmtree", "shutil.copyfile", "shutil.copy", "shutil.copy2", "shutil.move",
                            "shutil.copyfileobj", "shutil.copytree", "fits.open", "fits.getdata", "fits.getheader",
                            "fits.writeto", "tempfile.mkdtemp", "tempfile.mkstemp", "tempfile.TemporaryDirectory",
                            "tempfile.NamedTemporaryFile", "tempfile.TemporaryFile"})
FILE_IMPORTS = ("astropy.io",)


def file_access(path: Path) -> list[str]:
    """Every place in ``path`` that reads or writes files itself (calls `open`, a Path method such as `mkdir`
    or `read_text`, or a function such as `os.walk` or `shutil.rmtree`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"line {node.lineno}: open()")
        elif isinstance(func, ast.Attribute):
            dotted = f"{func.value.id}.{func.attr}" if isinstance(func.value, ast.Name) else None
            if dotted in FILE_FUNCTIONS:
                found.append(f"line {node.lineno}: {dotted}()")
            elif func.attr == "open" and isinstance(func.value, ast.Name) and func.value.id[:1].isupper():
                continue  # a class's own constructor, such as MasterLibrary.open(folder)
            elif func.attr in FILE_METHODS:
                found.append(f"line {node.lineno}: .{func.attr}()")
    for name in _imports(path):
        if any(name == bad or name.startswith(bad + ".") for bad in FILE_IMPORTS):
            found.append(f"imports {name}")
    return found


@pytest.mark.parametrize("path", [p for p in MODULES if _layer(p) in FILE_FREE_LAYERS],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_io_touches_files(path: Path) -> None:
    """Every layer but io reads and writes files only through astrod.io."""
    rel = str(path.relative_to(PACKAGE))
    found = [f for f in file_access(path) if f.split(": ", 1)[-1] not in ALLOWED_FILE_ACCESS.get(rel, set())]
    assert not found, f"{rel} touches files itself: " + "; ".join(found)


def test_file_checker_catches_file_access(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os, shutil\nfrom pathlib import Path\nopen('x')\nos.walk('.')\nshutil.rmtree('d')\n"
                   "Path('a').mkdir()\nPath('b').read_text()\n", encoding="utf-8")
    assert len(file_access(bad)) == 5
    more = tmp_path / "more.py"
    more.write_text("import tempfile\nfrom astropy.io import fits\nPath('c').open('rb')\n"
                    "tempfile.mkdtemp()\n", encoding="utf-8")
    assert len(file_access(more)) == 4  # the import names astropy.io and astropy.io.fits
    good = tmp_path / "good.py"
    good.write_text("name = 'a-b'.replace('-', '_')\nfrom dataclasses import replace\n"
                    "lib = MasterLibrary.open('x')\n", encoding="utf-8")
    assert file_access(good) == []


# Rooms stay readable: a module that grows past this does several jobs and is split (the synthetic-data
# generator of the demo and tests aside); so is a function past 80 lines (the demo's scripts aside).
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80


def size_problems(path: Path, *, functions: bool = True) -> list[str]:
    """A module over MAX_MODULE_LINES lines, and (with ``functions``) each function in it over
    MAX_FUNCTION_LINES."""
    text = path.read_text(encoding="utf-8")
    problems = []
    lines = text.count("\n")
    if lines > MAX_MODULE_LINES:
        problems.append(f"{lines} lines")
    for node in ast.walk(ast.parse(text, filename=str(path))) if functions else ():
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{node.name}() is {length} lines")
    return problems


@pytest.mark.parametrize("path", [p for p in MODULES if p.relative_to(PACKAGE).as_posix() != "demo/synth.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    found = size_problems(path, functions=_layer(path) != "demo")
    assert not found, f"{path.relative_to(PACKAGE)}: " + "; ".join(found)


def test_size_checker_catches_a_long_function(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 85, encoding="utf-8")
    assert size_problems(long) == ["f() is 86 lines"]
