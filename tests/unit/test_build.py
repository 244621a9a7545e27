"""Which build runs (policyd/build.py): the compiled run of the suite (scripts/test-compiled,
POLICYD_EXPECT_COMPILED=1) must really load the extension modules, and the pure run must not."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os

import pytest

from policyd import build

EXPECT_COMPILED = os.environ.get("POLICYD_EXPECT_COMPILED") == "1"


def test_every_hot_module_is_loaded_from_the_build_this_run_expects() -> None:
    files = {name: importlib.import_module(name).__file__ for name in build.COMPILED_MODULES}
    wrong = {n: f for n, f in files.items() if build.is_extension(f) != EXPECT_COMPILED}
    assert not wrong, f"expected {'compiled' if EXPECT_COMPILED else 'pure'}: {wrong}"


def test_describe_names_the_build_that_runs() -> None:
    n = len(build.COMPILED_MODULES)
    expected = f"compiled with mypyc: {n} modules" if EXPECT_COMPILED else "pure Python"
    if os.environ.get("POLICYD_PURE") == "1":  # a compiled install, told to run pure
        expected = "pure Python (fallback: POLICYD_PURE=1)"
    assert build.describe() == expected


def test_the_build_module_and_the_config_loader_stay_pure() -> None:
    # build.py is read by setup.py; config.py reads dataclass field types at run time.
    assert not build.is_extension(build.__file__)
    assert "policyd.config" not in build.COMPILED_MODULES
    assert not build.is_extension(importlib.import_module("policyd.config").__file__)


@pytest.mark.parametrize(
    ("path", "extension"),
    [
        (f"/x/policyd/protocol{importlib.machinery.EXTENSION_SUFFIXES[0]}", True),
        ("/x/policyd/protocol.so", True),
        ("/x/policyd/protocol.py", False),
        ("/x/policyd/protocol.pyc", False),
        (None, False),
    ],
)
def test_is_extension_tells_an_extension_module_from_source(
    path: str | None, extension: bool
) -> None:
    assert build.is_extension(path) is extension


def test_every_listed_module_exists() -> None:
    for name in build.COMPILED_MODULES:
        assert importlib.util.find_spec(name) is not None, name


def test_the_compiled_modules_are_named_by_folder() -> None:
    # the hot path of one request, by folder: a module added to core/ is compiled without a
    # list to update, and the LDAP directory and the server's lifecycle are not
    compiled = set(build.COMPILED_MODULES)
    assert len(compiled) == len(build.COMPILED_MODULES)
    assert {
        "policyd.addresses",
        "policyd.decision_log",
        "policyd.core.request",
        "policyd.core.engine",
        "policyd.core.decision",
        "policyd.core.replies",
        "policyd.core.limits",
        "policyd.networks",
        "policyd.networks.table",
        "policyd.networks.loader",
        "policyd.directory.cache",
        "policyd.directory.static",
        "policyd.policy.protocol",
        "policyd.policy.fastpath",
        "policyd.policy.actions",
        "policyd.policy.service",
        "policyd.policy.connection",
        "policyd.policy.server",
    } <= compiled
    pure = {
        "policyd.policy.app",
        "policyd.policy.stdio",
        "policyd.policy.metrics",
        "policyd.policy.worker",  # (WorkerApp subclasses App, which is not compiled)
        "policyd.policy.workers",
    }
    assert not compiled & pure
    assert not [n for n in compiled if n.startswith("policyd.directory.ldap")]
    assert not [n for n in compiled if n.startswith(("policyd.config", "policyd.milter"))]


def _run_fallback(tmp_path: object, env_extra: dict[str, str], runtime: str | None) -> list[str]:
    """In a fresh process: the file each hot module loads from and ``--version``'s build."""
    import subprocess
    import sys
    from pathlib import Path

    d = Path(str(tmp_path))  # the current directory: first on the path of `python -c`
    if runtime is not None:  # the compiled build's shared runtime, shadowed by one that fails
        site = Path(build.__file__).parents[1]
        names = {p.name.split(".")[0] for p in site.glob("*__mypyc.*")}
        assert names, f"no compiled runtime next to policyd/ in {site}"
        for name in names:  # policyd__mypyc, or a hash__mypyc from an older mypyc
            (d / f"{name}.py").write_text(f"raise ImportError({runtime!r})\n")
    path = os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH", ""), str(Path(build.__file__).parents[1])) if p
    )
    code = (
        "import importlib; from policyd import build\n"
        "print(build.describe())\n"
        "for n in build.COMPILED_MODULES: print(importlib.import_module(n).__file__)\n"
    )
    env = {**os.environ, **env_extra, "PYTHONPATH": path}
    if "POLICYD_PURE" not in env_extra:
        env.pop("POLICYD_PURE", None)
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=d,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.skipif(not EXPECT_COMPILED, reason="the pure build has nothing to fall back from")
def test_a_compiled_runtime_that_cannot_load_falls_back_to_the_pure_modules(
    tmp_path: object,
) -> None:
    # the compiled run has the extension modules next to the .py files: all of them are passed
    # over, and --version says why; the pure run takes the same path
    out = _run_fallback(tmp_path, {}, "undefined symbol: PyFoo")
    assert out[0] == "pure Python (fallback: ImportError: undefined symbol: PyFoo)"
    assert all(f.endswith(".py") for f in out[1:]), out[1:]
    assert len(out[1:]) == len(build.COMPILED_MODULES)


def test_policyd_pure_forces_the_pure_modules(tmp_path: object) -> None:
    out = _run_fallback(tmp_path, {"POLICYD_PURE": "1"}, None)
    assert out[0] == "pure Python (fallback: POLICYD_PURE=1)"
    assert all(f.endswith(".py") for f in out[1:]), out[1:]


def _unsafe_for_mypyc_1_15(source: str) -> list[str]:
    """What Debian 13's mypyc 1.15 (the .deb's compiler) compiles wrongly in a coroutine, as
    "line: statement": an await that is not alone in its statement (``await f()``,
    ``x = await f()``, ``return await f()``, ``if await f():``, ``async with f():`` are), a
    return inside a try statement that has a finally, and ``asyncio.wait_for``/``timeout``."""
    import ast

    tree = ast.parse(source)
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Await):
            p = parents[node]
            alone = (
                (
                    isinstance(p, (ast.Expr, ast.Return, ast.Assign, ast.AnnAssign))
                    and p.value is node
                )
                or (isinstance(p, (ast.If, ast.While)) and p.test is node)
                or isinstance(p, ast.withitem)
            )
            if not alone:
                found.append(f"{node.lineno}: {ast.unparse(p)}")
        elif isinstance(node, ast.Attribute) and node.attr in ("wait_for", "timeout"):
            if isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                found.append(f"{node.lineno}: {ast.unparse(node)} (use asyncio.wait)")
        elif isinstance(node, ast.AsyncFunctionDef):
            for t in _own_nodes(node):
                if isinstance(t, ast.Try) and t.finalbody:
                    if any(isinstance(r, ast.Return) for r in _own_nodes(t)):
                        found.append(f"{t.lineno}: return inside try/finally in {node.name}")
    return found


def _own_nodes(node: object) -> list[object]:
    """`node` and the nodes under it, not those inside a nested function or class."""
    import ast

    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    out, todo = [], [node]
    while todo:
        n = todo.pop()
        out.append(n)
        if n is node or not isinstance(n, scopes):
            todo.extend(ast.iter_child_nodes(n))  # type: ignore[arg-type]
    return out


def test_the_compiled_modules_avoid_what_mypyc_1_15_compiles_wrongly() -> None:
    # Debian 13's mypyc 1.15 keeps a value computed before an await in the same statement
    # (`return profile, await result`) in a C local, which the coroutine's suspension loses:
    # the .deb's build-time unit run aborted (mypyc 1.16 spills it to the coroutine's frame);
    # and a try/finally whose body returns makes the path that does not return read an unset
    # slot (AttributeError: '__mypyc_temp__20' ... undefined); and a compiled coroutine that
    # passes a cancellation on to what it awaits re-raises the CancelledError, not what that
    # raised instead: asyncio.wait_for's or timeout()'s TimeoutError is lost (asyncio.wait
    # with a timeout cancels nothing). The venv's mypyc is newer.
    package = os.path.dirname(os.path.abspath(build.__file__))
    found = {}
    for name in build.COMPILED_MODULES:
        path = os.path.join(package, *name.split(".")[1:])
        path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
        with open(path, encoding="utf-8") as f:
            if bad := _unsafe_for_mypyc_1_15(f.read()):
                found[name] = bad
    assert not found, found


@pytest.mark.parametrize(
    ("body", "safe"),
    [
        ("await f()", True),
        ("x = await f(a, b)", True),
        ("d[k] = await f()", True),
        ("return await f()", True),
        ("if await f(): pass", True),
        ("async with f(): pass", True),
        ("try:|    x = await f()|finally:|    g()|return x", True),
        ("try:|    return g()|except E:|    pass", True),
        ("try:|    def h():|        return 1|finally:|    g()", True),
        ("await asyncio.wait((t,), timeout=1)", True),
        ("async with asyncio.timeout(1):|    x = await f()", False),
        ("x = await asyncio.wait_for(f(), 1)", False),
        ("return a, await f()", False),
        ("return g(a, key=await f())", False),
        ("x = {k: await f(k) for k in ks}", False),
        ("x += await f()", False),
        ("x = a + await f()", False),
        ("try:|    return await f()|finally:|    g()", False),
        ("try:|    x = await f()|except E:|    return 1|finally:|    g()", False),
    ],
)
def test_the_mypyc_1_15_check_finds_what_it_looks_for(body: str, safe: bool) -> None:
    source = "async def g():\n" + "".join(f"    {line}\n" for line in body.split("|"))
    assert (_unsafe_for_mypyc_1_15(source) == []) is safe, _unsafe_for_mypyc_1_15(source)
