"""Which build of policyd runs: the pure-Python package, or the hot path compiled with mypyc.

Both builds come from the same typed source and behave identically; setup.py compiles
COMPILED_MODULES when POLICYD_COMPILE=1 (see README, "Compiled build"). A compiled module is
an extension module (``.so``) next to its ``.py`` file, and Python imports the extension first.

What the compiler asks of those modules: module constants are ``Final`` (bound when built,
not looked up in the module dict on every use); no reflection on their classes (a compiled
class's methods cannot be replaced, and a subclass's class-level default for an instance
attribute is not seen); values typed as what they are at run time (compiled code checks a
declared ``tuple``, ``str`` or class at run time).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

#: The hot path of one policy request (parse, decide, reply, log), as the profile shows it;
#: setup.py reads this list. Not config.py: it reads dataclass field types at run time.
COMPILED_MODULES: tuple[str, ...] = (
    "policyd.limits",
    "policyd.request",
    "policyd.fastpath",
    "policyd.protocol",
    "policyd.addresses",
    "policyd.decision",
    "policyd.networks",
    "policyd.networks.table",
    "policyd.networks.patterns",
    "policyd.networks.sweep",
    "policyd.networks.loader",
    "policyd.engine",
    "policyd.actions",
    "policyd.replies",
    "policyd.decision_log",
    "policyd.directory.base",
    "policyd.directory.static",
    "policyd.directory.lookups",
    "policyd.directory.cache",
    "policyd.service",
    "policyd.connection",
    "policyd.server",
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
    """``compiled with mypyc: N modules`` or ``pure Python`` (for ``policyd --version``)."""
    n = len(compiled_modules())
    if n == 0:
        return "pure Python"
    return f"compiled with mypyc: {n} modules"
