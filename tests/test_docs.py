"""The docs cannot drift from the code: every import and dotted path they show resolves,
and every import they show comes from the public surface."""

from __future__ import annotations

import ast
import importlib
import re
import textwrap
from pathlib import Path

import pytest
from django.apps import apps

import djcelery_ops

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
PUBLIC_MODULES = {"djcelery_ops", "djcelery_ops.models", "djcelery_ops.signals"}
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
# A dotted path in prose: `djcelery_ops.X...` in backticks.
PROSE_PATH = re.compile(r"`(djcelery_ops(?:\.\w+)+)`")
CHECK_ID = re.compile(r"^djcelery_ops\.[EWI]\d{3}$")


def python_blocks() -> list[tuple[str, str]]:
    return [
        (path.name, textwrap.dedent(block))
        for path in DOCS
        for block in PYTHON_BLOCK.findall(path.read_text())
    ]


def imports_shown() -> list[tuple[str, str, str | None]]:
    """(doc, module, name) for every ``import``/``from ... import`` of djcelery_ops."""
    found = []
    for doc, block in python_blocks():
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("djcelery_ops"):
                found += [(doc, node.module or "", alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [
                    (doc, alias.name, None)
                    for alias in node.names
                    if alias.name.startswith("djcelery_ops")
                ]
    return found


def dotted_paths_shown() -> list[tuple[str, str]]:
    """(doc, path) for every dotted path in a settings value or in backticked prose."""
    found = []
    for doc, block in python_blocks():
        for node in ast.walk(ast.parse(block)):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and re.fullmatch(r"djcelery_ops(\.\w+)+(:\w+)?", value):
                found.append((doc, value))
    for path in DOCS:
        found += [(path.name, match) for match in PROSE_PATH.findall(path.read_text())]
    return found


def resolve(path: str) -> object:
    """Import the longest importable module prefix, then walk attributes (``a.b:C`` too)."""
    parts = path.replace(":", ".").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(path)


def test_docs__show_imports_and_paths_at_all():
    # Guards the extraction itself: the README shows public imports and settings paths.
    assert len(imports_shown()) >= 5
    assert ("README.md", "djcelery_ops.LockedDatabaseScheduler") in dotted_paths_shown()


@pytest.mark.parametrize(("doc", "module", "name"), imports_shown())
def test_docs__every_import_resolves_and_is_public(doc, module, name):
    assert module in PUBLIC_MODULES, f"{doc} imports from internal module {module}"
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name), f"{doc}: {module} has no {name}"


@pytest.mark.parametrize(("doc", "path"), dotted_paths_shown())
def test_docs__every_dotted_path_resolves(doc, path):
    if CHECK_ID.match(path):
        assert path in check_ids_in_code(), f"{doc}: unknown check {path}"
        return
    if path.removeprefix("djcelery_ops.") in permission_codenames():
        return  # a permission, e.g. djcelery_ops.run_periodictask_now
    assert resolve(path) is not None


def permission_codenames() -> set[str]:
    codenames = set()
    for model in apps.get_app_config("djcelery_ops").get_models():
        opts = model._meta
        codenames |= {codename for codename, _name in opts.permissions}
        codenames |= {f"{action}_{opts.model_name}" for action in opts.default_permissions}
    return codenames


def check_ids_in_code() -> set[str]:
    """Check ids the package's source defines (checks are only returned when they fire)."""
    source = "\n".join(p.read_text() for p in (ROOT / "djcelery_ops").glob("**/*.py"))
    return set(re.findall(r'"(djcelery_ops\.[EWI]\d{3})"', source))


def test_public_surface__all_names_load_and_all_is_what_loads():
    assert set(djcelery_ops.__all__) == set(djcelery_ops._PUBLIC)
    for name in djcelery_ops.__all__:
        assert getattr(djcelery_ops, name) is not None
    with pytest.raises(AttributeError):
        djcelery_ops.no_such_name  # noqa: B018
