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
