"""The import graph of ``src/ftlens``: no cycles, and imports only point down the layers of
``docs/architecture.md``.

The walk reads every module with :mod:`ast` and counts as a dependency of a module:

- every ``import`` / ``from ... import`` in it, at module level, inside functions and under
  ``if TYPE_CHECKING:`` alike (a reader follows them all);
- every string that names an ftlens module exactly (``"ftlens.similarity.cka:LINEAR_CKA"``,
  ``"ftlens.invariance.api"``): registries and lazy exports import by name;
- the packages above each imported module (Python runs ``ftlens/models/__init__.py`` before
  ``ftlens.models.load``), except the importer's own packages.

Not counted: third-party imports (optional extras are imported inside the family or feature
that needs them: :func:`test_optional_extras_are_imported_where_they_are_used`), and a module's
*old import paths*: names listed in its ``_MOVED = {name: "new.module"}`` and served by its
module-level ``__getattr__`` belong to whoever imports them, not to the module; the doc lists
every one of them.

``python tests/test_architecture.py`` prints each module's layer and height in the graph.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"


@dataclass
class Module:
    name: str
    path: Path
    #: target module -> (line, how): "import" | "string" | "package"
    imports: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: old import paths this module serves: name -> the module it now lives in
    moved: dict[str, str] = field(default_factory=dict)
    #: third-party top-level names imported at module level (outside functions and TYPE_CHECKING)
    top_level_third_party: dict[str, int] = field(default_factory=dict)


def module_files(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``name`` (a module or ``module.attribute``) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _moved_table(tree: ast.Module) -> tuple[dict[str, str], set[int]]:
    """The module-level ``_MOVED = {...}`` (name -> module) and the ids of its string nodes."""
    for node in tree.body:
        if (isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "_MOVED"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
            table = ast.literal_eval(node.value)
            return dict(table), {id(n) for n in ast.walk(node.value)}
    return {}, set()


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _function_nodes(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            out.update(id(n) for n in ast.walk(node) if n is not node)
    return out


def read_module(name: str, path: Path, modules: dict[str, Path], package: str = "ftlens") -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module = Module(name, path)
    module.moved, skip = _moved_table(tree)
    lazy = _function_nodes(tree) | _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == package:
                    found.append((alias.name, node.lineno, "import"))
                elif id(node) not in lazy:
                    module.top_level_third_party.setdefault(top, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            top = source.split(".")[0]
            if top != package:
                if id(node) not in lazy and top and top != "__future__":
                    module.top_level_third_party.setdefault(top, node.lineno)
                continue
            for alias in node.names:  # ``from ftlens import io``: the submodule when there is one
                full = f"{source}.{alias.name}"
                found.append((full if full in modules else source, node.lineno, "import"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
              and node.value.split(":")[0] in modules and node.value.startswith(package + ".")):
            found.append((node.value.split(":")[0], node.lineno, "string"))
    for target, line, how in found:
        owner = _owner(target, modules)
        if owner is None or owner == name:
            continue
        module.imports.setdefault(owner, (line, how))
        parts = owner.split(".")
        for k in range(1, len(parts)):  # the packages Python initialises first
            above = ".".join(parts[:k])
            if above != name and not name.startswith(above + "."):
                module.imports.setdefault(above, (line, "package"))
    return module


def read_graph(src: Path = SRC, package: str = "ftlens") -> dict[str, Module]:
    files = {k: v for k, v in module_files(src).items() if k == package or k.startswith(package + ".")}
    return {name: read_module(name, path, files, package) for name, path in files.items()}


def find_cycle(graph: dict[str, Module]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` (depth-first search), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v].imports):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def describe_cycle(graph: dict[str, Module], cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        line, how = graph[a].imports[b]
        path = graph[a].path
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        steps.append(f"  {a} -> {b}    ({where}:{line}, {how})")
    return "import cycle:\n" + "\n".join(steps)


def heights(graph: dict[str, Module]) -> dict[str, int]:
    """0 for a module that imports no ftlens module, else 1 + the largest height it imports."""
    out: dict[str, int] = {}

    def height(v: str) -> int:
        if v not in out:
            out[v] = 1 + max((height(w) for w in graph[v].imports), default=-1)
        return out[v]

    for v in graph:
        height(v)
    return out


# --------------------------------------------------------------------------- docs/architecture.md


@dataclass(frozen=True)
class Layer:
    number: int
    name: str
    patterns: tuple[str, ...]


def doc_layers(text: str) -> list[Layer]:
    """The rows of the layer table: ``| number | name | `module`, `package.*` | ... |``."""
    layers = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            patterns = tuple(re.findall(r"`(ftlens[\w.*]*)`", cells[2]))
            layers.append(Layer(int(cells[0]), cells[1], patterns))
    return layers


def doc_old_paths(text: str) -> set[tuple[str, str, str]]:
    """``(old module, name, new module)`` of the lines ``- `old.module.name` -> `new.module```."""
    out = set()
    for old, new in re.findall(r"^- `(ftlens[\w.]*)` -> `(ftlens[\w.]*)`", text, re.M):
        module, _, name = old.rpartition(".")
        out.add((module, name, new))
    return out


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    """The layer whose pattern matches ``module`` most specifically (``a.b`` beats ``a.*``)."""
    best: tuple[int, Layer] | None = None
    for layer in layers:
        for pattern in layer.patterns:
            if pattern.endswith(".*"):
                stem = pattern[:-2]
                hit = module == stem or module.startswith(stem + ".")
                score = 2 * len(stem)
            else:
                hit = module == pattern
                score = 2 * len(pattern) + 1
            if hit and (best is None or score > best[0]):
                best = (score, layer)
    return best[1] if best else None


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def graph() -> dict[str, Module]:
    return read_graph()


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, describe_cycle(graph, cycle)


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The walker on a small package: function-level, TYPE_CHECKING, relative and by-name
    imports close cycles; an old-path alias and a third-party import do not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low.py": "import torch\n\ndef f():\n    from pkg import high\n",  # cycle through a function
        "high.py": "from pkg.low import f\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.user import U\n",
        "user.py": "from . import typed\nU = 1\n",  # relative import
        "registry.py": 'BUILTIN = ("pkg.plugin:THING",)\n',  # import by name
        "plugin.py": "import pkg.registry\nTHING = 1\n",
        "leaf.py": '_MOVED = {"old": "pkg.top"}\n\ndef __getattr__(name):\n    import importlib\n'
                   '    return getattr(importlib.import_module(_MOVED[name]), name)\n',
        "top.py": "from pkg.leaf import _MOVED\nold = 1\n",
        "sub/__init__.py": "from pkg.sub.inner import X\n",
        "sub/inner.py": "X = 1\n",
        "outer.py": "from pkg.sub.inner import X\n",  # also depends on pkg.sub (its package)
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    g = read_graph(tmp_path, "pkg")
    assert set(g["pkg.low"].imports) == {"pkg.high"}
    assert g["pkg.low"].top_level_third_party == {"torch": 1}
    assert set(g["pkg.typed"].imports) == {"pkg.user"} and set(g["pkg.user"].imports) == {"pkg.typed"}
    assert g["pkg.registry"].imports == {"pkg.plugin": (1, "string")}
    assert set(g["pkg.leaf"].imports) == set() and g["pkg.leaf"].moved == {"old": "pkg.top"}
    assert set(g["pkg.outer"].imports) == {"pkg.sub.inner", "pkg.sub"}
    assert set(g["pkg.sub"].imports) == {"pkg.sub.inner"}  # its own package is not a dependency
    cycles = set()
    for _ in range(3):  # three separate cycles: low/high, typed/user, registry/plugin
        sub = {k: v for k, v in g.items() if k not in cycles}
        cycle = find_cycle(sub)
        assert cycle is not None
        cycles.update(cycle)
        text = describe_cycle(g, cycle)
        assert "import cycle" in text and "->" in text
    assert {"pkg.low", "pkg.high", "pkg.typed", "pkg.user", "pkg.registry", "pkg.plugin"} <= cycles
    assert find_cycle({k: v for k, v in g.items() if k not in cycles}) is None


def test_imports_point_down_the_layers_of_the_architecture_doc(graph, doc):
    layers = doc_layers(doc)
    assert [layer.number for layer in layers] == list(range(1, len(layers) + 1)), "layers are numbered 1, 2, ..."
    unplaced = sorted(m for m in graph if layer_of(m, layers) is None)
    assert not unplaced, f"modules in no layer of docs/architecture.md (add them to its table): {unplaced}"
    stale = sorted(p for layer in layers for p in layer.patterns
                   if not any(m == p or (p.endswith(".*") and (m == p[:-2] or m.startswith(p[:-1])))
                              for m in graph))
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
    upward = []
    for name, module in sorted(graph.items()):
        mine = layer_of(name, layers)
        for target, (line, how) in sorted(module.imports.items()):
            theirs = layer_of(target, layers)
            if theirs.number > mine.number:
                upward.append(f"  {name} (layer {mine.number} {mine.name}) -> {target} (layer {theirs.number} "
                              f"{theirs.name}) at line {line} ({how})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_old_import_paths_are_listed_and_still_work(graph, doc):
    in_code = {(name, old, new) for name, m in graph.items() for old, new in m.moved.items()}
    assert in_code == doc_old_paths(doc), "the old import paths of docs/architecture.md differ from the _MOVED tables"
    for module, name, new in sorted(in_code):
        assert getattr(importlib.import_module(module), name) is getattr(importlib.import_module(new), name)


def test_optional_extras_are_imported_where_they_are_used(graph):
    """Module-level imports of third-party packages are the core dependencies of pyproject.toml
    (or the standard library): importing any ftlens module works without the optional extras."""
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~\[ ;]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    providers = packages_distributions()
    wrong = []
    for name, module in sorted(graph.items()):
        for top, line in sorted(module.top_level_third_party.items()):
            if top in sys.stdlib_module_names:
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
            if not dists & core:
                wrong.append(f"  {name}:{line} imports {top} ({', '.join(sorted(dists)) or 'not installed'})")
    assert not wrong, ("module-level imports of packages that are not core dependencies: declare them in "
                       "pyproject.toml, or (optional extras) import them inside the function that needs them:\n"
                       + "\n".join(wrong))


if __name__ == "__main__":  # the layer and height of each module, to write the doc's table
    g = read_graph()
    table = doc_layers(DOC.read_text(encoding="utf-8")) if DOC.exists() else []
    h = heights(g) if find_cycle(g) is None else {}
    for m in sorted(g, key=lambda m: (getattr(layer_of(m, table), "number", 0), h.get(m, -1), m)):
        layer = layer_of(m, table)
        print(f"{getattr(layer, 'number', '?'):>2} {getattr(layer, 'name', '-'):<14} {h.get(m, '?'):>3} {m}")
