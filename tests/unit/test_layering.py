"""The package's layers, read from its imports: no import cycle between modules or between packages, and no
layer importing a higher one.

A *unit* is a subpackage of ipu_snn (all its modules together) or a top-level module. Every import counts: at
module level or inside a function, absolute or relative (``from . import x`` included). Importing ``a.b.c``
also runs the ``__init__`` of the packages ``a.b`` and ``a`` not already around the importer, so those count
too. docs/architecture.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "ipu_snn"

#: Low to high: a package or top-level module (a *unit*, named relative to ipu_snn) may import units of its
#: own layer and the layers below it, never one above, not even inside a function. docs/architecture.md
#: gives the reasons for the order.
LAYERS = [
    ("foundation", ["errors", "files", "devices"]),
    ("core", ["core"]),
    ("spike products", ["ops"]),
    ("neuron models", ["neuron"]),
    ("BPTT", ["bptt"]),
    ("config schema", ["config"]),
    ("data and run files", ["data", "checkpoint", "run_folder", "reporting", "optim", "distributed", "interop"]),
    ("model", ["init", "selection", "dropout", "taps", "layers", "executor", "network", "metrics", "losses"]),
    ("planner", ["planner"]),
    ("calibration", ["calibration"]),
    ("training loop", ["loop"]),
    ("drivers", ["torch_driver", "ipu"]),
    ("entry points", ["training", "evaluate"]),
    ("cli", ["cli"]),
    # the package's own module serves the Python API (ipu_snn.api) lazily: the top of the stack
    ("api", ["api", "__init__"]),
]
#: Packages of the Poplar SDK: only the PopTorch driver (ipu/) imports them.
SDK = ("poptorch", "popdist", "popart")
SDK_HOME = "ipu_snn.ipu"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(path: Path, root: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, resolved to modules of the tree where they
    are in it (``from pkg import name`` is ``pkg.name`` if that is a module, else ``pkg``)."""
    name = module_name(path, root)
    package = name if is_package(path) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in modules else target, node.lineno))
    return found


Graph = dict[str, list[tuple[str, str]]]


def import_graph(root: Path) -> Graph:
    """Each module of the tree at ``root`` (a package folder) and what it imports, with where: the modules of
    the tree (and the packages whose ``__init__`` the import runs), and the top-level names of the others."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        edges = []
        for target, line in imports(path, root, set(files)):
            at = f"{path.relative_to(root.parent)}:{line}"
            if target.split(".")[0] != root.name:
                edges.append((target.split(".")[0], at))
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                # a package around the importer is already running; the importer itself is no edge
                if prefix in files and not (name == prefix or name.startswith(prefix + ".")):
                    edges.append((prefix, at))
        graph[name] = edges
    return graph


def where(graph: Graph, source: str, target: str) -> str:
    at = next(at for t, at in graph[source] if t == target)
    return f"{source} imports {target} ({at})"


def cycles(graph: Graph) -> list[str]:
    """Each import cycle, as the chain of imports that closes it."""
    internal = {m: sorted({t for t, _ in edges if t in graph}) for m, edges in graph.items()}
    found, state, stack = [], {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in internal[module]:
            if state.get(target) == "open":
                chain = stack[stack.index(target):] + [target]
                found.append("; ".join(where(graph, a, b) for a, b in zip(chain, chain[1:])))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def unit_of(module: str) -> str:
    """The unit a module belongs to: its top-level package below ipu_snn, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def unit_graph(graph: Graph) -> Graph:
    """The imports between units (packages and top-level modules), with where each is made."""
    units: Graph = {}
    for module, edges in graph.items():
        found = units.setdefault(unit_of(module), [])
        for target, at in edges:
            edge = (unit_of(target), at)
            if target in graph and edge[0] != unit_of(module) and edge not in found:
                found.append(edge)
    return units


def layer_of(unit: str) -> int | None:
    return next((level for level, (_, names) in enumerate(LAYERS) if unit in names), None)


def upward_imports(graph: Graph) -> list[str]:
    """Each import of a higher layer by a lower one, and each unit that has no layer."""
    problems = []
    for unit, edges in sorted(unit_graph(graph).items()):
        level = layer_of(unit)
        if level is None:
            problems.append(f"{unit} has no layer: add it to LAYERS in tests/unit/test_layering.py")
            continue
        for target, at in edges:
            other = layer_of(target)
            if other is not None and other > level:
                problems.append(f"{unit} imports {target} ({at}): the {LAYERS[level][0]} layer imports "
                                f"the {LAYERS[other][0]} layer above it")
    return problems


def sdk_imports(graph: Graph) -> list[str]:
    return [f"{module} imports {target} ({at}): only {SDK_HOME} imports the Poplar SDK"
            for module, edges in sorted(graph.items()) for target, at in edges
            if target in SDK and not (module == SDK_HOME or module.startswith(SDK_HOME + "."))]


def test_no_import_cycles():
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_package_imports_another_in_a_cycle():
    found = cycles(unit_graph(import_graph(ROOT)))
    assert not found, "import cycles between packages:\n" + "\n".join(found)


def test_no_layer_imports_a_higher_one():
    found = upward_imports(import_graph(ROOT))
    assert not found, "\n".join(found)


def test_every_layer_names_units_that_exist():
    units = set(unit_graph(import_graph(ROOT)))
    named = [name for _, names in LAYERS for name in names]
    assert sorted(set(named) - units) == [] and len(named) == len(set(named))


def test_only_the_poptorch_driver_imports_the_sdk():
    graph = import_graph(ROOT)
    assert any(target == "poptorch" for target, _ in graph["ipu_snn.ipu.sdk"])  # the check sees the real one
    found = sdk_imports(graph)
    assert not found, "\n".join(found)


def write_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ipu_snn"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_name_the_offending_imports(tmp_path):
    root = write_tree(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "config.py": "from .errors import *\n\ndef f():\n    from . import cli\n",  # function level, upward
        "cli.py": "import ipu_snn.config\n",
        "neuron/__init__.py": "from .spec import Spec\n",  # a package importing its own module: no cycle
        "neuron/spec.py": "from ..errors import *\nimport poptorch\n",
        "neuron/window.py": "from ipu_snn.ops import product\n",
        "ops/__init__.py": "",
        "ops/a.py": "from ipu_snn.ops import b\n",
        "ops/b.py": "from .a import x\n",
        "ops/product.py": "def f():\n    from ..neuron import spec\n",  # modules without a cycle, packages with
        "stray.py": "",
        "planner.py": "def f():\n    from .ipu import tiles\n",  # a package is one unit: all of ipu/ is a driver
        "ipu/__init__.py": "",
        "ipu/tiles.py": "",
    })
    graph = import_graph(root)
    assert sorted(cycles(graph)) == [
        "ipu_snn.cli imports ipu_snn.config (ipu_snn/cli.py:1); "
        "ipu_snn.config imports ipu_snn.cli (ipu_snn/config.py:4)",
        "ipu_snn.ops.a imports ipu_snn.ops.b (ipu_snn/ops/a.py:1); "
        "ipu_snn.ops.b imports ipu_snn.ops.a (ipu_snn/ops/b.py:1)",
    ]
    assert sorted(cycles(unit_graph(graph))) == [
        "cli imports config (ipu_snn/cli.py:1); config imports cli (ipu_snn/config.py:4)",
        "neuron imports ops (ipu_snn/neuron/window.py:1); ops imports neuron (ipu_snn/ops/product.py:2)",
    ]
    assert upward_imports(graph) == [
        "config imports cli (ipu_snn/config.py:4): the config schema layer imports the cli layer above it",
        "ops imports neuron (ipu_snn/ops/product.py:2): the spike products layer imports the neuron models layer "
        "above it",
        "planner imports ipu (ipu_snn/planner.py:2): the planner layer imports the drivers layer above it",
        "stray has no layer: add it to LAYERS in tests/unit/test_layering.py",
    ]
    assert sdk_imports(graph) == [
        "ipu_snn.neuron.spec imports poptorch (ipu_snn/neuron/spec.py:2): only ipu_snn.ipu imports the Poplar SDK"]
