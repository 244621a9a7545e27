"""policyd: a Postfix policy daemon that relays only for allocated networks or SASL logins,
and only for sender addresses the login owns."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

__version__ = "0.1.0"

#: A compiled module (policyd/build.py's COMPILED_TOP_LEVEL) that imports nothing of policyd.
_PROBE = "policyd.addresses"
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)

#: Why the compiled modules are not used although they are installed ("" if they are, or if
#: this is the pure build): ``policyd --version`` shows it.
PURE_FALLBACK = ""


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds policyd's modules as their ``.py`` files only: the compiled build's extension
    modules (next to them) are then never imported."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("policyd.") or path is None:
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def _choose_build() -> str:
    """Falls back to the pure modules (which the compiled build installs too) when the
    compiled ones cannot load, or when POLICYD_PURE=1 asks for them; returns why ("" if the
    compiled modules, if any, are used)."""
    if os.environ.get("POLICYD_PURE") == "1":
        why = "POLICYD_PURE=1"
    else:
        # one compiled module, imported now: it loads the compiled build's shared runtime
        spec = importlib.util.find_spec(_PROBE)
        if spec is None or not (spec.origin or "").endswith(_EXTENSION_SUFFIXES):
            return ""  # the pure build: nothing to fall back from
        try:
            importlib.import_module(_PROBE)
        except Exception as e:  # noqa: BLE001 - any failure to load means: use the .py files
            why = f"{type(e).__name__}: {e}"
        else:
            return ""
    for name in [n for n in sys.modules if n.startswith("policyd.")]:
        del sys.modules[name]  # nothing compiled stays half-loaded
    sys.meta_path.insert(0, _SourceOnly())
    return why


PURE_FALLBACK = _choose_build()
