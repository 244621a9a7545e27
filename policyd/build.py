"""Which build of policyd runs: the pure-Python package, or the hot path compiled with mypyc.

Both builds come from the same typed source and behave identically; setup.py compiles
COMPILED_MODULES (named by folder) when POLICYD_COMPILE=1 (see README, "Compiled build"). A
compiled module is an extension module (``.so``) next to its ``.py`` file, and Python imports
the extension first.

What the compiler asks of those modules: module constants are ``Final`` (bound when built,
not looked up in the module dict on every use); no reflection on their classes (a compiled
class's methods cannot be replaced, and a subclass's class-level default for an instance
attribute is not seen); values typed as what they are at run time (compiled code checks a
declared ``tuple``, ``str`` or class at run time). And, for Debian 13's mypyc 1.15 (the
.deb's compiler; see docs/compiled-debian-build.md), in a coroutine: an ``await`` alone in its
statement (``x = await f()``, not ``return a, await f()``: a value computed before the await
is lost at the suspension); no ``return`` inside a try that has a ``finally``; and
``asyncio.wait`` with a timeout, not ``asyncio.wait_for`` or ``asyncio.timeout`` (a compiled
coroutine re-raises the cancellation they turn into TimeoutError). tests/unit/test_build.py
checks all three.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

#: The hot path of one policy request (parse, decide, reply, log), as the profile shows it, by
#: folder: every module under these folders of the package (with their subfolders) ...
COMPILED_FOLDERS: tuple[str, ...] = ("core", "networks", "directory", "policy")
#: ... except these folders and modules, which a request does not pass through: the LDAP
#: directory (ldap3's own code is the cost there), and the policy server's lifecycle (and its
#: workers' supervisor), `--stdio` loop and metrics scrape; and core.profile, the profile's
#: dataclasses, whose field types the config reads at run time (as config/'s own);
NOT_COMPILED: tuple[str, ...] = (
    "directory.ldap",
    "policy.app",
    "policy.stdio",
    "policy.metrics",
    "core.profile",
    "core.later",
    "policy.worker",
    "policy.workers",
    "policy.worker_watch",
)
#: ... and these top-level modules, which the policy server shares with the milter. Not
#: config/: it reads dataclass field types at run time.
COMPILED_TOP_LEVEL: tuple[str, ...] = ("addresses", "decision_log")


def _package_modules(folder: str) -> list[str]:
    """The dotted names of the modules under `folder` (a package's own name for its
    ``__init__.py``), sorted; `folder` is relative to the policyd package."""
    package = os.path.dirname(os.path.abspath(__file__))
    names = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(package, *folder.split("."))):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        parts = ["policyd", *os.path.relpath(dirpath, package).split(os.sep)]
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                stem = filename[: -len(".py")]
                names.append(".".join(parts if stem == "__init__" else [*parts, stem]))
    return names


def _excluded(name: str) -> bool:
    return any(name == f"policyd.{x}" or name.startswith(f"policyd.{x}.") for x in NOT_COMPILED)


#: What setup.py compiles (it reads this file with runpy) and what ``--version`` counts.
COMPILED_MODULES: tuple[str, ...] = (
    *(f"policyd.{name}" for name in COMPILED_TOP_LEVEL),
    *(n for f in COMPILED_FOLDERS for n in _package_modules(f) if not _excluded(n)),
)


def is_extension(path: str | None) -> bool:
    """True if `path` is a compiled extension module's file."""
    return path is not None and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The modules of COMPILED_MODULES that import as extension modules in this process
    (found without running them)."""
    found = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and is_extension(spec.origin):
            found.append(name)
    return found


def describe() -> str:
    """``compiled with mypyc: N modules``, ``pure Python``, or ``pure Python (fallback: why)``
    when the compiled modules are installed but cannot load (for ``policyd --version``)."""
    from policyd import PURE_FALLBACK

    n = len(compiled_modules())
    if n == 0:
        return f"pure Python (fallback: {PURE_FALLBACK})" if PURE_FALLBACK else "pure Python"
    return f"compiled with mypyc: {n} modules"
