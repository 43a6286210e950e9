"""The code's shape, checked: the import-linter contracts in pyproject.toml hold and do bite
(a deliberately wrong import in a scratch copy breaks them), no module imports another's
private name (import-linter cannot check names), and the core's top level stays small.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["mnist_lab", "app_lib", "app_pages", "streamlit_app.py", "tests", "bench"]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (make test installs it)")


def _python_files() -> list[Path]:
    out = []
    for name in SOURCES:
        path = ROOT / name
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    # `_` is gettext's conventional name (app_lib.lang._), public by that convention
    return name.startswith("_") and name != "_" and not (name.startswith("__") and name.endswith("__"))


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`from X import _name` and `import X._mod` where X is another module: what a module
    reaching into another's private names looks like."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    me = _module_name(path, root)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    where = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                base = package[: len(package) - (node.level - 1)]
                source = ".".join([*base, *([source] if source else [])])
            if any(_private(part) for part in source.split(".")):
                found.append(f"{where}:{node.lineno} imports module {source}")
            for alias in node.names:
                if _private(alias.name) and source != me:
                    found.append(f"{where}:{node.lineno} imports {source}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno} imports module {alias.name}")
    return found


def test_no_module_imports_another_modules_private_name():
    found = [hit for path in _python_files() for hit in private_imports(path)]
    assert found == [], "private names imported across modules:\n" + "\n".join(found)


def test_the_private_name_check_finds_each_kind(tmp_path):
    (tmp_path / "mnist_lab").mkdir()
    bad = tmp_path / "mnist_lab" / "bad.py"
    bad.write_text("from mnist_lab.runs.store import ResultStore, _explained\nimport os._private\n"
                   "from . import _helper\nfrom .lang import _\n")
    assert [hit.split(" imports ")[1] for hit in private_imports(bad, tmp_path)] == [
        "mnist_lab.runs.store._explained", "module os._private", "mnist_lab._helper"]


def test_the_core_keeps_at_most_six_modules_at_its_top_level():
    modules = sorted(p.name for p in (ROOT / "mnist_lab").glob("*.py"))
    assert len(modules) <= 6, modules
    packages = sorted(p.name for p in (ROOT / "mnist_lab").iterdir() if (p / "__init__.py").is_file())
    assert packages == ["cli", "data", "lab", "nets", "runs", "service", "training"]


@needs_linter
def test_the_import_contracts_hold():
    done = subprocess.run([LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@needs_linter
@pytest.mark.parametrize("module, line, contract", [
    # a lower layer importing a higher one
    ("mnist_lab/data/datasets.py", "from mnist_lab.service import jobs", "layers import only downward"),
    # the core importing the UI
    ("mnist_lab/training/loop.py", "import streamlit", "never imports Streamlit"),
    # a cycle inside one package (lessons already imports findings' siblings; findings imports lessons)
    ("mnist_lab/lab/lessons.py", "from mnist_lab.lab import findings", "No import cycles"),
])
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, contract):
    scratch = tmp_path / "repo"
    shutil.copytree(ROOT / "mnist_lab", scratch / "mnist_lab", ignore=shutil.ignore_patterns("__pycache__", "locale"))
    for name in ("app_lib", "app_pages"):
        shutil.copytree(ROOT / name, scratch / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", scratch)
    target = scratch / module
    target.write_text(target.read_text() + f"\n{line}  # the deliberate mistake\n")
    done = subprocess.run([LINT_IMPORTS], cwd=scratch, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert contract in done.stdout and "BROKEN" in done.stdout
