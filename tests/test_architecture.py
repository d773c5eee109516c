"""The package diagram of docs/architecture.md, enforced on the source (ast only: nothing is imported or run).

Every `import` and `from ... import` in sfv_jax/, at module level or inside functions, is an edge. The test fails on
- an edge from one unit (a subpackage such as `train`, or a top-level module such as `pipeline`) to a unit that
  docs/architecture.md's table does not allow (e.g. pipeline.py importing sfv_jax.train, models importing convert);
- a module missing from the table (a new package must get its row);
- an import cycle between units, or between modules inside a unit (e.g. data/sources.py <-> data/folder.py, even
  when one side imports inside a function to dodge the runtime error);
- a private name (`_foo`) imported from another unit (e.g. `from sfv_jax.pipeline import _signature` in bench).
"""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sfv_jax")
DOC = os.path.join(ROOT, "docs", "architecture.md")


def allowed_imports(doc_text: str) -> dict[str, set[str]]:
    """{unit: units it may import} from the table rows `| `a`, `b` | `c`, `d` |` (every unit may use `errors`)."""
    rows = []
    for line in doc_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 2:
            units = re.findall(r"`([^`]+)`", cells[0])[:1] if "(" in cells[0] else re.findall(r"`([^`]+)`", cells[0])
            rows.append((units, cells[1]))
    listed = {u for units, _ in rows for u in units}
    table = {}
    for units, cell in rows:
        names = set(re.findall(r"`([^`]+)`", cell))
        may = (listed - names) if cell.startswith("every unit listed but") else names
        for unit in units:
            table[unit] = (may | {"errors"}) - {unit}
    table["errors"] = set()
    return table


def unit_of(module: str) -> str:
    """sfv_jax.train.loop -> train; sfv_jax.pipeline -> pipeline; sfv_jax -> sfv_jax."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def source_modules() -> dict[str, str]:
    """{dotted module name: file path} of every module under sfv_jax/."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def imports_of(path: str, module: str, modules: dict[str, str]):
    """(imported module, imported name or None, line) for every sfv_jax import in the file, any nesting depth."""
    is_package = path.endswith("__init__.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sfv_jax":
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "sfv_jax":
                continue
            for alias in node.names:
                # `from pkg import submodule` is an edge to the submodule, `from module import name` to the module.
                target = f"{base}.{alias.name}"
                yield (target, None, node.lineno) if target in modules else (base, alias.name, node.lineno)


def import_graph():
    modules = source_modules()
    edges = {m: {} for m in modules}  # module -> {imported module: (line, names)}
    private = []
    for module, path in modules.items():
        for target, name, line in imports_of(path, module, modules):
            edges[module].setdefault(target, line)
            crosses = unit_of(target) != unit_of(module)
            hidden = [p for p in target.split(".") + [name or ""] if p.startswith("_") and not p.startswith("__")]
            if crosses and hidden:
                private.append(f"{os.path.relpath(path, ROOT)}:{line} imports {'.'.join(hidden)} from {target}")
    return modules, edges, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a list of nodes, first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_follow_the_package_diagram():
    """Catches: an upward or sideways import the table forbids (pipeline -> train, models -> convert, cli <-> demo),
    at module level or inside a function, and a new unit nobody put in the table."""
    with open(DOC) as f:
        table = allowed_imports(f.read())
    modules, edges, _ = import_graph()
    unlisted = sorted({unit_of(m) for m in modules} - set(table))
    assert not unlisted, f"add these to the table of docs/architecture.md: {unlisted}"
    forbidden = [f"{os.path.relpath(modules[m], ROOT)}:{line} imports {t} ({unit_of(m)} -> {unit_of(t)})"
                 for m, targets in edges.items() for t, line in targets.items()
                 if unit_of(t) != unit_of(m) and unit_of(t) not in table[unit_of(m)]]
    assert not forbidden, "imports docs/architecture.md forbids:\n" + "\n".join(forbidden)


def test_no_import_cycles():
    """Catches: two units importing each other by any path (models <-> convert), and two modules of one unit doing so
    (data/sources.py <-> data/folder.py), function-level imports included."""
    _, edges, _ = import_graph()
    units = {}
    for module, targets in edges.items():
        units.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    assert find_cycle(units) is None, f"import cycle between units: {' -> '.join(find_cycle(units))}"
    # Inside a package its __init__ re-exports submodules; a submodule importing its own package's __init__ back
    # would close a loop that Python tolerates only by import order, so it counts too.
    graph = {m: set(t) for m, t in edges.items()}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between modules: {' -> '.join(cycle)}"


def test_no_private_names_across_units():
    """Catches: `from sfv_jax.convert.module_state import _flatten` in train, or any `_name` (or `_module`) taken
    from another unit instead of a public helper."""
    _, _, private = import_graph()
    assert not private, "private names imported across units:\n" + "\n".join(private)


def test_the_checker_sees_a_forbidden_edge_a_cycle_and_a_private_import():
    """Catches: a checker that parses nothing (every test above would pass vacuously)."""
    table = allowed_imports("| `a` | nothing else |\n| `b` | `a` |\n| `c` | every unit listed but `b` |\n")
    assert table == {"a": {"errors"}, "b": {"a", "errors"}, "c": {"a", "errors"}, "errors": set()}
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
    modules, edges, _ = import_graph()
    assert "sfv_jax.checkpoint" in edges["sfv_jax.pipeline"]  # a function-level import in from_pretrained
    assert "sfv_jax.data.clips" in edges["sfv_jax.data.folder"]
    assert unit_of("sfv_jax.train.loop") == "train" and len(modules) > 50
