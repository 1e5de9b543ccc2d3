"""The layering contract: imports point one way, no circles, no hidden imports inside functions.

docs/ARCHITECTURE.md draws the layers; setup.cfg's [importlinter] section is the machine-checked copy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "skinhpc"


def test_layers_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--config", str(REPO / "setup.cfg")], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_no_import_cycles():
    """Counted over every module of the package (function-level imports included): each strongly
    connected component of the import graph must be a single module."""
    graph = grimp.build_graph("skinhpc", include_external_packages=False)
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    # Tarjan's strongly connected components
    counter, stack, on_stack, low, num, cycles = [0], [], set(), {}, {}, []

    def visit(v: str) -> None:
        num[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in num:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], num[w])
        if low[v] == num[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for m in modules:
        if m not in num:
            visit(m)
    assert len(index) > 30, "the graph should hold the whole package"
    assert cycles == [], f"import cycles: {cycles}"


def test_internal_imports_inside_functions_say_why():
    """A package-internal import inside a function hides the graph; allowed only to defer a heavy
    dependency, with a `# deferred: reason` comment on the line."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("skinhpc"):
                    if "# deferred:" not in lines[sub.lineno - 1]:
                        offenders.append(f"{path.relative_to(REPO)}:{sub.lineno}")
    assert offenders == [], f"internal imports inside functions without a reason: {offenders}"


# Modules allowed past ~400 lines, each with its reason.
LONG_MODULES = {
    "skinhpc/config/schema.py": "every job key with its doc, default, bounds and identity in one "
                                "place (the schema is the single owner; splitting it scatters keys)",
}


def test_modules_stay_small():
    """A module over ~400 lines mixes concerns; the exceptions say why above."""
    too_long = {str(p.relative_to(REPO)): n for p in sorted(PACKAGE.rglob("*.py"))
                if (n := len(p.read_text().splitlines())) > 400}
    assert set(too_long) <= set(LONG_MODULES), f"modules over 400 lines without a reason: {too_long}"


def test_no_test_module_imports_another(repo: Path):
    """What test modules share are fixtures of the plugins under tests/plugins/ (one concern each),
    requested as arguments: a test module that imports another (conftest or a plugin included)
    runs that module's import-time code under another name and hides where a helper comes from.
    Any name a file or folder under tests/ can be imported by (pytest puts tests/ and its
    subfolders on sys.path) is refused, relative imports too; the one exception is conftest.py's
    ``pytest_plugins``, which registers the plugins by name, each of them (a plugin nobody
    registers is dead code).  A plugin imports no other module of tests/ either."""
    tests = repo / "tests"
    names = set()
    for path in [*tests.rglob("*.py"), *(d for d in tests.rglob("*") if d.is_dir())]:
        parts = [*path.relative_to(tests).with_suffix("").parts]
        names |= {".".join(parts[i:]) for i in range(len(parts))} | {".".join(["tests", *parts])}
    names.discard("__init__")
    plugins = {f"plugins.{p.stem}" for p in (tests / "plugins").glob("*.py") if p.stem != "__init__"}
    offenders, registered = [], []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                imported = ["." * node.level + base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytest_plugins" for t in node.targets):
                imported = [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)]  # imported by name
                if path == tests / "conftest.py":
                    registered += [name for name in imported if name in plugins]
                    imported = [name for name in imported if name not in plugins]
            else:
                continue
            for name in imported:
                prefixes = {".".join(name.split(".")[: i + 1]) for i in range(name.count(".") + 1)}
                if name.startswith(".") or prefixes & names:
                    offenders.append(f"{path.relative_to(repo)}:{node.lineno} imports {name}")
                    break
    assert len(names) > 30, "every module under tests/ should be known"
    assert len(plugins) >= 4, "the shared fixtures live in tests/plugins/"
    assert offenders == [], f"test modules importing test modules (use a plugin's fixture): {offenders}"
    assert sorted(registered) == sorted(plugins), f"plugins conftest.py does not register: {plugins - set(registered)}"
