"""Layers point one way, and no module reaches into another's private names.

Every module under src/tunelab is parsed; imports inside functions count as much as those
at the top. Imports under ``if TYPE_CHECKING:`` are type hints, never run, and are skipped.
"""

import ast
from pathlib import Path

import tunelab

SRC = Path(tunelab.__file__).parent
BENCH = Path(__file__).parents[1] / "bench"  # scripts: held to the private-name rule too

# Lowest first. A module imports from its own package or from packages of lower layers.
LAYERS = [
    {"tunelab", "errors", "files", "web", "webprobe"},
    {"data", "models"},
    {"prompting", "generation"},
    {"evaluation"},
    {"agents"},
    {"training"},
    {"alignment"},
    {"recipe", "feedback", "serving"},
    {"jobs"},
    {"cli"},
    {"__main__"},
]
# Higher, yet kept apart: the server reads artifacts through models/, never the trainers.
APART = {"serving": {"training", "alignment"}, "feedback": {"training"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(module: str) -> str:
    """The top-level part under tunelab: 'training' for tunelab.training.methods.lora."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                                         or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def runtime_nodes(node: ast.AST):
    """Every node below ``node`` but those only type checkers read."""
    for child in ast.iter_child_nodes(node):
        for kept in (child.orelse if is_type_checking(child) else [child]):
            yield kept
            yield from runtime_nodes(kept)


def imports(tree: ast.AST):
    """(module, name or None, line) of every tunelab import that runs."""
    for node in runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunelab"):
            yield from ((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("tunelab"))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def private_use(importer: str, module: str, name: str | None) -> str | None:
    """What is private about this import from the importer's side, if anything. A private
    module is open to its own package; a private name only to its own module."""
    is_module = name is not None and (SRC.parent / module.replace(".", "/") / f"{name}.py").is_file()
    target = f"{module}.{name}" if is_module else module
    parts = target.split(".")
    for depth, part in enumerate(parts[1:], start=1):
        if is_private(part) and not f"{importer}.".startswith(".".join(parts[:depth]) + "."):
            return f"private module {'.'.join(parts[:depth + 1])}"
    if target == module and name is not None and is_private(name) and importer != module:
        return f"private name {name} of {module}"
    return None


def all_imports(scripts=()):
    """(where, importer, module, name) for each import in src/tunelab and in ``scripts``."""
    for path in sorted(SRC.rglob("*.py")) + sorted(scripts):
        inside = path.is_relative_to(SRC)
        importer = module_name(path) if inside else f"{path.parent.name}.{path.stem}"
        where = path.relative_to(SRC.parent if inside else path.parents[1])
        for module, name, line in imports(ast.parse(path.read_text(), str(path))):
            yield f"{where}:{line}", importer, module, name


def test_every_package_has_a_layer():
    packages = {package(module_name(p)) for p in SRC.rglob("*.py")}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_layers_point_one_way():
    layer = {name: rank for rank, names in enumerate(LAYERS) for name in names}
    wrong = []
    for where, importer, module, _ in all_imports():
        source, target = package(importer), package(module)
        if source != target and (layer[target] >= layer[source] or target in APART.get(source, ())):
            wrong.append(f"{where}: {importer} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    wrong = [f"{where}: {importer} imports the {problem}" for where, importer, module, name in all_imports(BENCH.glob("*.py"))
             if (problem := private_use(importer, module, name))]
    assert not wrong, "\n".join(wrong)
