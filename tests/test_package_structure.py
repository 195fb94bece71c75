"""The package's shape, checked on its source: no import circle inside `modeling_sacon/`, no private model method
called from training, few-shot or command code, no script loaded by file path in `benchmarks/`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_sacon"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every package module `path` imports, at module level or inside functions (a lazy import closes a circle too)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name for name in [target, *names] if name.startswith("modeling_sacon"))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("modeling_sacon"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    # `from .x import name` names an attribute or a submodule: keep the submodules only, and a module's package
    # (`__init__`) only when it is imported itself
    return {name: {target for target in imports_of(path) if target in modules and target != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], stack[len(stack):] = 1, [node]
        for target in sorted(graph[node]):
            if target == "modeling_sacon":  # the package's __init__ re-exports; submodules importing it are lazy users
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "modeling_sacon.pipeline_sacon" in graph["modeling_sacon.modeling_sacon"]  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


PRIVATE_MODEL_CALL = re.compile(r"\b(?:model|sacon|self\.model|self\.sacon|unwrapped)\._(?!_)\w+\(")


@pytest.mark.parametrize("folder", ["training", "fewshot", "commands", "data"])
def test_no_private_model_method_is_called(folder):
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                 for path in (PACKAGE / folder).rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE_MODEL_CALL.search(line)]
    assert not offenders, offenders
    assert PRIVATE_MODEL_CALL.search("hidden = model._encode_sentences(ids)")  # the pattern catches one


def test_benchmarks_load_no_script_by_path():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "benchmarks").rglob("*.py")
                 if "spec_from_file_location" in path.read_text()]
    assert not offenders, offenders
