"""The package's layers import downwards only: utils < external_ops < models < processors < data <
evaluation < trainer / tools / cli. Every import is read from the source (module level and inside
functions alike), relative ones resolved, so a cycle cannot creep in through a lazy import."""

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "paddlemix"
# layer -> the paddlemix subpackages / top-level modules it must not import
FORBIDDEN = {
    "utils": ["external_ops", "models", "processors", "data", "evaluation", "trainer", "tools", "cli", "auto",
              "inference", "examples"],
    "external_ops": ["models", "processors", "data", "evaluation", "trainer", "tools", "cli", "auto", "inference"],
    "models": ["processors", "data", "evaluation", "trainer", "tools", "cli", "auto", "inference"],
    "processors": ["data", "evaluation", "trainer", "tools", "cli", "auto", "inference"],
    "data": ["evaluation", "trainer", "tools", "cli", "auto"],
    "evaluation": ["trainer", "tools", "cli", "auto"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path):
    """(line, absolute module name) of every import in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module
            for alias in node.names:  # `from .. import AutoModel` names a module or an attribute of one
                yield node.lineno, f"{module}.{alias.name}"


def violations(layer: str):
    found = []
    for path in sorted((PACKAGE_ROOT / layer).rglob("*.py")):
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "paddlemix" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                found.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_from_the_layers_above_it(layer):
    assert violations(layer) == []


def test_the_check_sees_relative_imports_inside_functions(tmp_path, monkeypatch):
    module = PACKAGE_ROOT / "models" / "clip" / "towers.py"
    lines = dict((name, line) for line, name in imported_modules(module))
    assert "paddlemix.models.layers.norm" in lines  # `from ..layers.norm import layer_norm`
    source = "def lazy():\n    from ...processors import get_tokenizer\n"
    fake = tmp_path / "paddlemix" / "models" / "clip" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE_ROOT", tmp_path / "paddlemix")
    assert violations("models") == ["paddlemix/models/clip/fake.py:2 imports paddlemix.processors",
                                    "paddlemix/models/clip/fake.py:2 imports paddlemix.processors.get_tokenizer"]
