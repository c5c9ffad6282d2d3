"""The dependency order of lib/ (lib.LAYERS): no module imports from a
subpackage listed after its own, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import lib

LIB = Path(lib.__file__).parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name inside lib) of every import in a file."""
    package = ["lib", *path.relative_to(LIB).with_suffix("").parts[:-1]]
    if path.name == "__init__.py":
        package = ["lib", *path.relative_to(LIB).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            found += [(node.lineno, t) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name == "lib" or name.startswith("lib.")]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations() -> list[str]:
    rank = {name: index for index, name in enumerate(lib.LAYERS)}
    wrong = []
    for path in sorted(LIB.rglob("*.py")):
        own = _layer("lib." + ".".join(path.relative_to(LIB).with_suffix("").parts))
        if own == "__init__":
            continue
        for line, target in _imports(path):
            layer = _layer(target)
            if layer is None or layer not in rank:
                wrong.append(f"{path.relative_to(LIB.parent)}:{line} imports {target}, "
                             f"which is in no layer of lib.LAYERS")
            elif rank[layer] > rank[own]:
                wrong.append(f"{path.relative_to(LIB.parent)}:{line} ({own}) imports "
                             f"{target} ({layer}), a layer above it")
    return wrong


def test_every_subpackage_is_a_layer():
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(lib.LAYERS)
    assert not [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"], \
        "every module belongs to a subpackage"


def test_no_import_runs_up_the_layers():
    assert violations() == []


def test_the_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself can fail: an upward import hidden in a function is found."""
    fake = tmp_path / "lib"
    (fake / "core").mkdir(parents=True)
    (fake / "server").mkdir()
    for package in (fake, fake / "core", fake / "server"):
        (package / "__init__.py").write_text("")
    (fake / "server" / "daemon.py").write_text("")
    (fake / "core" / "wire.py").write_text(
        "def f():\n    from ..server import daemon\n    return daemon\n")
    monkeypatch.setattr(lib, "LAYERS", ("core", "server"))
    monkeypatch.setattr(__import__(__name__, fromlist=["LIB"]), "LIB", fake)
    found = violations()
    assert len(found) == 1 and "lib.server" in found[0] and "core/wire.py:2" in found[0]
