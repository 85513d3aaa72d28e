"""The package's shape: imports follow the data's path (data -> modeling -> training -> serving ->
evaluation), with no cycle, no private name imported across modules, and no Spark or distributed
machinery in the models. Read from the source with ``ast``; nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "xdrec"

# A module may import modules of its own layer or lower ones. Most specific prefix wins.
LAYERS = {
    "errors": 0, "files": 0, "logs": 0, "data.contract": 0, "modeling.parts": 0,  # contracts
    "config": 1, "locks": 1, "spark": 2,
    "data": 3, "modeling": 4, "training": 5, "serving": 6, "evaluation": 7,  # the stages, in data order
    "pipeline": 8, "evaluation.benchmark": 9, "cli": 10, "notebook": 10,  # what runs the stages
}
# What each part must not reach, directly or through other xdrec modules.
FORBIDDEN = {
    "modeling": ("pyspark", "delta", "horovod", "petastorm"),
    "training.loop": ("pyspark", "delta", "horovod", "petastorm"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every import, lazy ones included, ``if TYPE_CHECKING:`` blocks left out."""
    found = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if is_type_checking_block(node):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        pending.extend(ast.iter_child_nodes(node))
    return found


def read_package() -> dict[str, list[tuple[str, list[str]]]]:
    return {module_name(path): imports_of(ast.parse(path.read_text())) for path in PACKAGE.rglob("*.py")}


MODULES = read_package()


def xdrec_targets(imports: list[tuple[str, list[str]]]) -> set[str]:
    """The xdrec modules imported; ``from xdrec.data import tables`` counts as ``data.tables``."""
    targets = set()
    for module, names in imports:
        if module != "xdrec" and not module.startswith("xdrec."):
            continue
        base = module.removeprefix("xdrec").removeprefix(".")
        submodules = [f"{base}.{name}".lstrip(".") for name in names if f"{base}.{name}".lstrip(".") in MODULES]
        targets.update(submodules or [base])
    return targets - {""}


GRAPH = {name: xdrec_targets(imports) for name, imports in MODULES.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"xdrec.{module} has no layer: add it (or its folder) to LAYERS in {__file__}")


def test_every_stage_has_its_folder():
    assert {"data", "modeling", "training", "serving", "evaluation"} <= {name.split(".")[0] for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(f"xdrec.{name}" for name in cycle)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    upward = [target for target in GRAPH[module] if layer(target) > layer(module)]
    assert not upward, f"xdrec.{module} (layer {layer(module)}) imports later stages: " + ", ".join(
        f"xdrec.{target} (layer {layer(target)})" for target in upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_imported_across_modules(module):
    private = [f"{source}.{name}" for source, names in MODULES[module] for name in names
               if source.startswith("xdrec") and name.startswith("_")]
    assert not private, f"xdrec.{module} imports private names: {', '.join(private)}"


def reachable(module: str) -> set[str]:
    seen, pending = set(), [module]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.add(current)
            pending.extend(GRAPH.get(current, ()))
    return seen


@pytest.mark.parametrize("part, libraries", sorted(FORBIDDEN.items()))
def test_models_and_kernels_stay_free_of_spark_and_distribution(part, libraries):
    for module in (name for name in MODULES if name == part or name.startswith(part + ".")):
        for reached in reachable(module):
            used = {source.split(".")[0] for source, _ in MODULES.get(reached, ())}
            bad = used & set(libraries)
            assert not bad, f"xdrec.{module} reaches {', '.join(sorted(bad))} through xdrec.{reached}"


def test_the_checker_finds_lazy_imports_cycles_and_layers():
    """The checker itself, on made-up input: lazy imports count, TYPE_CHECKING ones do not, a cycle is found."""
    tree = ast.parse("from xdrec.training import loop\nif TYPE_CHECKING:\n    from xdrec.cli import main\n"
                     "def f():\n    from xdrec.serving.score import run_score\n")
    assert sorted(module for module, _ in imports_of(tree)) == ["xdrec.serving.score", "xdrec.training"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert layer("serving.score") > layer("training.loop") > layer("modeling.model") > layer("data.tables")

