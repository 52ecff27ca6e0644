"""The package's layers, read from its imports: no import cycle, and no layer importing a higher one.

Every import counts: at module level or inside a function, absolute or relative
(``from . import x`` included). Importing ``a.b.c`` also runs the ``__init__``
of the packages ``a.b`` and ``a`` not already around the importer, so those count
too. docs/architecture.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "ipu_snn"

#: Low to high; a module may import its own layer and the layers below it. A name (relative to ipu_snn)
#: covers the module or package of that name and everything below it, and the most specific name decides;
#: ``pkg.__init__`` is the package's own module alone.
LAYERS = [
    ("foundation", ["errors", "config", "files", "devices", "neuron", "ops", "bptt", "data",
                    "checkpoint", "run_folder", "reporting", "optim", "distributed", "saved_bytes", "selection", "init", "dropout"]),
    # the IPU's tile model and emulator sit with the planner, which costs IPU runs with the tile plan
    ("model", ["layers", "executor", "network", "planner", "metrics", "interop", "taps", "losses",
               "ipu.__init__", "ipu.tiles", "ipu.emulator", "ipu.emulator_backend", "ipu.layer_emulator"]),
    ("training loop", ["loop"]),
    ("drivers", ["torch_driver", "ipu"]),
    ("entry points", ["train", "evaluate"]),
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


def layer_of(module: str) -> int | None:
    """The level of the most specific entry of LAYERS that covers ``module``."""
    best, best_score = None, -1
    for level, (_, names) in enumerate(LAYERS):
        for name in names:
            if name.endswith("__init__"):
                covers, score = module == ".".join(["ipu_snn", *name.split(".")[:-1]]), 1000
            else:
                full = f"ipu_snn.{name}"
                covers, score = module == full or module.startswith(full + "."), len(name)
            if covers and score > best_score:
                best, best_score = level, score
    return best


def upward_imports(graph: Graph) -> list[str]:
    """Each import of a higher layer by a lower one, and each module that has no layer."""
    problems = []
    for module, edges in sorted(graph.items()):
        level = layer_of(module)
        if level is None:
            problems.append(f"{module} has no layer: add it to LAYERS in tests/unit/test_layering.py")
            continue
        for target, at in edges:
            other = layer_of(target) if target in graph else None
            if other is not None and other > level:
                problems.append(f"{module} imports {target} ({at}): the {LAYERS[level][0]} layer imports "
                                f"the {LAYERS[other][0]} layer above it")
    return problems


def sdk_imports(graph: Graph) -> list[str]:
    return [f"{module} imports {target} ({at}): only {SDK_HOME} imports the Poplar SDK"
            for module, edges in sorted(graph.items()) for target, at in edges
            if target in SDK and not (module == SDK_HOME or module.startswith(SDK_HOME + "."))]


def test_no_import_cycles():
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_layer_imports_a_higher_one():
    found = upward_imports(import_graph(ROOT))
    assert not found, "\n".join(found)


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
        "ops/__init__.py": "",
        "ops/a.py": "from ipu_snn.ops import b\n",
        "ops/b.py": "from .a import x\n",
        "stray.py": "",
        # the most specific entry decides: ipu/'s own module and its tile model sit below its driver
        "planner.py": "def f():\n    from .ipu import tiles\n    from .ipu import trainer\n",
        "ipu/__init__.py": "",
        "ipu/tiles.py": "",
        "ipu/trainer.py": "",
    })
    graph = import_graph(root)
    assert sorted(cycles(graph)) == [
        "ipu_snn.cli imports ipu_snn.config (ipu_snn/cli.py:1); "
        "ipu_snn.config imports ipu_snn.cli (ipu_snn/config.py:4)",
        "ipu_snn.ops.a imports ipu_snn.ops.b (ipu_snn/ops/a.py:1); "
        "ipu_snn.ops.b imports ipu_snn.ops.a (ipu_snn/ops/b.py:1)",
    ]
    assert upward_imports(graph) == [
        "ipu_snn.config imports ipu_snn.cli (ipu_snn/config.py:4): the foundation layer imports the cli layer above it",
        "ipu_snn.planner imports ipu_snn.ipu.trainer (ipu_snn/planner.py:3): the model layer imports the drivers "
        "layer above it",
        "ipu_snn.stray has no layer: add it to LAYERS in tests/unit/test_layering.py",
    ]
    assert sdk_imports(graph) == [
        "ipu_snn.neuron.spec imports poptorch (ipu_snn/neuron/spec.py:2): only ipu_snn.ipu imports the Poplar SDK"]
