"""The shape of the policyd package: no module over 400 lines, no import cycle among its modules,
and the layout's rule (docs/layout.md): the pure core imports no front end, the config no
feature package, no front end another, and the shared modules none of them.

Imports are read from the source with `ast`, nothing is imported. Every import statement counts:
at module level, under `if TYPE_CHECKING:` (a cycle for the type checker is still a cycle in the
design), `try:`, class bodies, and inside function bodies (an import deferred to the call is
still a dependency: it only hides a cycle). Importing `a.b.c` counts as an edge to `a.b.c` only,
not to its parent packages (whose `__init__` re-exports from their own submodules by design);
`from a.b import c` counts as an edge to the submodule `a.b.c` when there is one, else to `a.b`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import policyd

#: the package under test: the checkout's, or the installed one (the Debian tier runs these
#: tests against /usr/lib/python3/dist-packages/policyd)
PACKAGE = Path(policyd.__file__).resolve().parent
MAX_LINES = 400

# Known offenders, being split in this change: the integrator empties these lists as the splits
# land. Any module or cycle not listed here fails the test; a listed one that is fixed fails too,
# so that the list is kept exact.
TOO_LONG_ALLOWED: frozenset[str] = frozenset({})
CYCLES_ALLOWED: frozenset[frozenset[str]] = frozenset({})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of the module, function bodies included."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_target(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a `from ... import` names, relative ones resolved from `package`."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The policyd modules that `name` imports (anywhere in its source)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in all_imports(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
            continue
        target = import_target(node, package)
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in known:
                out.add(sub)
            elif target in known:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_modules(name, path, known) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module, or a module importing
    itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.add(frozenset(component))
    return found


def too_long() -> set[str]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES:
            out.add(path.relative_to(PACKAGE.parent).as_posix())
    return out


def test_no_module_in_policyd_is_longer_than_400_lines_except_the_listed_ones() -> None:
    offenders = too_long() - TOO_LONG_ALLOWED
    assert not offenders, f"over {MAX_LINES} lines (split them by job): {sorted(offenders)}"


def test_every_module_on_the_too_long_list_is_still_too_long() -> None:
    fixed = TOO_LONG_ALLOWED - too_long()
    assert not fixed, f"no longer over {MAX_LINES} lines, remove from TOO_LONG_ALLOWED: {fixed}"


def test_there_is_no_import_cycle_among_policyd_modules_except_the_listed_ones() -> None:
    new = cycles(import_graph()) - CYCLES_ALLOWED
    assert not new, f"import cycles: {[sorted(c) for c in new]}"


def test_every_cycle_on_the_allowed_list_still_exists() -> None:
    gone = CYCLES_ALLOWED - cycles(import_graph())
    assert not gone, f"no longer a cycle, remove from CYCLES_ALLOWED: {[sorted(c) for c in gone]}"


def test_the_cycle_finder_sees_a_cycle_through_three_modules_and_a_self_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert cycles(graph) == {frozenset({"a", "b", "c"}), frozenset({"e"})}


def test_imports_include_type_checking_blocks_and_function_bodies() -> None:
    tree = ast.parse(
        "import policyd.a\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from policyd import b\n"
        "def f():\n"
        "    import policyd.c\n"
    )
    names: set[str] = set()
    for node in all_imports(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        else:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    assert names == {"policyd.a", "typing.TYPE_CHECKING", "policyd.b", "policyd.c"}


def test_the_import_graph_resolves_submodules_and_relative_imports() -> None:
    graph = import_graph()
    assert "policyd.directory.ldap.connection" in graph["policyd.directory.ldap.directory"]
    assert "policyd.config" in graph["policyd.directory.ldap.directory"]
    # cli imports the LDAP package only inside a function: still an edge.
    assert "policyd.directory.ldap" in graph["policyd.cli.explain"]


# --- private names stay in their module --------------------------------------------------------


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(name: str, path: Path, known: set[str]) -> list[str]:
    """`from x import _name` in module `name` where x is another policyd module (or a package
    whose submodule `_name` is not): "importer: x._name" for each."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in all_imports(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("policyd.") and any(map(is_private, a.name.split("."))):
                    out.append(f"{name}: {a.name}")
            continue
        target = import_target(node, package)
        if target not in known or target == name:
            continue
        out += [f"{name}: {target}.{a.name}" for a in node.names if is_private(a.name)]
    return out


def test_no_module_imports_another_modules_private_name() -> None:
    mods = modules()
    known = set(mods)
    found = [line for n, p in mods.items() for line in private_imports(n, p, known)]
    assert not found, "private names imported across modules (make them public, or keep the "
    "code that needs them in their module):\n" + "\n".join(found)


def test_the_private_import_check_sees_from_x_import_underscore_name(tmp_path: Path) -> None:
    path = tmp_path / "b.py"
    path.write_text(
        "from policyd.a import _hidden, shown, __version__\n"
        "from .a import _also\n"
        "def f():\n"
        "    from policyd.a import _late\n"
        "from asyncio import _get_running_loop\n"
        "import policyd.a._inner\n"
    )
    known = {"policyd.a", "policyd.b"}
    assert set(private_imports("policyd.b", path, known)) == {
        "policyd.b: policyd.a._hidden",
        "policyd.b: policyd.a._also",
        "policyd.b: policyd.a._late",
        "policyd.b: policyd.a._inner",
    }


# --- the layout's rule ---------------------------------------------------------------------------

#: The three front ends, each a folder: the policy server, the milter, the web page. The cli is
#: the command above them (it starts each one) and may import them all.
FRONT_ENDS = ("policyd.policy", "policyd.milter", "policyd.web")
#: The feature packages the config must not import (they import the config).
FEATURES = (
    *FRONT_ENDS,
    "policyd.cli",
    "policyd.core",
    "policyd.networks",
    "policyd.directory",
    "policyd.verification",
    "policyd.runtime",
    "policyd.decision_log",
    "policyd.systemd",
)
#: What the pure core may import besides itself: the address rules and the ranges' Range value
#: (not the config: the config imports the core's types, core.profile and core.limits).
CORE_MAY_IMPORT = ("policyd.core", "policyd.addresses", "policyd.networks")
#: The core modules the config may import: types and constants, never the decision code.
CONFIG_MAY_IMPORT_FROM_CORE = ("policyd.core.limits", "policyd.core.profile")

# Known breaks of the rule, (importer, imported). Empty: any break fails the test; a listed
# pair that no longer breaks it fails too, so that the list is kept exact.
BREAKS_ALLOWED: frozenset[tuple[str, str]] = frozenset()


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def front_end(name: str) -> str | None:
    return next((f for f in FRONT_ENDS if within(name, f)), None)


def why_not(importer: str, imported: str) -> str | None:
    """Why the layout forbids `importer` to import `imported`, or None when it may."""
    if within(importer, "policyd.core"):
        if not any(within(imported, p) for p in CORE_MAY_IMPORT):
            return "the pure core imports only the core, addresses and networks"
    elif within(importer, "policyd.config"):
        if any(within(imported, f) for f in FEATURES) and (
            imported not in CONFIG_MAY_IMPORT_FROM_CORE
        ):
            return "the config imports no feature package (only core.limits and core.profile)"
    mine, theirs = front_end(importer), front_end(imported)
    if theirs is not None and mine != theirs and not within(importer, "policyd.cli"):
        if mine is not None:
            return "a front end imports no other front end"
        if importer != "policyd.__main__":
            return "a shared module imports no front end"
    return None


def breaks(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    out = {}
    for importer, imported in sorted((a, b) for a, targets in graph.items() for b in targets):
        why = why_not(importer, imported)
        if why is not None:
            out[(importer, imported)] = why
    return out


def test_the_layout_rule_holds_except_for_the_listed_breaks() -> None:
    new = {k: v for k, v in breaks(import_graph()).items() if k not in BREAKS_ALLOWED}
    assert not new, "layout broken:\n" + "\n".join(f"{a} -> {b}: {w}" for (a, b), w in new.items())


def test_every_break_on_the_allowed_list_still_exists() -> None:
    gone = BREAKS_ALLOWED - set(breaks(import_graph()))
    assert not gone, f"no longer a break, remove from BREAKS_ALLOWED: {sorted(gone)}"


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("policyd.core.engine", "policyd.config", False),
        ("policyd.core.engine", "policyd.core.profile", True),
        ("policyd.config", "policyd.core.profile", True),
        ("policyd.config", "policyd.core.engine", False),
        ("policyd.core.engine", "policyd.policy.service", False),
        ("policyd.core.engine", "policyd.directory.base", False),
        ("policyd.config.web", "policyd.web.auth", False),
        ("policyd.config", "policyd.core.limits", True),
        ("policyd.config", "policyd.core.replies", False),
        ("policyd.milter.libmilter", "policyd.policy.service", False),
        ("policyd.web.server", "policyd.policy.app", False),
        ("policyd.milter.decide", "policyd.milter.headers", True),
        ("policyd.decision_log", "policyd.policy.actions", False),
        ("policyd.runtime", "policyd.verification.lookups", True),
        ("policyd.cli.explain", "policyd.milter.decide", True),
        ("policyd.__main__", "policyd.cli", True),
    ],
)
def test_the_rule_refuses_what_runs_back_up(importer: str, imported: str, allowed: bool) -> None:
    assert (why_not(importer, imported) is None) is allowed


# --- no circle between folders -------------------------------------------------------------------


def folder(name: str) -> str:
    """The folder a module is in: policyd.core.engine -> policyd.core; a top-level module is
    its own (policyd.addresses)."""
    return ".".join(name.split(".")[:2])


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        mine = folder(importer)
        out.setdefault(mine, set())
        out[mine].update(folder(m) for m in imported if folder(m) != mine)
    for targets in list(out.values()):
        for t in targets:
            out.setdefault(t, set())
    return out


def test_there_is_no_import_circle_between_folders() -> None:
    """core -> config -> core and the like: a folder's modules may import each other, but
    two folders (or top-level modules) never import each other, even through others."""
    found = cycles(folder_graph(import_graph()))
    assert not found, f"import circles between folders: {[sorted(c) for c in found]}"


def test_the_folder_graph_sees_a_circle_that_no_module_cycle_shows() -> None:
    # core.engine -> config -> core.limits: no module cycle, but core and config import each
    # other
    graph = {
        "policyd.core.engine": {"policyd.config"},
        "policyd.config": {"policyd.core.limits"},
        "policyd.core.limits": set(),
        "policyd.addresses": set(),
    }
    assert not cycles(graph)
    assert cycles(folder_graph(graph)) == {frozenset({"policyd.core", "policyd.config"})}
