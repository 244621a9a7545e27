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
    pure = {"policyd.policy.app", "policyd.policy.stdio", "policyd.policy.metrics"}
    assert not compiled & pure
    assert not [n for n in compiled if n.startswith("policyd.directory.ldap")]
    assert not [n for n in compiled if n.startswith(("policyd.config", "policyd.milter"))]
